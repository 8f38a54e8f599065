//! The I/O shell of the udp backend: N threads, each owning one TUN queue and one UDP socket,
//! waiting on both with one epoll instance and serving only the side that has work. A worker
//! reads a batch of packets from its queue, decides with [`outbound`] (or [`outbound_frame`] with
//! offloads) and sends the batch with one sendmmsg; it receives a batch of datagrams with one
//! recvmmsg, hands them to its [`Receiver`] (checks, GRO) and performs the writes into its queue
//! that the receiver asks for. Buffers and message arrays are allocated once per worker; the
//! peer table is loaded once per batch from an [`ArcSwap`] (no lock on the hot path).

use std::io;
use std::mem::zeroed;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use weft_kernel::tun::TunQueue;

use super::batch::{RecvBatch, SendBatch, BATCH};
use super::counters::{Counters, Tally};
use super::offload::{outbound_frame, FrameOut, MAX_PACKET, VNET_HDR_LEN};
use super::packet::{net_unreachable, outbound, DropReason, Outbound, ICMP_REPLY_MAX};
use super::peers::PeerTable;
use super::placement::Placement;
use super::receive::{Message, Receiver, ZERO_VNET};
use super::socket::{sockaddr, SockAddr};

/// Room for the largest IPv4 packet.
const BUF_LEN: usize = 65536;
/// How long a worker waits for work before it looks at the stop flag.
const POLL_MS: libc::c_int = 100;

/// What the workers share with the backend.
#[derive(Debug)]
pub(crate) struct Shared {
    pub table: ArcSwap<PeerTable>,
    pub counters: Arc<Counters>,
    /// The first full lease set is in the table. Until then the workers leave packets queued
    /// (in flannel0 and the socket) rather than answer "net unreachable" for peers a restarted
    /// weftd has simply not loaded yet.
    pub loaded: AtomicBool,
}

impl Shared {
    pub fn new(table: PeerTable) -> Self {
        Shared {
            table: ArcSwap::from_pointee(table),
            counters: Arc::default(),
            loaded: AtomicBool::new(false),
        }
    }
}

/// How long a worker waits for the first lease set before it serves with what it has.
const LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One worker: a TUN queue, a UDP socket and the buffers for a batch in each direction.
pub(crate) struct Worker {
    tun: TunQueue,
    ready: Readiness,
    sock: OwnedFd,
    port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    /// Packets read from the TUN queue (one per buffer) and where each goes.
    tx_bufs: Vec<Box<[u8]>>,
    outgoing: Vec<(SockAddr, usize)>,
    tx: SendBatch,
    rx: RecvBatch,
    icmp: [u8; ICMP_REPLY_MAX],
    tally: Tally,
    receiver: Receiver,
    offload: Option<Box<Offload>>,
    /// (this worker's CPU, CPUs in all) when the worker owns a CPU.
    pub cpu: Option<(usize, usize)>,
}

/// A super-segment's pieces in the output area: `count` packets of `seg_len` bytes (the last
/// possibly shorter) at `offset`, for `to`.
#[derive(Clone, Copy)]
struct Pending {
    to: SockAddr,
    offset: usize,
    total: usize,
    seg_len: usize,
    count: usize,
}

/// Buffers of the offload path (vnet_hdr TUN, UDP GSO/GRO).
struct Offload {
    /// One read from the TUN device: vnet header + up to 64 KB.
    read_buf: Box<[u8]>,
    /// Wire packets waiting for sendmmsg, back to back.
    out: Box<[u8]>,
    pending: Vec<Pending>,
    /// The pending pieces cut into sendmmsg entries (at most 64 packets and 64 KB each).
    groups: Vec<Pending>,
    /// Whether the kernel takes UDP_SEGMENT (cleared on the first refusal).
    gso: bool,
}

/// Room in the output area for this many full super-segments per batch.
const OUT_SUPER_SEGMENTS: usize = 24;
/// Largest UDP payload of one GSO send, and most segments in it.
const GSO_MAX_BYTES: usize = 65507;
const GSO_MAX_SEGMENTS: usize = 64;

impl Worker {
    pub fn new(
        tun: TunQueue,
        sock: OwnedFd,
        port: u16,
        shared: Arc<Shared>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let ready = Readiness::new(&tun, &sock)?;
        let offload = tun.vnet_hdr().then(|| {
            Box::new(Offload {
                read_buf: vec![0u8; VNET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
                out: vec![0u8; OUT_SUPER_SEGMENTS * 2 * MAX_PACKET].into_boxed_slice(),
                pending: Vec::with_capacity(OUT_SUPER_SEGMENTS * 64),
                groups: Vec::with_capacity(OUT_SUPER_SEGMENTS * 64),
                gso: true,
            })
        });
        let gro = offload.is_some() && super::socket::enable_udp_gro(&sock);
        Ok(Worker {
            ready,
            receiver: Receiver::new(offload.is_some()),
            offload,
            tun,
            sock,
            port,
            shared,
            stop,
            tx_bufs: (0..BATCH).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect(),
            outgoing: Vec::with_capacity(BATCH),
            tx: SendBatch::default(),
            rx: RecvBatch::new(BUF_LEN, gro),
            icmp: [0; ICMP_REPLY_MAX],
            tally: Tally::default(),
            cpu: None,
        })
    }

    pub fn spawn(self, id: usize) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("weft-udp-{id}"))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let waiting_since = std::time::Instant::now();
        while !self.shared.loaded.load(Ordering::Acquire)
            && !self.stop.load(Ordering::Relaxed)
            && waiting_since.elapsed() < LOAD_WAIT
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut placement = self.cpu.map(|(cpu, cpus)| Placement::new(cpu, cpus));
        while !self.stop.load(Ordering::Relaxed) {
            let (mut tun_more, mut udp_more) = self.ready.wait(POLL_MS);
            // Serve only the directions that have work, until both are drained; the next wait
            // returns at once for anything that arrived meanwhile. When the queue was empty, a
            // new read most likely holds one packet (a ping, a request): `eager` sends it before
            // the read that finds the queue empty.
            let mut eager = true;
            while (tun_more || udp_more) && !self.stop.load(Ordering::Relaxed) {
                let mut full = false;
                if tun_more {
                    tun_more = self.tun_to_udp(eager);
                    eager = !tun_more;
                    full |= tun_more;
                }
                if udp_more {
                    let delivered_before = self.tally.rx_packets;
                    udp_more = self.udp_to_tun();
                    full |= udp_more;
                    // A packet written into the queue may have been answered during the write (an
                    // echo reply, a TCP ACK): look for the answer now rather than after a wait.
                    tun_more |= self.tally.rx_packets > delivered_before;
                }
                if let Some(p) = placement.as_mut() {
                    p.account(self.tally.packets());
                }
                self.tally.flush(&self.shared.counters);
                if full {
                    // Under load one side may stay full for long: look at the other side too, so
                    // that neither direction starves.
                    let (tun, udp) = self.ready.wait(0);
                    tun_more |= tun;
                    udp_more |= udp;
                }
            }
            if let Some(p) = placement.as_mut() {
                p.account(0);
            }
        }
    }

    /// Reads and sends up to a batch; `eager`: send the first packet on its own, at once.
    /// Returns whether more may be waiting.
    fn tun_to_udp(&mut self, eager: bool) -> bool {
        if self.offload.is_some() {
            self.tun_to_udp_offload(eager)
        } else {
            self.tun_to_udp_plain(eager)
        }
    }

    /// Receives up to a batch of datagrams with one recvmmsg (with UDP_GRO, a message may hold
    /// many datagrams of one size) and writes what the receive path admits into the TUN queue
    /// (with offloads, runs of TCP segments of one flow as one super-segment). Returns whether
    /// more may be waiting.
    fn udp_to_tun(&mut self) -> bool {
        let received = self.rx.recv(self.sock.as_raw_fd());
        if received == 0 {
            return false;
        }
        let table = self.shared.table.load();
        let tun = &self.tun;
        let mut write = |head: &[u8], packet: &[u8]| {
            let sent = if head.is_empty() {
                tun.send(packet)
            } else {
                tun.send2(head, packet)
            };
            sent.is_ok()
        };
        for i in 0..received {
            let m = self.rx.get(i);
            let msg = Message {
                data: m.data,
                // The socket is IPv4: every sender is.
                from: match m.from {
                    std::net::IpAddr::V4(ip) => ip,
                    std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                },
                truncated: m.truncated,
                segment: m.segment,
            };
            self.receiver.message(msg, &table, &mut self.tally, &mut write);
        }
        self.receiver.flush(&mut self.tally, &mut write);
        received == BATCH
    }

    /// Reads up to a batch from the TUN queue and sends what goes to peers with one sendmmsg.
    fn tun_to_udp_plain(&mut self, eager: bool) -> bool {
        let table = self.shared.table.load();
        self.outgoing.clear();
        let mut read = 0;
        let mut more = true;
        while read < BATCH {
            let buf = &mut self.tx_bufs[self.outgoing.len()];
            let n = match self.tun.recv(buf) {
                Ok(n) => n,
                Err(e) => {
                    more = false;
                    if e.kind() != io::ErrorKind::WouldBlock {
                        // The device was deleted under us: back off until reconcile reopens it.
                        self.tally.tun_read_errors += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    break;
                }
            };
            read += 1;
            match outbound(&mut buf[..n], &table) {
                Outbound::Send { to, len } => self.outgoing.push((sockaddr(to, self.port), len)),
                Outbound::Unreachable(hdr) => match table.icmp_source() {
                    Some(local) => {
                        if let Some(len) = net_unreachable(&buf[..n], &hdr, local, &mut self.icmp) {
                            self.tally.icmp_unreachable += 1;
                            if self.tun.send(&self.icmp[..len]).is_err() {
                                self.tally.tun_write_errors += 1;
                            }
                        }
                    }
                    None => self.tally.drop(DropReason::NoLease),
                },
                Outbound::Drop(reason) => self.tally.drop(reason),
            }
            if eager && read == 1 {
                self.send_outgoing();
            }
        }
        self.send_outgoing();
        more
    }

    /// Sends the packets read so far with one sendmmsg.
    fn send_outgoing(&mut self) {
        if !self.outgoing.is_empty() {
            let mut batch = self.tx.fill();
            for (i, &(to, len)) in self.outgoing.iter().enumerate() {
                batch.push(to, &self.tx_bufs[i][..len], None);
            }
            let (outgoing, tally) = (&self.outgoing, &mut self.tally);
            batch.send(self.sock.as_raw_fd(), |i, result| match result {
                Ok(()) => {
                    tally.tx_packets += 1;
                    tally.tx_bytes += outgoing[i].1 as u64;
                }
                // An unreachable peer, ...: count it and go on.
                Err(_) => tally.send_errors += 1,
            });
        }
        self.outgoing.clear();
    }

    /// The offload path's TUN -> UDP: reads TCP super-segments, splits them into wire packets
    /// and sends each run of equal-sized packets to a peer with one UDP GSO message.
    fn tun_to_udp_offload(&mut self, eager: bool) -> bool {
        let table = self.shared.table.load();
        let mut off = self.offload.take().expect("offload path");
        off.pending.clear();
        let mut cursor = 0;
        let mut read = 0;
        let mut more = true;
        // Each read may need up to 2x its size in the output area (headers per segment).
        while read < BATCH && cursor + 2 * MAX_PACKET <= off.out.len() {
            let n = match self.tun.recv(&mut off.read_buf) {
                Ok(n) => n,
                Err(e) => {
                    more = false;
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.tally.tun_read_errors += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    break;
                }
            };
            read += 1;
            let frame = &mut off.read_buf[..n];
            match outbound_frame(frame, &table, &mut off.out[cursor..]) {
                FrameOut::Send { to, segments } => {
                    off.pending.push(Pending {
                        to: sockaddr(to, self.port),
                        offset: cursor,
                        total: segments.total,
                        seg_len: segments.seg_len,
                        count: segments.count,
                    });
                    cursor += segments.total;
                }
                FrameOut::Unreachable(hdr) => match table.icmp_source() {
                    Some(local) => {
                        let pkt = &frame[VNET_HDR_LEN..];
                        if let Some(len) = net_unreachable(pkt, &hdr, local, &mut self.icmp) {
                            self.tally.icmp_unreachable += 1;
                            if self.tun.send2(&ZERO_VNET, &self.icmp[..len]).is_err() {
                                self.tally.tun_write_errors += 1;
                            }
                        }
                    }
                    None => self.tally.drop(DropReason::NoLease),
                },
                FrameOut::Drop(reason) => self.tally.drop(reason),
            }
            if eager && read == 1 && !off.pending.is_empty() {
                self.send_pending(&mut off);
                off.pending.clear();
                cursor = 0;
            }
        }
        if !off.pending.is_empty() {
            self.send_pending(&mut off);
        }
        self.offload = Some(off);
        more
    }

    /// Sends the pending super-segments: one message per run of at most 64 packets and 64 KB,
    /// with UDP_SEGMENT so the kernel cuts it into one datagram per packet.
    fn send_pending(&mut self, off: &mut Offload) {
        off.groups.clear();
        for p in &off.pending {
            let per = if off.gso {
                (GSO_MAX_BYTES / p.seg_len).clamp(1, GSO_MAX_SEGMENTS)
            } else {
                1
            };
            let mut done = 0;
            while done < p.count {
                let k = per.min(p.count - done);
                off.groups.push(Pending {
                    to: p.to,
                    offset: p.offset + done * p.seg_len,
                    total: (k * p.seg_len).min(p.total - done * p.seg_len),
                    seg_len: p.seg_len,
                    count: k,
                });
                done += k;
            }
        }
        let fd = self.sock.as_raw_fd();
        let (out, groups, gso) = (&off.out[..], &off.groups, &mut off.gso);
        for chunk in groups.chunks(BATCH) {
            let mut batch = self.tx.fill();
            for g in chunk {
                let segment = (g.count > 1).then_some(g.seg_len as u16);
                batch.push(g.to, &out[g.offset..g.offset + g.total], segment);
            }
            let tally = &mut self.tally;
            batch.send(fd, |i, result| {
                let g = &chunk[i];
                match result {
                    Ok(()) => {
                        tally.tx_packets += g.count as u64;
                        tally.tx_bytes += g.total as u64;
                    }
                    Err(err) if g.count > 1 && *gso && matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                        // No UDP GSO here: send one datagram per packet from now on.
                        tracing::warn!("UDP GSO refused ({err}); sending one datagram per packet");
                        *gso = false;
                        for piece in out[g.offset..g.offset + g.total].chunks(g.seg_len) {
                            match g.to.send_to(fd, piece) {
                                Ok(()) => {
                                    tally.tx_packets += 1;
                                    tally.tx_bytes += piece.len() as u64;
                                }
                                Err(_) => tally.send_errors += 1,
                            }
                        }
                    }
                    Err(_) => tally.send_errors += g.count as u64,
                }
            });
        }
    }
}

/// The worker's wait for work: one epoll instance watching its TUN queue and its socket.
struct Readiness {
    epoll: OwnedFd,
}

const TUN_READY: u64 = 0;
const UDP_READY: u64 = 1;

impl Readiness {
    fn new(tun: &TunQueue, sock: &OwnedFd) -> io::Result<Self> {
        // SAFETY: plain epoll_create1; the fd is owned right away.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        for (fd, token) in [(tun.as_raw_fd(), TUN_READY), (sock.as_raw_fd(), UDP_READY)] {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: ev is a valid epoll_event for the call; both fds are open.
            if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Readiness { epoll })
    }

    /// Waits up to `timeout_ms` for work; returns whether the TUN queue and the socket have some.
    fn wait(&self, timeout_ms: libc::c_int) -> (bool, bool) {
        // SAFETY: epoll_event is plain data.
        let mut events: [libc::epoll_event; 2] = unsafe { zeroed() };
        // SAFETY: events has room for the 2 entries the call may write.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 2, timeout_ms) };
        let (mut tun, mut udp) = (false, false);
        for ev in events.iter().take(n.max(0) as usize) {
            // Errors and hangups count as work, so the direction's own call reports them.
            match ev.u64 {
                TUN_READY => tun = true,
                _ => udp = true,
            }
        }
        (tun, udp)
    }
}
