//! `weft trace` on a lab node: a healthy path, then each break made on purpose and named.

mod common;

use common::*;
use weft::lab::Lab;
use weft_core::BackendKind;

/// Runs `weft trace --json src dst` on host 1; returns (exit ok, the causes of broken steps).
fn trace(lab: &Lab, dst: std::net::Ipv4Addr, subnet_file: &str) -> (bool, Vec<String>, String) {
    let dir = lab.dir().display().to_string();
    let src = lab.pod_ip(1).unwrap().to_string();
    let dst = dst.to_string();
    let args = [
        env!("CARGO_BIN_EXE_weft").to_string(),
        "trace".into(),
        "--json".into(),
        src,
        dst,
        format!("--subnet-file={subnet_file}"),
        "--etcd-endpoints=https://198.51.100.254:2379".into(),
        format!("--etcd-cafile={dir}/ca.pem"),
        format!("--etcd-certfile={dir}/client.pem"),
        format!("--etcd-keyfile={dir}/client-key.pem"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.exec_in_host(1, &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let causes = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["cause"].as_str().map(str::to_string))
        .collect();
    (out.status.success(), causes, text)
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
