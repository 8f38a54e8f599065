//! Property tests of every core parser that takes input from outside (etcd records, the network
//! config, subnet.env): arbitrary input never panics, and whatever is accepted re-encodes to the
//! same meaning. Fixed case counts keep CI bounded.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use weft_core::{admit, LeaseAttrs, LeaseRecord, NetworkConfig, SubnetEnv, SubnetKey};

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig::with_cases(n)
}

/// Text that looks like a lease key often enough to reach the deep branches.
fn key_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9./x-]{0,24}(&[0-9a-f:./-]{0,30})?",
        (any::<u32>(), 0u8..=40).prop_map(|(a, l)| format!("{}-{l}", Ipv4Addr::from(a))),
    ]
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

/// Lease values: arbitrary bytes, arbitrary JSON, and JSON with the lease's keys and odd values.
fn value_like() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
        ipv4().prop_map(|a| serde_json::Value::from(a.to_string())),
        "[0-9a-fA-F:]{0,20}".prop_map(serde_json::Value::from),
    ];
    let lease = (field.clone(), field.clone(), field.clone(), field).prop_map(|(ip, v6, kind, mac)| {
        serde_json::json!({"PublicIP": ip, "PublicIPv6": v6, "BackendType": kind,
                           "BackendData": {"VNI": 1, "VtepMAC": mac}})
        .to_string()
        .into_bytes()
    });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..200), lease]
}

/// One line of a subnet.env: the keys with good and bad values, comments, blanks and junk.
fn env_line() -> impl Strategy<Value = String> {
    let cidr = (any::<u32>(), 0u8..=34).prop_map(|(a, l)| format!("{}/{l}", Ipv4Addr::from(a)));
    prop_oneof![
        cidr.clone().prop_map(|c| format!("FLANNEL_NETWORK={c}\n")),
        cidr.prop_map(|c| format!("FLANNEL_SUBNET=\"{c}\"\n")),
        any::<u32>().prop_map(|m| format!("FLANNEL_MTU={m}\n")),
        "-?[0-9]{0,12}".prop_map(|m| format!("FLANNEL_MTU={m}\n")),
        any::<bool>().prop_map(|b| format!("FLANNEL_IPMASQ={b}\n")),
        "[0-9a-f:]{0,12}/[0-9]{1,3}".prop_map(|n| format!("FLANNEL_IPV6_NETWORK={n}\n")),
        Just("# comment\n\n".to_string()),
        "[A-Z_=]{0,12}\n",
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn lease_keys_never_panic_and_accepted_ones_round_trip(key in key_like()) {
        if let Ok(k) = SubnetKey::parse(&key) {
            prop_assert_eq!(SubnetKey::parse(&k.to_key()), Ok(k));
            prop_assert!(k.ipv4.is_some() || k.ipv6.is_some());
            if let Some(v4) = k.ipv4 {
                prop_assert_eq!(v4.network(), v4.addr());
            }
        }
    }

    #[test]
    fn every_aligned_subnet_round_trips(addr in any::<u32>(), len in 1u8..=32) {
        let net = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
        let key = SubnetKey::v4(net);
        prop_assert_eq!(SubnetKey::parse(&key.to_key()), Ok(key));
    }

    #[test]
    fn lease_values_never_panic_and_accepted_ones_round_trip(value in value_like()) {
        if let Ok(attrs) = LeaseAttrs::from_json("k", &value) {
            let again = LeaseAttrs::from_json("k", attrs.to_json().as_bytes());
            prop_assert_eq!(again, Ok(attrs));
        }
    }

    #[test]
    fn subnet_env_never_panics_and_accepted_files_round_trip(text in prop_oneof![
        any::<String>(),
        proptest::collection::vec(env_line(), 0..9).prop_map(|lines| lines.concat()),
    ]) {
        if let Ok(env) = SubnetEnv::parse(&text) {
            prop_assert_eq!(SubnetEnv::parse(&env.render()), Ok(env));
        }
    }

    #[test]
    fn rendered_subnet_env_parses_back(net in any::<u32>(), nlen in 8u8..=28, sub in any::<u32>(), mtu in any::<u32>(), masq in any::<bool>()) {
        let env = SubnetEnv {
            network: Some(Ipv4Net::new(Ipv4Addr::from(net), nlen).unwrap().trunc()),
            subnet: Some(Ipv4Net::new(Ipv4Addr::from(sub), nlen + 2).unwrap()),
            mtu,
            ipmasq: masq,
            ipv6_network: None,
            ipv6_subnet: None,
        };
        prop_assert_eq!(SubnetEnv::parse(&env.render()), Ok(env));
    }
}

/// Network configs: arbitrary text, and objects built from the config's keys with odd values.
fn config_like() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        (0u64..70).prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| serde_json::Value::from(format!("{}/{l}", Ipv4Addr::from(a)))),
        ipv4().prop_map(|a| serde_json::Value::from(a.to_string())),
        "[a-zA-Z0-9:./-]{0,12}".prop_map(serde_json::Value::from),
    ];
    let keys = prop::sample::subsequence(
        vec![
            "Network",
            "SubnetLen",
            "SubnetMin",
            "SubnetMax",
            "EnableIPv4",
            "EnableIPv6",
            "IPv6Network",
            "IPv6SubnetLen",
            "EnableNFTables",
        ],
        0..=9,
    );
    let backend = (
        prop::sample::select(vec!["vxlan", "host-gw", "udp", "VXLAN", "wireguard", "x"]),
        value.clone(),
        value.clone(),
    )
        .prop_map(|(t, vni, port)| serde_json::json!({"Type": t, "VNI": vni, "Port": port}));
    let object = (keys, proptest::collection::vec(value, 9), backend).prop_map(|(keys, values, backend)| {
        let mut obj = serde_json::Map::new();
        for (k, v) in keys.into_iter().zip(values) {
            obj.insert(k.to_string(), v);
        }
        obj.insert("Backend".into(), backend);
        serde_json::Value::Object(obj).to_string()
    });
    let v6 = prop::option::of((any::<u128>(), 0u8..=128, prop::option::of(0u8..=128)));
    let plausible = (any::<u32>(), 8u8..=28, prop::option::of(0u8..=32), v6).prop_map(|(a, l, s, v6)| {
        let mut obj =
            serde_json::json!({"Network": format!("{}/{l}", Ipv4Addr::from(a)), "Backend": {"Type": "vxlan"}});
        if let Some(s) = s {
            obj["SubnetLen"] = s.into();
        }
        if let Some((a6, l6, s6)) = v6 {
            obj["EnableIPv6"] = true.into();
            obj["IPv6Network"] = format!("{}/{l6}", std::net::Ipv6Addr::from(a6)).into();
            if let Some(s6) = s6 {
                obj["IPv6SubnetLen"] = s6.into();
            }
        }
        obj.to_string()
    });
    prop_oneof![any::<String>(), object, plausible]
}

proptest! {
    #![proptest_config(cases(2000))]

    /// An accepted config is within flannel's limits, and writing its meaning back out as JSON gives
    /// the same config.
    #[test]
    fn network_configs_never_panic_and_accepted_ones_mean_the_same_again(json in config_like()) {
        if let Ok(cfg) = NetworkConfig::parse(&json) {
            prop_assert!(cfg.ipv4.is_some() || cfg.ipv6.is_some());
            let mut again = serde_json::json!({
                "EnableIPv4": cfg.ipv4.is_some(),
                "EnableIPv6": cfg.ipv6.is_some(),
                "EnableNFTables": cfg.enable_nftables,
                "Backend": cfg.backend_raw.clone(),
            });
            if let Some(v4) = cfg.ipv4 {
                prop_assert!(v4.subnet_len <= 30 && v4.subnet_len >= v4.network.prefix_len() + 2);
                prop_assert!(v4.network.contains(&v4.subnet_min) && v4.network.contains(&v4.subnet_max));
                prop_assert!(u32::from(v4.subnet_min) <= u32::from(v4.subnet_max));
                prop_assert!(v4.subnet_count() >= 1);
                again["Network"] = v4.network.to_string().into();
                again["SubnetLen"] = v4.subnet_len.into();
                again["SubnetMin"] = v4.subnet_min.to_string().into();
                again["SubnetMax"] = v4.subnet_max.to_string().into();
            }
            if let Some(v6) = cfg.ipv6 {
                prop_assert!(v6.subnet_len <= 126 && v6.subnet_len >= v6.network.prefix_len() + 2);
                prop_assert!(v6.network.contains(&v6.subnet_min) && v6.network.contains(&v6.subnet_max));
                prop_assert!(u128::from(v6.subnet_min) <= u128::from(v6.subnet_max));
                prop_assert!(v6.subnet_count() >= 1);
                again["IPv6Network"] = v6.network.to_string().into();
                again["IPv6SubnetLen"] = v6.subnet_len.into();
                again["IPv6SubnetMin"] = v6.subnet_min.to_string().into();
                again["IPv6SubnetMax"] = v6.subnet_max.to_string().into();
            }
            let reparsed = NetworkConfig::parse(&again.to_string());
            prop_assert_eq!(reparsed, Ok(cfg));
        }
    }
}

fn record() -> impl Strategy<Value = LeaseRecord> {
    let name = prop_oneof![
        key_like(),
        (0u8..8).prop_map(|n| format!("10.42.{n}.0-24")),
        (0u8..8).prop_map(|n| format!("x/10.42.{n}.0-24")),
        (0u8..8, 23u8..=26).prop_map(|(n, l)| format!("10.42.{n}.0-{l}")),
    ];
    let value = prop_oneof![
        value_like(),
        (0u8..6, 0u8..6).prop_map(|(ip, mac)| {
            format!(
                r#"{{"PublicIP":"198.51.100.{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:0{mac}"}}}}"#
            )
            .into_bytes()
        }),
    ];
    (name, value, 0i64..20).prop_map(|(n, v, c)| LeaseRecord::parse(&n, &v, c))
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Whatever records etcd holds: admission never panics, every record is either a lease or
    /// refused, no two admitted leases share a subnet, PublicIP or VtepMAC, and every node reaches
    /// the same decision whatever order it read the records in.
    #[test]
    fn admission_is_total_exclusive_and_order_free(records in proptest::collection::vec(record(), 0..12), seed in any::<u64>()) {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        // One record per name, as in etcd.
        let mut by_name = std::collections::BTreeMap::new();
        for r in records {
            by_name.insert(r.name.clone(), r);
        }
        let records: Vec<_> = by_name.into_values().collect();
        let a = admit(&cfg, &records);
        prop_assert_eq!(a.leases.len() + a.refused.len(), records.len());
        let mut ips = std::collections::HashSet::new();
        let mut macs = std::collections::HashSet::new();
        for (subnet, attrs) in &a.leases {
            let v4 = subnet.ipv4.expect("an IPv4 network admits only leases with an IPv4 subnet");
            prop_assert!(cfg.network().unwrap().contains(&v4) && v4.prefix_len() == 24);
            prop_assert!(ips.insert(attrs.public_ip), "PublicIP {} admitted twice", attrs.public_ip);
            prop_assert!(macs.insert(attrs.backend_data["VtepMAC"].to_string()));
        }
        let mut shuffled = records.clone();
        let n = shuffled.len().max(1);
        shuffled.rotate_left((seed as usize) % n);
        shuffled.reverse();
        prop_assert_eq!(admit(&cfg, &shuffled), a);
    }
}

/// One change to the records: a put of a record, or the removal of a name.
fn step() -> impl Strategy<Value = Result<LeaseRecord, String>> {
    prop_oneof![
        3 => record().prop_map(Ok),
        1 => prop_oneof![
            (0u8..8).prop_map(|n| format!("10.42.{n}.0-24")),
            (0u8..8).prop_map(|n| format!("x/10.42.{n}.0-24")),
        ]
        .prop_map(Err),
    ]
}

proptest! {
    #![proptest_config(cases(500))]

    /// The incremental admitter, fed one change at a time, always agrees with a fresh admission
    /// of the records as they are then, and the decisions it reports turn the previous outcome
    /// into the new one.
    #[test]
    fn incremental_admission_matches_a_fresh_one(steps in proptest::collection::vec(step(), 1..40)) {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let mut admitter = weft_core::Admitter::new(&cfg);
        let mut records: std::collections::BTreeMap<String, LeaseRecord> = Default::default();
        let mut leases = std::collections::BTreeMap::new();
        let mut refused = std::collections::BTreeMap::new();
        for step in steps {
            let decisions = match step {
                Ok(r) => {
                    records.insert(r.name.clone(), r.clone());
                    admitter.put(std::sync::Arc::new(r))
                }
                Err(name) => {
                    records.remove(&name);
                    admitter.remove(&name)
                }
            };
            for (subnet, attrs) in decisions.leases {
                match attrs {
                    Some(a) => leases.insert(subnet, a),
                    None => leases.remove(&subnet),
                };
            }
            for (name, reason) in decisions.refusals {
                match reason {
                    Some(r) => refused.insert(name, r),
                    None => refused.remove(&name),
                };
            }
            let fresh = admit(&cfg, records.values());
            prop_assert_eq!(&admitter.admission(), &fresh);
            prop_assert_eq!(&leases, &fresh.leases);
            let fresh_refused: std::collections::BTreeMap<_, _> =
                fresh.refused.into_iter().map(|r| (r.name, r.reason)).collect();
            prop_assert_eq!(&refused, &fresh_refused);
        }
    }
}
