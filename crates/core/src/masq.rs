//! Masquerade and forward rule sets, pure: what flanneld's `--ip-masq` and
//! `--iptables-forward-rules` put in the kernel, as data, and their iptables form.
//!
//! [`FirewallPlan`] says what a node wants; [`FlannelRule`]s are flannel's rules in flannel's order
//! (the one list both rule formats are rendered from, so iptables and nftables mode cannot drift
//! apart). The iptables form lives here: the chains `FLANNEL-POSTRTG` (nat, hooked from
//! POSTROUTING) and `FLANNEL-FWD` (filter, hooked from FORWARD), rendered exactly as
//! `iptables-save` prints them so the kernel adapter compares what it reads back with a plain
//! `==`, and the `iptables-restore --noflush` input that repairs a difference. The nftables form
//! (table `ip flannel-ipv4`, chains `postrtg` and `forward`) is built from the same rules by
//! `weft_kernel::firewall`'s nftables driver. It runs no command.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::iptables_save::{self, SaveTable};

/// The mark kube-proxy sets on packets it masquerades itself; flannel leaves them alone.
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// The address family of a plan: it picks the iptables binaries, the nft table and the
/// multicast range that is never masqueraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrFamily {
    Ipv4,
    Ipv6,
}

impl AddrFamily {
    pub fn of(net: &IpNet) -> AddrFamily {
        match net {
            IpNet::V4(_) => AddrFamily::Ipv4,
            IpNet::V6(_) => AddrFamily::Ipv6,
        }
    }

    /// 224.0.0.0/4 or ff00::/8.
    pub fn multicast(self) -> IpNet {
        match self {
            AddrFamily::Ipv4 => IpNet::V4(Ipv4Net::new([224, 0, 0, 0].into(), 4).expect("valid prefix")),
            AddrFamily::Ipv6 => IpNet::V6(Ipv6Net::new([0xff00, 0, 0, 0, 0, 0, 0, 0].into(), 8).expect("valid prefix")),
        }
    }
}

/// What the firewall should hold on this node, for one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FirewallPlan {
    /// The cluster network (`FLANNEL_NETWORK`).
    pub network: IpNet,
    /// This node's lease subnet (host bits are ignored: 10.5.72.1/24 means 10.5.72.0/24), of
    /// the network's family.
    pub pod: IpNet,
    /// `--ip-masq`: install the masquerade rules.
    pub masq: bool,
    /// `--iptables-forward-rules`: install the forward rules.
    pub forward: bool,
}

impl FirewallPlan {
    /// The family of the cluster network.
    pub fn family(&self) -> AddrFamily {
        AddrFamily::of(&self.network)
    }

    /// The masquerade rules, when the plan wants them.
    pub fn masq_rule_set(&self) -> Option<Vec<FlannelRule>> {
        self.masq.then(|| masq_rule_set(self.network, self.pod))
    }

    /// The forward rules, when the plan wants them.
    pub fn forward_rule_set(&self) -> Option<Vec<FlannelRule>> {
        self.forward.then(|| forward_rule_set(self.network))
    }
}

/// Which of weft's two chains a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleChain {
    /// Source NAT after routing (`FLANNEL-POSTRTG`, nft `postrtg`).
    Masq,
    /// The FORWARD hook (`FLANNEL-FWD`, nft `forward`).
    Forward,
}

impl RuleChain {
    /// The comment on every rule of the chain, as flanneld writes it.
    pub fn comment(self) -> &'static str {
        match self {
            RuleChain::Masq => "flanneld masq",
            RuleChain::Forward => "flanneld forward",
        }
    }
}

/// An address match: `-s NET` / `! -s NET`, `ip saddr NET` / `ip saddr != NET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrMatch {
    pub net: IpNet,
    pub negated: bool,
}

impl AddrMatch {
    pub fn is(net: IpNet) -> AddrMatch {
        AddrMatch {
            net: net.trunc(),
            negated: false,
        }
    }

    pub fn is_not(net: IpNet) -> AddrMatch {
        AddrMatch {
            net: net.trunc(),
            negated: true,
        }
    }
}

/// What a rule does with a packet it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    Return,
    Accept,
    /// Masquerade with fully random source ports (`--random-fully`, `fully-random`).
    Masquerade,
}

/// One of flannel's rules, independent of the rule format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlannelRule {
    pub chain: RuleChain,
    /// Match packets whose mark has these bits set (`-m mark --mark M/M`).
    pub mark: Option<u32>,
    pub src: Option<AddrMatch>,
    pub dst: Option<AddrMatch>,
    pub action: RuleAction,
}

impl FlannelRule {
    fn new(chain: RuleChain, src: Option<AddrMatch>, dst: Option<AddrMatch>, action: RuleAction) -> FlannelRule {
        FlannelRule {
            chain,
            mark: None,
            src,
            dst,
            action,
        }
    }

    /// The rule as `iptables-save` prints it.
    pub fn iptables_line(&self) -> String {
        let chain = match self.chain {
            RuleChain::Masq => &MASQ_CHAIN,
            RuleChain::Forward => &FORWARD_CHAIN,
        };
        let mut matches = Vec::new();
        for (flag, m) in [("-s", self.src), ("-d", self.dst)] {
            if let Some(m) = m {
                let not = if m.negated { "! " } else { "" };
                matches.push(format!("{not}{flag} {}", m.net));
            }
        }
        if let Some(mark) = self.mark {
            matches.insert(0, format!("-m mark --mark {mark:#x}/{mark:#x}"));
        }
        let target = match self.action {
            RuleAction::Return => "RETURN",
            RuleAction::Accept => "ACCEPT",
            RuleAction::Masquerade => "MASQUERADE --random-fully",
        };
        chain.rule(&matches.join(" "), target)
    }
}

/// flannel's masquerade rules, in flannel's order.
pub fn masq_rule_set(network: IpNet, pod: IpNet) -> Vec<FlannelRule> {
    let (net, pod) = (network.trunc(), pod.trunc());
    let multicast = AddrFamily::of(&net).multicast();
    let rule = |src, dst, action| FlannelRule::new(RuleChain::Masq, src, dst, action);
    use RuleAction::{Masquerade, Return};
    vec![
        // traffic kube-proxy already masquerades
        FlannelRule {
            mark: Some(KUBE_PROXY_MARK),
            ..rule(None, None, Return)
        },
        // within the overlay: no NAT
        rule(Some(AddrMatch::is(pod)), Some(AddrMatch::is(net)), Return),
        rule(Some(AddrMatch::is(net)), Some(AddrMatch::is(pod)), Return),
        // outside traffic to our pods keeps its source
        rule(Some(AddrMatch::is_not(net)), Some(AddrMatch::is(pod)), Return),
        rule(Some(AddrMatch::is(net)), Some(AddrMatch::is_not(multicast)), Masquerade),
        // the host talking to the overlay
        rule(Some(AddrMatch::is_not(net)), Some(AddrMatch::is(net)), Masquerade),
    ]
}

/// flannel's forward rules, in flannel's order.
pub fn forward_rule_set(network: IpNet) -> Vec<FlannelRule> {
    let net = network.trunc();
    vec![
        FlannelRule::new(RuleChain::Forward, Some(AddrMatch::is(net)), None, RuleAction::Accept),
        FlannelRule::new(RuleChain::Forward, None, Some(AddrMatch::is(net)), RuleAction::Accept),
    ]
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
pub fn masq_rules(network: IpNet, pod: IpNet) -> Vec<String> {
    masq_rule_set(network, pod)
        .iter()
        .map(FlannelRule::iptables_line)
        .collect()
}

/// The `FLANNEL-FWD` rules, as `iptables-save` prints them.
pub fn forward_rules(network: IpNet) -> Vec<String> {
    forward_rule_set(network)
        .iter()
        .map(FlannelRule::iptables_line)
        .collect()
}

fn iptables_lines(rules: Vec<FlannelRule>) -> Vec<String> {
    rules.iter().map(FlannelRule::iptables_line).collect()
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
        iptables_save::table(&iptables_save::parse(save), chain.table)
            .map(|table| ChainState::from_table(table, chain))
            .unwrap_or_default()
    }

    /// Picks the chain out of a parsed table.
    pub fn from_table(table: &SaveTable, chain: &IptChain) -> ChainState {
        let jumps_to_chain =
            |args: &[String]| args.len() >= 2 && args[args.len() - 2] == "-j" && args[args.len() - 1] == chain.name;
        ChainState {
            declared: table.policy(chain.name).is_some(),
            rules: table.rules_of(chain.name).map(|r| r.line.clone()).collect(),
            jumps: table
                .rules_of(chain.hook)
                .filter(|r| jumps_to_chain(&r.args))
                .map(|r| r.line.clone())
                .collect(),
        }
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
            masq: ChainState::desired(&MASQ_CHAIN, plan.masq_rule_set().map(iptables_lines)),
            forward: ChainState::desired(&FORWARD_CHAIN, plan.forward_rule_set().map(iptables_lines)),
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
    fn the_rule_set_is_flannels_in_order() {
        let p = plan(true, true);
        let rules = p.masq_rule_set().unwrap();
        let net = AddrMatch::is(p.network);
        let pod = AddrMatch::is(p.pod);
        let shape: Vec<_> = rules.iter().map(|r| (r.mark, r.src, r.dst, r.action)).collect();
        assert_eq!(
            shape,
            [
                (Some(0x4000), None, None, RuleAction::Return),
                (None, Some(pod), Some(net), RuleAction::Return),
                (None, Some(net), Some(pod), RuleAction::Return),
                (None, Some(AddrMatch::is_not(p.network)), Some(pod), RuleAction::Return),
                (
                    None,
                    Some(net),
                    Some(AddrMatch::is_not("224.0.0.0/4".parse().unwrap())),
                    RuleAction::Masquerade
                ),
                (
                    None,
                    Some(AddrMatch::is_not(p.network)),
                    Some(net),
                    RuleAction::Masquerade
                ),
            ]
        );
        assert!(rules.iter().all(|r| r.chain == RuleChain::Masq));
        assert_eq!(p.forward_rule_set().unwrap().len(), 2);
        assert_eq!(plan(false, false).masq_rule_set(), None);
        assert_eq!(plan(false, false).forward_rule_set(), None);
    }

    #[test]
    fn ipv6_rules_skip_ipv6_multicast() {
        let rules = masq_rules("fc00:0:0:0::/48".parse().unwrap(), "fc00:0:0:1::1/64".parse().unwrap());
        assert_eq!(
            rules[4],
            "-A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully"
        );
        assert_eq!(
            rules[1],
            "-A FLANNEL-POSTRTG -s fc00:0:0:1::/64 -d fc00::/48 -m comment --comment \"flanneld masq\" -j RETURN"
        );
        let p = FirewallPlan {
            network: "fc00::/48".parse().unwrap(),
            pod: "fc00:0:0:1::/64".parse().unwrap(),
            masq: true,
            forward: true,
        };
        assert_eq!(p.family(), AddrFamily::Ipv6);
        assert_eq!(plan(true, true).family(), AddrFamily::Ipv4);
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
}
