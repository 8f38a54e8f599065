//! The udp backend (flannel0) on the lab: mesh, join, leave, and datagrams that must be dropped.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use weft::lab::Lab;
use weft_core::BackendKind;

/// Sends one UDP datagram to 198.51.100.`to_node`:8285 from namespace `ns`: a well-formed IPv4
/// packet from `inner_src` to `inner_dst`, or `garbage` bytes when inner_src is None.
fn send_datagram(ns: &str, to_node: usize, inner: Option<(Ipv4Addr, Ipv4Addr)>) {
    let script = r#"
import socket, struct, sys
to = sys.argv[1]
if len(sys.argv) > 2:
    src, dst = socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3])
    body = b'\x08\x00\xf7\xff\x00\x00\x00\x00'
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(body), 1, 0, 64, 1, 0, src, dst)
    s = sum(struct.unpack('!10H', h)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    h = h[:10] + struct.pack('!H', ~s & 0xffff) + h[12:]
    data = h + body
else:
    data = b'\x45 truncated'  # IPv4 version nibble, shorter than a header
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(data, (to, 8285))
"#;
    let to = format!("198.51.100.{to_node}");
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "python3", "-c", script, &to]);
    if let Some((src, dst)) = inner {
        cmd.args([src.to_string(), dst.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn dropped(lab: &Lab, node: usize, reason: &str) -> u64 {
    let page = host_out(
        lab,
        node,
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/8471 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
        ],
    );
    let name = format!("weft_udp_dropped_total{{reason=\"{reason}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn udp_mesh_drops_bad_datagrams_and_follows_joins_and_leaves() {
    let mut spec = spec(&lab_name("cud"), 3, BackendKind::Udp);
    spec.weftd_args.push("--healthz-port=8471".into());
    let mut lab = up(spec);

    // flannel0 as the contract says, and flannel's lease format without BackendType.
    let link = host_out(&lab, 1, &["ip", "-d", "link", "show", "flannel0"]);
    assert!(link.contains("mtu 1472") && link.contains("tun"), "{link}");
    let routes = host_out(&lab, 1, &["ip", "route"]);
    assert!(routes.contains("10.5.0.0/16 dev flannel0"), "{routes}");
    assert!(std::fs::read_to_string(subnet_file(&lab, 1))
        .unwrap()
        .contains("FLANNEL_MTU=1472\n"));
    let (_, value) = &lab.etcd_get_prefix("/coreos.com/network/subnets/").unwrap()[0];
    assert!(
        String::from_utf8_lossy(value).ends_with(r#","PublicIPv6":null}"#),
        "{}",
        String::from_utf8_lossy(value)
    );

    assert!(all_pods_reach_each_other(&lab), "udp mesh:\n{}", lab.status());

    // weft trace shows weftd's peer-table entry for the destination.
    let dir = lab.dir().display().to_string();
    let (src, dst) = (lab.pod_ip(1).unwrap().to_string(), lab.pod_ip(2).unwrap().to_string());
    let args = [
        env!("CARGO_BIN_EXE_weft").to_string(),
        "trace".into(),
        src,
        dst,
        format!("--subnet-file={dir}/h1/subnet.env"),
        "--etcd-endpoints=https://198.51.100.254:2379".into(),
        format!("--etcd-cafile={dir}/ca.pem"),
        format!("--etcd-certfile={dir}/client.pem"),
        format!("--etcd-keyfile={dir}/client-key.pem"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let subnet2 = lab.subnet_env(2).unwrap().subnet.trunc();
    let out = lab.exec_in_host(1, &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("{subnet2} -> 198.51.100.2:8285")), "{text}");

    // Garbage from a peer, a packet from an address no lease names, a peer forging its inner
    // source: all dropped and counted, and the daemon keeps forwarding.
    let pod1 = lab.pod_ip(1).unwrap();
    let pod3 = lab.pod_ip(3).unwrap();
    let (m0, u0, s0) = (
        dropped(&lab, 1, "malformed"),
        dropped(&lab, 1, "unknown_peer"),
        dropped(&lab, 1, "spoofed_source"),
    );
    send_datagram(lab.host_ns(2).unwrap(), 1, None);
    send_datagram(lab.switch_ns(), 1, Some((pod3, pod1)));
    send_datagram(lab.host_ns(2).unwrap(), 1, Some((pod3, pod1)));
    assert!(
        wait_until(Duration::from_secs(6), || dropped(&lab, 1, "malformed") > m0
            && dropped(&lab, 1, "unknown_peer") > u0
            && dropped(&lab, 1, "spoofed_source") > s0),
        "drops counted by reason"
    );
    assert!(lab.weftd_alive(1));
    assert!(lab.wait_ping(2, pod1, Duration::from_secs(3)));

    // A node that leaves stops being reachable; one that joins becomes reachable.
    let gone = lab.subnet_env(3).unwrap().subnet.trunc();
    lab.stop_node(3).unwrap();
    assert!(lab
        .etcd_delete(&format!("/coreos.com/network/subnets/{}-24", gone.network()))
        .unwrap());
    // Node 3's own kernel would still answer; what matters is that node 1 no longer sends there.
    assert!(
        wait_until(Duration::from_secs(6), || !lab.ping(1, pod3)),
        "the departed node is no longer reachable"
    );
    let n4 = lab.add_node().unwrap();
    let pod4 = lab.pod_ip(n4).unwrap();
    assert!(
        lab.wait_ping(1, pod4, Duration::from_secs(10)),
        "the new node is reachable"
    );
    assert!(lab.wait_ping(n4, pod1, Duration::from_secs(5)));
}
