//! Does the FORWARD hook let a packet through? Evaluates `iptables-save -t filter` output and an
//! `nft list ruleset` listing for one packet (source, destination, in and out interface). Pure.
//!
//! Only matches it understands are evaluated (`-s`, `-d`, `-i`, `-o`, comments; in nft `ip
//! saddr`, `ip daddr`, `iifname`, `oifname`, counters, comments); a rule with any other match
//! (conntrack, marks, ...) cannot be decided for a new packet and is passed over, so a drop is
//! reported only when no rule we can read accepts the packet.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The packet to follow through the FORWARD hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub iif: String,
    pub oif: String,
}

/// What the hook does with the packet, and the rule or policy that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept { by: String },
    Drop { by: String },
}

/// Splits a rule into words, keeping quoted strings (`"flanneld forward"`) whole.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn addr_matches(spec: &str, ip: Ipv4Addr) -> Option<bool> {
    if let Ok(net) = spec.parse::<Ipv4Net>() {
        return Some(net.contains(&ip));
    }
    spec.parse::<Ipv4Addr>().ok().map(|a| a == ip)
}

/// iptables interface match: a trailing `+` is a prefix wildcard.
fn iface_matches(spec: &str, name: &str) -> bool {
    let spec = spec.trim_matches('"');
    match spec.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => spec == name,
    }
}

/// The result of one rule for the packet: None when the rule does not apply or cannot be read.
enum RuleOutcome {
    Accept,
    Drop,
    Return,
    Jump(String),
}

struct IptRule {
    line: String,
    words: Vec<String>,
}

/// Evaluates the packet against the FORWARD chain of `iptables-save -t filter` output. None when
/// the output holds no filter table (nothing to say).
pub fn iptables_forward(save: &str, pkt: &Packet) -> Option<Verdict> {
    let mut in_filter = false;
    let mut policies = BTreeMap::new();
    let mut chains: BTreeMap<String, Vec<IptRule>> = BTreeMap::new();
    for line in save.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            in_filter = table == "filter";
            continue;
        }
        if !in_filter {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            if let (Some(name), Some(policy)) = (parts.next(), parts.next()) {
                policies.insert(name.to_string(), policy.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let w = words(rest);
            if let Some((chain, args)) = w.split_first() {
                chains.entry(chain.clone()).or_default().push(IptRule {
                    line: line.to_string(),
                    words: args.to_vec(),
                });
            }
        }
    }
    let policy = policies.get("FORWARD")?;
    match ipt_chain(&chains, "FORWARD", pkt, 0) {
        Some((true, by)) => Some(Verdict::Accept { by }),
        Some((false, by)) => Some(Verdict::Drop { by }),
        None if policy == "DROP" => Some(Verdict::Drop {
            by: ":FORWARD DROP (iptables policy)".into(),
        }),
        None => Some(Verdict::Accept {
            by: format!(":FORWARD {policy} (iptables policy)"),
        }),
    }
}

/// Some((accepted, rule)) when a rule of `chain` (or one it jumps to) decides; None to fall through.
fn ipt_chain(chains: &BTreeMap<String, Vec<IptRule>>, chain: &str, pkt: &Packet, depth: u8) -> Option<(bool, String)> {
    if depth > 8 {
        return None;
    }
    for rule in chains.get(chain).map(Vec::as_slice).unwrap_or_default() {
        match ipt_rule(&rule.words, pkt) {
            Some(RuleOutcome::Accept) => return Some((true, rule.line.clone())),
            Some(RuleOutcome::Drop) => return Some((false, rule.line.clone())),
            Some(RuleOutcome::Return) => return None,
            Some(RuleOutcome::Jump(target)) => {
                if let Some(decided) = ipt_chain(chains, &target, pkt, depth + 1) {
                    return Some(decided);
                }
            }
            None => {}
        }
    }
    None
}

fn ipt_rule(words: &[String], pkt: &Packet) -> Option<RuleOutcome> {
    let mut i = 0;
    let mut negate = false;
    let mut target = None;
    while i < words.len() {
        let w = words[i].as_str();
        let arg = words.get(i + 1).map(String::as_str);
        let matched = match w {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-s" => addr_matches(arg?, pkt.src)?,
            "-d" => addr_matches(arg?, pkt.dst)?,
            "-i" => iface_matches(arg?, &pkt.iif),
            "-o" => iface_matches(arg?, &pkt.oif),
            "-m" if arg == Some("comment") => {
                // -m comment --comment "..."
                i += 4;
                continue;
            }
            "-j" | "-g" => {
                target = arg.map(str::to_string);
                i += 2;
                continue;
            }
            _ => return None,
        };
        if matched == negate {
            return None;
        }
        negate = false;
        i += 2;
    }
    match target?.as_str() {
        "ACCEPT" => Some(RuleOutcome::Accept),
        "DROP" | "REJECT" => Some(RuleOutcome::Drop),
        "RETURN" => Some(RuleOutcome::Return),
        t if t
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && !matches!(t, "LOG" | "MARK" | "CONNMARK" | "NFLOG" | "TRACE" | "CT" | "NOTRACK") =>
        {
            Some(RuleOutcome::Jump(t.to_string()))
        }
        _ => None,
    }
}

struct NftChain {
    /// `hook forward` base chain.
    forward_hook: bool,
    policy_drop: bool,
    rules: Vec<(String, Vec<String>)>,
}

/// Evaluates the packet against every base chain at the forward hook in `nft list ruleset`
/// output (each must let it through). `skip_ip_filter`: leave out `table ip filter`, which
/// iptables-nft manages and [`iptables_forward`] already read. None when no base chain hooks
/// forward.
pub fn nft_forward(listing: &str, pkt: &Packet, skip_ip_filter: bool) -> Option<Verdict> {
    // table -> chain -> chain
    let mut tables: Vec<(String, BTreeMap<String, NftChain>)> = Vec::new();
    let mut chain: Option<String> = None;
    for raw in listing.lines() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("table ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            tables.push((name, BTreeMap::new()));
            chain = None;
        } else if let Some(rest) = line.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            if let Some((_, chains)) = tables.last_mut() {
                chains.insert(
                    name.clone(),
                    NftChain {
                        forward_hook: false,
                        policy_drop: false,
                        rules: Vec::new(),
                    },
                );
            }
            chain = Some(name);
        } else if line == "}" {
            continue;
        } else if let (Some(c), Some((_, chains))) = (&chain, tables.last_mut()) {
            let Some(ch) = chains.get_mut(c) else { continue };
            if line.starts_with("type ") {
                ch.forward_hook = line.contains("hook forward");
                ch.policy_drop = line.contains("policy drop");
            } else if !line.is_empty() {
                ch.rules.push((line.to_string(), words(line)));
            }
        }
    }
    let mut any = false;
    let mut accepted_by = Vec::new();
    for (table, chains) in &tables {
        if skip_ip_filter && table == "ip filter" {
            continue;
        }
        for (name, ch) in chains.iter().filter(|(_, c)| c.forward_hook) {
            any = true;
            match nft_chain(chains, name, pkt, 0) {
                Some((true, rule)) => accepted_by.push(format!("{rule} (nft {table} chain {name})")),
                Some((false, rule)) => {
                    return Some(Verdict::Drop {
                        by: format!("{rule} (nft {table} chain {name})"),
                    })
                }
                None if ch.policy_drop => {
                    return Some(Verdict::Drop {
                        by: format!("policy drop (nft {table} chain {name})"),
                    })
                }
                None => accepted_by.push(format!("policy accept (nft {table} chain {name})")),
            }
        }
    }
    any.then(|| Verdict::Accept {
        by: accepted_by.join("; "),
    })
}

fn nft_chain(chains: &BTreeMap<String, NftChain>, name: &str, pkt: &Packet, depth: u8) -> Option<(bool, String)> {
    if depth > 8 {
        return None;
    }
    for (line, words) in chains.get(name).map(|c| c.rules.as_slice()).unwrap_or_default() {
        match nft_rule(words, pkt) {
            Some(RuleOutcome::Accept) => return Some((true, line.clone())),
            Some(RuleOutcome::Drop) => return Some((false, line.clone())),
            Some(RuleOutcome::Return) => return None,
            Some(RuleOutcome::Jump(target)) => {
                if let Some(decided) = nft_chain(chains, &target, pkt, depth + 1) {
                    return Some(decided);
                }
            }
            None => {}
        }
    }
    None
}

fn nft_rule(words: &[String], pkt: &Packet) -> Option<RuleOutcome> {
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        match w {
            "ip" => {
                let field = words.get(i + 1)?.as_str();
                let (negate, value) = match words.get(i + 2)?.as_str() {
                    "!=" => (true, words.get(i + 3)?.as_str()),
                    v => (false, v),
                };
                let ip = match field {
                    "saddr" => pkt.src,
                    "daddr" => pkt.dst,
                    _ => return None,
                };
                if addr_matches(value, ip)? == negate {
                    return None;
                }
                i += if negate { 4 } else { 3 };
            }
            "iifname" | "oifname" => {
                let name = if w == "iifname" { &pkt.iif } else { &pkt.oif };
                let (negate, value) = match words.get(i + 1)?.as_str() {
                    "!=" => (true, words.get(i + 2)?.as_str()),
                    v => (false, v),
                };
                let spec = value.trim_matches('"');
                let hit = match spec.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => spec == name,
                };
                if hit == negate {
                    return None;
                }
                i += if negate { 3 } else { 2 };
            }
            "counter" => i += 1,
            "packets" | "bytes" | "comment" => i += 2,
            "accept" => return Some(RuleOutcome::Accept),
            "drop" | "reject" => return Some(RuleOutcome::Drop),
            "return" => return Some(RuleOutcome::Return),
            "jump" | "goto" => return Some(RuleOutcome::Jump(words.get(i + 1)?.clone())),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt() -> Packet {
        Packet {
            src: "10.5.1.2".parse().unwrap(),
            dst: "10.5.2.3".parse().unwrap(),
            iif: "cni0".into(),
            oif: "flannel.1".into(),
        }
    }

    const FLANNEL_FWD: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :FLANNEL-FWD - [0:0]\n\
        -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
        -A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
        -A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\nCOMMIT\n";

    #[test]
    fn drop_policy_without_rules_drops() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:180]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            iptables_forward(save, &pkt()),
            Some(Verdict::Drop {
                by: ":FORWARD DROP (iptables policy)".into()
            })
        );
    }

    #[test]
    fn flannel_forward_chain_accepts_under_drop_policy() {
        match iptables_forward(FLANNEL_FWD, &pkt()) {
            Some(Verdict::Accept { by }) => assert!(by.starts_with("-A FLANNEL-FWD -s 10.5.0.0/16"), "{by}"),
            other => panic!("{other:?}"),
        }
        let outside = Packet {
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
            ..pkt()
        };
        assert!(matches!(
            iptables_forward(FLANNEL_FWD, &outside),
            Some(Verdict::Drop { .. })
        ));
    }

    #[test]
    fn unreadable_and_other_interface_rules_do_not_accept() {
        let save = "*filter\n:FORWARD DROP [0:0]\n:DOCKER - [0:0]\n\
            -A FORWARD -o docker0 -j DOCKER\n\
            -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
            -A FORWARD -i docker0 ! -o docker0 -j ACCEPT\n\
            -A DOCKER -j ACCEPT\nCOMMIT\n";
        assert!(matches!(iptables_forward(save, &pkt()), Some(Verdict::Drop { .. })));
        let accept_all_cni = format!("{}-A FORWARD -i cni+ -j ACCEPT\n", save.trim_end_matches("COMMIT\n"));
        assert!(matches!(
            iptables_forward(&accept_all_cni, &pkt()),
            Some(Verdict::Accept { .. })
        ));
    }

    #[test]
    fn explicit_drop_rule_before_accept_wins_and_accept_policy_accepts() {
        let save = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -d 10.5.2.0/24 -j DROP\nCOMMIT\n";
        assert_eq!(
            iptables_forward(save, &pkt()),
            Some(Verdict::Drop {
                by: "-A FORWARD -d 10.5.2.0/24 -j DROP".into()
            })
        );
        let open = "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        assert!(matches!(iptables_forward(open, &pkt()), Some(Verdict::Accept { .. })));
        assert_eq!(iptables_forward("", &pkt()), None);
    }

    const NFT: &str = r#"table ip flannel-ipv4 {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr 10.5.0.0/16 accept
		ip daddr 10.5.0.0/16 accept
	}
}
table inet fw {
	chain fwd {
		type filter hook forward priority filter + 10; policy drop;
		ct state established,related accept
		iifname "cni0" counter packets 0 bytes 0 jump pods
	}
	chain pods {
		ip daddr != 10.5.0.0/16 drop
		ip saddr 10.5.0.0/16 comment "pods" accept
	}
}
"#;

    #[test]
    fn nft_every_forward_base_chain_must_accept() {
        match nft_forward(NFT, &pkt(), false) {
            Some(Verdict::Accept { by }) => assert!(by.contains("chain pods") || by.contains("comment"), "{by}"),
            other => panic!("{other:?}"),
        }
        let from_flannel = Packet {
            iif: "flannel.1".into(),
            oif: "cni0".into(),
            ..pkt()
        };
        assert_eq!(
            nft_forward(NFT, &from_flannel, false),
            Some(Verdict::Drop {
                by: "policy drop (nft inet fw chain fwd)".into()
            })
        );
        assert_eq!(nft_forward("table ip nat {\n}\n", &pkt(), false), None);
    }

    #[test]
    fn nft_ip_filter_is_skipped_when_iptables_read_it() {
        let listing = "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n";
        assert!(matches!(
            nft_forward(listing, &pkt(), false),
            Some(Verdict::Drop { .. })
        ));
        assert_eq!(nft_forward(listing, &pkt(), true), None);
    }
}
