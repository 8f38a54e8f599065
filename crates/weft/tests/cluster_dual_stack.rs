//! Dual stack on the lab, as a user runs it (`weft lab up --dual-stack`): IPv4 and IPv6 pod
//! networks over vxlan and host-gw, leases and subnet.env in flannel's format, healing and
//! restarts on the IPv6 side, IPv6 masquerade in both firewall modes, and a full-size IPv6 TCP
//! transfer that never meets "packet too big".

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use weft::lab::topology::{underlay_ipv6, INTERNET_IPV6};
use weft::lab::Lab;
use weft_core::BackendKind;

fn dual(name: &str, nodes: usize, backend: BackendKind) -> Lab {
    let mut s = spec(&lab_name(name), nodes, backend);
    s.dual_stack = true;
    up(s)
}

/// The value of an `nstat -az` counter in a namespace (0 when absent).
fn nstat(ns: &str, counter: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nstat", "-az", counter])
        .output()
        .expect("nstat runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(counter)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

#[test]
fn vxlan_dual_stack_mesh_leases_heals_restarts_and_carries_full_size_ipv6() {
    let mut lab = dual("cds", 3, BackendKind::Vxlan);
    assert!(all_pods_reach_each_other(&lab), "IPv4:\n{}", lab.status());
    assert!(all_pods_reach_each_other_v6(&lab), "IPv6:\n{}", lab.status());

    // Leases: flannel's key and value, both VTEPs' MACs as the devices have them.
    for node in 1..=3 {
        let key = lease_key(&lab, node);
        assert!(key.contains("&fc00:"), "{key}");
        let value = lab
            .etcd_get(&format!("/coreos.com/network/subnets/{key}"))
            .unwrap()
            .expect("the lease exists");
        let want = format!(
            r#"{{"PublicIP":"198.51.100.{node}","PublicIPv6":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            underlay_ipv6(node),
            mac_of(&lab, node, "flannel.1"),
            mac_of(&lab, node, "flannel-v6.1"),
        );
        assert_eq!(String::from_utf8(value).unwrap(), want);
    }
    // subnet.env: flannel's lines in flannel's order; an MTU that fits IPv6 VXLAN (1500 - 70).
    let env = std::fs::read_to_string(subnet_file(&lab, 1)).unwrap();
    let parsed = lab.subnet_env(1).unwrap();
    assert_eq!(
        env,
        format!(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={}\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET={}\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
            parsed.subnet.unwrap(),
            parsed.ipv6_subnet.unwrap()
        )
    );
    let link = host_out(&lab, 1, &["ip", "-d", "link", "show", "flannel-v6.1"]);
    assert!(
        link.contains("mtu 1430") && link.contains("local 2001:db8::1"),
        "{link}"
    );

    // Hand-deleted IPv6 neighbour, FDB entry and route of node 2 come back at once.
    let s2 = lab.subnet_env(2).unwrap().ipv6_subnet.unwrap().trunc();
    let gw2 = s2.network().to_string();
    let mac2 = mac_of(&lab, 2, "flannel-v6.1");
    let neigh = || host_out(&lab, 1, &["ip", "-6", "neigh", "show", "dev", "flannel-v6.1"]);
    let fdb = || host_out(&lab, 1, &["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
    let route2 = format!("{s2} via {gw2} dev flannel-v6.1 metric 1024 onlink");
    assert!(
        neigh().contains(&format!("{gw2} lladdr {mac2} PERMANENT")),
        "{}",
        neigh()
    );
    assert!(
        fdb().contains(&format!("{mac2} dst 2001:db8::2 self permanent")),
        "{}",
        fdb()
    );
    assert!(v6_routes(&lab, 1).contains(&route2), "{}", v6_routes(&lab, 1));
    host_out(&lab, 1, &["ip", "-6", "neigh", "del", &gw2, "dev", "flannel-v6.1"]);
    assert!(
        wait_until(Duration::from_secs(2), || neigh()
            .contains(&format!("{gw2} lladdr {mac2} PERMANENT"))),
        "neighbour healed:\n{}",
        neigh()
    );
    host_out(
        &lab,
        1,
        &[
            "bridge",
            "fdb",
            "del",
            &mac2,
            "dev",
            "flannel-v6.1",
            "dst",
            "2001:db8::2",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(2), || fdb()
            .contains(&format!("{mac2} dst 2001:db8::2"))),
        "FDB entry healed:\n{}",
        fdb()
    );
    host_out(&lab, 1, &["ip", "-6", "route", "del", &s2.to_string()]);
    assert!(
        wait_until(Duration::from_secs(2), || v6_routes(&lab, 1).contains(&route2)),
        "route healed:\n{}",
        v6_routes(&lab, 1)
    );
    let pod2 = lab.pod_ip6(2).unwrap();
    assert!(lab.wait_ping(1, pod2, Duration::from_secs(3)));

    // A restart keeps both subnets, and IPv6 traffic flows again.
    restart_keeps_the_lease(&mut lab, 1);
    assert!(lab.wait_ping(2, lab.pod_ip6(1).unwrap(), Duration::from_secs(5)));

    // A full-size IPv6 TCP transfer between pods (1500-byte underlay): no "packet too big" on
    // the way, as flannel's 1450 would cause.
    let pmtu_before: u64 = (1..=2)
        .map(|n| nstat(lab.host_ns(n).unwrap(), "Icmp6OutPktTooBigs"))
        .sum();
    let server = lab.pod_ns(2).unwrap().to_string();
    let mut iperf = std::process::Command::new("ip")
        .args(["netns", "exec", &server, "iperf3", "-s", "-1", "-p", "5211"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let client = lab
        .exec_in_pod(
            1,
            &["iperf3", "-6", "-c", &pod2.to_string(), "-p", "5211", "-n", "20M", "-J"],
        )
        .unwrap();
    let _ = iperf.wait();
    assert!(
        client.status.success(),
        "iperf3 over IPv6: {}",
        String::from_utf8_lossy(&client.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap();
    let mss = report["start"]["tcp_mss_default"].as_u64().unwrap_or(0);
    // The pod MTU less the IPv6 and TCP headers (60) and the timestamp option (12).
    assert_eq!(
        mss,
        1430 - 60 - 12,
        "TCP over IPv6 uses the pod MTU: {}",
        report["start"]
    );
    let pmtu_after: u64 = (1..=2)
        .map(|n| nstat(lab.host_ns(n).unwrap(), "Icmp6OutPktTooBigs"))
        .sum();
    assert_eq!(pmtu_after, pmtu_before, "no host sent packet-too-big");
    assert_eq!(nstat(lab.pod_ns(1).unwrap(), "Icmp6InPktTooBigs"), 0);
}

#[test]
fn host_gw_dual_stack_routes_both_families_and_heals_ipv6() {
    let lab = dual("chd", 3, BackendKind::HostGw);
    assert!(all_pods_reach_each_other(&lab), "IPv4:\n{}", lab.status());
    assert!(all_pods_reach_each_other_v6(&lab), "IPv6:\n{}", lab.status());
    let value = lab
        .etcd_get(&format!("/coreos.com/network/subnets/{}", lease_key(&lab, 2)))
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8(value).unwrap(),
        r#"{"PublicIP":"198.51.100.2","PublicIPv6":"2001:db8::2","BackendType":"host-gw"}"#
    );
    assert!(std::fs::read_to_string(subnet_file(&lab, 1))
        .unwrap()
        .contains("FLANNEL_MTU=1500\n"));
    let s2 = lab.subnet_env(2).unwrap().ipv6_subnet.unwrap().trunc();
    let route2 = format!("{s2} via 2001:db8::2 dev eth0 metric 1024");
    assert!(v6_routes(&lab, 1).contains(&route2), "{}", v6_routes(&lab, 1));
    host_out(&lab, 1, &["ip", "-6", "route", "del", &s2.to_string()]);
    assert!(
        wait_until(Duration::from_secs(2), || v6_routes(&lab, 1).contains(&route2)),
        "IPv6 route healed:\n{}",
        v6_routes(&lab, 1)
    );
    assert!(lab.wait_ping(1, lab.pod_ip6(2).unwrap(), Duration::from_secs(3)));
}

/// --ip-masq masquerades IPv6 egress with the host's IPv6 address, with flannel's rules in
/// ip6tables (iptables mode) or in the table `ip6 flannel-ipv6` (nftables mode).
#[test]
fn ipv6_egress_is_masqueraded_in_both_firewall_modes() {
    for (name, nftables, port) in [("cdi", false, 7711u16), ("cdn", true, 7712)] {
        let mut s = spec(&lab_name(name), 1, BackendKind::Vxlan);
        s.dual_stack = true;
        s.ip_masq = true;
        s.nftables = nftables;
        let lab = up(s);
        let env = lab.subnet_env(1).unwrap();
        let pod_net = env.ipv6_subnet.unwrap().trunc();
        let rules = if nftables {
            "ip6 saddr fc00::/48 ip6 daddr != ff00::/8 masquerade fully-random comment \"flanneld masq\"".to_string()
        } else {
            "-A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully"
                .to_string()
        };
        let listing = || {
            if nftables {
                host_out(&lab, 1, &["nft", "list", "table", "ip6", "flannel-ipv6"])
            } else {
                host_out(&lab, 1, &["ip6tables-save", "-t", "nat"])
            }
        };
        assert!(
            wait_until(Duration::from_secs(10), || listing().contains(&rules)),
            "IPv6 masquerade rules ({}):\n{}",
            if nftables { "nftables" } else { "iptables" },
            listing()
        );
        if !nftables {
            let nat = listing();
            let weft: Vec<String> = nat
                .lines()
                .filter(|l| l.contains("flanneld masq"))
                .map(String::from)
                .collect();
            let m = "-m comment --comment \"flanneld masq\"";
            assert_eq!(
                weft,
                vec![
                    format!("-A POSTROUTING {m} -j FLANNEL-POSTRTG"),
                    format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN"),
                    format!("-A FLANNEL-POSTRTG -s {pod_net} -d fc00::/48 {m} -j RETURN"),
                    format!("-A FLANNEL-POSTRTG -s fc00::/48 -d {pod_net} {m} -j RETURN"),
                    format!("-A FLANNEL-POSTRTG ! -s fc00::/48 -d {pod_net} {m} -j RETURN"),
                    rules.clone(),
                    format!("-A FLANNEL-POSTRTG ! -s fc00::/48 -d fc00::/48 {m} -j MASQUERADE --random-fully"),
                ],
                "the IPv4 rule set's IPv6 twin, in the same order (cluster_masq)"
            );
        }
        let seen = egress_source_to(&lab, lab.pod_ns(1).unwrap(), SocketAddr::from((INTERNET_IPV6, port)));
        assert_eq!(
            seen,
            IpAddr::from(underlay_ipv6(1)),
            "IPv6 egress leaves with the host's address"
        );
    }
}
