use proptest::prelude::*;
use serde_json::json;

use super::*;

fn plan(masq: bool, forward: bool) -> FirewallPlan {
    FirewallPlan {
        network: "10.5.0.0/16".parse().unwrap(),
        pod: "10.5.72.0/24".parse().unwrap(),
        masq,
        forward,
    }
}

/// `nft -j list table ip flannel-ipv4` from nft 1.0.6, of a table flannel's text made.
const LISTED: &str = include_str!("flannel-ipv4.nft.json");

/// The same table as `nft list table ip flannel-ipv4` prints its rules.
const MASQ_TEXT: [&str; 6] = [
    "meta mark & 0x00004000 == 0x00004000 return comment \"flanneld masq\"",
    "ip saddr 10.5.72.0/24 ip daddr 10.5.0.0/16 return comment \"flanneld masq\"",
    "ip saddr 10.5.0.0/16 ip daddr 10.5.72.0/24 return comment \"flanneld masq\"",
    "ip saddr != 10.5.0.0/16 ip daddr 10.5.72.0/24 return comment \"flanneld masq\"",
    "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"flanneld masq\"",
    "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random comment \"flanneld masq\"",
];
const FORWARD_TEXT: [&str; 2] = [
    "ip saddr 10.5.0.0/16 accept comment \"flanneld forward\"",
    "ip daddr 10.5.0.0/16 accept comment \"flanneld forward\"",
];

fn rule(chain: &str, comment: &str, expr: Value) -> Value {
    json!({"add": {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": chain, "expr": expr, "comment": comment}}})
}

fn addr(field: &str, op: &str, addr: &str, len: u32) -> Value {
    json!({"match": {"left": {"payload": {"protocol": "ip", "field": field}},
                     "right": {"prefix": {"addr": addr, "len": len}}, "op": op}})
}

#[test]
fn the_batch_replaces_the_table_with_flannels_chains_and_rules_in_order() {
    let batch = serde_json::to_value(apply_batch(&plan(true, true))).unwrap();
    let table = json!({"family": "ip", "name": "flannel-ipv4"});
    let (net, pod) = ("10.5.0.0", "10.5.72.0");
    let masq = |expr| rule("postrtg", "flanneld masq", expr);
    let forward = |expr| rule("forward", "flanneld forward", expr);
    let fully_random = json!({"masquerade": {"flags": ["fully-random"]}});
    let expected = json!({"nftables": [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        {"add": {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "postrtg",
                           "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
        {"add": {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "forward",
                           "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}},
        masq(json!([{"match": {"left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 16384, "op": "=="}},
                    {"return": null}])),
        masq(json!([addr("saddr", "==", pod, 24), addr("daddr", "==", net, 16), {"return": null}])),
        masq(json!([addr("saddr", "==", net, 16), addr("daddr", "==", pod, 24), {"return": null}])),
        masq(json!([addr("saddr", "!=", net, 16), addr("daddr", "==", pod, 24), {"return": null}])),
        masq(json!([addr("saddr", "==", net, 16), addr("daddr", "!=", "224.0.0.0", 4), fully_random])),
        masq(json!([addr("saddr", "!=", net, 16), addr("daddr", "==", net, 16), fully_random])),
        forward(json!([addr("saddr", "==", net, 16), {"accept": null}])),
        forward(json!([addr("daddr", "==", net, 16), {"accept": null}])),
    ]});
    assert_eq!(batch, expected);
}

#[test]
fn nothing_wanted_only_deletes_the_table() {
    let batch = serde_json::to_value(apply_batch(&plan(false, false))).unwrap();
    let table = json!({"family": "ip", "name": "flannel-ipv4"});
    assert_eq!(
        batch,
        json!({"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]})
    );
    assert_eq!(
        serde_json::to_value(removal_batch(&NftTable::for_family(AddrFamily::Ipv4))).unwrap(),
        batch
    );
    assert_eq!(TableState::desired(&plan(false, false)), None);
    let forward_only = TableState::desired(&plan(false, true)).unwrap();
    assert_eq!(forward_only.chains.keys().collect::<Vec<_>>(), ["forward"]);
}

#[test]
fn nfts_listing_of_flannels_table_matches_the_plan() {
    let ruleset = parse_ruleset(LISTED).unwrap();
    let have = TableState::from_ruleset(&ruleset, &NftTable::for_family(AddrFamily::Ipv4));
    assert_eq!(have, TableState::desired(&plan(true, true)));
    assert_eq!(
        changes(TableState::desired(&plan(true, true)).as_ref(), have.as_ref()),
        Changes::default()
    );

    let table = ruleset.table(NfFamily::IP, "flannel-ipv4").unwrap();
    let text = |name: &str| -> Vec<String> {
        let chain = table.chains.iter().find(|c| c.name == name).unwrap();
        chain.rules.iter().map(render_rule).collect()
    };
    assert_eq!(text("postrtg"), MASQ_TEXT);
    assert_eq!(text("forward"), FORWARD_TEXT);
    let base = |name: &str| render_base(&table.chains.iter().find(|c| c.name == name).unwrap().base.unwrap());
    assert_eq!(
        base("postrtg"),
        "type nat hook postrouting priority 100; policy accept;"
    );
    assert_eq!(base("forward"), "type filter hook forward priority 0; policy accept;");
    assert_eq!(table.chains[0].rules[0].handle, Some(3));
}

#[test]
fn what_differs_is_reported_per_chain() {
    let want = TableState::desired(&plan(true, true));
    let mut flushed = want.clone().unwrap();
    flushed.chains.get_mut("forward").unwrap().rules.clear();
    assert_eq!(
        changes(want.as_ref(), Some(&flushed)),
        Changes {
            masq: false,
            forward: true
        }
    );
    let both = Changes {
        masq: true,
        forward: true,
    };
    assert_eq!(changes(want.as_ref(), None), both);
    // a chain someone added to weft's table: the table is rewritten, so both chains are
    let mut foreign = want.clone().unwrap();
    foreign.chains.insert(
        "extra".into(),
        ChainState {
            base: None,
            rules: Vec::new(),
        },
    );
    assert_eq!(changes(want.as_ref(), Some(&foreign)), both);
    let moved = FirewallPlan {
        pod: "10.5.9.0/24".parse().unwrap(),
        ..plan(true, true)
    };
    assert_eq!(
        changes(TableState::desired(&moved).as_ref(), want.as_ref()),
        Changes {
            masq: true,
            forward: false
        }
    );
    assert_eq!(
        changes(TableState::desired(&plan(false, true)).as_ref(), want.as_ref()),
        Changes {
            masq: true,
            forward: false
        }
    );
    assert_eq!(changes(None, None), Changes::default());
}

#[test]
fn statements_the_crate_cannot_type_are_kept_as_json() {
    let listing = json!({"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "fw", "handle": 1}},
        {"chain": {"family": "inet", "table": "fw", "name": "fwd", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 10, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "fw", "chain": "fwd", "handle": 2,
                  "expr": [{"no such statement": {"x": 1}}, {"accept": null}]}},
        {"rule": {"family": "inet", "table": "fw", "chain": "fwd", "handle": 3,
                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cni0"}},
                           {"counter": {"packets": 4, "bytes": 240}}, {"jump": {"target": "pods"}}]}},
        {"rule": {"family": "inet", "table": "nowhere", "chain": "fwd", "expr": []}},
    ]});
    let ruleset = parse_ruleset(&listing.to_string()).unwrap();
    let table = ruleset.table(NfFamily::INet, "fw").unwrap();
    assert_eq!(table.describe(), "inet fw");
    let chain = &table.chains[0];
    assert_eq!(chain.base.unwrap().policy, Some(NfChainPolicy::Drop));
    assert_eq!(chain.rules.len(), 2);
    assert!(matches!(&chain.rules[0].expr, RuleExpr::Unread(json) if json.contains("no such statement")));
    assert_eq!(
        render_rule(&chain.rules[1]),
        "iifname \"cni0\" counter packets 4 bytes 240 jump pods"
    );
}

#[test]
fn unreadable_listings_are_errors_and_a_missing_table_is_none() {
    assert!(matches!(parse_ruleset("table ip x {}"), Err(NftJsonError::Json(_))));
    assert!(matches!(parse_ruleset("{\"x\": []}"), Err(NftJsonError::Shape)));
    let empty = parse_ruleset("{\"nftables\": [{\"metainfo\": {}}]}").unwrap();
    assert_eq!(
        TableState::from_ruleset(&empty, &NftTable::for_family(AddrFamily::Ipv4)),
        None
    );
}

#[test]
fn an_ipv6_plan_gets_table_ip6_flannel_ipv6() {
    let v6 = FirewallPlan {
        network: "fc00::/48".parse().unwrap(),
        pod: "fc00:0:0:1::/64".parse().unwrap(),
        masq: true,
        forward: false,
    };
    let objects = desired_objects(&v6);
    let NfListObject::Table(table) = &objects[0] else {
        panic!("{objects:?}")
    };
    assert_eq!((table.family, table.name.as_ref()), (NfFamily::IP6, "flannel-ipv6"));
    assert_eq!(NftTable::for_family(AddrFamily::Ipv6).to_string(), "ip6 flannel-ipv6");
    let rules: Vec<String> = objects
        .iter()
        .filter_map(|o| match o {
            NfListObject::Rule(r) => Some(render_rule(&RuleView {
                handle: None,
                comment: r.comment.as_ref().map(|c| c.to_string()),
                expr: RuleExpr::Read(r.expr.to_vec()),
            })),
            _ => None,
        })
        .collect();
    assert_eq!(
        rules[4],
        "ip6 saddr fc00::/48 ip6 daddr != ff00::/8 masquerade fully-random comment \"flanneld masq\""
    );
    assert_eq!(rules.len(), 6);
}

#[test]
fn addresses_and_names_read_back() {
    let prefix = Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String("10.5.0.0".into())),
        len: 16,
    }));
    assert_eq!(addr_of(&prefix), Some("10.5.0.0/16".parse().unwrap()));
    assert_eq!(
        addr_of(&Expression::String("10.5.1.2".into())),
        Some("10.5.1.2/32".parse().unwrap())
    );
    assert_eq!(addr_of(&Expression::Number(3)), None);
    assert_eq!(name_of(&Expression::String("cni0".into())), Some("cni0"));
}

/// The listing nft would print for a plan: handles on everything, a single NAT flag as a string.
fn as_nft_prints(plan: &FirewallPlan) -> String {
    let objects: Vec<Value> = desired_objects(plan)
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let mut v = serde_json::to_value(NfObject::ListObject(o)).unwrap();
            let inner = v.as_object_mut().unwrap().values_mut().next().unwrap();
            inner["handle"] = json!(i + 1);
            if let Some(expr) = inner.get_mut("expr").and_then(Value::as_array_mut) {
                for s in expr {
                    if let Some(flags) = s.get_mut("masquerade").and_then(|m| m.get_mut("flags")) {
                        *flags = flags[0].take();
                    }
                }
            }
            v
        })
        .collect();
    json!({"nftables": objects}).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_input_never_panics(text in any::<String>(), expr in "[\\[\\]{}\":, a-z0-9-]{0,80}") {
        let _ = parse_ruleset(&text);
        let _ = parse_ruleset(&format!("{{\"nftables\": [{{\"table\": {{\"family\": \"ip\", \"name\": \"t\"}}}}, \
             {{\"chain\": {{\"family\": \"ip\", \"table\": \"t\", \"name\": \"c\"}}}}, \
             {{\"rule\": {{\"family\": \"ip\", \"table\": \"t\", \"chain\": \"c\", \"expr\": {expr}}}}}]}}"))
            .map(|r| r.tables.iter().flat_map(|t| &t.chains).flat_map(|c| &c.rules).map(render_rule).count());
    }

    /// Whatever the network and subnet, the table nft prints back for a plan reads as that plan.
    #[test]
    fn every_plan_reads_back_as_itself(
        net in any::<u32>(), net_len in 8u8..=28, sub in any::<u32>(), extra in 2u8..=4,
        masq in any::<bool>(), forward in any::<bool>()
    ) {
        let network = ipnet::Ipv4Net::new(net.into(), net_len).unwrap().trunc();
        let pod = ipnet::Ipv4Net::new(sub.into(), net_len + extra).unwrap();
        let plan = FirewallPlan { network: network.into(), pod: pod.into(), masq, forward };
        let listed = parse_ruleset(&as_nft_prints(&plan)).unwrap();
        let have = TableState::from_ruleset(&listed, &NftTable::for_family(AddrFamily::Ipv4));
        prop_assert_eq!(&have, &TableState::desired(&plan));
        prop_assert_eq!(changes(TableState::desired(&plan).as_ref(), have.as_ref()), Changes::default());
    }
}
