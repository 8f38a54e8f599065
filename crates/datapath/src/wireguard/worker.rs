//! The I/O shell of the wireguard backend: N workers, each owning one flannel-wg queue and one
//! UDP socket on ListenPort (SO_REUSEPORT), plus one timer thread. A worker reads a batch of
//! packets from its queue, finds each one's peer by destination, encrypts it with the peer's
//! boringtun `Tunn` and sends the batch with one sendmmsg; it receives a batch of datagrams
//! with one recvmmsg, finds each one's peer (by session index, or by the initiator's static key
//! for a handshake initiation, after the MAC1 and load check), decrypts and writes what is
//! admitted into its queue. The cryptography and the handshake state machine are boringtun's;
//! this file decides only where bytes go and what is counted.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
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
use crate::udp::socket::sockaddr;

/// Room for the largest packet flannel-wg can hand us, plus WireGuard's 32 bytes and padding.
const BUF_LEN: usize = 65536 + 64;
/// How long a worker waits for work before it looks at the stop flag.
const POLL_MS: libc::c_int = 100;
/// How often the timer thread runs every peer's timers (boringtun wants at least every 250 ms).
const TIMER_TICK: Duration = Duration::from_millis(100);

const MSG_HANDSHAKE_INIT: u8 = 1;
const MSG_HANDSHAKE_RESP: u8 = 2;
const MSG_DATA: u8 = 4;

/// What the workers share with the backend.
pub(crate) struct Shared {
    pub table: ArcSwap<PeerTable>,
    pub counters: Counters,
    pub identity: Identity,
}

/// One worker: a queue, a socket and the buffers of a batch in each direction.
pub(crate) struct Worker {
    tun: TunQueue,
    sock: OwnedFd,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    read_buf: Box<[u8]>,
    /// Encrypted messages waiting for sendmmsg, one per buffer, and where each goes.
    out_bufs: Vec<Box<[u8]>>,
    outgoing: Vec<(libc::sockaddr_in, usize)>,
    tx: SendBatch,
    rx: RecvBatch,
    dec_buf: Box<[u8]>,
    tally: Tally,
}

impl Worker {
    pub fn new(tun: TunQueue, sock: OwnedFd, shared: Arc<Shared>, stop: Arc<AtomicBool>) -> Self {
        Worker {
            tun,
            sock,
            shared,
            stop,
            read_buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            out_bufs: (0..BATCH).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect(),
            outgoing: Vec::with_capacity(BATCH),
            tx: SendBatch::default(),
            rx: RecvBatch::new(BUF_LEN, false),
            dec_buf: vec![0u8; BUF_LEN].into_boxed_slice(),
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

    /// Reads up to a batch from the queue, encrypts each packet for its peer and sends the batch.
    /// Returns whether more may be waiting.
    fn tun_to_net(&mut self) -> bool {
        let table = self.shared.table.load();
        self.outgoing.clear();
        let mut more = true;
        for _ in 0..BATCH {
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
            let pkt = &self.read_buf[..n];
            if n < 20 || pkt[0] >> 4 != 4 {
                self.tally.drop(WgDrop::NotIpv4);
                continue;
            }
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            let Some(peer) = table.by_destination(dst) else {
                self.tally.drop(WgDrop::NoPeer);
                continue;
            };
            let slot = self.outgoing.len();
            let mut tunn = peer.state.tunn.lock().unwrap_or_else(|e| e.into_inner());
            match tunn.encapsulate(pkt, &mut self.out_bufs[slot]) {
                TunnResult::WriteToNetwork(msg) => {
                    let len = msg.len();
                    self.outgoing.push((endpoint_addr(peer), len));
                    peer.state.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                }
                // Queued until the handshake completes.
                TunnResult::Done => {}
                TunnResult::Err(e) => self.tally.drop(classify(&e)),
                TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
            }
        }
        self.send_outgoing();
        more
    }

    fn send_outgoing(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let mut batch = self.tx.fill();
        for (i, &(to, len)) in self.outgoing.iter().enumerate() {
            batch.push(to, &self.out_bufs[i][..len], None);
        }
        let (outgoing, out_bufs, tally) = (&self.outgoing, &self.out_bufs, &mut self.tally);
        batch.send(self.sock.as_raw_fd(), |i, result| match result {
            Ok(()) if out_bufs[i][0] == MSG_DATA => {
                tally.tx_packets += 1;
                tally.tx_bytes += outgoing[i].1 as u64;
            }
            Ok(()) => {}
            Err(_) => tally.send_errors += 1,
        });
        self.outgoing.clear();
    }

    /// Receives up to a batch of datagrams and handles each. Returns whether more may be waiting.
    fn net_to_tun(&mut self) -> bool {
        let received = self.rx.recv(self.sock.as_raw_fd());
        if received == 0 {
            return false;
        }
        let table = self.shared.table.load();
        let fd = self.sock.as_raw_fd();
        for i in 0..received {
            let from = self.rx.source(i);
            let m = self.rx.get(i);
            if m.truncated {
                self.tally.drop(WgDrop::Malformed);
                continue;
            }
            let mut io = Io {
                fd,
                tun: &self.tun,
                tally: &mut self.tally,
            };
            receive(m.data, from, &table, &self.shared, &mut self.dec_buf, &mut io);
        }
        received == BATCH
    }
}

/// Where a receive sends and writes, and what it counts.
struct Io<'a> {
    fd: RawFd,
    tun: &'a TunQueue,
    tally: &'a mut Tally,
}

/// Handles one datagram from `from`.
fn receive(data: &[u8], from: SocketAddrV4, table: &PeerTable, shared: &Shared, buf: &mut [u8], io: &mut Io<'_>) {
    let packet = match Tunn::parse_incoming_packet(data) {
        Ok(p) => p,
        Err(_) => return io.tally.drop(WgDrop::Malformed),
    };
    let src_ip = IpAddr::V4(*from.ip());
    let peer = match &packet {
        Packet::HandshakeInit(init) => {
            // MAC1 and the load check before anything costly: a flood costs a hash each, not a
            // Diffie-Hellman; under load the initiator must come back with our cookie.
            match shared.identity.rate_limiter.verify_packet(Some(src_ip), data, buf) {
                Ok(_) => {}
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    let _ = send_to(io.fd, cookie, from);
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
            if send_to(io.fd, msg, from).is_err() {
                io.tally.send_errors += 1;
            }
            // Packets queued while the handshake was under way go now.
            while let TunnResult::WriteToNetwork(msg) = tunn.decapsulate(None, &[], buf) {
                let len = msg.len() as u64;
                match send_to(io.fd, msg, peer.spec.endpoint) {
                    Ok(()) => {
                        io.tally.tx_packets += 1;
                        io.tally.tx_bytes += len;
                        peer.state.tx_bytes.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(_) => io.tally.send_errors += 1,
                }
            }
        }
        TunnResult::WriteToTunnelV4(inner, src) => {
            peer.state.rx_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            if !peer.spec.subnet.contains(&src) {
                return io.tally.drop(WgDrop::SpoofedSource);
            }
            match io.tun.send(inner) {
                Ok(_) => {
                    io.tally.rx_packets += 1;
                    io.tally.rx_bytes += data.len() as u64;
                }
                Err(_) => io.tally.tun_write_errors += 1,
            }
        }
        TunnResult::WriteToTunnelV6(..) => {
            peer.state.rx_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            io.tally.drop(WgDrop::SpoofedSource)
        }
        // A keepalive, or a cookie reply taken in.
        TunnResult::Done => {
            peer.state.rx_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        TunnResult::Err(e) => io.tally.drop(classify(&e)),
    }
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

fn endpoint_addr(peer: &Peer) -> libc::sockaddr_in {
    sockaddr(*peer.spec.endpoint.ip(), peer.spec.endpoint.port())
}

/// One datagram with sendto(2).
fn send_to(fd: RawFd, data: &[u8], to: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr(*to.ip(), to.port());
    // SAFETY: the buffer and address are valid for the call.
    let rc = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
pub(crate) fn initiate(fd: RawFd, peer: &Peer) {
    let mut buf = [0u8; 256];
    let mut tunn = peer.state.tunn.lock().unwrap_or_else(|e| e.into_inner());
    if let TunnResult::WriteToNetwork(msg) = tunn.format_handshake_initiation(&mut buf, false) {
        let _ = send_to(fd, msg, peer.spec.endpoint);
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
                        if send_to(sock.as_raw_fd(), msg, peer.spec.endpoint).is_ok() {
                            peer.state.tx_bytes.fetch_add(len, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
}
