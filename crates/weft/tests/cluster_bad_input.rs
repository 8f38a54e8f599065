//! Bad input as a user meets it: a missing or invalid network config, etcd unreachable at
//! start, no free subnet. Each gets a clear message and changes nothing.

mod common;

use std::time::Duration;

use common::*;
use weft_core::BackendKind;

const CONFIG: &str = "/coreos.com/network/config";

/// Stops weftd on `node` and forgets its lease and subnet.env, so its next start is a first start.
fn reset_node(lab: &mut weft::lab::Lab, node: usize) {
    let subnet = lab.subnet_env(node).unwrap().subnet.unwrap().trunc();
    lab.stop_node(node).unwrap();
    lab.etcd_delete(&format!("/coreos.com/network/subnets/{}-24", subnet.network()))
        .unwrap();
    std::fs::remove_file(subnet_file(lab, node)).unwrap();
}

fn lease_count(lab: &weft::lab::Lab) -> usize {
    lab.etcd_get_prefix("/coreos.com/network/subnets/").unwrap().len()
}

#[test]
fn missing_config_is_waited_for_and_bad_configs_are_refused_without_changes() {
    let mut lab = up(spec(&lab_name("cba"), 1, BackendKind::Vxlan));
    let good = String::from_utf8(lab.etcd_get(CONFIG).unwrap().unwrap()).unwrap();
    reset_node(&mut lab, 1);
    assert!(lab.etcd_delete(CONFIG).unwrap());

    lab.start_node(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || weftd_log(&lab, 1)
            .contains("waiting for the network config at /coreos.com/network/config")),
        "weftd says it waits for the config:\n{}",
        weftd_log(&lab, 1)
    );

    // SubnetLen 31: the error names the key and the value; no lease, no subnet.env.
    lab.etcd_put(
        CONFIG,
        r#"{"Network":"10.5.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = weftd_log(&lab, 1);
            log.contains("/coreos.com/network/config") && log.contains("SubnetLen 31 is larger than 30")
        }),
        "weftd names the bad SubnetLen:\n{}",
        weftd_log(&lab, 1)
    );
    // An unknown backend type.
    lab.etcd_put(
        CONFIG,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"carrier-pigeon"}}"#,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || weftd_log(&lab, 1)
            .contains(r#"Backend.Type "carrier-pigeon" is not a backend weft knows"#)),
        "weftd names the unknown backend:\n{}",
        weftd_log(&lab, 1)
    );
    // Dual-stack keys: an IPv6SubnetLen the IPv6Network cannot hold four times, EnableIPv6
    // without IPv6Network, and the udp backend (IPv4 only, as flannel's) with EnableIPv6.
    for (config, says) in [
        (
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":49,"Backend":{"Type":"vxlan"}}"#,
            "IPv6SubnetLen 49 leaves fewer than four subnets in IPv6Network fc00::/48",
        ),
        (
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#,
            "EnableIPv6 is true but IPv6Network is missing",
        ),
        (
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"udp"}}"#,
            r#"EnableIPv6 is true but Backend.Type "udp" carries IPv4 only"#,
        ),
    ] {
        lab.etcd_put(CONFIG, config).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || weftd_log(&lab, 1).contains(says)),
            "weftd says {says:?}:\n{}",
            weftd_log(&lab, 1)
        );
    }
    assert!(lab.weftd_alive(1), "weftd keeps waiting for a good config");
    assert_eq!(lease_count(&lab), 0, "no lease taken on a bad config");
    assert!(!subnet_file(&lab, 1).exists(), "no subnet.env written on a bad config");

    // A good config: weftd proceeds.
    lab.etcd_put(CONFIG, &good).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || subnet_file(&lab, 1).exists()),
        "{}",
        weftd_log(&lab, 1)
    );
    assert_eq!(lease_count(&lab), 1);
}

#[test]
fn unreachable_etcd_at_start_is_retried_with_a_clear_message() {
    let mut lab = up(spec(&lab_name("cbb"), 1, BackendKind::Vxlan));
    reset_node(&mut lab, 1);
    let switch = lab.switch_ns().to_string();
    let block = [
        "-I",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "2379",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ];
    let ipt = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &switch, "iptables"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    ipt(&block);

    lab.start_node(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || weftd_log(&lab, 1)
            .contains("cannot reach etcd at https://198.51.100.254:2379")),
        "weftd says which etcd it cannot reach:\n{}",
        weftd_log(&lab, 1)
    );
    assert!(lab.weftd_alive(1), "weftd keeps retrying");
    assert!(!subnet_file(&lab, 1).exists());

    let mut unblock = block;
    unblock[0] = "-D";
    ipt(&unblock);
    assert!(
        wait_until(Duration::from_secs(20), || subnet_file(&lab, 1).exists()),
        "weftd joins once etcd answers:\n{}",
        weftd_log(&lab, 1)
    );
    assert_eq!(lease_count(&lab), 1);
}

#[test]
fn no_free_subnet_is_a_clear_error() {
    let mut lab = up(spec(&lab_name("cbc"), 2, BackendKind::Vxlan));
    let taken = lab.subnet_env(1).unwrap().subnet.unwrap().trunc().network();
    reset_node(&mut lab, 2);
    lab.etcd_put(
        CONFIG,
        format!(
            r#"{{"Network":"10.5.0.0/16","SubnetMin":"{taken}","SubnetMax":"{taken}","Backend":{{"Type":"vxlan"}}}}"#
        ),
    )
    .unwrap();
    lab.start_node(2).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || !lab.weftd_alive(2)),
        "weftd exits when no subnet is free:\n{}",
        weftd_log(&lab, 2)
    );
    let log = weftd_log(&lab, 2);
    assert!(log.contains("out of subnets: all 1 /24 subnets"), "{log}");
    assert!(!subnet_file(&lab, 2).exists());
    assert_eq!(lease_count(&lab), 1, "node 1 keeps its lease, node 2 took none");
}

/// A dual-stack config on a node whose interface has no global IPv6 address: weftd stops with
/// an error naming the interface and what to do, and takes no lease (a flanneld v0.20.0 peer
/// would crash on an IPv4-only key in a dual-stack cluster).
#[test]
fn dual_stack_on_a_node_without_ipv6_is_a_clear_error_and_takes_no_lease() {
    let mut lab = up(spec(&lab_name("cb6"), 1, BackendKind::Vxlan));
    reset_node(&mut lab, 1);
    lab.etcd_put(
        CONFIG,
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    lab.start_node(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || !lab.weftd_alive(1)),
        "weftd stops:\n{}",
        weftd_log(&lab, 1)
    );
    let log = weftd_log(&lab, 1);
    assert!(
        log.contains("interface eth0 has no global IPv6 address and the network config enables IPv6"),
        "{log}"
    );
    assert!(log.contains("--public-ipv6"), "the message says what to do: {log}");
    assert_eq!(lease_count(&lab), 0, "no lease taken");
    assert!(!subnet_file(&lab, 1).exists(), "no subnet.env written");
}
