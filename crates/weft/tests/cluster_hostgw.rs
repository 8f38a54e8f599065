//! The host-gw backend on the lab: one route per remote lease via its PublicIP; mesh, join,
//! leave, and a hand-deleted route healing.

mod common;

use std::time::Duration;

use common::*;
use weft_core::BackendKind;

#[test]
fn host_gw_mesh_heals_and_follows_joins_and_leaves() {
    let mut lab = up(spec(&lab_name("chg"), 3, BackendKind::HostGw));
    assert!(std::fs::read_to_string(subnet_file(&lab, 1))
        .unwrap()
        .contains("FLANNEL_MTU=1500\n"));
    let value = lab.etcd_get_prefix("/coreos.com/network/subnets/").unwrap();
    assert!(value
        .iter()
        .all(|(_, v)| String::from_utf8_lossy(v).ends_with(r#","PublicIPv6":null,"BackendType":"host-gw"}"#)));
    let s2 = lab.subnet_env(2).unwrap().subnet.unwrap().trunc().to_string();
    let route2 = format!("{s2} via 198.51.100.2 dev eth0");
    assert!(routes(&lab, 1).contains(&route2), "{}", routes(&lab, 1));
    assert!(all_pods_reach_each_other(&lab), "host-gw mesh:\n{}", lab.status());

    // A route deleted by hand comes back within the reconcile interval.
    host_out(&lab, 1, &["ip", "route", "del", &s2]);
    assert!(wait_until(Duration::from_secs(6), || routes(&lab, 1).contains(&route2)));
    assert!(lab.wait_ping(1, lab.pod_ip(2).unwrap(), Duration::from_secs(3)));

    // Join.
    let n4 = lab.add_node().unwrap();
    assert!(all_pods_reach_each_other(&lab), "node {n4} joined:\n{}", lab.status());

    // Leave: weftd stopped and lease deleted; its route vanishes from the others.
    let gone = lab.subnet_env(3).unwrap().subnet.unwrap().trunc();
    lab.stop_node(3).unwrap();
    assert!(lab
        .etcd_delete(&format!("/coreos.com/network/subnets/{}-24", gone.network()))
        .unwrap());
    for node in [1, 2, 4] {
        assert!(
            wait_until(Duration::from_secs(6), || !host_out(&lab, node, &["ip", "route"])
                .contains(&gone.to_string())),
            "host {node} dropped the route to {gone}"
        );
    }
}
