//! Does the FORWARD hook let a packet through? Evaluates `iptables-save -t filter` output (read
//! by [`weft_core::iptables_save`]) and an `nft -j list ruleset` listing (read by
//! [`weft_kernel::firewall::nft_json`]) for one packet (source, destination, in and out
//! interface). Pure.
//!
//! Only matches it understands are evaluated (`-s`, `-d`, `-i`, `-o`, comments; in nft `ip
//! saddr`, `ip daddr`, their `ip6` twins, `iifname`, `oifname`, counters, comments); a rule with
//! any other match
//! (conntrack, marks, ...) cannot be decided for a new packet and is passed over, so a drop is
//! reported only when no rule we can read accepts the packet.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::iptables_save;
use weft_kernel::firewall::nft_json::{self, ChainView, RuleExpr, Ruleset};
use weft_kernel::firewall::nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload};
use weft_kernel::firewall::nftables::stmt::{Match, Operator, Statement};

use crate::family::Family;

/// The packet to follow through the FORWARD hook: IPv4 (read from `iptables-save`) or IPv6
/// (from `ip6tables-save`); nft tables of the other family do not see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub iif: String,
    pub oif: String,
}

/// What the hook does with the packet, and the rule or policy that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept { by: String },
    Drop { by: String },
}

fn addr_matches(spec: &str, ip: IpAddr) -> Option<bool> {
    if let Ok(net) = spec.parse::<IpNet>() {
        return Some(net.contains(&ip));
    }
    spec.parse::<IpAddr>().ok().map(|a| a == ip)
}

impl Packet {
    fn family(&self) -> Family {
        Family::of(self.dst)
    }
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
    let tables = iptables_save::parse(save);
    let filter = iptables_save::table(&tables, "filter")?;
    let mut chains: BTreeMap<String, Vec<IptRule>> = BTreeMap::new();
    for rule in &filter.rules {
        chains.entry(rule.chain.clone()).or_default().push(IptRule {
            line: rule.line.clone(),
            words: rule.args.clone(),
        });
    }
    let policy = filter.policy("FORWARD")?;
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

/// Reads `nft -j list ruleset` output; None when it is not nft JSON.
pub fn parse_nft(json: &str) -> Option<Ruleset> {
    nft_json::parse_ruleset(json).ok()
}

/// Evaluates the packet against every base chain at the forward hook of the `inet` tables and
/// the tables of the packet's family (`ip`, `ip6`); each must let it through. `skip_ip_filter`:
/// leave out `table ip filter` (`ip6 filter`), which iptables-nft manages and
/// [`iptables_forward`] already read. None when no base chain hooks forward.
pub fn nft_forward(ruleset: &Ruleset, pkt: &Packet, skip_ip_filter: bool) -> Option<Verdict> {
    use weft_kernel::firewall::nftables::types::{NfChainPolicy, NfFamily, NfHook};
    let family = pkt.family();
    let mut any = false;
    let mut accepted_by = Vec::new();
    for table in &ruleset.tables {
        if table.family != NfFamily::INet && table.family != family.nft_family() {
            continue;
        }
        let name = table.describe();
        if skip_ip_filter && table.family == family.nft_family() && table.name == "filter" {
            continue;
        }
        let chains: BTreeMap<&str, &ChainView> = table.chains.iter().map(|c| (c.name.as_str(), c)).collect();
        for chain in table
            .chains
            .iter()
            .filter(|c| c.base.is_some_and(|b| b.hook == NfHook::Forward))
        {
            any = true;
            let at = |rule: String| format!("{rule} (nft {name} chain {})", chain.name);
            match nft_chain(&chains, &chain.name, pkt, 0) {
                Some((true, rule)) => accepted_by.push(at(rule)),
                Some((false, rule)) => return Some(Verdict::Drop { by: at(rule) }),
                None if chain.base.is_some_and(|b| b.policy == Some(NfChainPolicy::Drop)) => {
                    return Some(Verdict::Drop {
                        by: at("policy drop".into()),
                    })
                }
                None => accepted_by.push(at("policy accept".into())),
            }
        }
    }
    any.then(|| Verdict::Accept {
        by: accepted_by.join("; "),
    })
}

fn nft_chain(chains: &BTreeMap<&str, &ChainView>, name: &str, pkt: &Packet, depth: u8) -> Option<(bool, String)> {
    if depth > 8 {
        return None;
    }
    for rule in chains.get(name).map(|c| c.rules.as_slice()).unwrap_or_default() {
        let RuleExpr::Read(statements) = &rule.expr else {
            continue;
        };
        match nft_rule(statements, pkt) {
            Some(RuleOutcome::Accept) => return Some((true, nft_json::render_rule(rule))),
            Some(RuleOutcome::Drop) => return Some((false, nft_json::render_rule(rule))),
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

fn nft_rule(statements: &[Statement], pkt: &Packet) -> Option<RuleOutcome> {
    for statement in statements {
        match statement {
            Statement::Match(m) => {
                if !nft_match(m, pkt)? {
                    return None;
                }
            }
            Statement::Counter(_) => {}
            Statement::Accept(_) => return Some(RuleOutcome::Accept),
            Statement::Drop(_) | Statement::Reject(_) => return Some(RuleOutcome::Drop),
            Statement::Return(_) => return Some(RuleOutcome::Return),
            Statement::Jump(j) | Statement::Goto(j) => return Some(RuleOutcome::Jump(j.target.to_string())),
            _ => return None,
        }
    }
    None
}

/// Whether the packet meets one match; None when the match is not one we read.
fn nft_match(m: &Match, pkt: &Packet) -> Option<bool> {
    let hit = match &m.left {
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(p)))
            if p.protocol == "ip" || p.protocol == "ip6" =>
        {
            let ip = match p.field.as_ref() {
                "saddr" => pkt.src,
                "daddr" => pkt.dst,
                _ => return None,
            };
            if p.protocol != pkt.family().nft_protocol() {
                // An `ip` match never applies to an IPv6 packet (nor `ip6` to IPv4), negated or not.
                return Some(false);
            }
            nft_json::addr_of(&m.right)?.contains(&ip)
        }
        Expression::Named(NamedExpression::Meta(Meta { key }))
            if matches!(key, MetaKey::Iifname | MetaKey::Oifname) =>
        {
            let name = if *key == MetaKey::Iifname { &pkt.iif } else { &pkt.oif };
            let spec = nft_json::name_of(&m.right)?;
            match spec.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => spec == name,
            }
        }
        _ => return None,
    };
    match m.op {
        Operator::EQ | Operator::IN => Some(hit),
        Operator::NEQ => Some(!hit),
        _ => None,
    }
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

    /// `nft -j list ruleset` (nft 1.0.6) of:
    /// table ip flannel-ipv4 { chain forward { type filter hook forward priority filter; policy accept;
    ///     ip saddr 10.5.0.0/16 accept; ip daddr 10.5.0.0/16 accept } }
    /// table inet host { chain fwd_in { type filter hook forward priority filter + 10; policy drop;
    ///     ct state established,related accept; iifname "cni0" counter packets 0 bytes 0 jump pods }
    ///   chain pods { ip daddr != 10.5.0.0/16 drop; ip saddr 10.5.0.0/16 accept comment "pods" } }
    const NFT: &str = r#"{"nftables":[
{"metainfo":{"version":"1.0.6","release_name":"Lester Gooch #5","json_schema_version":1}},
{"table":{"family":"ip","name":"flannel-ipv4","handle":5}},
{"chain":{"family":"ip","table":"flannel-ipv4","name":"forward","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
{"rule":{"family":"ip","table":"flannel-ipv4","chain":"forward","handle":2,"expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.5.0.0","len":16}}}},{"accept":null}]}},
{"rule":{"family":"ip","table":"flannel-ipv4","chain":"forward","handle":3,"expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"10.5.0.0","len":16}}}},{"accept":null}]}},
{"table":{"family":"inet","name":"host","handle":6}},
{"chain":{"family":"inet","table":"host","name":"fwd_in","handle":1,"type":"filter","hook":"forward","prio":10,"policy":"drop"}},
{"chain":{"family":"inet","table":"host","name":"pods","handle":2}},
{"rule":{"family":"inet","table":"host","chain":"fwd_in","handle":3,"expr":[{"match":{"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]}},{"accept":null}]}},
{"rule":{"family":"inet","table":"host","chain":"fwd_in","handle":4,"expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"cni0"}},{"counter":{"packets":0,"bytes":0}},{"jump":{"target":"pods"}}]}},
{"rule":{"family":"inet","table":"host","chain":"pods","handle":5,"expr":[{"match":{"op":"!=","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"10.5.0.0","len":16}}}},{"drop":null}]}},
{"rule":{"family":"inet","table":"host","chain":"pods","handle":6,"comment":"pods","expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.5.0.0","len":16}}}},{"accept":null}]}}
]}"#;

    fn nft() -> Ruleset {
        parse_nft(NFT).expect("nft JSON")
    }

    #[test]
    fn nft_every_forward_base_chain_must_accept() {
        assert_eq!(
            nft_forward(&nft(), &pkt(), false),
            Some(Verdict::Accept {
                by: "ip saddr 10.5.0.0/16 accept (nft ip flannel-ipv4 chain forward); \
                     ip saddr 10.5.0.0/16 accept comment \"pods\" (nft inet host chain fwd_in)"
                    .into()
            })
        );
        let from_flannel = Packet {
            iif: "flannel.1".into(),
            oif: "cni0".into(),
            ..pkt()
        };
        assert_eq!(
            nft_forward(&nft(), &from_flannel, false),
            Some(Verdict::Drop {
                by: "policy drop (nft inet host chain fwd_in)".into()
            })
        );
        let to_outside = Packet {
            dst: "192.0.2.9".parse().unwrap(),
            ..pkt()
        };
        assert_eq!(
            nft_forward(&nft(), &to_outside, false),
            Some(Verdict::Drop {
                by: "ip daddr != 10.5.0.0/16 drop (nft inet host chain fwd_in)".into()
            })
        );
        let nat_only = r#"{"nftables":[{"table":{"family":"ip","name":"nat","handle":1}}]}"#;
        assert_eq!(nft_forward(&parse_nft(nat_only).unwrap(), &pkt(), false), None);
        assert_eq!(parse_nft("table ip nat {\n}\n"), None, "text is not nft JSON");
    }

    #[test]
    fn nft_ip_filter_is_skipped_when_iptables_read_it() {
        let listing = parse_nft(
            r#"{"nftables":[{"table":{"family":"ip","name":"filter","handle":1}},
               {"chain":{"family":"ip","table":"filter","name":"FORWARD","handle":1,"type":"filter",
                         "hook":"forward","prio":0,"policy":"drop"}}]}"#,
        )
        .unwrap();
        assert!(matches!(
            nft_forward(&listing, &pkt(), false),
            Some(Verdict::Drop { .. })
        ));
        assert_eq!(nft_forward(&listing, &pkt(), true), None);
    }

    #[test]
    fn nft_interface_wildcards_and_unread_rules() {
        let listing = parse_nft(
            r#"{"nftables":[{"table":{"family":"inet","name":"t","handle":1}},
               {"chain":{"family":"inet","table":"t","name":"f","handle":1,"type":"filter",
                         "hook":"forward","prio":0,"policy":"drop"}},
               {"rule":{"family":"inet","table":"t","chain":"f","handle":2,
                        "expr":[{"no such statement":{}},{"accept":null}]}},
               {"rule":{"family":"inet","table":"t","chain":"f","handle":3,
                        "expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"flannel*"}},
                                {"accept":null}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            nft_forward(&listing, &pkt(), false),
            Some(Verdict::Accept {
                by: "oifname \"flannel*\" accept (nft inet t chain f)".into()
            })
        );
        let elsewhere = Packet {
            oif: "eth0".into(),
            ..pkt()
        };
        assert!(matches!(
            nft_forward(&listing, &elsewhere, false),
            Some(Verdict::Drop { .. })
        ));
    }

    fn pkt6() -> Packet {
        Packet {
            src: "fc00:0:0:1::2".parse().unwrap(),
            dst: "fc00:0:0:2::3".parse().unwrap(),
            iif: "cni0".into(),
            oif: "flannel-v6.1".into(),
        }
    }

    #[test]
    fn ipv6_packets_meet_ip6tables_rules_and_only_inet_and_ip6_tables() {
        let save = "*filter\n:FORWARD DROP [0:0]\n:FLANNEL-FWD - [0:0]\n\
            -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
            -A FLANNEL-FWD -s fc00::/48 -m comment --comment \"flanneld forward\" -j ACCEPT\nCOMMIT\n";
        assert!(matches!(iptables_forward(save, &pkt6()), Some(Verdict::Accept { .. })));
        assert!(matches!(iptables_forward(save, &pkt()), Some(Verdict::Drop { .. })));
        // The IPv4 table flannel-ipv4 does not see the packet; inet host's pods chain has only `ip`
        // matches, which never apply to IPv6 (not even `ip daddr != ...`): its policy drops it.
        assert_eq!(
            nft_forward(&nft(), &pkt6(), false),
            Some(Verdict::Drop {
                by: "policy drop (nft inet host chain fwd_in)".into()
            })
        );
        // weftd's IPv6 table (`table ip6 flannel-ipv6`) accepts it; an ip6 table is not asked
        // about IPv4 packets.
        let listing = parse_nft(
            r#"{"nftables":[{"table":{"family":"ip6","name":"flannel-ipv6","handle":1}},
               {"chain":{"family":"ip6","table":"flannel-ipv6","name":"forward","handle":1,"type":"filter",
                         "hook":"forward","prio":0,"policy":"drop"}},
               {"rule":{"family":"ip6","table":"flannel-ipv6","chain":"forward","handle":2,
                        "expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip6","field":"saddr"}},
                                          "right":{"prefix":{"addr":"fc00::","len":48}}}},{"accept":null}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            nft_forward(&listing, &pkt6(), false),
            Some(Verdict::Accept {
                by: "ip6 saddr fc00::/48 accept (nft ip6 flannel-ipv6 chain forward)".into()
            })
        );
        assert_eq!(nft_forward(&listing, &pkt(), false), None);
    }
}
