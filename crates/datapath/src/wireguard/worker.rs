//! The I/O shell of one wireguard device: N workers, each owning one queue of the device and
//! one UDP socket on its ListenPort (SO_REUSEPORT; IPv4 or IPv6, as the Mode's endpoints), plus
//! one timer thread. A worker reads a batch of
//! packets from its queue, finds each one's peer by destination, encrypts it with the peer's
//! boringtun `Tunn` and sends the batch with one sendmmsg; it receives a batch of datagrams
//! with one recvmmsg, finds each one's peer (by session index, or by the initiator's static key
//! for a handshake initiation, after the MAC1 and load check), decrypts and writes what is
//! admitted into its queue. The cryptography and the handshake state machine are boringtun's;
//! this file decides only where bytes go and what is counted.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use weft_kernel::tun::TunQueue;

use super::counters::{Counters, Tally, WgDrop};
use super::peers::{Identity, Peer, PeerTable};
use crate::udp::batch::{RecvBatch, SendBatch, BATCH};
use crate::udp::offload::{finish_checksum, split_tcp, Coalescer, Offer, VnetHdr, MAX_PACKET, VNET_HDR_LEN};
use crate::udp::socket::{enable_udp_gro, SockAddr};

/// Room for the largest packet flannel-wg can hand us, plus WireGuard's 32 bytes and padding.
const BUF_LEN: usize = 65536 + 64;
/// How long a worker waits for work before it looks at the stop flag.
const POLL_MS: libc::c_int = 100;
/// How often the timer thread runs every peer's timers (boringtun wants at least every 250 ms).
const TIMER_TICK: Duration = Duration::from_millis(100);

/// Room in the output area for this many encrypted super-segments per batch.
const OUT_SUPER_SEGMENTS: usize = 24;
/// Largest UDP payload of one GSO send, and most datagrams in it.
const GSO_MAX_BYTES: usize = 65000;
const GSO_MAX_SEGMENTS: usize = 64;
/// The vnet header of a packet written as it is (no offload asked for).
const ZERO_VNET: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
const GSO_NONE: u8 = 0;
const F_NEEDS_CSUM: u8 = 1;

const MSG_HANDSHAKE_INIT: u8 = 1;
const MSG_HANDSHAKE_RESP: u8 = 2;
const MSG_DATA: u8 = 4;

/// What the workers share with the backend.
pub(crate) struct Shared {
    pub table: ArcSwap<PeerTable>,
    pub counters: Arc<Counters>,
    pub identity: Identity,
    /// The device's sockets are IPv6 ones (IPv4 peers, if any, as mapped addresses).
    pub ipv6_socket: bool,
}

impl Shared {
    /// A peer's endpoint as the device's sockets take it.
    pub fn dest(&self, endpoint: SocketAddr) -> SockAddr {
        SockAddr::for_socket(endpoint, self.ipv6_socket)
    }
}

/// One worker: a queue, a socket and the buffers of a batch in each direction.
pub(crate) struct Worker {
    tun: TunQueue,
    sock: OwnedFd,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    /// One read from the queue (with its vnet header on an offload device).
    read_buf: Box<[u8]>,
    /// A TSO super-segment cut into wire-sized plaintext packets.
    seg_buf: Box<[u8]>,
    /// Encrypted messages waiting for sendmmsg, back to back, and where each goes.
    out: Box<[u8]>,
    pending: Vec<Pending>,
    groups: Vec<Group>,
    /// Whether the kernel takes UDP_SEGMENT (cleared on its first refusal).
    gso: bool,
    tx: SendBatch,
    rx: RecvBatch,
    dec_buf: Box<[u8]>,
    coalescer: Option<Box<Coalescer>>,
    tally: Tally,
}

/// One encrypted message in the output area.
#[derive(Clone, Copy)]
struct Pending {
    to: SockAddr,
    offset: usize,
    len: usize,
}

/// Consecutive messages to one peer sent as one UDP GSO send: `count` datagrams of `seg_len`
/// bytes (the last possibly shorter), `total` bytes from `offset`.
#[derive(Clone, Copy)]
struct Group {
    to: SockAddr,
    offset: usize,
    total: usize,
    seg_len: usize,
    count: usize,
}

/// The destination of an inner packet: IPv4 or IPv6 by its version nibble.
fn inner_destination(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]))),
        6 if pkt.len() >= 40 => {
            let dst: [u8; 16] = pkt[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(dst)))
        }
        _ => None,
    }
}

impl Worker {
    pub fn new(tun: TunQueue, sock: OwnedFd, shared: Arc<Shared>, stop: Arc<AtomicBool>) -> Self {
        let offload = tun.vnet_hdr();
        let gro = offload && enable_udp_gro(&sock);
        Worker {
            tun,
            sock,
            shared,
            stop,
            read_buf: vec![0u8; VNET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
            seg_buf: vec![0u8; 2 * MAX_PACKET].into_boxed_slice(),
            out: vec![0u8; OUT_SUPER_SEGMENTS * 2 * BUF_LEN].into_boxed_slice(),
            pending: Vec::with_capacity(OUT_SUPER_SEGMENTS * 64),
            groups: Vec::with_capacity(OUT_SUPER_SEGMENTS * 64),
            gso: offload,
            tx: SendBatch::default(),
            rx: RecvBatch::new(BUF_LEN, gro),
            dec_buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            coalescer: offload.then(Box::default),
            tally: Tally::default(),
        }
    }

    pub fn spawn(self, id: usize) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("weft-wg-{id}"))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let (mut tun_more, mut net_more) = wait2(self.tun.as_raw_fd(), self.sock.as_raw_fd(), POLL_MS);
            while (tun_more || net_more) && !self.stop.load(Ordering::Relaxed) {
                if tun_more {
                    tun_more = self.tun_to_net();
                }
                if net_more {
                    net_more = self.net_to_tun();
                }
                self.tally.flush(&self.shared.counters);
            }
        }
    }

    /// Reads up to a batch from the queue; each packet (a TSO super-segment cut into wire-sized
    /// packets first) is encrypted for its peer under one lock of the peer's state; the batch
    /// goes out with one sendmmsg, runs of equal-sized messages to one peer as one UDP GSO send.
    /// Returns whether more may be waiting.
    fn tun_to_net(&mut self) -> bool {
        let table = self.shared.table.load();
        self.pending.clear();
        let offload = self.tun.vnet_hdr();
        let mut cursor = 0;
        let mut more = true;
        for _ in 0..BATCH {
            // Room for the largest super-segment, with WireGuard's overhead per packet.
            if cursor + 2 * BUF_LEN > self.out.len() {
                break;
            }
            let n = match self.tun.recv(&mut self.read_buf) {
                Ok(n) => n,
                Err(e) => {
                    more = false;
                    if e.kind() != io::ErrorKind::WouldBlock {
                        // The device was deleted under us: back off until reconcile reopens it.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    break;
                }
            };
            let (vnet, pkt) = if offload {
                match VnetHdr::parse(&self.read_buf[..n]) {
                    Some(h) if n > VNET_HDR_LEN => (Some(h), &mut self.read_buf[VNET_HDR_LEN..n]),
                    _ => {
                        self.tally.drop(WgDrop::Malformed);
                        continue;
                    }
                }
            } else {
                (None, &mut self.read_buf[..n])
            };
            let Some(dst) = inner_destination(pkt) else {
                self.tally.drop(WgDrop::NotIp);
                continue;
            };
            let Some(peer) = table.by_destination(dst) else {
                self.tally.drop(WgDrop::NoPeer);
                continue;
            };
            // The wire-sized plaintext packets: `count` of `seg_len` bytes in `plain`.
            let (plain, seg_len, total): (&[u8], usize, usize) = match vnet {
                Some(h) if h.gso_type != GSO_NONE => match split_tcp(pkt, usize::from(h.gso_size), &mut self.seg_buf) {
                    Some(s) => (&self.seg_buf[..s.total], s.seg_len, s.total),
                    None => {
                        self.tally.drop(WgDrop::Malformed);
                        continue;
                    }
                },
                Some(h) if h.flags & F_NEEDS_CSUM != 0 => {
                    if !finish_checksum(pkt, &h) {
                        self.tally.drop(WgDrop::Malformed);
                        continue;
                    }
                    (&*pkt, pkt.len(), pkt.len())
                }
                _ => (&*pkt, pkt.len(), pkt.len()),
            };
            let to = self.shared.dest(peer.spec.endpoint);
            let mut tunn = peer.state.tunn.lock().unwrap_or_else(|e| e.into_inner());
            let mut sent = 0u64;
            for chunk in plain[..total].chunks(seg_len.max(1)) {
                match tunn.encapsulate(chunk, &mut self.out[cursor..]) {
                    TunnResult::WriteToNetwork(msg) => {
                        let len = msg.len();
                        self.pending.push(Pending {
                            to,
                            offset: cursor,
                            len,
                        });
                        cursor += len;
                        sent += len as u64;
                    }
                    // Queued until the handshake completes.
                    TunnResult::Done => {}
                    TunnResult::Err(e) => self.tally.drop(classify(&e)),
                    TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
                }
            }
            drop(tunn);
            peer.state.tx_bytes.fetch_add(sent, Ordering::Relaxed);
        }
        self.send_pending();
        more
    }

    /// Sends the pending messages: consecutive messages to one peer of one size (the last of a
    /// run possibly shorter) as one message with UDP_SEGMENT, at most 64 datagrams and 64 KB.
    fn send_pending(&mut self) {
        self.groups.clear();
        let p = &self.pending;
        let mut i = 0;
        while i < p.len() {
            let first = p[i];
            let mut g = Group {
                to: first.to,
                offset: first.offset,
                total: first.len,
                seg_len: first.len,
                count: 1,
            };
            i += 1;
            while self.gso
                && i < p.len()
                && g.count < GSO_MAX_SEGMENTS
                && p[i].to.same(&g.to)
                && p[i].offset == g.offset + g.total
                && p[i].len <= g.seg_len
                && g.total + p[i].len <= GSO_MAX_BYTES
            {
                g.total += p[i].len;
                g.count += 1;
                i += 1;
                if p[i - 1].len < g.seg_len {
                    break;
                }
            }
            self.groups.push(g);
        }
        let fd = self.sock.as_raw_fd();
        let (out, groups, gso) = (&self.out[..], &self.groups, &mut self.gso);
        for chunk in groups.chunks(BATCH) {
            let mut batch = self.tx.fill();
            for g in chunk {
                let segment = (g.count > 1).then_some(g.seg_len as u16);
                batch.push(g.to, &out[g.offset..g.offset + g.total], segment);
            }
            let tally = &mut self.tally;
            batch.send(fd, |i, result| {
                let g = &chunk[i];
                let data = out[g.offset] == MSG_DATA;
                match result {
                    Ok(()) if data => {
                        tally.tx_packets += g.count as u64;
                        tally.tx_bytes += g.total as u64;
                    }
                    Ok(()) => {}
                    Err(err) if g.count > 1 && *gso && matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                        // No UDP GSO here: one datagram per message from now on.
                        tracing::warn!("UDP GSO refused ({err}); sending one datagram per message");
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
        self.pending.clear();
    }

    /// Receives up to a batch of datagrams (with UDP_GRO a message may hold many of one size)
    /// and handles each; decrypted TCP segments of one flow are written as one super-segment.
    /// Returns whether more may be waiting.
    fn net_to_tun(&mut self) -> bool {
        let received = self.rx.recv(self.sock.as_raw_fd());
        if received == 0 {
            return false;
        }
        let table = self.shared.table.load();
        let fd = self.sock.as_raw_fd();
        let mut io = Io {
            fd,
            tun: &self.tun,
            tally: &mut self.tally,
            coalescer: self.coalescer.as_deref_mut(),
        };
        for i in 0..received {
            let from = self.rx.source(i);
            let m = self.rx.get(i);
            // Cut short, or empty (which `chunks` would skip).
            if m.truncated || m.data.is_empty() {
                io.tally.drop(WgDrop::Malformed);
                continue;
            }
            let seg = m.segment.unwrap_or(m.data.len()).max(1);
            for datagram in m.data.chunks(seg) {
                receive(datagram, from, &table, &self.shared, &mut self.dec_buf, &mut io);
            }
        }
        io.flush();
        received == BATCH
    }
}

/// Where a receive sends and writes, and what it counts.
struct Io<'a> {
    fd: RawFd,
    tun: &'a TunQueue,
    tally: &'a mut Tally,
    /// On an offload device: merges decrypted TCP segments of one flow.
    coalescer: Option<&'a mut Coalescer>,
}

impl Io<'_> {
    /// Writes one decrypted packet into the queue, through the coalescer when there is one.
    fn deliver(&mut self, inner: &[u8]) {
        let Some(c) = self.coalescer.as_deref_mut() else {
            return self.written(self.tun.send(inner).is_ok(), 1);
        };
        let mut offer = c.offer(inner);
        if offer == Offer::Refused && !c.is_empty() {
            self.flush();
            offer = self.coalescer.as_deref_mut().expect("offload").offer(inner);
        }
        match offer {
            Offer::Taken => {}
            // The sender's checksum is wrong (the message itself was authenticated).
            Offer::BadChecksum => self.tally.drop(WgDrop::Malformed),
            Offer::Refused => self.written(self.tun.send2(&ZERO_VNET, inner).is_ok(), 1),
        }
    }

    /// Writes the pending merge, if any.
    fn flush(&mut self) {
        let Some(c) = self.coalescer.as_deref_mut() else {
            return;
        };
        if let Some(merged) = c.flush() {
            let ok = self.tun.send(merged.frame).is_ok();
            let packets = merged.packets as u64;
            self.written(ok, packets);
        }
    }

    fn written(&mut self, ok: bool, packets: u64) {
        if ok {
            self.tally.rx_packets += packets;
        } else {
            self.tally.tun_write_errors += packets;
        }
    }
}

/// Handles one datagram from `from`.
fn receive(data: &[u8], from: SockAddr, table: &PeerTable, shared: &Shared, buf: &mut [u8], io: &mut Io<'_>) {
    let packet = match Tunn::parse_incoming_packet(data) {
        Ok(p) => p,
        Err(_) => return io.tally.drop(WgDrop::Malformed),
    };
    let src_ip = from.socket_addr().ip();
    let peer = match &packet {
        Packet::HandshakeInit(init) => {
            // MAC1 and the load check before anything costly: a flood costs a hash each, not a
            // Diffie-Hellman; under load the initiator must come back with our cookie.
            match shared.identity.rate_limiter.verify_packet(Some(src_ip), data, buf) {
                Ok(_) => {}
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    let _ = from.send_to(io.fd, cookie);
                    io.tally.cookies_sent += 1;
                    return io.tally.drop(WgDrop::UnderLoad);
                }
                Err(TunnResult::Err(e)) => return io.tally.drop(classify(&e)),
                Err(_) => return,
            }
            let found = match parse_handshake_anon(&shared.identity.secret, &shared.identity.public, init) {
                Ok(half) => table.by_key(&half.peer_static_public),
                Err(e) => return io.tally.drop(classify(&e)),
            };
            found.ok_or(WgDrop::UnknownKey)
        }
        Packet::HandshakeResponse(r) => table.by_receiver(r.receiver_idx).ok_or(WgDrop::UnknownIndex),
        Packet::PacketCookieReply(c) => table.by_receiver(c.receiver_idx).ok_or(WgDrop::UnknownIndex),
        Packet::PacketData(d) => table.by_receiver(d.receiver_idx).ok_or(WgDrop::UnknownIndex),
    };
    let peer = match peer {
        Ok(p) => p,
        Err(why) => return io.tally.drop(why),
    };
    let kind = data[0];
    let mut tunn = peer.state.tunn.lock().unwrap_or_else(|e| e.into_inner());
    match tunn.decapsulate(Some(src_ip), data, buf) {
        TunnResult::WriteToNetwork(msg) => {
            // A handshake response (we answered an initiation) or the keepalive that confirms
            // a response we received: either way a handshake completed.
            if kind == MSG_HANDSHAKE_INIT || kind == MSG_HANDSHAKE_RESP {
                io.tally.handshakes += 1;
                if peer.state.handshake_done() {
                    io.tally.rekeys += 1;
                }
            }
            if from.send_to(io.fd, msg).is_err() {
                io.tally.send_errors += 1;
            }
            // Packets queued while the handshake was under way go now.
            while let TunnResult::WriteToNetwork(msg) = tunn.decapsulate(None, &[], buf) {
                let len = msg.len() as u64;
                match shared.dest(peer.spec.endpoint).send_to(io.fd, msg) {
                    Ok(()) => {
                        io.tally.tx_packets += 1;
                        io.tally.tx_bytes += len;
                        peer.state.tx_bytes.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(_) => io.tally.send_errors += 1,
                }
            }
        }
        TunnResult::WriteToTunnelV4(inner, src) => admit_inner(peer, data.len(), inner, src.into(), io),
        TunnResult::WriteToTunnelV6(inner, src) => admit_inner(peer, data.len(), inner, src.into(), io),
        // A keepalive, or a cookie reply taken in.
        TunnResult::Done => {
            peer.state.rx_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        TunnResult::Err(e) => io.tally.drop(classify(&e)),
    }
}

/// Writes a decrypted packet into the device if its source is inside the peer's allowed IPs.
fn admit_inner(peer: &Peer, wire_len: usize, inner: &[u8], src: IpAddr, io: &mut Io<'_>) {
    peer.state.rx_bytes.fetch_add(wire_len as u64, Ordering::Relaxed);
    if !peer.spec.allows(src) {
        return io.tally.drop(WgDrop::SpoofedSource);
    }
    io.tally.rx_bytes += wire_len as u64;
    io.deliver(inner);
}

/// The drop reason of a protocol error.
fn classify(e: &WireGuardError) -> WgDrop {
    match e {
        WireGuardError::InvalidMac => WgDrop::BadMac,
        WireGuardError::InvalidAeadTag => WgDrop::AuthFailed,
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => WgDrop::Replay,
        WireGuardError::NoCurrentSession | WireGuardError::ConnectionExpired => WgDrop::NoSession,
        WireGuardError::UnderLoad => WgDrop::UnderLoad,
        WireGuardError::WrongIndex => WgDrop::UnknownIndex,
        WireGuardError::InvalidPacket | WireGuardError::IncorrectPacketLength | WireGuardError::WrongPacketType => {
            WgDrop::Malformed
        }
        _ => WgDrop::HandshakeFailed,
    }
}

/// Waits up to `timeout_ms` for either fd to be readable (or in error); returns which are.
fn wait2(a: RawFd, b: RawFd, timeout_ms: libc::c_int) -> (bool, bool) {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: fds is a valid array of 2 pollfd for the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if n <= 0 {
        return (false, false);
    }
    (fds[0].revents != 0, fds[1].revents != 0)
}

/// Starts a handshake with `peer` now (a peer just created from a lease), so a restarted node
/// does not wait for the other side's timers: a peer still holding the old sessions answers
/// and switches to the new one at once.
pub(crate) fn initiate(fd: RawFd, shared: &Shared, peer: &Peer) {
    let mut buf = [0u8; 256];
    let mut tunn = peer.state.tunn.lock().unwrap_or_else(|e| e.into_inner());
    if let TunnResult::WriteToNetwork(msg) = tunn.format_handshake_initiation(&mut buf, false) {
        let _ = shared.dest(peer.spec.endpoint).send_to(fd, msg);
    }
}

/// The timer thread: runs every peer's timers (handshake retry, rekey, keepalive, expiry) and
/// sends what they ask for from `sock` (a socket on ListenPort); resets the handshake rate
/// limiter every second.
pub(crate) fn spawn_timers(sock: OwnedFd, shared: Arc<Shared>, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("weft-wg-timers".into())
        .spawn(move || {
            let mut buf = vec![0u8; 256].into_boxed_slice();
            let mut last_reset = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TIMER_TICK);
                if last_reset.elapsed() >= Duration::from_secs(1) {
                    shared.identity.rate_limiter.reset_count();
                    last_reset = Instant::now();
                }
                let table = shared.table.load();
                for peer in table.peers() {
                    let mut tunn = peer.state.tunn.lock().unwrap_or_else(|e| e.into_inner());
                    if let TunnResult::WriteToNetwork(msg) = tunn.update_timers(&mut buf) {
                        let len = msg.len() as u64;
                        if shared.dest(peer.spec.endpoint).send_to(sock.as_raw_fd(), msg).is_ok() {
                            peer.state.tx_bytes.fetch_add(len, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
}
