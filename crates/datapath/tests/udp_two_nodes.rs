//! Root test of the udp backend: two namespaces, a real TUN device and real UDP between them.
//! Checks that flannel0 looks like flannel's, that pings cross both ways, that a datagram in
//! flannel's format (the raw inner IPv4 packet) is delivered, that spoofed and malformed
//! datagrams are dropped and counted while traffic goes on, that a destination no lease covers
//! gets ICMP net unreachable, that a restart adopts flannel0 and traffic resumes at once, and
//! that a peer leaving or joining takes effect on the next reconcile.
//!
//! Fails (saying so) when not run as root.

mod two_nodes;
mod udp_common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use udp_common::{in_netns, ping, require_root, run, udp_lease, Kind, Node, Topology};
use weft_datapath::udp::{DropReason, UdpTuning};

/// An IPv4/UDP packet `src:4000 -> dst:port` carrying `payload`, with a valid header checksum
/// (the UDP checksum is left 0: allowed over IPv4).
fn inner_udp(src: [u8; 4], dst: [u8; 4], port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let sum: u32 = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let c = !((folded & 0xffff) + (folded >> 16)) as u16;
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// 32 MB over one TCP connection from node a (source: flannel0's address) to b's pod address,
/// checked byte for byte:
/// with offloads this goes through TSO splitting, UDP GSO/GRO and GRO coalescing.
fn bulk_tcp_arrives_intact(ns_a: &str, ns_b: &str) {
    use std::io::{Read, Write};
    const LEN: usize = 32 << 20;
    let pattern = |i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    let server = in_netns(ns_b, move || {
        let listener = std::net::TcpListener::bind("10.5.2.1:7001").unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut seen = 0usize;
        let mut bad = 0usize;
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            bad += buf[..n]
                .iter()
                .enumerate()
                .filter(|(k, b)| **b != pattern(seen + k))
                .count();
            seen += n;
        }
        (seen, bad)
    });
    std::thread::sleep(Duration::from_millis(200));
    in_netns(ns_a, move || {
        let sock = std::net::TcpStream::connect_timeout(&"10.5.2.1:7001".parse().unwrap(), Duration::from_secs(5));
        let mut conn = sock.expect("connect to b's pod address");
        conn.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let data: Vec<u8> = (0..LEN).map(pattern).collect();
        conn.write_all(&data).unwrap();
    })
    .join()
    .unwrap();
    let (seen, bad) = server.join().unwrap();
    assert_eq!((seen, bad), (LEN, 0), "every byte arrives, unchanged");
}

#[test]
fn udp_two_nodes_with_offloads() {
    // Workers own a CPU each (steering by CPU, pinned while traffic is light) where they can.
    scenario(true);
}

#[test]
fn udp_two_nodes_one_packet_per_syscall() {
    scenario(false);
}

fn scenario(offload: bool) {
    require_root();
    // The offload scenario also runs the workers on their own CPUs; the other, by flow hash.
    let tuning = || {
        Kind::Udp(UdpTuning {
            workers: 2,
            offload,
            cpu_affinity: offload,
        })
    };
    let t = Topology::new("wtu", 5);
    let a = Node::start(&t.a, "10.5.1.0/24", Ipv4Addr::new(198, 51, 100, 1), tuning());
    let b = Node::start(&t.b, "10.5.2.0/24", Ipv4Addr::new(198, 51, 100, 2), tuning());
    assert_eq!(a.mtu, 1472, "interface MTU 1500 - 28");
    assert!(a.backend_data.is_null(), "udp leases carry no BackendData");
    let leases = vec![
        udp_lease("10.5.1.0/24", "198.51.100.1"),
        udp_lease("10.5.2.0/24", "198.51.100.2"),
        // Ignored: a vxlan node cannot read our datagrams.
        weft_core::Lease {
            subnet: weft_core::SubnetKey::v4("10.5.4.0/24".parse().unwrap()),
            attrs: weft_core::LeaseAttrs::new(
                "198.51.100.4".parse().unwrap(),
                "vxlan",
                serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:04"}),
            ),
        },
    ];

    // flannel0 looks like flannel's: persistent multi-queue TUN, lease IP /32, MTU - 28, and
    // one route for the whole network.
    let link = run(&["ip", "-d", "-n", &t.a, "link", "show", "flannel0"]);
    assert!(link.contains("mtu 1472"), "{link}");
    assert!(link.contains("tun") && link.contains("persist on"), "{link}");
    assert!(link.contains("multi_queue"), "{link}");
    let addr = run(&["ip", "-n", &t.a, "-4", "addr", "show", "dev", "flannel0"]);
    assert!(addr.contains("inet 10.5.1.0/32"), "{addr}");

    let ra = a.reconcile(&leases);
    let rb = b.reconcile(&leases);
    assert_eq!((ra.peers, ra.skipped_leases, ra.peers_changed), (1, 1, true), "{ra:?}");
    assert_eq!(rb.peers, 1, "{rb:?}");
    let routes = run(&["ip", "-n", &t.a, "route", "show"]);
    assert!(routes.contains("10.5.0.0/16 dev flannel0"), "{routes}");
    let again = a.reconcile(&leases);
    assert!(!again.changed(), "nothing to do the second time: {again:?}");

    // Pod to pod, both ways, and host to pod (source: flannel0's address).
    let (ok, out) = ping(&t.a, "10.5.1.1", "10.5.2.1", 3, 2);
    assert!(ok, "ping a -> b: {out}");
    assert!(
        out.contains("ttl=62"),
        "TTL decremented by both ends, as flannel does: {out}"
    );
    let (ok, out) = ping(&t.b, "10.5.2.1", "10.5.1.1", 3, 2);
    assert!(ok, "ping b -> a: {out}");
    let (ok, out) = ping(&t.a, "10.5.1.0", "10.5.2.1", 1, 2);
    assert!(ok, "ping from flannel0's address: {out}");
    bulk_tcp_arrives_intact(&t.a, &t.b);
    let ca = a.counters();
    assert!(ca.tx_packets >= 4 && ca.rx_packets >= 4, "{ca:?}");
    assert_eq!(ca.dropped_total() - ca.dropped(DropReason::NotIpv4), 0, "{ca:?}");

    // A datagram in flannel's format (the raw inner packet) from b's public IP is delivered to
    // a socket on a's pod address; spoofed and malformed ones are dropped and counted.
    let listener = in_netns(&t.a, || {
        let sock = UdpSocket::bind("10.5.1.1:7777").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        sock.recv_from(&mut buf).map(|(n, from)| (buf[..n].to_vec(), from))
    });
    std::thread::sleep(Duration::from_millis(200));
    run(&["ip", "-n", &t.b, "addr", "add", "198.51.100.9/24", "dev", "veth0"]);
    in_netns(&t.b, || {
        let from_b = UdpSocket::bind("198.51.100.2:0").unwrap();
        let to = "198.51.100.1:8285";
        // Inner source outside b's subnet.
        from_b
            .send_to(&inner_udp([10, 5, 3, 5], [10, 5, 1, 1], 7777, b"spoof"), to)
            .unwrap();
        // Inner destination outside a's subnet.
        from_b
            .send_to(&inner_udp([10, 5, 2, 5], [10, 5, 7, 1], 7777, b"notours"), to)
            .unwrap();
        // Shorter than an IPv4 header, and a header that claims more bytes than there are.
        from_b.send_to(&[0xde, 0xad, 0xbe, 0xef], to).unwrap();
        let mut short = inner_udp([10, 5, 2, 5], [10, 5, 1, 1], 7777, b"short");
        short.truncate(24);
        from_b.send_to(&short, to).unwrap();
        // From an address that holds no lease.
        let stranger = UdpSocket::bind("198.51.100.9:0").unwrap();
        stranger
            .send_to(&inner_udp([10, 5, 2, 5], [10, 5, 1, 1], 7777, b"stranger"), to)
            .unwrap();
        // And a good one, last.
        from_b
            .send_to(&inner_udp([10, 5, 2, 5], [10, 5, 1, 1], 7777, b"flannel"), to)
            .unwrap();
    })
    .join()
    .unwrap();
    let (payload, from) = listener.join().unwrap().expect("the well-formed datagram is delivered");
    assert_eq!(payload, b"flannel", "only the well-formed datagram arrives");
    assert_eq!(from.ip(), Ipv4Addr::new(10, 5, 2, 5));
    let ca = a.counters();
    assert_eq!(ca.dropped(DropReason::SpoofedSource), 1, "{ca:?}");
    assert_eq!(ca.dropped(DropReason::NotForUs), 1, "{ca:?}");
    assert_eq!(ca.dropped(DropReason::TooShort), 1, "4 bytes: {ca:?}");
    assert_eq!(
        ca.dropped(DropReason::Malformed),
        1,
        "a header longer than the datagram: {ca:?}"
    );
    assert_eq!(ca.dropped(DropReason::UnknownPeer), 1, "{ca:?}");
    let (ok, out) = ping(&t.a, "10.5.1.1", "10.5.2.1", 1, 2);
    assert!(ok, "traffic goes on after bad datagrams: {out}");

    // A destination inside the network that no lease covers: ICMP net unreachable.
    let (ok, out) = ping(&t.a, "10.5.1.1", "10.5.9.1", 1, 2);
    assert!(!ok && out.contains("Net Unreachable"), "{out}");
    assert!(a.counters().icmp_unreachable >= 1);

    // Restart: the device, its address and route stay; a new backend adopts them and traffic
    // resumes at once.
    let index_before = run(&["ip", "-n", &t.a, "-o", "link", "show", "flannel0"]);
    drop(a);
    let addr = run(&["ip", "-n", &t.a, "-4", "addr", "show", "dev", "flannel0"]);
    assert!(addr.contains("inet 10.5.1.0/32"), "flannel0 keeps its address: {addr}");
    let restarted = Instant::now();
    let a = Node::start(&t.a, "10.5.1.0/24", Ipv4Addr::new(198, 51, 100, 1), tuning());
    let r = a.reconcile(&leases);
    assert!(!r.device_recreated && r.corrected == 0, "adopted as it was: {r:?}");
    let (ok, out) = ping(&t.a, "10.5.1.1", "10.5.2.1", 1, 1);
    let resumed = restarted.elapsed();
    assert!(ok, "ping right after restart: {out}");
    assert!(resumed < Duration::from_secs(1), "traffic resumed after {resumed:?}");
    let index_after = run(&["ip", "-n", &t.a, "-o", "link", "show", "flannel0"]);
    assert_eq!(
        index_before.split(':').next(),
        index_after.split(':').next(),
        "same device"
    );
    eprintln!("traffic resumed {resumed:?} after the restart began");

    // The device deleted by hand: the next reconcile creates it again.
    run(&["ip", "-n", &t.a, "link", "del", "flannel0"]);
    let r = a.reconcile(&leases);
    assert!(r.device_recreated, "{r:?}");
    let (ok, out) = ping(&t.a, "10.5.1.1", "10.5.2.1", 2, 2);
    assert!(ok, "ping after the device was recreated: {out}");

    // b leaves: a stops sending to it (net unreachable); b joins again: reachable again.
    let only_a = vec![udp_lease("10.5.1.0/24", "198.51.100.1")];
    let r = a.reconcile(&only_a);
    assert_eq!(r.peers, 0, "{r:?}");
    let (ok, out) = ping(&t.a, "10.5.1.1", "10.5.2.1", 1, 1);
    assert!(!ok && out.contains("Net Unreachable"), "{out}");
    let r = a.reconcile(&leases);
    assert_eq!(r.peers, 1, "{r:?}");
    let (ok, out) = ping(&t.a, "10.5.1.1", "10.5.2.1", 1, 2);
    assert!(ok, "b reachable again after it rejoined: {out}");
    drop(b);
    drop(a);
}
