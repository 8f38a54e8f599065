//! Root test of what the udp backend refuses: two namespaces with real TUN devices and real UDP
//! between them. A TCP connection forged through the tunnel carries a segment with a bad TCP
//! checksum between two good ones, the run GRO would merge: the pod must read the retransmitted
//! good bytes, never the bad ones. Then a bounded flood of malformed and spoofed datagrams
//! (bad IPv4 header checksums, bad TCP checksums in mergeable runs, zero-length and short
//! datagrams, headers longer than the datagram, inner sources outside the sender's subnet,
//! destinations outside ours, senders holding no lease) goes at node a's udp port while a ping
//! crosses: the ping loses nothing, every bad datagram is counted under its reason, and a
//! capture on a's flannel0 sees none of them.
//!
//! Every bad datagram carries the byte 0xBB as its payload; nothing good does, so a run of
//! 0xBB in flannel0 is a bad datagram that got through. Fails (saying so) when not
//! run as root.

mod two_nodes;
mod udp_common;

use std::io::Read;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use udp_common::{in_netns, ping, require_root, run, udp_lease, Kind, Node, Topology};
use weft_datapath::udp::{DropReason, UdpCounters, UdpTuning};

const BAD: u8 = 0xbb;
const A_POD: [u8; 4] = [10, 5, 1, 1];
const NODE_A_PORT: &str = "198.51.100.1:8285";

fn sum(data: &[u8], mut acc: u32) -> u32 {
    for w in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// An IPv4 header for `payload_len` bytes of `proto`, with a valid checksum.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize) -> Vec<u8> {
    let total = 20 + payload_len;
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = !fold(sum(&p, 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

/// An IPv4/UDP packet to port 7777 with a valid header checksum (UDP checksum 0: none).
fn udp_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = ipv4(src, dst, 17, 8 + payload.len());
    p.extend_from_slice(&4000u16.to_be_bytes());
    p.extend_from_slice(&7777u16.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// An IPv4/TCP segment with valid checksums (no options).
#[allow(clippy::too_many_arguments)]
fn tcp_packet(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = ipv4(src, dst, 6, 20 + payload.len());
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(payload);
    let pseudo = sum(&p[12..20], 6 + t.len() as u32);
    let c = !fold(sum(&t, pseudo));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&t);
    p
}

/// Sends `data` as datagrams of `segment` bytes with one UDP GSO send (UDP_SEGMENT), as weft's
/// sender does, so the receiver gets them as one UDP_GRO message.
fn send_gso(sock: &UdpSocket, data: &[u8], segment: u16, to: &str) {
    let size = libc::c_int::from(segment);
    // SAFETY: the option value is a c_int that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    sock.send_to(data, to).expect("GSO send");
    let off: libc::c_int = 0;
    // SAFETY: as above.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&off as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// A packet socket on one device of the calling thread's namespace: sees every packet written
/// into the device (incoming) and every packet the kernel routes out through it.
struct Capture(OwnedFd);

impl Capture {
    fn open(device: &str) -> Capture {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, libc::c_int::from(proto)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is fresh and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(device).unwrap();
        // SAFETY: name is a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no device {device}");
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind to {device}: {}", std::io::Error::last_os_error());
        let big: libc::c_int = 32 << 20;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: the option values live across the calls.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&big as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Capture(fd)
    }

    /// The next packet written into the device (outgoing ones are skipped); None after 100 ms
    /// of quiet.
    fn next_incoming(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for writes of the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return None;
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                return Some(n as usize);
            }
        }
    }
}

/// What the capture on a's flannel0 saw written into it.
#[derive(Debug, Default)]
struct Seen {
    packets: usize,
    /// Packets carrying a run of 0xBB: bad datagrams that got through.
    bad_payload: usize,
    /// Not a whole IPv4 packet with a valid header checksum from b's subnet to a's.
    bad_header: usize,
    /// TCP packets with a bad TCP checksum written as they came (no offloads: for the kernel
    /// to check, as it checks what a NIC hands it).
    tcp_bad_checksum: usize,
}

fn inspect(p: &[u8], seen: &mut Seen) {
    seen.packets += 1;
    if p.windows(16).any(|w| w.iter().all(|b| *b == BAD)) {
        seen.bad_payload += 1;
        if p.len() >= 40 && p[9] == 6 && fold(sum(&p[20..], sum(&p[12..20], 6 + p.len() as u32 - 20))) != 0xffff {
            seen.tcp_bad_checksum += 1;
        }
    }
    let whole = p.len() >= 20
        && p[0] == 0x45
        && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len()
        && fold(sum(&p[..20], 0)) == 0xffff;
    if !whole || p[12..15] != [10, 5, 2] || p[16..19] != [10, 5, 1] {
        seen.bad_header += 1;
    }
}

/// Captures on flannel0 in `ns` until `stop` is set and the device has been quiet for 100 ms.
fn capture_flannel0(ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Seen> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = in_netns(ns, move || {
        let cap = Capture::open("flannel0");
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 1 << 17];
        let mut seen = Seen::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match cap.next_incoming(&mut buf) {
                Some(n) => inspect(&buf[..n.min(buf.len())], &mut seen),
                None if stop.load(Ordering::Relaxed) || Instant::now() > deadline => return seen,
                None => {}
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("capture ready");
    handle
}

/// A TCP connection from a made-up pod 10.5.2.50 on b to a listener on a's pod address, forged
/// datagram by datagram from b's public IP. Data: 1000 bytes of 0x11, then 1000 of 0xBB with a
/// bad TCP checksum, then 1000 of 0x11, sent as one GSO run that GRO would merge whole; then
/// the middle segment again, good, with 0x22. The pod must read 0x11, 0x22, 0x11.
fn bad_segment_in_a_mergeable_run_never_reaches_the_pod(t: &Topology) {
    let listener = in_netns(&t.a, || {
        let l = TcpListener::bind("10.5.1.1:7002").unwrap();
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("no connection: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < 3000 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    std::thread::sleep(Duration::from_millis(200));
    in_netns(&t.b, || {
        // The listener's answers come back through the tunnel into b's flannel0.
        let cap = Capture::open("flannel0");
        let sock = UdpSocket::bind("198.51.100.2:0").unwrap();
        let client = [10, 5, 2, 50];
        let seg = |seq: u32, ack: u32, flags: u8, payload: &[u8]| {
            tcp_packet(client, 40000, A_POD, 7002, seq, ack, flags, payload)
        };
        let c0 = 1_000_000u32;
        sock.send_to(&seg(c0, 0, 0x02, &[]), NODE_A_PORT).unwrap();
        let mut buf = vec![0u8; 1 << 17];
        let deadline = Instant::now() + Duration::from_secs(5);
        let s0 = loop {
            assert!(Instant::now() < deadline, "no SYN-ACK from a's pod");
            let Some(n) = cap.next_incoming(&mut buf) else { continue };
            let p = &buf[..n];
            if n >= 40 && p[9] == 6 && p[12..16] == A_POD && p[33] == 0x12 {
                break u32::from_be_bytes(p[24..28].try_into().unwrap());
            }
        };
        let (seq, ack) = (c0 + 1, s0 + 1);
        sock.send_to(&seg(seq, ack, 0x10, &[]), NODE_A_PORT).unwrap();
        let mut bad = seg(seq + 1000, ack, 0x10, &[BAD; 1000]);
        bad[37] ^= 0x01;
        let run = [
            seg(seq, ack, 0x10, &[0x11; 1000]),
            bad,
            seg(seq + 2000, ack, 0x10, &[0x11; 1000]),
        ]
        .concat();
        send_gso(&sock, &run, 1040, NODE_A_PORT);
        std::thread::sleep(Duration::from_millis(100));
        sock.send_to(&seg(seq + 1000, ack, 0x10, &[0x22; 1000]), NODE_A_PORT)
            .unwrap();
    })
    .join()
    .unwrap();
    let got = listener.join().unwrap();
    let want = [[0x11u8; 1000], [0x22; 1000], [0x11; 1000]].concat();
    assert!(
        !got.contains(&BAD),
        "bytes of the segment with a bad checksum reached the pod"
    );
    assert_eq!(got, want, "the pod reads the good bytes, in order");
}

/// What the flood sent, per class.
#[derive(Debug, Default)]
struct Sent {
    bad_ip_checksum: u64,
    bad_tcp_checksum: u64,
    zero_length: u64,
    short: u64,
    truncated: u64,
    spoofed: u64,
    not_for_us: u64,
    unknown_peer: u64,
}

/// Up to `rounds` rounds of every kind of bad datagram, at most `within`, paced so that the
/// receiving socket's buffer never overflows (every datagram must be counted).
fn flood(ns_b: &str, rounds: u64, within: Duration) -> Sent {
    in_netns(ns_b, move || {
        let peer = UdpSocket::bind("198.51.100.2:0").unwrap();
        let stranger = UdpSocket::bind("198.51.100.9:0").unwrap();
        let mut sent = Sent::default();
        let started = Instant::now();
        let mut bad_ip = udp_packet([10, 5, 2, 5], A_POD, &[BAD; 64]);
        bad_ip[10] ^= 0x5a;
        let mut truncated = udp_packet([10, 5, 2, 5], A_POD, &[BAD; 64]);
        truncated.truncate(60);
        let spoofed = udp_packet([10, 5, 3, 5], A_POD, &[BAD; 64]);
        let not_for_us = udp_packet([10, 5, 2, 5], [10, 5, 7, 1], &[BAD; 64]);
        let from_stranger = udp_packet([10, 5, 2, 5], A_POD, &[BAD; 64]);
        for round in 0..rounds {
            if started.elapsed() > within {
                break;
            }
            let send = |s: &UdpSocket, d: &[u8]| s.send_to(d, NODE_A_PORT).expect("send");
            send(&peer, &bad_ip);
            sent.bad_ip_checksum += 1;
            // A run of 4 mergeable segments of one flow, each with a bad TCP checksum.
            let base = (round as u32).wrapping_mul(4000);
            let run: Vec<u8> = (0..4u32)
                .flat_map(|k| {
                    let mut s = tcp_packet(
                        [10, 5, 2, 60],
                        41000,
                        A_POD,
                        7003,
                        base + k * 1000,
                        1,
                        0x10,
                        &[BAD; 1000],
                    );
                    s[36] ^= 0x40;
                    s
                })
                .collect();
            send_gso(&peer, &run, 1040, NODE_A_PORT);
            sent.bad_tcp_checksum += 4;
            send(&peer, &[]);
            sent.zero_length += 1;
            send(&peer, &[0x45, 0, 0, 20, BAD, BAD]);
            sent.short += 1;
            send(&peer, &truncated);
            sent.truncated += 1;
            send(&peer, &spoofed);
            sent.spoofed += 1;
            send(&peer, &not_for_us);
            sent.not_for_us += 1;
            send(&stranger, &from_stranger);
            sent.unknown_peer += 1;
            if round % 16 == 15 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sent
    })
    .join()
    .unwrap()
}

/// The kernel's count of TCP segments with bad checksums in `ns`.
fn tcp_checksum_errors(ns: &str) -> u64 {
    in_netns(ns, || {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
        let at = names.split_whitespace().position(|n| n == "InCsumErrors").unwrap();
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    })
    .join()
    .unwrap()
}

fn wait_for(node: &Node, within: Duration, done: impl Fn(&UdpCounters) -> bool) -> UdpCounters {
    let deadline = Instant::now() + within;
    loop {
        let c = node.counters();
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn udp_refuses_malformed_datagrams_with_offloads() {
    scenario(true);
}

#[test]
fn udp_refuses_malformed_datagrams_one_packet_per_syscall() {
    scenario(false);
}

fn scenario(offload: bool) {
    require_root();
    let tuning = || {
        Kind::Udp(UdpTuning {
            workers: 2,
            offload,
            cpu_affinity: false,
        })
    };
    let t = Topology::new("wtf", 5);
    let a = Node::start(&t.a, "10.5.1.0/24", Ipv4Addr::new(198, 51, 100, 1), tuning());
    let b = Node::start(&t.b, "10.5.2.0/24", Ipv4Addr::new(198, 51, 100, 2), tuning());
    let leases = vec![
        udp_lease("10.5.1.0/24", "198.51.100.1"),
        udp_lease("10.5.2.0/24", "198.51.100.2"),
    ];
    a.reconcile(&leases);
    b.reconcile(&leases);
    run(&["ip", "-n", &t.b, "addr", "add", "198.51.100.9/24", "dev", "veth0"]);
    let (ok, out) = ping(&t.a, "10.5.1.1", "10.5.2.1", 2, 2);
    assert!(ok, "ping a -> b before: {out}");

    let stop = Arc::new(AtomicBool::new(false));
    let capture = capture_flannel0(&t.a, stop.clone());
    let csum_errors_before = tcp_checksum_errors(&t.a);

    bad_segment_in_a_mergeable_run_never_reaches_the_pod(&t);
    let c = a.counters();
    if offload {
        assert_eq!(c.dropped(DropReason::BadTcpChecksum), 1, "{c:?}");
    }

    // The flood, with a ping across the whole time.
    let pinger = {
        let ns = t.a.clone();
        std::thread::spawn(move || ping(&ns, "10.5.1.1", "10.5.2.1", 20, 2))
    };
    let before = a.counters();
    let sent = flood(&t.b, 2500, Duration::from_secs(8));
    let (ok, out) = pinger.join().unwrap();
    assert!(ok && out.contains(" 0% packet loss"), "ping during the flood: {out}");
    let mergeable_bad = if offload { sent.bad_tcp_checksum } else { 0 };
    let expect = |c: &UdpCounters| {
        let d = |r| c.dropped(r) - before.dropped(r);
        [
            d(DropReason::BadIpChecksum),
            d(DropReason::BadTcpChecksum),
            d(DropReason::TooShort),
            d(DropReason::Malformed),
            d(DropReason::SpoofedSource),
            d(DropReason::NotForUs),
            d(DropReason::UnknownPeer),
        ]
    };
    let want = [
        sent.bad_ip_checksum,
        mergeable_bad,
        sent.zero_length + sent.short,
        sent.truncated,
        sent.spoofed,
        sent.not_for_us,
        sent.unknown_peer,
    ];
    let c = wait_for(&a, Duration::from_secs(5), |c| expect(c) == want);
    eprintln!("flood sent {sent:?}; node a: {c:?}");
    assert_eq!(expect(&c), want, "every bad datagram counted under its reason: {c:?}");
    assert_eq!(c.tun_write_errors, 0, "{c:?}");

    stop.store(true, Ordering::Relaxed);
    let seen = capture.join().unwrap();
    eprintln!("flannel0 on a saw {seen:?}");
    assert!(seen.packets >= 20, "the capture saw the pings: {seen:?}");
    assert_eq!(seen.bad_header, 0, "{seen:?}");
    let csum_errors = tcp_checksum_errors(&t.a) - csum_errors_before;
    if offload {
        assert_eq!(seen.bad_payload, 0, "nothing bad written into flannel0: {seen:?}");
        assert_eq!(csum_errors, 0, "the kernel never saw a bad TCP checksum");
    } else {
        // Without offloads nothing is coalesced or marked verified: TCP segments go to the
        // kernel as they came, and it drops those whose checksum fails.
        assert_eq!(
            seen.bad_payload, seen.tcp_bad_checksum,
            "only TCP segments, as they came: {seen:?}"
        );
        assert_eq!(seen.tcp_bad_checksum as u64, sent.bad_tcp_checksum + 1, "{seen:?}");
        assert_eq!(csum_errors, sent.bad_tcp_checksum + 1, "the kernel dropped each one");
    }
    let (ok, out) = ping(&t.a, "10.5.1.1", "10.5.2.1", 2, 2);
    assert!(ok, "ping a -> b after: {out}");
    drop(b);
    drop(a);
}
