//! The udp backend (flannel0) on the lab: mesh, join, leave, and datagrams that must be dropped.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use weft::lab::Lab;
use weft_core::BackendKind;

/// A datagram sent at a node's udp port that the node must drop.
enum Datagram {
    /// Zero bytes.
    Empty,
    /// Shorter than an IPv4 header.
    Short,
    /// A well-formed ICMP echo request from `.0` to `.1`.
    Echo(Ipv4Addr, Ipv4Addr),
    /// An echo request cut short: its header claims 4 bytes more than the datagram holds.
    Truncated(Ipv4Addr, Ipv4Addr),
    /// An echo request whose IPv4 header checksum is wrong.
    BadIpChecksum(Ipv4Addr, Ipv4Addr),
    /// A TCP data segment (ACK, 100 bytes: one GRO would merge) whose TCP checksum is wrong.
    BadTcpChecksum(Ipv4Addr, Ipv4Addr),
}

/// Sends one UDP datagram to 198.51.100.`to_node`:8285 from namespace `ns`.
fn send_datagram(ns: &str, to_node: usize, datagram: Datagram) {
    let script = r#"
import socket, struct, sys
to, kind = sys.argv[1], sys.argv[2]
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
def ip(src, dst, proto, body):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(body), 1, 0, 64, proto, 0, src, dst)
    return h[:10] + struct.pack('!H', csum(h)) + h[12:] + body
if kind == 'empty':
    data = b''
elif kind == 'short':
    data = b'\x45 truncated'  # IPv4 version nibble, shorter than a header
else:
    src, dst = socket.inet_aton(sys.argv[3]), socket.inet_aton(sys.argv[4])
    if kind == 'tcp':
        tcp = struct.pack('!HHIIBBHHH', 40000, 7003, 1, 1, 5 << 4, 0x10, 65535, 0, 0) + b'\xbb' * 100
        c = csum(src + dst + struct.pack('!BBH', 0, 6, len(tcp)) + tcp) ^ 0x0101  # wrong on purpose
        data = ip(src, dst, 6, tcp[:16] + struct.pack('!H', c) + tcp[18:])
    else:
        data = ip(src, dst, 1, b'\x08\x00\xf7\xff\x00\x00\x00\x00')
        if kind == 'badsum':
            data = data[:10] + bytes([data[10] ^ 0x5a]) + data[11:]
        elif kind == 'truncated':
            data = data[:24]
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(data, (to, 8285))
"#;
    let to = format!("198.51.100.{to_node}");
    let (kind, inner) = match datagram {
        Datagram::Empty => ("empty", None),
        Datagram::Short => ("short", None),
        Datagram::Echo(s, d) => ("echo", Some((s, d))),
        Datagram::Truncated(s, d) => ("truncated", Some((s, d))),
        Datagram::BadIpChecksum(s, d) => ("badsum", Some((s, d))),
        Datagram::BadTcpChecksum(s, d) => ("tcp", Some((s, d))),
    };
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "python3", "-c", script, &to, kind]);
    if let Some((src, dst)) = inner {
        cmd.args([src.to_string(), dst.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn metrics_page(lab: &Lab, node: usize) -> String {
    host_out(
        lab,
        node,
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/8471 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
        ],
    )
}

/// The value of the line `name ` on the page, if there is one.
fn metric(page: &str, name: &str) -> Option<u64> {
    let name = format!("{name} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.parse().ok())
}

/// The drops counted under every reason of `REASONS` on node's /metrics.
fn dropped(lab: &Lab, node: usize) -> Vec<u64> {
    let page = metrics_page(lab, node);
    REASONS
        .iter()
        .map(|r| metric(&page, &format!("weft_udp_dropped_total{{reason=\"{r}\"}}")).unwrap_or(0))
        .collect()
}

const REASONS: [&str; 6] = [
    "too_short",
    "malformed",
    "bad_ip_checksum",
    "bad_tcp_checksum",
    "unknown_peer",
    "spoofed_source",
];

#[test]
fn udp_mesh_drops_bad_datagrams_and_follows_joins_and_leaves() {
    let mut spec = spec(&lab_name("cud"), 3, BackendKind::Udp);
    // Counters must be live: nothing may wait for a periodic reconcile.
    spec.weftd_args = vec!["--reconcile-interval=600".into(), "--healthz-port=8471".into()];
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
    let mut args = vec![
        env!("CARGO_BIN_EXE_weft").to_string(),
        "trace".into(),
        src,
        dst,
        format!("--subnet-file={dir}/h1/subnet.env"),
    ];
    args.extend(etcd_flags(&lab));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let subnet2 = lab.subnet_env(2).unwrap().subnet.unwrap().trunc();
    let out = lab.exec_in_host(1, &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("{subnet2} -> 198.51.100.2:8285")), "{text}");

    // Bad datagrams of every kind, from a peer, from an address no lease names, and a peer
    // forging its inner source: each dropped and counted under its reason, on /metrics at once
    // (weftd here reconciles only on lease events and every 10 minutes), and the daemon keeps
    // forwarding.
    let page = metrics_page(&lab, 1);
    for name in ["weft_udp_send_errors_total", "weft_udp_tun_write_errors_total"] {
        assert!(metric(&page, name).is_some(), "{name} missing:\n{page}");
    }
    let pod1 = lab.pod_ip(1).unwrap();
    let pod2 = lab.pod_ip(2).unwrap();
    let pod3 = lab.pod_ip(3).unwrap();
    let before = dropped(&lab, 1);
    let peer = lab.host_ns(2).unwrap();
    send_datagram(peer, 1, Datagram::Empty);
    send_datagram(peer, 1, Datagram::Short);
    send_datagram(peer, 1, Datagram::Truncated(pod2, pod1));
    send_datagram(peer, 1, Datagram::BadIpChecksum(pod2, pod1));
    send_datagram(peer, 1, Datagram::BadTcpChecksum(pod2, pod1));
    send_datagram(lab.switch_ns(), 1, Datagram::Echo(pod3, pod1));
    send_datagram(peer, 1, Datagram::Echo(pod3, pod1));
    let want: Vec<u64> = before.iter().zip([2, 1, 1, 1, 1, 1]).map(|(b, n)| b + n).collect();
    let mut now = before.clone();
    assert!(
        wait_until(Duration::from_secs(2), || {
            now = dropped(&lab, 1);
            now == want
        }),
        "drops by reason {REASONS:?}: {before:?} before, {now:?} now, {want:?} wanted"
    );
    assert!(lab.weftd_alive(1));
    assert!(lab.wait_ping(2, pod1, Duration::from_secs(3)));

    // A node that leaves stops being reachable; one that joins becomes reachable.
    let gone = lab.subnet_env(3).unwrap().subnet.unwrap().trunc();
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
