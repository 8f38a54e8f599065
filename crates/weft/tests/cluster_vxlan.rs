//! The VXLAN cluster as a user sees it: real weftd on lab hosts, a real etcd, the real kernel.
//! Run as root after `cargo build --workspace --bins` (make test does both).

mod common;

use std::time::Duration;

use common::*;
use weft_core::BackendKind;

#[test]
fn three_nodes_get_flannel_leases_and_a_full_mesh_then_a_fourth_joins() {
    let mut lab = up(spec(&lab_name("cva"), 3, BackendKind::Vxlan));

    // Distinct subnets, subnet.env in flannel's format with MTU 1450 on a 1500 underlay.
    let mut subnets = Vec::new();
    for node in 1..=3 {
        let text = std::fs::read_to_string(subnet_file(&lab, node)).unwrap();
        let env = lab.subnet_env(node).unwrap();
        assert_eq!(
            text,
            format!(
                "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
                env.subnet.unwrap()
            )
        );
        assert_eq!(
            env.subnet.unwrap().addr(),
            weft_core::SubnetKey::v4(env.subnet.unwrap().trunc()).gateway().unwrap()
        );
        assert_eq!(env.subnet.unwrap().prefix_len(), 24);
        subnets.push(env.subnet.unwrap().trunc());
    }
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "every node has its own subnet");

    // The lease keys and values are byte-for-byte flannel's.
    let stored = lab.etcd_get_prefix("/coreos.com/network/subnets/").unwrap();
    assert_eq!(stored.len(), 3);
    for node in 1..=3 {
        let net = lab.subnet_env(node).unwrap().subnet.unwrap().trunc();
        let key = format!("/coreos.com/network/subnets/{}-24", net.network());
        let value = &stored
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no key {key}"))
            .1;
        assert_eq!(
            String::from_utf8_lossy(value),
            format!(
                r#"{{"PublicIP":"198.51.100.{node}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                vtep_mac(&lab, node)
            )
        );
    }

    // The VTEP as the contract says: flannel.1, VNI 1, port 8472, local = host IP, no learning.
    let link = host_out(&lab, 1, &["ip", "-d", "link", "show", "flannel.1"]);
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains("vxlan id 1 local 198.51.100.1 dev eth0"), "{link}");
    assert!(link.contains("dstport 8472") && link.contains("nolearning"), "{link}");

    assert!(
        all_pods_reach_each_other(&lab),
        "every pod pings every other pod:\n{}",
        lab.status()
    );

    // A fourth node joins and becomes reachable from everyone.
    let n4 = lab.add_node().expect("add node");
    assert_eq!(n4, 4);
    assert!(
        all_pods_reach_each_other(&lab),
        "the new node is part of the mesh:\n{}",
        lab.status()
    );
}

#[test]
fn lost_kernel_entries_heal_and_departed_nodes_are_cleaned_up() {
    let mut lab = up(spec(&lab_name("cvb"), 3, BackendKind::Vxlan));
    assert!(all_pods_reach_each_other(&lab));
    let pod2 = lab.pod_ip(2).unwrap();
    let next_hop2 = subnet_ip(&lab, 2).to_string();
    let mac2 = vtep_mac(&lab, 2);
    let heal = Duration::from_secs(6); // three reconcile intervals of 2 s

    // A neighbour entry deleted by hand comes back (from the kernel's notification, before any
    // reconcile tick: the deletion is seen in weftd's log as a repair).
    let repairs = || {
        weftd_log(&lab, 1)
            .matches("repaired an entry changed behind weft's back")
            .count()
    };
    let before = repairs();
    host_out(&lab, 1, &["ip", "neigh", "del", &next_hop2, "dev", "flannel.1"]);
    assert!(wait_until(heal, || repairs() > before), "the deletion was repaired");
    assert!(
        wait_until(heal, || host_out(&lab, 1, &["ip", "neigh", "show", "dev", "flannel.1"])
            .contains(&format!("{next_hop2} lladdr {mac2} PERMANENT"))),
        "neighbour entry healed"
    );
    assert!(lab.wait_ping(1, pod2, Duration::from_secs(3)));

    // An FDB entry deleted by hand comes back.
    host_out(
        &lab,
        1,
        &["bridge", "fdb", "del", &mac2, "dev", "flannel.1", "dst", "198.51.100.2"],
    );
    assert!(wait_until(heal, || repairs() > before + 1), "the deletion was repaired");
    assert!(
        wait_until(heal, || host_out(
            &lab,
            1,
            &["bridge", "fdb", "show", "dev", "flannel.1"]
        )
        .contains(&format!("{mac2} dst 198.51.100.2 self permanent"))),
        "fdb entry healed"
    );
    assert!(lab.wait_ping(1, pod2, Duration::from_secs(3)));

    // The whole device deleted by hand is recreated with the same VTEP MAC, and traffic flows.
    let mac1 = vtep_mac(&lab, 1);
    host_out(&lab, 1, &["ip", "link", "del", "flannel.1"]);
    assert!(
        wait_until(heal, || vtep_mac(&lab, 1) == mac1),
        "flannel.1 recreated with its MAC"
    );
    assert!(
        lab.wait_ping(1, pod2, heal),
        "traffic flows again after the device came back"
    );
    assert!(lab.wait_ping(2, lab.pod_ip(1).unwrap(), heal));

    // A node that leaves (weftd stopped, lease deleted) disappears from the others' tables.
    let gone = lab.subnet_env(3).unwrap().subnet.unwrap().trunc();
    let gone_ip = gone.network().to_string();
    let mac3 = vtep_mac(&lab, 3);
    lab.stop_node(3).unwrap();
    assert!(lab
        .etcd_delete(&format!("/coreos.com/network/subnets/{}-24", gone.network()))
        .unwrap());
    for node in 1..=2 {
        assert!(
            wait_until(heal, || {
                !host_out(&lab, node, &["ip", "route"]).contains(&gone.to_string())
                    && !host_out(&lab, node, &["ip", "neigh", "show", "dev", "flannel.1"]).contains(&gone_ip)
                    && !host_out(&lab, node, &["bridge", "fdb", "show", "dev", "flannel.1"]).contains(&mac3)
            }),
            "host {node} forgot the departed node: routes\n{}",
            host_out(&lab, node, &["ip", "route"])
        );
    }
    assert!(
        lab.wait_ping(1, pod2, Duration::from_secs(3)),
        "the remaining nodes still talk"
    );
}

#[test]
fn restart_keeps_the_subnet_and_a_ping_flood_across_it_loses_nothing() {
    let mut lab = up(spec(&lab_name("cvc"), 2, BackendKind::Vxlan));
    assert!(all_pods_reach_each_other(&lab));
    let before: Vec<_> = (1..=2)
        .map(|n| (lab.subnet_env(n).unwrap(), vtep_mac(&lab, n)))
        .collect();
    let leases_before = lab.etcd_get_prefix("/coreos.com/network/subnets/").unwrap();

    // 4000 echo requests every 2 ms (8 s) from pod 1 to pod 2 while both weftds restart.
    let pod_ns = lab.pod_ns(1).unwrap().to_string();
    let target = lab.pod_ip(2).unwrap().to_string();
    let flood = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &pod_ns, "ping", "-q", "-i", "0.002", "-c", "4000", "-w", "30", &target,
            ])
            .output()
            .expect("run ping")
    });
    std::thread::sleep(Duration::from_secs(1));
    lab.restart_node(2).unwrap();
    lab.restart_node(1).unwrap();
    let out = flood.join().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains("4000 packets transmitted, 4000 received"),
        "no packet lost:\n{summary}"
    );
    println!(
        "restart ping flood: {}",
        summary.lines().find(|l| l.contains("transmitted")).unwrap_or("")
    );

    let after: Vec<_> = (1..=2)
        .map(|n| (lab.subnet_env(n).unwrap(), vtep_mac(&lab, n)))
        .collect();
    assert_eq!(before, after, "same subnets and VTEP MACs after restart");
    assert_eq!(
        lab.etcd_get_prefix("/coreos.com/network/subnets/").unwrap(),
        leases_before,
        "the leases are kept, not re-created"
    );
    assert!(
        weftd_log(&lab, 1).contains("reusing the lease"),
        "{}",
        weftd_log(&lab, 1)
    );
}

/// A node's lease moves to another key in one watch event (the old one retired, the new one with
/// the same VtepMAC and PublicIP admitted): the FDB entry both share stays in place; weft never
/// deletes it and then "repairs" its own deletion.
#[test]
fn a_lease_moving_to_another_key_keeps_the_shared_fdb_entry() {
    let mut lab = up(spec(&lab_name("cvk"), 2, BackendKind::Vxlan));
    assert!(all_pods_reach_each_other(&lab));
    let key = format!("/coreos.com/network/subnets/{}", lease_key(&lab, 2));
    let value = lab.etcd_get(&key).unwrap().expect("h2's lease");
    let mac = vtep_mac(&lab, 2);
    lab.stop_node(2).unwrap();
    // The same node under another subnet: refused while the old key holds its PublicIP and MAC.
    let moved = "/coreos.com/network/subnets/10.5.250.0-24";
    lab.etcd_put(moved, &value).unwrap();
    let refused = |lab: &weft::lab::Lab| weftd_log(lab, 1).contains("lease 10.5.250.0-24 refused");
    assert!(
        wait_until(Duration::from_secs(5), || refused(&lab)),
        "{}",
        weftd_log(&lab, 1)
    );
    let repairs_before = weftd_log(&lab, 1).matches("repaired an entry").count();
    lab.etcd_delete(&key).unwrap();
    let fdb = || host_out(&lab, 1, &["bridge", "fdb", "show", "dev", "flannel.1"]);
    let routed = || host_out(&lab, 1, &["ip", "route"]).contains("10.5.250.0/24");
    assert!(wait_until(Duration::from_secs(5), routed), "{}", routes(&lab, 1));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        fdb().contains(&format!("{mac} dst 198.51.100.2 self permanent")),
        "{}",
        fdb()
    );
    assert_eq!(
        weftd_log(&lab, 1).matches("repaired an entry").count(),
        repairs_before,
        "weft deleted its own FDB entry and repaired it:\n{}",
        weftd_log(&lab, 1)
    );
}
