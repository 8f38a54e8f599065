//! IPv6-only networks on the lab, as a user runs them (`weft lab up --ipv6-only`: EnableIPv4
//! false, and hosts with no IPv4 address at all): pods with IPv6 addresses only over vxlan and
//! host-gw, lease keys and values in flannel's format (`0.0.0.0-0&<subnet>`, PublicIP 0.0.0.0, no
//! BackendData), subnet.env without the IPv4 pair, IPv6 masquerade and no IPv4 rules, a restart
//! that keeps the subnet, and an IPv4-only lease that changes nothing.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use weft::lab::topology::{underlay_ipv6, INTERNET_IPV6};
use weft::lab::Lab;
use weft_core::BackendKind;

fn ipv6_only(name: &str, nodes: usize, backend: BackendKind) -> Lab {
    let mut s = spec(&lab_name(name), nodes, backend);
    s.dual_stack = true;
    s.ipv6_only = true;
    s.ip_masq = true;
    up(s)
}

#[test]
fn vxlan_ipv6_only_mesh_in_flannels_format_survives_a_restart_and_an_ipv4_lease() {
    let mut lab = ipv6_only("c6o", 3, BackendKind::Vxlan);
    assert!(all_pods_reach_each_other_v6(&lab), "{}", lab.status());
    // The hosts have no IPv4 address: weftd chose eth0 by its IPv6 address and reached etcd
    // over IPv6.
    assert_eq!(host_out(&lab, 1, &["ip", "-4", "addr", "show", "dev", "eth0"]), "");
    assert!(
        weftd_log(&lab, 1).contains("using the external interface iface=eth0 ip=2001:db8::1 public_ip=None"),
        "{}",
        weftd_log(&lab, 1)
    );

    for node in 1..=3 {
        let key = lease_key(&lab, node);
        assert!(key.starts_with("0.0.0.0-0&fc00:"), "{key}");
        assert_eq!(
            lease_value(&lab, node),
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                underlay_ipv6(node),
                mac_of(&lab, node, "flannel-v6.1"),
            )
        );
        let env = lab.subnet_env(node).unwrap();
        assert_eq!(
            std::fs::read_to_string(subnet_file(&lab, node)).unwrap(),
            format!(
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET={}\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
                env.ipv6_subnet.unwrap()
            )
        );
        let links = host_out(&lab, node, &["ip", "-br", "link"]);
        assert!(
            links.contains("flannel-v6.1") && !links.contains("flannel.1"),
            "only the IPv6 VTEP: {links}"
        );
    }
    let s2 = lab.subnet_env(2).unwrap().ipv6_subnet.unwrap().trunc();
    let route2 = format!("{s2} via {} dev flannel-v6.1 metric 1024 onlink", s2.network());
    assert!(v6_routes(&lab, 1).contains(&route2), "{}", v6_routes(&lab, 1));
    assert!(
        host_out(&lab, 1, &["ip", "-4", "route"])
            .lines()
            .all(|l| !l.contains("flannel")),
        "no IPv4 overlay routes"
    );

    // Masquerade and forward rules for IPv6 only; pod egress leaves with the host's address.
    let masq = "-A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully";
    let nat6 = || host_out(&lab, 1, &["ip6tables-save", "-t", "nat"]);
    assert!(
        wait_until(Duration::from_secs(10), || nat6().contains(masq)),
        "{}",
        nat6()
    );
    assert!(host_out(&lab, 1, &["ip6tables-save", "-t", "filter"]).contains("-A FLANNEL-FWD -s fc00::/48"));
    for table in ["nat", "filter"] {
        let v4 = host_out(&lab, 1, &["iptables-save", "-t", table]);
        assert!(!v4.contains("flanneld"), "no IPv4 rules in {table}: {v4}");
    }
    let seen = egress_source_to(&lab, lab.pod_ns(1).unwrap(), SocketAddr::from((INTERNET_IPV6, 7713)));
    assert_eq!(
        seen,
        IpAddr::from(underlay_ipv6(1)),
        "egress leaves with the host's address"
    );

    // An IPv4-only lease (a node configured for another network) claims nothing here: every
    // node refuses it and keeps its routes.
    lab.etcd_put(
        "/coreos.com/network/subnets/10.5.9.0-24",
        r#"{"PublicIP":"198.51.100.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}}"#,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || weftd_log(&lab, 1)
            .contains("this network is IPv6 only")),
        "{}",
        weftd_log(&lab, 1)
    );
    assert!(v6_routes(&lab, 1).contains(&route2));
    assert!(!host_out(&lab, 1, &["ip", "route"]).contains("10.5.9.0"));
    assert!(all_pods_reach_each_other_v6(&lab), "{}", lab.status());

    // A restart takes the same subnet back (found by PublicIPv6: every lease's PublicIP is
    // 0.0.0.0 here) and traffic flows again.
    restart_keeps_the_lease(&mut lab, 1);
    let leases = lab.etcd_get_prefix("/coreos.com/network/subnets/").unwrap();
    assert_eq!(leases.len(), 4, "three nodes' leases and the refused one, no more");
    assert!(lab.wait_ping(2, lab.pod_ip6(1).unwrap(), Duration::from_secs(5)));
}

#[test]
fn host_gw_ipv6_only_routes_via_public_ipv6() {
    let lab = ipv6_only("c6h", 3, BackendKind::HostGw);
    assert!(all_pods_reach_each_other_v6(&lab), "{}", lab.status());
    assert_eq!(
        lease_value(&lab, 2),
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::2","BackendType":"host-gw"}"#
    );
    let s2 = lab.subnet_env(2).unwrap().ipv6_subnet.unwrap().trunc();
    let route2 = format!("{s2} via 2001:db8::2 dev eth0 metric 1024");
    assert!(v6_routes(&lab, 1).contains(&route2), "{}", v6_routes(&lab, 1));
    let status = lab.status().to_string();
    assert!(
        status.contains("IPv6 reachability") && !status.contains("\nreachability"),
        "status shows the IPv6 matrix only:\n{status}"
    );
}
