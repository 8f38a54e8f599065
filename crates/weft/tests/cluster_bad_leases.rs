//! Bad lease records in etcd, as a buggy neighbour or an attacker writes them: each is refused
//! (logged once with its key and reason, counted in /metrics), every healthy pair stays
//! reachable, no node's kernel changes, and once the records are gone the state is exactly as
//! before.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use weft::lab::Lab;
use weft_core::BackendKind;

const SUBNETS: &str = "/coreos.com/network/subnets/";

/// What weft programs on a node: main-table routes, and the permanent neighbour and FDB entries of
/// flannel.1.
fn kernel_state(lab: &Lab, node: usize) -> String {
    let routes = host_out(lab, node, &["ip", "route", "show", "table", "main"]);
    let neigh = host_out(
        lab,
        node,
        &["ip", "neigh", "show", "dev", "flannel.1", "nud", "permanent"],
    );
    let fdb = host_out(lab, node, &["bridge", "fdb", "show", "dev", "flannel.1"]);
    let fdb: Vec<&str> = fdb.lines().filter(|l| l.contains("permanent")).collect();
    format!("routes:\n{routes}neighbours:\n{neigh}fdb:\n{}\n", fdb.join("\n"))
}

fn vxlan_value(public_ip: &str, vni: u32, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
    )
}

fn key_of(subnet: Ipv4Addr, len: u8) -> String {
    format!("{subnet}-{len}")
}

#[test]
fn bad_lease_records_never_touch_a_healthy_peer() {
    let mut spec = spec(&lab_name("cbl"), 3, BackendKind::Vxlan);
    spec.weftd_args.push("--healthz-port=8471".into());
    let lab = up(spec);
    assert!(all_pods_reach_each_other(&lab));
    let before: Vec<String> = (1..=3).map(|n| kernel_state(&lab, n)).collect();

    let own = lab.subnet_env(1).unwrap().subnet.unwrap().trunc().network();
    let peer = lab.subnet_env(2).unwrap().subnet.unwrap().trunc().network();
    let peer_ip = lab.underlay_ip(2).unwrap().to_string();
    let peer_mac = vtep_mac(&lab, 2);
    let supernet = Ipv4Addr::from(u32::from(peer) & !0x1ff);
    let fresh = |n: u8| Ipv4Addr::new(10, 5, n, 0);
    let stranger = |ip: &str, mac: &str| vxlan_value(ip, 1, mac);
    let stranger_mac = "02:42:00:00:00:99";
    let bad: Vec<(String, String, &str)> = vec![
        (
            format!("x/{}", key_of(peer, 24)),
            stranger("198.51.100.99", stranger_mac),
            "nested_key",
        ),
        (
            key_of(peer, 25),
            stranger("198.51.100.99", stranger_mac),
            "wrong_subnet_len",
        ),
        (
            key_of(own, 25),
            stranger("198.51.100.98", "02:42:00:00:00:98"),
            "wrong_subnet_len",
        ),
        (
            key_of(supernet, 23),
            stranger("198.51.100.97", "02:42:00:00:00:97"),
            "wrong_subnet_len",
        ),
        (
            "10.5.0.0-16".into(),
            stranger("198.51.100.96", "02:42:00:00:00:96"),
            "outside_network",
        ),
        (
            key_of(fresh(250), 24),
            stranger(&peer_ip, "02:42:00:00:00:95"),
            "conflict",
        ),
        (key_of(fresh(251), 24), stranger("198.51.100.94", &peer_mac), "conflict"),
        (
            key_of(fresh(252), 24),
            vxlan_value("198.51.100.93", 99, "02:42:00:00:00:93"),
            "bad_backend_data",
        ),
        (
            key_of(fresh(253), 24),
            stranger("127.0.0.1", "02:42:00:00:00:92"),
            "bad_public_ip",
        ),
        (
            key_of(fresh(254), 24),
            stranger("0.0.0.0", "02:42:00:00:00:91"),
            "bad_public_ip",
        ),
        (
            key_of(fresh(249), 24),
            stranger("224.0.0.1", "02:42:00:00:00:90"),
            "bad_public_ip",
        ),
        (
            key_of(fresh(248), 24),
            stranger("255.255.255.255", "02:42:00:00:00:8e"),
            "bad_public_ip",
        ),
        (
            key_of(fresh(247), 24),
            r#"{"PublicIP":"198.51.100.89","PublicIPv6":null,"BackendType":"host-gw"}"#.into(),
            "other_backend",
        ),
        (
            format!("{}&fc00:0:0:9::-64", key_of(peer, 24)),
            stranger("198.51.100.88", "02:42:00:00:00:88"),
            "conflict",
        ),
        (key_of(fresh(246), 24), "{\"PublicIP\":".into(), "malformed_value"),
    ];
    for (key, value, _) in &bad {
        lab.etcd_put(&format!("{SUBNETS}{key}"), value).unwrap();
    }

    // Every node refuses every record, once, naming the key and why.
    for node in 1..=3 {
        assert!(
            wait_until(Duration::from_secs(15), || {
                let log = weftd_log(&lab, node);
                bad.iter()
                    .all(|(key, _, _)| log.contains(&format!("lease {key} refused: ")))
            }),
            "node {node} names every refused record:\n{}",
            weftd_log(&lab, node)
        );
        let log = weftd_log(&lab, node);
        for (key, _, label) in &bad {
            let line = log
                .lines()
                .find(|l| l.contains(&format!("lease {key} refused: ")))
                .unwrap();
            assert!(
                line.contains("WARN") && line.contains(&format!("reason=\"{label}\"")),
                "{line}"
            );
            assert_eq!(
                log.matches(&format!("lease {key} refused: ")).count(),
                1,
                "{key} logged once"
            );
        }
    }
    let page = http_get(&lab, 1, "/metrics");
    let count = |label: &str| bad.iter().filter(|(_, _, l)| *l == label).count() as u64;
    for label in [
        "nested_key",
        "wrong_subnet_len",
        "conflict",
        "bad_public_ip",
        "other_backend",
    ] {
        assert_eq!(
            metric(&page, &format!("weft_leases_refused{{reason=\"{label}\"}}")),
            Some(count(label)),
            "{page}"
        );
    }
    assert_eq!(metric(&page, "weft_leases"), Some(3), "{page}");

    // A reconcile later (interval 2 s), no node's kernel has changed and every pair still talks.
    std::thread::sleep(Duration::from_secs(5));
    for node in 1..=3 {
        assert_eq!(
            kernel_state(&lab, node),
            before[node - 1],
            "node {node}'s kernel changed"
        );
    }
    assert!(all_pods_reach_each_other(&lab), "healthy pairs stay reachable");

    // Removing the records (the nested one first: it names a real peer's subnet) changes nothing.
    for (key, _, _) in &bad {
        assert!(lab.etcd_delete(&format!("{SUBNETS}{key}")).unwrap());
    }
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &http_get(&lab, 1, "/metrics"),
            "weft_leases_refused{reason=\"conflict\"}"
        ) == Some(0)),
        "the refusals are gone once the records are"
    );
    std::thread::sleep(Duration::from_secs(5));
    for node in 1..=3 {
        assert_eq!(
            kernel_state(&lab, node),
            before[node - 1],
            "node {node} after the records went"
        );
    }
    assert!(all_pods_reach_each_other(&lab));
}

/// Routes an older weft installed for bad leases (the whole network, a supernet) through
/// flannel.1 are removed by the next reconcile, and a restart does not bring them back.
#[test]
fn routes_for_the_whole_network_or_a_supernet_are_removed() {
    let mut lab = up(spec(&lab_name("cbr"), 2, BackendKind::Vxlan));
    assert!(all_pods_reach_each_other(&lab));
    let before = kernel_state(&lab, 1);
    let peer = lab.subnet_env(2).unwrap().subnet.unwrap().trunc().network();
    let supernet = Ipv4Addr::from(u32::from(peer) & !0x1ff);
    let leftovers = [
        "10.5.0.0/16".to_string(),
        format!("{supernet}/23"),
        format!("{peer}/25"),
    ];
    for dst in &leftovers {
        let via = dst.split('/').next().unwrap();
        host_out(
            &lab,
            1,
            &["ip", "route", "add", dst, "via", via, "dev", "flannel.1", "onlink"],
        );
    }
    assert!(host_out(&lab, 1, &["ip", "route"]).contains("10.5.0.0/16 via 10.5.0.0 dev flannel.1"));
    assert!(
        wait_until(Duration::from_secs(8), || kernel_state(&lab, 1) == before),
        "leftover routes removed:\n{}",
        kernel_state(&lab, 1)
    );
    lab.restart_node(1).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(kernel_state(&lab, 1), before);
    assert!(all_pods_reach_each_other(&lab));
}
