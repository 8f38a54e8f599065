//! The wireguard backend over IPv6 on the lab, as flannel v0.20.0 lays it out: dual stack in
//! Mode separate (`flannel-wg` for IPv4 on 51820, `flannel-wg-v6` for IPv6 on 51821, one key in
//! BackendData and BackendV6Data), an IPv6-only mesh (`flannel-wg-v6` alone, BackendV6Data
//! alone), and Mode ipv6 (one `flannel-wg` carrying both families over the IPv6 underlay). The
//! underlay is captured to show that it carries WireGuard messages only.

mod common;

use common::wireguard::{run, trace_from_h1, Capture, MARKER};
use common::*;
use weft::lab::topology::underlay_ipv6;
use weft::lab::{Lab, LabSpec};
use weft_core::BackendKind;

fn wireguard_spec(name: &str, ipv6_only: bool, options: serde_json::Value) -> LabSpec {
    let mut spec = spec(&lab_name(name), 3, BackendKind::Wireguard);
    spec.weftd_args = vec!["--reconcile-interval=600".into(), "--healthz-port=8471".into()];
    spec.dual_stack = true;
    spec.ipv6_only = ipv6_only;
    if let serde_json::Value::Object(map) = options {
        spec.backend_options = map;
    }
    spec
}

/// Host `node`'s public key, from its key file (`wg pubkey`).
fn public_key(lab: &Lab, node: usize) -> String {
    let private = std::fs::read_to_string(lab.wireguard_key_file(node)).unwrap();
    weft::lab::wireguard::pubkey(&private).unwrap()
}

/// Pings node 2's pod from node 1's pod at its IPv6 address, three times with the marker as
/// payload.
fn marker_ping_v6(lab: &Lab) {
    let to = lab.pod(2).unwrap().ip6.unwrap().addr().to_string();
    let ping = lab
        .exec_in_pod(1, &["ping", "-n", "-c", "3", "-i", "0.2", "-p", MARKER, &to])
        .unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
}

/// The dual-stack layout of Mode separate as flannel's: one key per node in both BackendData
/// and BackendV6Data, and flannel-wg-v6 as its ConfigureV6 makes it (MTU 1500 - 80, the subnet
/// address /128, the IPv6 network's scope-link route), with subnet.env's IPv6 pair and MTU.
/// Returns the nodes' public keys.
fn assert_dual_stack_layout(lab: &Lab) -> Vec<String> {
    // One key per node, in both BackendData and BackendV6Data, as flannel writes them.
    let keys: Vec<String> = (1..=3).map(|n| public_key(lab, n)).collect();
    assert_ne!(keys[0], keys[1], "every host has its own key");
    for node in 1..=3 {
        let key = lease_key(lab, node);
        assert!(key.contains("&fc00:"), "{key}");
        let k = &keys[node - 1];
        assert_eq!(
            lease_value(lab, node),
            format!(
                r#"{{"PublicIP":"198.51.100.{node}","PublicIPv6":"{}","BackendType":"wireguard","BackendData":{{"PublicKey":"{k}"}},"BackendV6Data":{{"PublicKey":"{k}"}}}}"#,
                underlay_ipv6(node)
            )
        );
    }
    // flannel-wg-v6 as flannel's ConfigureV6: MTU 1500 - 80, the subnet address /128 and the
    // IPv6 network's scope-link route; subnet.env has the IPv6 pair and that MTU.
    let env = lab.subnet_env(1).unwrap();
    let subnet6 = env.ipv6_subnet.unwrap().trunc();
    let link = run(lab, 1, &["ip", "-d", "link", "show", "flannel-wg-v6"]);
    assert!(link.contains("mtu 1420") && link.contains("tun"), "{link}");
    let addrs = run(
        lab,
        1,
        &["ip", "-6", "addr", "show", "dev", "flannel-wg-v6", "scope", "global"],
    );
    assert!(addrs.contains(&format!("inet6 {}/128", subnet6.network())), "{addrs}");
    let routes = v6_routes(lab, 1);
    assert!(routes.contains("fc00::/48 dev flannel-wg-v6 metric 1024"), "{routes}");
    let file = std::fs::read_to_string(subnet_file(lab, 1)).unwrap();
    assert!(
        file.contains("FLANNEL_IPV6_NETWORK=fc00::/48\n") && file.contains("FLANNEL_MTU=1420\n"),
        "{file}"
    );
    keys
}

#[test]
fn wireguard_dual_stack_separate_devices_in_flannels_format_carry_only_wireguard() {
    let mut lab = up(wireguard_spec("cw6", false, serde_json::json!({})));
    assert!(all_pods_reach_each_other(&lab), "IPv4:\n{}", lab.status());
    assert!(all_pods_reach_each_other_v6(&lab), "IPv6:\n{}", lab.status());

    let keys = assert_dual_stack_layout(&lab);

    // The IPv6 underlay carries WireGuard messages only (to 51821), never the marker.
    let capture = Capture::start(&lab, 3);
    marker_ping_v6(&lab);
    let ([_, wg6, other, marker], text) = capture.finish();
    assert_eq!((other, marker), (0, 0), "underlay capture:\n{text}");
    assert!(wg6 >= 6, "{text}");

    // `wg show` on each device lists its own peers: IPv6 ones at [PublicIPv6]:51821.
    let show = run(&lab, 1, &["wg", "show", "flannel-wg-v6"]);
    let subnet6_2 = lab.subnet_env(2).unwrap().ipv6_subnet.unwrap().trunc();
    assert!(show.contains(&format!("public key: {}", keys[0])), "{show}");
    assert!(show.contains("listening port: 51821"), "{show}");
    assert!(show.contains(&format!("peer: {}", keys[1])), "{show}");
    assert!(show.contains("endpoint: [2001:db8::2]:51821"), "{show}");
    assert!(show.contains(&format!("allowed ips: {subnet6_2}\n")), "{show}");
    assert!(show.contains("latest handshake:"), "{show}");
    // weft trace to an IPv6 pod follows the route into flannel-wg-v6 and checks its peer.
    let pod_v6 = |node| lab.pod(node).unwrap().ip6.unwrap().addr().to_string();
    let text = trace_from_h1(&lab, &pod_v6(1), &pod_v6(2));
    assert!(
        text.contains(&format!(
            "peer {} endpoint [2001:db8::2]:51821 allowed ips {subnet6_2}",
            keys[1]
        )),
        "{text}"
    );
    assert!(
        text.contains("flannel-wg-v6") && text.contains("latest handshake"),
        "{text}"
    );
    let show4 = run(&lab, 1, &["wg", "show", "flannel-wg"]);
    assert!(show4.contains("endpoint: 198.51.100.2:51820"), "{show4}");
    assert!(!show4.contains("fc00:"), "{show4}");
    let page = http_get(&lab, 1, "/metrics");
    assert_eq!(
        metric(&page, "weft_wireguard_peers"),
        Some(4),
        "2 peers on each device: {page}"
    );

    // A full-size IPv6 packet (FLANNEL_MTU 1420 = 1500 - 40 - 8 - 32) crosses unfragmented.
    let to = lab.pod(2).unwrap().ip6.unwrap().addr().to_string();
    let full = lab
        .exec_in_pod(1, &["ping", "-n", "-c", "2", "-M", "do", "-s", "1372", &to])
        .unwrap();
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stdout));

    // Bulk IPv6 TCP each way: TSO super-segments split with IPv6 headers on the sender, the
    // segments merged again on the receiver; every byte arrives as sent, nothing is dropped.
    for (from, to) in [(1, 2), (2, 1)] {
        let ip = lab.pod(to).unwrap().ip6.unwrap().addr();
        let len = 16 << 20;
        let got = tcp_transfer(&lab, from, to, std::net::SocketAddr::new(ip.into(), 5301), len);
        assert_eq!(got.len(), len, "pod {from} to pod {to}: bytes that arrived");
        assert!(
            got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
            "pod {from} to pod {to}: the bytes as sent"
        );
    }
    for node in [1, 2] {
        let page = http_get(&lab, node, "/metrics");
        assert_eq!(
            metric(&page, "weft_wireguard_dropped_total{reason=\"malformed\"}"),
            Some(0),
            "host {node}: {page}"
        );
    }

    // A restarted weftd adopts flannel-wg-v6 and keeps its key: IPv6 traffic resumes.
    lab.restart_node(2).unwrap();
    assert!(
        wait_until(std::time::Duration::from_secs(10), || lab.weftd_alive(2)
            && lab.ping(1, lab.pod(2).unwrap().ip6.unwrap().addr())),
        "after the restart:\n{}",
        weftd_log(&lab, 2)
    );
    assert_eq!(public_key(&lab, 2), keys[1]);
}

#[test]
fn wireguard_ipv6_only_mesh_uses_flannel_wg_v6_alone() {
    let lab = up(wireguard_spec("cw6o", true, serde_json::json!({})));
    assert!(all_pods_reach_each_other_v6(&lab), "{}", lab.status());
    assert_eq!(host_out(&lab, 1, &["ip", "-4", "addr", "show", "dev", "eth0"]), "");
    for node in 1..=3 {
        let key = lease_key(&lab, node);
        assert!(key.starts_with("0.0.0.0-0&fc00:"), "{key}");
        assert_eq!(
            lease_value(&lab, node),
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"wireguard","BackendV6Data":{{"PublicKey":"{}"}}}}"#,
                underlay_ipv6(node),
                public_key(&lab, node)
            )
        );
        let links = host_out(&lab, node, &["ip", "-br", "link"]);
        assert!(
            links.contains("flannel-wg-v6") && !links.contains("flannel-wg "),
            "only the IPv6 device: {links}"
        );
    }
    let capture = Capture::start(&lab, 3);
    marker_ping_v6(&lab);
    let ([wg4, wg6, other, marker], text) = capture.finish();
    assert_eq!((wg4, other, marker), (0, 0, 0), "underlay capture:\n{text}");
    assert!(wg6 >= 6, "{text}");
    let show = run(&lab, 1, &["wg", "show", "flannel-wg-v6"]);
    assert!(show.contains("endpoint: [2001:db8::3]:51821"), "{show}");
}

#[test]
fn wireguard_mode_ipv6_carries_both_families_on_one_device_over_ipv6() {
    let lab = up(wireguard_spec("cw6m", false, serde_json::json!({"Mode": "ipv6"})));
    assert!(all_pods_reach_each_other(&lab), "IPv4:\n{}", lab.status());
    assert!(all_pods_reach_each_other_v6(&lab), "IPv6:\n{}", lab.status());
    let links = host_out(&lab, 1, &["ip", "-br", "link"]);
    assert!(!links.contains("flannel-wg-v6"), "one device: {links}");
    // Both subnets on one peer, reached at [PublicIPv6]:ListenPort.
    let env2 = lab.subnet_env(2).unwrap();
    let show = run(&lab, 1, &["wg", "show", "flannel-wg"]);
    assert!(show.contains("endpoint: [2001:db8::2]:51820"), "{show}");
    assert!(
        show.contains(&format!(
            "allowed ips: {}, {}",
            env2.subnet.unwrap().trunc(),
            env2.ipv6_subnet.unwrap().trunc()
        )),
        "{show}"
    );
    // IPv4 pod traffic crosses the IPv6 underlay, encrypted.
    let capture = Capture::start(&lab, 3);
    let to = lab.pod_ip(2).unwrap().to_string();
    let ping = lab
        .exec_in_pod(1, &["ping", "-n", "-c", "3", "-i", "0.2", "-p", MARKER, &to])
        .unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    let ([wg4, wg6, other, marker], text) = capture.finish();
    assert_eq!((wg4, other, marker), (0, 0, 0), "underlay capture:\n{text}");
    assert!(wg6 >= 6, "{text}");
}

#[test]
fn wireguard_go_interop_over_ipv6_in_a_dual_stack_mesh() {
    let mut lab = up(wireguard_spec("cw6g", false, serde_json::json!({})));
    assert!(all_pods_reach_each_other_v6(&lab), "weft mesh first:\n{}", lab.status());
    // Host 3 runs wireguard-go as flannel's kernel backend would: flannel-wg and flannel-wg-v6,
    // one new key in BackendData and BackendV6Data.
    let public = lab.wireguard_go(&[3], None).unwrap().remove(0);
    let lease3 = lease_value(&lab, 3);
    assert!(
        lease3.contains(&format!(r#""BackendV6Data":{{"PublicKey":"{public}"}}"#)),
        "{lease3}"
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || run(
            &lab,
            1,
            &["wg", "show", "flannel-wg-v6", "peers"]
        )
        .contains(&public)),
        "weft node 1 has wireguard-go's key as an IPv6 peer"
    );
    assert!(
        all_pods_reach_each_other_v6(&lab),
        "IPv6 with wireguard-go on h3:\n{}",
        lab.status()
    );
    assert!(
        all_pods_reach_each_other(&lab),
        "IPv4 with wireguard-go on h3:\n{}",
        lab.status()
    );
    let show = run(&lab, 3, &["wg", "show", "flannel-wg-v6"]);
    assert!(
        show.contains("endpoint: [2001:db8::1]:51821") && show.contains("latest handshake:"),
        "wireguard-go's view:\n{show}"
    );
}

#[test]
fn wireguard_mode_auto_reaches_public_ipv4_endpoints_from_a_dual_stack_socket() {
    // The lab's PublicIPs (198.51.100.0/24) are not RFC 1918 private: flannel's auto rule picks
    // them, so both families cross the IPv4 underlay on one flannel-wg.
    let lab = up(wireguard_spec("cw6a", false, serde_json::json!({"Mode": "auto"})));
    let capture = Capture::start(&lab, 4);
    assert!(all_pods_reach_each_other(&lab), "IPv4:\n{}", lab.status());
    assert!(all_pods_reach_each_other_v6(&lab), "IPv6:\n{}", lab.status());
    marker_ping_v6(&lab);
    let ([wg4, wg6, other, marker], text) = capture.finish();
    assert_eq!((wg6, other, marker), (0, 0, 0), "underlay capture:\n{text}");
    assert!(wg4 >= 6, "{text}");
    let show = run(&lab, 1, &["wg", "show", "flannel-wg"]);
    assert!(show.contains("endpoint: 198.51.100.2:51820"), "{show}");
    assert!(show.contains("allowed ips: 10.5."), "{show}");
    assert!(show.contains(", fc00:"), "{show}");
}
