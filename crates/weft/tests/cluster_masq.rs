//! `--ip-masq` as a user sees it: flannel's rules in iptables and nftables mode, and a pod's
//! connection to an address outside the cluster network arriving from the host's address.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use weft_core::BackendKind;

#[test]
fn iptables_mode_installs_flannels_rules_and_masquerades_egress() {
    let mut spec = spec(&lab_name("cma"), 2, BackendKind::Vxlan);
    spec.ip_masq = true;
    let lab = up(spec);
    let pod = lab.subnet_env(1).unwrap().subnet.unwrap().trunc();
    assert!(std::fs::read_to_string(subnet_file(&lab, 1))
        .unwrap()
        .contains("FLANNEL_IPMASQ=true\n"));

    let expected = format!(
        "-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s {pod} -d 10.5.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d {pod} -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d {pod} -m comment --comment \"flanneld masq\" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully
"
    );
    // weftd installs the rules from its firewall thread just after it holds the lease.
    let masq = || host_out(&lab, 1, &["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    wait_until(Duration::from_secs(10), || masq() == expected);
    assert_eq!(masq(), expected);
    let hook = host_out(&lab, 1, &["iptables", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(
        hook.contains("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"),
        "{hook}"
    );
    let fwd = host_out(&lab, 1, &["iptables", "-t", "filter", "-S", "FLANNEL-FWD"]);
    assert!(
        fwd.contains("-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT"),
        "{fwd}"
    );
    assert!(
        fwd.contains("-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT"),
        "{fwd}"
    );

    assert_eq!(
        egress_source(&lab, lab.pod_ns(1).unwrap(), 7701),
        Ipv4Addr::new(198, 51, 100, 1),
        "leaves with host 1's address"
    );

    // A rule removed by hand is restored by the resync (every 5 s).
    host_out(&lab, 1, &["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    assert!(
        wait_until(Duration::from_secs(12), || host_out(
            &lab,
            1,
            &["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]
        ) == expected),
        "masquerade rules restored"
    );
    // Pod-to-pod traffic inside the cluster is not masqueraded (the RETURN rules).
    assert!(all_pods_reach_each_other(&lab));
}

#[test]
fn nftables_mode_installs_the_flannel_table_and_masquerades_egress() {
    let mut spec = spec(&lab_name("cmb"), 2, BackendKind::Vxlan);
    spec.ip_masq = true;
    spec.nftables = true;
    let lab = up(spec);
    let pod = lab.subnet_env(2).unwrap().subnet.unwrap().trunc();
    let list = || host_out(&lab, 2, &["nft", "list", "table", "ip", "flannel-ipv4"]);
    wait_until(Duration::from_secs(10), || list().contains("chain postrtg"));
    let table = list();
    assert!(table.contains("chain postrtg"), "{table}");
    assert!(table.contains("type nat hook postrouting priority srcnat"), "{table}");
    assert!(
        table.contains(&format!("ip saddr {pod} ip daddr 10.5.0.0/16")),
        "{table}"
    );
    assert!(
        table.contains("ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4") && table.contains("masquerade fully-random"),
        "{table}"
    );
    assert!(table.contains("chain forward"), "{table}");
    let ipt = host_out(&lab, 2, &["iptables-save", "-t", "nat"]);
    assert!(
        !ipt.contains("FLANNEL-POSTRTG"),
        "no iptables rules in nftables mode:\n{ipt}"
    );

    assert_eq!(
        egress_source(&lab, lab.pod_ns(2).unwrap(), 7702),
        Ipv4Addr::new(198, 51, 100, 2),
        "leaves with host 2's address"
    );
    assert!(all_pods_reach_each_other(&lab));
}

#[test]
fn without_ip_masq_egress_keeps_the_pod_address() {
    let lab = up(spec(&lab_name("cmc"), 1, BackendKind::Vxlan));
    let pod_ip = lab.pod_ip(1).unwrap();
    assert!(host_out(&lab, 1, &["iptables-save", "-t", "nat"])
        .find("FLANNEL-POSTRTG")
        .is_none());
    // Unmasqueraded replies need a way back to the pod network: route it via host 1.
    let switch = lab.switch_ns().to_string();
    let out = std::process::Command::new("ip")
        .args(["-n", &switch, "route", "replace", "10.5.0.0/16", "via", "198.51.100.1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(egress_source(&lab, lab.pod_ns(1).unwrap(), 7703), pod_ip);
}
