//! `weft trace` on a lab node: a healthy path, then each break made on purpose and named.

mod common;

use common::*;
use weft::lab::Lab;
use weft_core::BackendKind;

/// Runs `weft trace --json <pod 1> dst` on host 1; returns (exit ok, the causes of broken steps,
/// the output).
fn trace(lab: &Lab, dst: std::net::Ipv4Addr, subnet_file: &str) -> (bool, Vec<String>, String) {
    let t = run_trace(lab, lab.pod_ip(1).unwrap().into(), dst.into(), subnet_file);
    (t.ok, t.causes, t.text)
}

#[test]
fn trace_walks_the_vxlan_path_and_names_each_break() {
    let mut spec = spec(&lab_name("ctr"), 2, BackendKind::Vxlan);
    // weftd must not add forward rules the test wants to control.
    spec.weftd_args = vec!["--iptables-forward-rules=false".into()];
    let mut lab = up(spec);
    assert!(all_pods_reach_each_other(&lab));
    let file = subnet_file(&lab, 1).display().to_string();
    let pod2 = lab.pod_ip(2).unwrap();
    let (ok, causes, text) = trace(&lab, pod2, &file);
    assert!(ok && causes.is_empty(), "healthy path: {text}");
    assert!(text.contains("\"neighbour\"") && text.contains("\"fdb\""), "{text}");
    // weftd repairs a deleted entry the moment the kernel reports it: stop it (the datapath stays
    // in place) so the breaks below are still there when trace looks.
    lab.stop_node(1).unwrap();

    let hop = subnet_ip(&lab, 2).to_string();
    let run = |cmd: &[&str]| assert!(lab.exec_in_host(1, cmd).unwrap().status.success(), "{cmd:?}");
    let expect = |cause: &str, dst, file: &str| {
        let (ok, causes, text) = trace(&lab, dst, file);
        assert!(
            !ok && causes.iter().any(|c| c == cause),
            "expected {cause}: {causes:?}\n{text}"
        );
    };

    run(&["ip", "neigh", "del", &hop, "dev", "flannel.1"]);
    expect("missing_neighbour", pod2, &file);
    run(&[
        "ip",
        "neigh",
        "replace",
        &hop,
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    expect("vtep_mac_mismatch", pod2, &file);
    let mac2 = vtep_mac(&lab, 2);
    run(&[
        "ip",
        "neigh",
        "replace",
        &hop,
        "lladdr",
        &mac2,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    run(&["bridge", "fdb", "del", &mac2, "dev", "flannel.1", "dst", "198.51.100.2"]);
    expect("missing_fdb", pod2, &file);
    run(&[
        "bridge",
        "fdb",
        "append",
        &mac2,
        "dev",
        "flannel.1",
        "dst",
        "198.51.100.2",
        "self",
        "permanent",
    ]);

    run(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    expect("ip_forward_disabled", pod2, &file);
    run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    run(&["iptables", "-P", "FORWARD", "DROP"]);
    expect("forward_dropped", pod2, &file);
    run(&["iptables", "-P", "FORWARD", "ACCEPT"]);

    expect("missing_subnet_env", pod2, "/nonexistent/subnet.env");
    expect("no_lease", "10.5.250.7".parse().unwrap(), &file);

    run(&["ip", "link", "set", "cni0", "mtu", "1500"]);
    expect("mtu_mismatch", pod2, &file);
    run(&["ip", "link", "set", "cni0", "mtu", "1450"]);

    let (ok, causes, text) = trace(&lab, pod2, &file);
    assert!(ok && causes.is_empty(), "repaired path is clean again: {text}");
}
