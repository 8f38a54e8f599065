//! The wireguard backend (flannel-wg, in user space) on the lab: a weft mesh whose underlay
//! carries only WireGuard messages, `wg show` on weft's device, restarts that keep the key,
//! interop with Debian's wireguard-go configured from the leases as flannel's kernel backend
//! would configure a device (with and without PSK, and with a wrong PSK), and bad input.

mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::wireguard::{run, trace_from_h1, Capture, MARKER};
use common::*;
use weft::lab::Lab;
use weft_core::BackendKind;

const NETWORK: &str = "10.5.0.0/16";
const PSK: &str = "6Xn0dm0Tq8d1K6ERLtq9w1J0i8aXlEOhGfHDTKvNH5k=";
const WRONG_PSK: &str = "p2WzmBe2UyM6J1C2hS0D0lKGxX8qIt2rT+dDOZ3C3yA=";

fn wireguard_spec(name: &str, nodes: usize, options: serde_json::Value) -> weft::lab::LabSpec {
    let mut spec = spec(&lab_name(name), nodes, BackendKind::Wireguard);
    spec.weftd_args = vec!["--reconcile-interval=600".into(), "--healthz-port=8471".into()];
    if let serde_json::Value::Object(map) = options {
        spec.backend_options = map;
    }
    spec
}

/// `wg pubkey` of a private key.
fn pubkey(private: &str) -> String {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg (wireguard-tools) installed: make deps");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.trim().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn lease_key(lab: &Lab, node: usize) -> String {
    let subnet = lab.subnet_env(node).unwrap().subnet.unwrap().trunc();
    format!(
        "/coreos.com/network/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

fn lease_value(lab: &Lab, node: usize) -> serde_json::Value {
    let raw = lab.etcd_get(&lease_key(lab, node)).unwrap().expect("lease exists");
    serde_json::from_slice(&raw).unwrap()
}

/// Value of `name` (with labels) on host node's /metrics, 0 when absent.
fn metric_of(lab: &Lab, node: usize, name: &str) -> u64 {
    metric(&http_get(lab, node, "/metrics"), name).unwrap_or(0)
}

fn dropped(lab: &Lab, node: usize, reason: &str) -> u64 {
    metric_of(
        lab,
        node,
        &format!("weft_wireguard_dropped_total{{reason=\"{reason}\"}}"),
    )
}

/// Pings `to` from node's pod every 50 ms for `seconds`; returns the longest gap between two
/// replies (the outage) and how many replies came.
fn ping_gaps(lab: &Lab, node: usize, to: Ipv4Addr, seconds: f64) -> std::thread::JoinHandle<(Duration, usize)> {
    let ns = lab.pod_ns(node).unwrap().to_string();
    let count = (seconds / 0.05) as usize;
    std::thread::spawn(move || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "ping", "-n", "-D", "-i", "0.05", "-W", "1"])
            .args(["-c", &count.to_string(), &to.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let times: Vec<f64> = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect();
        let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        (Duration::from_secs_f64(gap), times.len())
    })
}

#[test]
fn wireguard_mesh_sends_only_wireguard_shows_in_wg_and_survives_restart() {
    let mut lab = up(wireguard_spec("cwg", 3, serde_json::json!({})));

    // flannel-wg as flannel's contract: MTU 1500 - 80, lease address /32, scope-link network
    // route; the lease carries the public key of the key file.
    let link = run(&lab, 1, &["ip", "-d", "link", "show", "flannel-wg"]);
    assert!(link.contains("mtu 1420") && link.contains("tun"), "{link}");
    let routes = run(&lab, 1, &["ip", "route"]);
    assert!(
        routes.contains(&format!("{NETWORK} dev flannel-wg scope link")),
        "{routes}"
    );
    let subnet1 = lab.subnet_env(1).unwrap().subnet.unwrap().trunc();
    let addrs = run(&lab, 1, &["ip", "-4", "addr", "show", "flannel-wg"]);
    assert!(addrs.contains(&format!("inet {}/32", subnet1.network())), "{addrs}");
    assert!(std::fs::read_to_string(subnet_file(&lab, 1))
        .unwrap()
        .contains("FLANNEL_MTU=1420\n"));
    let keys: Vec<String> = (1..=3)
        .map(|n| pubkey(&std::fs::read_to_string(lab.wireguard_key_file(n)).unwrap()))
        .collect();
    for (n, key) in keys.iter().enumerate() {
        let lease = lease_value(&lab, n + 1);
        assert_eq!(lease["BackendType"], "wireguard");
        assert_eq!(
            lease["BackendData"],
            serde_json::json!({ "PublicKey": key }),
            "h{}",
            n + 1
        );
    }
    assert_ne!(keys[0], keys[1], "every host has its own key");

    // Every pod reaches every pod, and the underlay carries WireGuard messages only: no
    // plaintext packet, and the ICMP payload marker never in clear.
    let capture = Capture::start(&lab, 4);
    assert!(all_pods_reach_each_other(&lab), "wireguard mesh:\n{}", lab.status());
    let pod2 = lab.pod_ip(2).unwrap();
    let ping = lab
        .exec_in_pod(
            1,
            &["ping", "-n", "-c", "3", "-i", "0.2", "-p", MARKER, &pod2.to_string()],
        )
        .unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    let ([wg_messages, _, other, marker], seen) = capture.finish();
    assert_eq!((other, marker), (0, 0), "underlay capture:\n{seen}");
    assert!(wg_messages >= 6, "{seen}");

    // `wg show` from wireguard-tools reads weft's device through the userspace API.
    let show = run(&lab, 1, &["wg", "show", "flannel-wg"]);
    assert!(show.contains(&format!("public key: {}", keys[0])), "{show}");
    let subnet2 = lab.subnet_env(2).unwrap().subnet.unwrap().trunc();
    assert!(show.contains(&format!("peer: {}", keys[1])), "{show}");
    assert!(show.contains("endpoint: 198.51.100.2:51820"), "{show}");
    assert!(show.contains(&format!("allowed ips: {subnet2}")), "{show}");
    assert!(show.contains("latest handshake:"), "{show}");
    // weft trace follows the route into flannel-wg and checks the peer against the lease.
    let text = trace_from_h1(&lab, &lab.pod_ip(1).unwrap().to_string(), &pod2.to_string());
    assert!(
        text.contains(&format!(
            "peer {} endpoint 198.51.100.2:51820 allowed ips {subnet2}",
            keys[1]
        )),
        "{text}"
    );
    assert!(text.contains("latest handshake"), "{text}");
    let page = http_get(&lab, 1, "/metrics");
    assert!(
        metric(&page, "weft_wireguard_handshakes_total").unwrap_or(0) >= 1,
        "{page}"
    );
    assert_eq!(metric(&page, "weft_wireguard_peers"), Some(2), "{page}");

    // Restart of node 2's weftd: same key, and traffic resumes at once.
    let pinger = ping_gaps(&lab, 1, pod2, 6.0);
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    lab.restart_node(2).unwrap();
    let restart_took = started.elapsed();
    let (gap, replies) = pinger.join().unwrap();
    eprintln!(
        "restart: weftd stop+start {restart_took:?}, longest gap between ping replies {gap:?} ({replies} replies)"
    );
    assert_eq!(
        pubkey(&std::fs::read_to_string(lab.wireguard_key_file(2)).unwrap()),
        keys[1]
    );
    assert_eq!(lease_value(&lab, 2)["BackendData"]["PublicKey"], keys[1].as_str());
    // About 0.3 s here (weftd connects to etcd, takes its lease, starts the datapath); the bound
    // leaves room for a loaded CI machine.
    assert!(gap < Duration::from_secs(2), "traffic resumed after {gap:?}");
    assert!(all_pods_reach_each_other(&lab));

    // Garbage at ListenPort: dropped and counted, and the daemon keeps forwarding.
    let malformed = dropped(&lab, 1, "malformed");
    let bad_mac = dropped(&lab, 1, "bad_mac");
    let unknown_index = dropped(&lab, 1, "unknown_index");
    let script = r#"
import socket, struct, os
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
to = ("198.51.100.1", 51820)
s.sendto(b"", to); s.sendto(b"hello", to); s.sendto(os.urandom(300), to)
s.sendto(struct.pack('<I', 1) + os.urandom(144), to)             # an initiation with a wrong MAC1
s.sendto(struct.pack('<II', 4, 0x7fffff00) + os.urandom(40), to) # data for an index never given
"#;
    let out = Command::new("ip")
        .args(["netns", "exec", lab.switch_ns(), "python3", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_until(Duration::from_secs(3), || dropped(&lab, 1, "malformed")
            >= malformed + 3
            && dropped(&lab, 1, "bad_mac") > bad_mac
            && dropped(&lab, 1, "unknown_index") > unknown_index),
        "{}",
        http_get(&lab, 1, "/metrics")
    );
    assert!(lab.weftd_alive(1));
    assert!(lab.wait_ping(2, lab.pod_ip(1).unwrap(), Duration::from_secs(3)));

    // A flood of handshake initiations with a valid MAC1 (anyone who knows the public key can
    // compute it): past the rate limit weftd answers with cookie replies instead of doing the
    // Diffie-Hellman, counts them, and real peers still get through.
    let flood = r#"
import base64, hashlib, os, socket, struct, sys
pub = base64.b64decode(sys.argv[1])
key = hashlib.blake2s(b"mac1----" + pub).digest()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(600):
    msg = struct.pack('<II', 1, i) + os.urandom(108)
    mac1 = hashlib.blake2s(msg, key=key, digest_size=16).digest()
    s.sendto(msg + mac1 + bytes(16), ("198.51.100.1", 51820))
"#;
    let out = Command::new("ip")
        .args(["netns", "exec", lab.switch_ns(), "python3", "-c", flood, &keys[0]])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_until(Duration::from_secs(3), || metric_of(
            &lab,
            1,
            "weft_wireguard_cookie_replies_total"
        ) > 0
            && dropped(&lab, 1, "under_load") > 0),
        "{}",
        http_get(&lab, 1, "/metrics")
    );
    assert!(lab.wait_ping(2, lab.pod_ip(1).unwrap(), Duration::from_secs(3)));

    // A lease with a malformed PublicKey: refused by admission, logged, no peer installed.
    lab.etcd_put(
        "/coreos.com/network/subnets/10.5.250.0-24",
        r#"{"PublicIP":"198.51.100.99","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"not-a-key"}}"#,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || metric_of(
            &lab,
            1,
            "weft_leases_refused{reason=\"bad_backend_data\"}"
        ) == 1),
        "{}",
        http_get(&lab, 1, "/metrics")
    );
    assert!(wait_until(Duration::from_secs(3), || weftd_log(&lab, 1).contains("10.5.250.0-24")));
    let show = run(&lab, 1, &["wg", "show", "flannel-wg", "allowed-ips"]);
    assert!(!show.contains("10.5.250.0"), "{show}");
    assert_eq!(metric_of(&lab, 1, "weft_wireguard_peers"), 2);

    // An unreadable key file: weftd refuses to start and says which file and what to do.
    lab.stop_node(3).unwrap();
    let key3 = lab.wireguard_key_file(3);
    let saved = std::fs::read_to_string(&key3).unwrap();
    std::fs::remove_file(&key3).unwrap();
    std::fs::create_dir(&key3).unwrap();
    lab.start_node(3).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !lab.weftd_alive(3)),
        "weftd must exit"
    );
    let log = weftd_log(&lab, 3);
    assert!(
        log.contains("cannot read the private key file") && log.contains("/run/flannel/wgkey"),
        "{log}"
    );
    std::fs::remove_dir(&key3).unwrap();
    std::fs::write(&key3, saved).unwrap();
    lab.start_node(3).unwrap();
    assert!(lab.wait_ping(1, lab.pod_ip(3).unwrap(), Duration::from_secs(10)));

    // A peer that leaves is removed from the table; one that joins is added and reachable.
    let pod3 = lab.pod_ip(3).unwrap();
    lab.stop_node(3).unwrap();
    assert!(lab.etcd_delete(&lease_key(&lab, 3)).unwrap());
    assert!(
        wait_until(Duration::from_secs(5), || !run(
            &lab,
            1,
            &["wg", "show", "flannel-wg", "peers"]
        )
        .contains(&keys[2])),
        "the departed node's peer is removed"
    );
    assert!(!lab.ping(1, pod3), "nothing is sent to a departed node");
    let n4 = lab.add_node().unwrap();
    let key4 = pubkey(&std::fs::read_to_string(lab.wireguard_key_file(n4)).unwrap());
    assert!(wait_until(Duration::from_secs(5), || run(
        &lab,
        1,
        &["wg", "show", "flannel-wg", "peers"]
    )
    .contains(&key4)));
    assert!(lab.wait_ping(1, lab.pod_ip(n4).unwrap(), Duration::from_secs(10)));
    assert!(lab.wait_ping(n4, lab.pod_ip(2).unwrap(), Duration::from_secs(5)));
}

fn interop(name: &str, psk: Option<&str>) {
    let options = match psk {
        Some(psk) => serde_json::json!({ "PSK": psk, "PersistentKeepaliveInterval": 25 }),
        None => serde_json::json!({}),
    };
    let mut lab = up(wireguard_spec(name, 3, options));
    assert!(all_pods_reach_each_other(&lab), "weft mesh first:\n{}", lab.status());
    let public = lab.wireguard_go(&[3], psk).unwrap().remove(0);
    // The weft nodes replace node 3's peer (its key changed) and reach the pods behind it.
    assert!(
        wait_until(Duration::from_secs(5), || run(
            &lab,
            1,
            &["wg", "show", "flannel-wg", "peers"]
        )
        .contains(&public)),
        "weft node 1 has wireguard-go's key as a peer"
    );
    assert!(
        all_pods_reach_each_other(&lab),
        "with wireguard-go on h3:\n{}",
        lab.status()
    );
    let show = run(&lab, 3, &["wg", "show", "flannel-wg"]);
    assert!(show.contains("latest handshake:"), "wireguard-go's view:\n{show}");
    if psk.is_some() {
        let ours = run(&lab, 1, &["wg", "show", "flannel-wg"]);
        assert!(ours.contains("preshared key: (hidden)"), "{ours}");
        assert!(ours.contains("persistent keepalive: every 25 seconds"), "{ours}");
    }
}

#[test]
fn wireguard_interop_with_wireguard_go_without_psk() {
    interop("cwgi", None);
}

#[test]
fn wireguard_interop_with_wireguard_go_with_psk_and_a_wrong_psk() {
    interop("cwgp", Some(PSK));
    // A wrong PSK on one side: no traffic, the failed handshakes counted, nothing crashes.
    let mut lab = up(wireguard_spec("cwgw", 3, serde_json::json!({ "PSK": PSK })));
    assert!(all_pods_reach_each_other(&lab));
    lab.wireguard_go(&[3], Some(WRONG_PSK)).unwrap();
    let pod3 = lab.pod_ip(3).unwrap();
    let failed_before = dropped(&lab, 1, "auth_failed");
    assert!(
        !lab.wait_ping(1, pod3, Duration::from_secs(3)),
        "a wrong PSK must carry nothing"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let _ = lab.ping(1, pod3);
            dropped(&lab, 1, "auth_failed") > failed_before
        }),
        "failed handshakes counted:\n{}",
        http_get(&lab, 1, "/metrics")
    );
    assert!(lab.weftd_alive(1) && lab.weftd_alive(2));
    assert!(lab.wait_ping(1, lab.pod_ip(2).unwrap(), Duration::from_secs(3)));
}
