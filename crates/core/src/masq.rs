//! Masquerade and forward rule sets (iptables-restore text and nft batches), pure.
//!
//! It owns what flanneld's `--ip-masq` and `--iptables-forward-rules` put in the kernel: the
//! iptables chains `FLANNEL-POSTRTG` (nat, hooked from POSTROUTING) and `FLANNEL-FWD` (filter,
//! hooked from FORWARD), or with `EnableNFTables` the table `ip flannel-ipv4` with chains
//! `postrtg` and `forward`. It renders rules exactly as `iptables-save` and `nft list table` print
//! them, so the kernel adapter can compare what it reads back with a plain `==`, and it computes
//! the `iptables-restore --noflush` input that repairs a difference. It runs no command.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

/// The mark kube-proxy sets on packets it masquerades itself; flannel leaves them alone.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";
/// IPv4 multicast, never masqueraded.
pub const IPV4_MULTICAST: &str = "224.0.0.0/4";

/// The nft table of IPv4 rules (`EnableNFTables`).
pub const NFT_TABLE: &str = "flannel-ipv4";
/// The nft chain of masquerade rules (type nat, hook postrouting, priority srcnat).
pub const NFT_MASQ_CHAIN: &str = "postrtg";
/// The nft chain of forward rules (type filter, hook forward, priority filter).
pub const NFT_FORWARD_CHAIN: &str = "forward";

/// What the firewall should hold on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FirewallPlan {
    /// The cluster network (`FLANNEL_NETWORK`).
    pub network: Ipv4Net,
    /// This node's lease subnet (host bits are ignored: 10.5.72.1/24 means 10.5.72.0/24).
    pub pod: Ipv4Net,
    /// `--ip-masq`: install the masquerade rules.
    pub masq: bool,
    /// `--iptables-forward-rules`: install the forward rules.
    pub forward: bool,
}

/// One of weft's iptables chains: its table, its name, the built-in chain that jumps to it and
/// the comment on its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IptChain {
    pub table: &'static str,
    pub name: &'static str,
    pub hook: &'static str,
    pub comment: &'static str,
}

/// `FLANNEL-POSTRTG` in nat, jumped to from POSTROUTING.
pub const MASQ_CHAIN: IptChain = IptChain {
    table: "nat",
    name: "FLANNEL-POSTRTG",
    hook: "POSTROUTING",
    comment: "flanneld masq",
};

/// `FLANNEL-FWD` in filter, jumped to from FORWARD.
pub const FORWARD_CHAIN: IptChain = IptChain {
    table: "filter",
    name: "FLANNEL-FWD",
    hook: "FORWARD",
    comment: "flanneld forward",
};

impl IptChain {
    /// The jump from the hook chain, as `iptables-save` prints it.
    pub fn jump_rule(&self) -> String {
        format!(
            "-A {} -m comment --comment \"{}\" -j {}",
            self.hook, self.comment, self.name
        )
    }

    fn rule(&self, matches: &str, target: &str) -> String {
        format!(
            "-A {} {matches} -m comment --comment \"{}\" -j {target}",
            self.name, self.comment
        )
    }
}

/// The `FLANNEL-POSTRTG` rules in flannel's order, as `iptables-save` prints them.
pub fn masq_rules(network: Ipv4Net, pod: Ipv4Net) -> Vec<String> {
    let (net, pod) = (network.trunc(), pod.trunc());
    let c = &MASQ_CHAIN;
    vec![
        // traffic kube-proxy already masquerades
        c.rule(&format!("-m mark --mark {KUBE_PROXY_MARK}"), "RETURN"),
        // within the overlay: no NAT
        c.rule(&format!("-s {pod} -d {net}"), "RETURN"),
        c.rule(&format!("-s {net} -d {pod}"), "RETURN"),
        // outside traffic to our pods keeps its source
        c.rule(&format!("! -s {net} -d {pod}"), "RETURN"),
        c.rule(&format!("-s {net} ! -d {IPV4_MULTICAST}"), "MASQUERADE --random-fully"),
        // the host talking to the overlay
        c.rule(&format!("! -s {net} -d {net}"), "MASQUERADE --random-fully"),
    ]
}

/// The `FLANNEL-FWD` rules, as `iptables-save` prints them.
pub fn forward_rules(network: Ipv4Net) -> Vec<String> {
    let net = network.trunc();
    let c = &FORWARD_CHAIN;
    vec![
        c.rule(&format!("-s {net}"), "ACCEPT"),
        c.rule(&format!("-d {net}"), "ACCEPT"),
    ]
}

/// What `iptables-save` shows of one of weft's chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainState {
    /// The chain exists (`:NAME - [0:0]`).
    pub declared: bool,
    /// The chain's rules in order (`-A NAME ...` lines).
    pub rules: Vec<String>,
    /// Every rule of the hook chain that jumps to this chain (`-A HOOK ... -j NAME` lines).
    pub jumps: Vec<String>,
}

impl ChainState {
    /// Picks the chain out of `iptables-save -t <table>` output.
    pub fn from_save(save: &str, chain: &IptChain) -> ChainState {
        let declaration = format!(":{} ", chain.name);
        let own = format!("-A {} ", chain.name);
        let hook = format!("-A {} ", chain.hook);
        let jump_tail = format!(" -j {}", chain.name);
        let mut state = ChainState::default();
        for line in save.lines().map(str::trim_end) {
            if line.starts_with(&declaration) {
                state.declared = true;
            } else if line.starts_with(&own) {
                state.rules.push(line.to_string());
            } else if line.starts_with(&hook) && line.ends_with(&jump_tail) {
                state.jumps.push(line.to_string());
            }
        }
        state
    }

    /// The state of a chain that should hold `rules` (None: the chain should not exist).
    pub fn desired(chain: &IptChain, rules: Option<Vec<String>>) -> ChainState {
        match rules {
            Some(rules) => ChainState {
                declared: true,
                rules,
                jumps: vec![chain.jump_rule()],
            },
            None => ChainState::default(),
        }
    }
}

/// What `iptables-save` shows of both of weft's chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptablesState {
    pub masq: ChainState,
    pub forward: ChainState,
}

impl IptablesState {
    /// Reads the state out of `iptables-save -t nat` and `iptables-save -t filter` output.
    pub fn from_save(nat_save: &str, filter_save: &str) -> IptablesState {
        IptablesState {
            masq: ChainState::from_save(nat_save, &MASQ_CHAIN),
            forward: ChainState::from_save(filter_save, &FORWARD_CHAIN),
        }
    }

    /// The state the plan asks for.
    pub fn desired(plan: &FirewallPlan) -> IptablesState {
        IptablesState {
            masq: ChainState::desired(&MASQ_CHAIN, plan.masq.then(|| masq_rules(plan.network, plan.pod))),
            forward: ChainState::desired(&FORWARD_CHAIN, plan.forward.then(|| forward_rules(plan.network))),
        }
    }
}

/// Input for `iptables-restore --noflush` that turns `have` into what `plan` asks for, or None
/// when nothing differs. A chain that differs is declared again, which flushes it, and refilled
/// in the same commit, so rules for an old network or subnet vanish atomically; its jump is kept
/// when it is already there exactly once and repaired otherwise (extra or foreign jumps deleted).
/// A chain the plan does not want loses its jumps and is deleted.
pub fn iptables_restore_input(plan: &FirewallPlan, have: &IptablesState) -> Option<String> {
    let want = IptablesState::desired(plan);
    let mut out = String::new();
    for (chain, want, have) in [
        (&MASQ_CHAIN, &want.masq, &have.masq),
        (&FORWARD_CHAIN, &want.forward, &have.forward),
    ] {
        if want != have {
            out.push_str(&chain_restore_input(chain, want, have));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Input for `iptables-restore --noflush` that removes the chain and every jump to it from its
/// hook (used when the plan drops it, and by cleanup).
pub fn chain_removal_input(chain: &IptChain, have: &ChainState) -> Option<String> {
    (have != &ChainState::default()).then(|| chain_restore_input(chain, &ChainState::default(), have))
}

fn chain_restore_input(chain: &IptChain, want: &ChainState, have: &ChainState) -> String {
    let mut out = format!("*{}\n", chain.table);
    // the chain must exist before a jump to it is added, and declaring it flushes it
    if want.declared || have.declared {
        out.push_str(&format!(":{} - [0:0]\n", chain.name));
    }
    let mut kept_jump = false;
    for jump in &have.jumps {
        if want.jumps.contains(jump) && !kept_jump {
            kept_jump = true;
        } else {
            out.push_str(&format!("-D{}\n", &jump[2..]));
        }
    }
    for rule in &want.rules {
        out.push_str(rule);
        out.push('\n');
    }
    if !want.declared && have.declared {
        out.push_str(&format!("-X {}\n", chain.name));
    }
    if want.declared && !kept_jump {
        out.push_str(&chain.jump_rule());
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// The table `ip flannel-ipv4` exactly as `nft list table ip flannel-ipv4` prints it (tabs,
/// blank line between chains), or None when the plan wants neither chain.
pub fn nft_table(plan: &FirewallPlan) -> Option<String> {
    if !plan.masq && !plan.forward {
        return None;
    }
    let (net, pod) = (plan.network.trunc(), plan.pod.trunc());
    let mut chains = Vec::new();
    if plan.masq {
        let masq = "comment \"flanneld masq\"";
        chains.push(format!(
            "\tchain {NFT_MASQ_CHAIN} {{\n\
             \t\tcomment \"chain to manage traffic masquerading by flannel\"\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark & 0x00004000 == 0x00004000 return {masq}\n\
             \t\tip saddr {pod} ip daddr {net} return {masq}\n\
             \t\tip saddr {net} ip daddr {pod} return {masq}\n\
             \t\tip saddr != {net} ip daddr {pod} return {masq}\n\
             \t\tip saddr {net} ip daddr != {IPV4_MULTICAST} masquerade fully-random {masq}\n\
             \t\tip saddr != {net} ip daddr {net} masquerade fully-random {masq}\n\
             \t}}\n"
        ));
    }
    if plan.forward {
        let fwd = "comment \"flanneld forward\"";
        chains.push(format!(
            "\tchain {NFT_FORWARD_CHAIN} {{\n\
             \t\tcomment \"chain to accept flannel traffic\"\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr {net} accept {fwd}\n\
             \t\tip daddr {net} accept {fwd}\n\
             \t}}\n"
        ));
    }
    Some(format!(
        "table ip {NFT_TABLE} {{\n\tcomment \"rules for {NFT_TABLE}\"\n{}}}\n",
        chains.join("\n")
    ))
}

/// One `nft -f` script that replaces the table's contents atomically: it creates the table if
/// missing (so the delete cannot fail), deletes it and declares it again in the same
/// transaction. When the plan wants neither chain it only deletes the table.
pub fn nft_batch(plan: &FirewallPlan) -> String {
    let mut out = nft_removal_batch();
    if let Some(table) = nft_table(plan) {
        out.push_str(&table);
    }
    out
}

/// The `nft -f` script that deletes the table, whether or not it exists.
pub fn nft_removal_batch() -> String {
    format!("table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n")
}

/// The parts of an `nft list table` listing that matter, with handles, indentation and blank
/// lines dropped: the lines outside any chain, and each chain's lines by chain name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftState {
    pub table_lines: Vec<String>,
    pub chains: BTreeMap<String, Vec<String>>,
}

impl NftState {
    /// Reads a listing (`nft list table ip flannel-ipv4`, or [`nft_table`]'s text; "" for a
    /// missing table).
    pub fn from_listing(listing: &str) -> NftState {
        let mut state = NftState::default();
        let mut current: Option<String> = None;
        for raw in listing.lines() {
            let line = match raw.split_once(" # handle ") {
                Some((before, _)) => before.trim(),
                None => raw.trim(),
            };
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix("chain ").and_then(|l| l.strip_suffix(" {")) {
                current = Some(name.to_string());
                state.chains.entry(name.to_string()).or_default();
            } else if line == "}" && current.is_some() {
                current = None;
            } else if let Some(name) = &current {
                state.chains.entry(name.clone()).or_default().push(line.to_string());
            } else {
                state.table_lines.push(line.to_string());
            }
        }
        state
    }

    /// The state the plan asks for (empty when it wants no table).
    pub fn desired(plan: &FirewallPlan) -> NftState {
        NftState::from_listing(&nft_table(plan).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(masq: bool, forward: bool) -> FirewallPlan {
        FirewallPlan {
            network: "10.5.0.0/16".parse().unwrap(),
            pod: "10.5.72.0/24".parse().unwrap(),
            masq,
            forward,
        }
    }

    const MASQ_RULES: &str = "\
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.72.0/24 -d 10.5.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
";

    const FORWARD_RULES: &str = "\
-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT
-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT
";

    fn lines(v: Vec<String>) -> String {
        v.into_iter().map(|l| l + "\n").collect()
    }

    #[test]
    fn masq_rules_follow_flannels_order() {
        let p = plan(true, true);
        assert_eq!(lines(masq_rules(p.network, p.pod)), MASQ_RULES);
    }

    #[test]
    fn host_bits_of_the_lease_address_are_dropped() {
        let rules = masq_rules("10.5.0.0/16".parse().unwrap(), "10.5.72.1/24".parse().unwrap());
        assert_eq!(lines(rules), MASQ_RULES);
    }

    #[test]
    fn forward_rules_accept_both_directions() {
        assert_eq!(lines(forward_rules("10.5.0.0/16".parse().unwrap())), FORWARD_RULES);
    }

    #[test]
    fn jump_rules() {
        assert_eq!(
            MASQ_CHAIN.jump_rule(),
            "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"
        );
        assert_eq!(
            FORWARD_CHAIN.jump_rule(),
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD"
        );
    }

    #[test]
    fn restore_input_from_nothing_declares_fills_and_hooks_both_chains() {
        let input = iptables_restore_input(&plan(true, true), &IptablesState::default()).unwrap();
        let expected = format!(
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n{MASQ_RULES}\
             -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\nCOMMIT\n\
             *filter\n:FLANNEL-FWD - [0:0]\n{FORWARD_RULES}\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\nCOMMIT\n"
        );
        assert_eq!(input, expected);
    }

    fn save_of(nat_extra: &str, filter_extra: &str) -> (String, String) {
        let nat = format!(
            "# Generated by iptables-save v1.8.9 (nf_tables)\n*nat\n:PREROUTING ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n\
             -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             {MASQ_RULES}{nat_extra}COMMIT\n"
        );
        let filter = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:FLANNEL-FWD - [0:0]\n\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             {FORWARD_RULES}{filter_extra}COMMIT\n"
        );
        (nat, filter)
    }

    #[test]
    fn matching_save_output_needs_nothing() {
        let (nat, filter) = save_of("", "");
        let have = IptablesState::from_save(&nat, &filter);
        assert_eq!(have, IptablesState::desired(&plan(true, true)));
        assert_eq!(iptables_restore_input(&plan(true, true), &have), None);
    }

    #[test]
    fn a_changed_subnet_refills_only_the_masq_chain_and_keeps_its_jump() {
        let (nat, filter) = save_of("", "");
        let have = IptablesState::from_save(&nat, &filter);
        let mut moved = plan(true, true);
        moved.pod = "10.5.9.0/24".parse().unwrap();
        let input = iptables_restore_input(&moved, &have).unwrap();
        let expected = format!(
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n{}COMMIT\n",
            MASQ_RULES.replace("10.5.72.0/24", "10.5.9.0/24")
        );
        assert_eq!(input, expected);
    }

    #[test]
    fn duplicate_and_foreign_jumps_are_deleted() {
        let (nat, filter) = save_of(
            "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             -A POSTROUTING -j FLANNEL-POSTRTG\n",
            "",
        );
        let input = iptables_restore_input(&plan(true, true), &IptablesState::from_save(&nat, &filter)).unwrap();
        let expected = format!(
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n\
             -D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             -D POSTROUTING -j FLANNEL-POSTRTG\n{MASQ_RULES}COMMIT\n"
        );
        assert_eq!(input, expected);
    }

    #[test]
    fn an_unwanted_chain_loses_its_jump_and_is_deleted() {
        let (nat, filter) = save_of("", "");
        let input = iptables_restore_input(&plan(false, true), &IptablesState::from_save(&nat, &filter)).unwrap();
        assert_eq!(
            input,
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n\
             -D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             -X FLANNEL-POSTRTG\nCOMMIT\n"
        );
        let forward_only = IptablesState::desired(&plan(false, true));
        assert_eq!(iptables_restore_input(&plan(false, true), &forward_only), None);
    }

    #[test]
    fn removal_input_is_none_for_an_absent_chain() {
        assert_eq!(chain_removal_input(&FORWARD_CHAIN, &ChainState::default()), None);
        let (nat, filter) = save_of("", "");
        let have = IptablesState::from_save(&nat, &filter);
        assert_eq!(
            chain_removal_input(&FORWARD_CHAIN, &have.forward).unwrap(),
            "*filter\n:FLANNEL-FWD - [0:0]\n\
             -D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             -X FLANNEL-FWD\nCOMMIT\n"
        );
    }

    const NFT_TABLE_TEXT: &str = "\
table ip flannel-ipv4 {
\tcomment \"rules for flannel-ipv4\"
\tchain postrtg {
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return comment \"flanneld masq\"
\t\tip saddr 10.5.72.0/24 ip daddr 10.5.0.0/16 return comment \"flanneld masq\"
\t\tip saddr 10.5.0.0/16 ip daddr 10.5.72.0/24 return comment \"flanneld masq\"
\t\tip saddr != 10.5.0.0/16 ip daddr 10.5.72.0/24 return comment \"flanneld masq\"
\t\tip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"flanneld masq\"
\t\tip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random comment \"flanneld masq\"
\t}

\tchain forward {
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.5.0.0/16 accept comment \"flanneld forward\"
\t\tip daddr 10.5.0.0/16 accept comment \"flanneld forward\"
\t}
}
";

    #[test]
    fn nft_batch_replaces_the_table_in_one_script() {
        let expected = format!("table ip flannel-ipv4 {{}}\ndelete table ip flannel-ipv4\n{NFT_TABLE_TEXT}");
        assert_eq!(nft_batch(&plan(true, true)), expected);
    }

    #[test]
    fn nft_batch_without_chains_only_deletes() {
        assert_eq!(
            nft_batch(&plan(false, false)),
            "table ip flannel-ipv4 {}\ndelete table ip flannel-ipv4\n"
        );
        let forward_only = nft_table(&plan(false, true)).unwrap();
        assert!(!forward_only.contains("postrtg"));
        assert!(forward_only.contains("chain forward {"));
    }

    #[test]
    fn nft_listing_with_handles_matches_the_plan() {
        let listed = NFT_TABLE_TEXT
            .replace("table ip flannel-ipv4 {", "table ip flannel-ipv4 { # handle 5")
            .replace(
                "return comment \"flanneld masq\"",
                "return comment \"flanneld masq\" # handle 7",
            );
        let have = NftState::from_listing(&listed);
        assert_eq!(have, NftState::desired(&plan(true, true)));
        assert_eq!(have.chains["forward"].len(), 4);
        assert_eq!(
            have.table_lines,
            ["table ip flannel-ipv4 {", "comment \"rules for flannel-ipv4\"", "}"]
        );
        assert_ne!(have, NftState::desired(&plan(true, false)));
        assert_eq!(NftState::desired(&plan(false, false)), NftState::default());
    }
}
