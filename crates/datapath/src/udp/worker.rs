//! The I/O shell of the udp backend: N threads, each owning one TUN queue and one UDP socket.
//! A worker reads a batch of packets from its queue, decides with [`outbound`] and sends the
//! batch with one sendmmsg; it receives a batch of datagrams with one recvmmsg, decides with
//! [`inbound`] and writes them into its queue. Buffers are allocated once per worker; the peer
//! table is loaded once per batch from an [`ArcSwap`] (no lock on the hot path).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use weft_kernel::tun::TunQueue;

use super::offload::{finish_checksum, split_tcp, Coalescer, VnetHdr, MAX_PACKET, VNET_HDR_LEN};
use super::packet::{inbound, net_unreachable, outbound, DropReason, Inbound, Outbound, ICMP_REPLY_MAX};
use super::peers::PeerTable;
use super::socket::sockaddr;
use super::UdpCounters;

/// Packets per batch (one recvmmsg or sendmmsg).
const BATCH: usize = 64;
/// Room for the largest IPv4 packet.
const BUF_LEN: usize = 65536;
/// How long a worker sleeps in poll before it looks at the stop flag.
const POLL_MS: libc::c_int = 100;

/// What the workers share with the backend.
#[derive(Debug)]
pub(crate) struct Shared {
    pub table: ArcSwap<PeerTable>,
    pub counters: Counters,
}

impl Shared {
    pub fn new(table: PeerTable) -> Self {
        Shared {
            table: ArcSwap::from_pointee(table),
            counters: Counters::default(),
        }
    }
}

/// The counters, summed over the workers (each adds its batch's counts once per batch).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    icmp_unreachable: AtomicU64,
    send_errors: AtomicU64,
    tun_errors: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl Counters {
    pub fn snapshot(&self) -> UdpCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UdpCounters {
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            icmp_unreachable: get(&self.icmp_unreachable),
            send_errors: get(&self.send_errors),
            tun_errors: get(&self.tun_errors),
            dropped: std::array::from_fn(|i| get(&self.dropped[i])),
        }
    }
}

/// A batch's counts, added to the shared counters when the batch is done.
#[derive(Default)]
struct Tally {
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
    icmp_unreachable: u64,
    send_errors: u64,
    tun_errors: u64,
    dropped: [u64; DropReason::ALL.len()],
}

impl Tally {
    fn flush(&mut self, c: &Counters) {
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&c.tx_packets, self.tx_packets);
        add(&c.tx_bytes, self.tx_bytes);
        add(&c.rx_packets, self.rx_packets);
        add(&c.rx_bytes, self.rx_bytes);
        add(&c.icmp_unreachable, self.icmp_unreachable);
        add(&c.send_errors, self.send_errors);
        add(&c.tun_errors, self.tun_errors);
        for (c, v) in c.dropped.iter().zip(self.dropped) {
            add(c, v);
        }
        *self = Tally::default();
    }

    fn drop(&mut self, reason: DropReason) {
        self.dropped[reason.index()] += 1;
    }
}

/// One worker: a TUN queue, a UDP socket and the buffers for a batch in each direction.
pub(crate) struct Worker {
    tun: TunQueue,
    sock: OwnedFd,
    port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    tx_bufs: Vec<Box<[u8]>>,
    rx_bufs: Vec<Box<[u8]>>,
    icmp: [u8; ICMP_REPLY_MAX],
    tally: Tally,
    offload: Option<Box<Offload>>,
}

/// A super-segment's pieces in the output area: `count` packets of `seg_len` bytes (the last
/// possibly shorter) at `offset`, for `to`.
#[derive(Clone, Copy)]
struct Pending {
    to: libc::sockaddr_in,
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
    coalescer: Coalescer,
    /// Whether the kernel takes UDP_SEGMENT (cleared on the first refusal).
    gso: bool,
    /// Whether UDP_GRO is on for the socket.
    gro: bool,
}

/// Room in the output area for this many full super-segments per batch.
const OUT_SUPER_SEGMENTS: usize = 24;
/// Largest UDP payload of one GSO send, and most segments in it.
const GSO_MAX_BYTES: usize = 65507;
const GSO_MAX_SEGMENTS: usize = 64;
/// Room for one cmsg carrying an int or u16 (CMSG_SPACE(4) on 64-bit Linux).
const CMSG_ROOM: usize = 24;
const ZERO_VNET: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

fn buffers() -> Vec<Box<[u8]>> {
    (0..BATCH).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect()
}

impl Worker {
    pub fn new(tun: TunQueue, sock: OwnedFd, port: u16, shared: Arc<Shared>, stop: Arc<AtomicBool>) -> Self {
        let offload = tun.vnet_hdr().then(|| {
            let gro = super::socket::enable_udp_gro(&sock);
            Box::new(Offload {
                read_buf: vec![0u8; VNET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
                out: vec![0u8; OUT_SUPER_SEGMENTS * 2 * MAX_PACKET].into_boxed_slice(),
                pending: Vec::with_capacity(OUT_SUPER_SEGMENTS * 64),
                coalescer: Coalescer::default(),
                gso: true,
                gro,
            })
        });
        Worker {
            offload,
            tun,
            sock,
            port,
            shared,
            stop,
            tx_bufs: buffers(),
            rx_bufs: buffers(),
            icmp: [0; ICMP_REPLY_MAX],
            tally: Tally::default(),
        }
    }

    pub fn spawn(self, id: usize) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("weft-udp-{id}"))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let mut fds = [
            libc::pollfd {
                fd: self.tun.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        while !self.stop.load(Ordering::Relaxed) {
            // SAFETY: fds is a valid array of two pollfd for the duration of the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
            if rc <= 0 {
                continue;
            }
            // Drain both directions while either has work; poll only when both are empty.
            for _ in 0..1024 {
                let moved = if self.offload.is_some() {
                    self.tun_to_udp_offload() + self.udp_to_tun_offload()
                } else {
                    self.tun_to_udp() + self.udp_to_tun()
                };
                self.tally.flush(&self.shared.counters);
                if moved == 0 || self.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
    }

    /// Reads up to a batch from the TUN queue and sends what goes to peers with one sendmmsg.
    /// Returns how many packets were read.
    fn tun_to_udp(&mut self) -> usize {
        let table = self.shared.table.load();
        let mut dests = [sockaddr(Ipv4Addr::UNSPECIFIED, 0); BATCH];
        let mut lens = [0usize; BATCH];
        let mut ready = 0;
        let mut read = 0;
        while read < BATCH {
            let buf = &mut self.tx_bufs[ready];
            let n = match self.tun.recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The device was deleted under us: back off until reconcile reopens it.
                    self.tally.tun_errors += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    break;
                }
            };
            read += 1;
            match outbound(&mut buf[..n], &table) {
                Outbound::Send { to, len } => {
                    dests[ready] = sockaddr(to, self.port);
                    lens[ready] = len;
                    ready += 1;
                }
                Outbound::Unreachable(hdr) => match table.icmp_source() {
                    Some(local) => {
                        if let Some(len) = net_unreachable(&buf[..n], &hdr, local, &mut self.icmp) {
                            self.tally.icmp_unreachable += 1;
                            if self.tun.send(&self.icmp[..len]).is_err() {
                                self.tally.tun_errors += 1;
                            }
                        }
                    }
                    None => self.tally.drop(DropReason::NoLease),
                },
                Outbound::Drop(reason) => self.tally.drop(reason),
            }
        }
        if ready > 0 {
            self.send_batch(&dests[..ready], &lens[..ready]);
        }
        read
    }

    fn send_batch(&mut self, dests: &[libc::sockaddr_in], lens: &[usize]) {
        let n = dests.len();
        // SAFETY: iovec and mmsghdr are plain data; all-zero is valid.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..n {
            iovs[i] = libc::iovec {
                iov_base: self.tx_bufs[i].as_mut_ptr().cast(),
                iov_len: lens[i],
            };
            msgs[i].msg_hdr.msg_name = (&dests[i] as *const libc::sockaddr_in).cast_mut().cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: msgs[sent..n] point at iovecs, buffers and addresses that outlive the call.
            let rc = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    msgs[sent..].as_mut_ptr(),
                    (n - sent) as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The message at `sent` failed (unreachable peer, ...): count it and go on.
                self.tally.send_errors += 1;
                sent += 1;
                continue;
            }
            for len in &lens[sent..sent + rc as usize] {
                self.tally.tx_packets += 1;
                self.tally.tx_bytes += *len as u64;
            }
            sent += rc as usize;
        }
    }

    /// Receives up to a batch of datagrams with one recvmmsg and writes the admitted ones into
    /// the TUN queue. Returns how many datagrams were received.
    fn udp_to_tun(&mut self) -> usize {
        // SAFETY: plain data; all-zero is valid.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut names: [libc::sockaddr_in; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: self.rx_bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            };
            msgs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: msgs point at buffers, iovecs and address slots that outlive the call.
        let rc = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc <= 0 {
            return 0;
        }
        let table = self.shared.table.load();
        for i in 0..rc as usize {
            let n = msgs[i].msg_len as usize;
            let from = Ipv4Addr::from(u32::from_be(names[i].sin_addr.s_addr));
            if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.tally.drop(DropReason::Malformed);
                continue;
            }
            let buf = &mut self.rx_bufs[i][..n];
            match inbound(buf, from, &table) {
                Inbound::Deliver { len } => match self.tun.send(&buf[..len]) {
                    Ok(_) => {
                        self.tally.rx_packets += 1;
                        self.tally.rx_bytes += len as u64;
                    }
                    Err(_) => self.tally.tun_errors += 1,
                },
                Inbound::Drop(reason) => self.tally.drop(reason),
            }
        }
        rc as usize
    }

    /// The offload path's TUN -> UDP: reads TCP super-segments, splits them into wire packets
    /// and sends each run of equal-sized packets to a peer with one UDP GSO message.
    fn tun_to_udp_offload(&mut self) -> usize {
        let table = self.shared.table.load();
        let mut off = self.offload.take().expect("offload path");
        off.pending.clear();
        let mut cursor = 0;
        let mut read = 0;
        // Each read may need up to 2x its size in the output area (headers per segment).
        while read < BATCH && cursor + 2 * MAX_PACKET <= off.out.len() {
            let n = match self.tun.recv(&mut off.read_buf) {
                Ok(n) if n > VNET_HDR_LEN => n,
                Ok(_) => {
                    read += 1;
                    self.tally.drop(DropReason::Malformed);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.tally.tun_errors += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    break;
                }
            };
            read += 1;
            let vnet = VnetHdr::parse(&off.read_buf).expect("read is longer than the header");
            let pkt = &mut off.read_buf[VNET_HDR_LEN..n];
            match outbound(pkt, &table) {
                Outbound::Send { to, len } => {
                    let pkt = &mut pkt[..len];
                    let to = sockaddr(to, self.port);
                    if vnet.gso_type != 0 {
                        match split_tcp(pkt, usize::from(vnet.gso_size), &mut off.out[cursor..]) {
                            Some(segs) => {
                                off.pending.push(Pending {
                                    to,
                                    offset: cursor,
                                    total: segs.total,
                                    seg_len: segs.seg_len,
                                    count: segs.count,
                                });
                                cursor += segs.total;
                            }
                            None => self.tally.drop(DropReason::Malformed),
                        }
                        continue;
                    }
                    if vnet.flags & 1 != 0 && !finish_checksum(pkt, &vnet) {
                        self.tally.drop(DropReason::Malformed);
                        continue;
                    }
                    off.out[cursor..cursor + len].copy_from_slice(pkt);
                    off.pending.push(Pending {
                        to,
                        offset: cursor,
                        total: len,
                        seg_len: len,
                        count: 1,
                    });
                    cursor += len;
                }
                Outbound::Unreachable(hdr) => match table.icmp_source() {
                    Some(local) => {
                        if let Some(len) = net_unreachable(pkt, &hdr, local, &mut self.icmp) {
                            self.tally.icmp_unreachable += 1;
                            if self.tun.send2(&ZERO_VNET, &self.icmp[..len]).is_err() {
                                self.tally.tun_errors += 1;
                            }
                        }
                    }
                    None => self.tally.drop(DropReason::NoLease),
                },
                Outbound::Drop(reason) => self.tally.drop(reason),
            }
        }
        if !off.pending.is_empty() {
            self.send_pending(&mut off);
        }
        self.offload = Some(off);
        read
    }

    /// Sends the pending super-segments: one message per run of at most 64 packets and 64 KB,
    /// with UDP_SEGMENT so the kernel cuts it into one datagram per packet.
    fn send_pending(&mut self, off: &mut Offload) {
        // Groups: (to, offset, bytes, seg_len, packets).
        let mut groups: Vec<(libc::sockaddr_in, usize, usize, usize, usize)> =
            Vec::with_capacity(off.pending.len() * 2);
        for p in &off.pending {
            let per = if off.gso {
                (GSO_MAX_BYTES / p.seg_len).clamp(1, GSO_MAX_SEGMENTS)
            } else {
                1
            };
            let mut done = 0;
            while done < p.count {
                let k = per.min(p.count - done);
                let start = p.offset + done * p.seg_len;
                let bytes = (k * p.seg_len).min(p.total - done * p.seg_len);
                groups.push((p.to, start, bytes, p.seg_len, k));
                done += k;
            }
        }
        let mut sent = 0;
        while sent < groups.len() {
            let n = (groups.len() - sent).min(BATCH);
            // SAFETY: plain data; all-zero is valid.
            let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            let mut cmsgs = [[0u64; CMSG_ROOM / 8]; BATCH];
            for i in 0..n {
                let (ref to, start, bytes, seg_len, k) = groups[sent + i];
                iovs[i] = libc::iovec {
                    iov_base: off.out[start..].as_mut_ptr().cast(),
                    iov_len: bytes,
                };
                let h = &mut msgs[i].msg_hdr;
                h.msg_name = (to as *const libc::sockaddr_in).cast_mut().cast();
                h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
                if k > 1 {
                    h.msg_control = cmsgs[i].as_mut_ptr().cast();
                    // SAFETY: CMSG_SPACE is a pure computation.
                    h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                    // SAFETY: the control buffer is CMSG_ROOM bytes, enough for one u16 cmsg.
                    unsafe {
                        let c = libc::CMSG_FIRSTHDR(h);
                        (*c).cmsg_level = libc::SOL_UDP;
                        (*c).cmsg_type = libc::UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg_len as u16);
                    }
                }
            }
            // SAFETY: msgs point at iovecs, cmsgs, buffers and addresses that outlive the call.
            let rc = unsafe { libc::sendmmsg(self.sock.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                let (_, _, _, _, k) = groups[sent];
                if k > 1 && off.gso && matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) {
                    // No UDP GSO here: send one datagram per packet from now on.
                    tracing::warn!("UDP GSO refused ({err}); sending one datagram per packet");
                    off.gso = false;
                    let (to, start, bytes, seg_len, _) = groups[sent];
                    let mut at = start;
                    while at < start + bytes {
                        let len = seg_len.min(start + bytes - at);
                        // SAFETY: the buffer and address are valid for the call.
                        let r = unsafe {
                            libc::sendto(
                                self.sock.as_raw_fd(),
                                off.out[at..].as_ptr().cast(),
                                len,
                                0,
                                (&to as *const libc::sockaddr_in).cast(),
                                size_of::<libc::sockaddr_in>() as libc::socklen_t,
                            )
                        };
                        if r < 0 {
                            self.tally.send_errors += 1;
                        } else {
                            self.tally.tx_packets += 1;
                            self.tally.tx_bytes += len as u64;
                        }
                        at += len;
                    }
                } else {
                    self.tally.send_errors += k as u64;
                }
                sent += 1;
                continue;
            }
            for &(_, _, bytes, _, k) in &groups[sent..sent + rc as usize] {
                self.tally.tx_packets += k as u64;
                self.tally.tx_bytes += bytes as u64;
            }
            sent += rc as usize;
        }
    }

    /// The offload path's UDP -> TUN: receives a batch (with UDP_GRO, a message may hold many
    /// datagrams of one size), admits each inner packet, and writes runs of TCP segments of
    /// one flow into the TUN device as one super-segment.
    fn udp_to_tun_offload(&mut self) -> usize {
        let mut off = self.offload.take().expect("offload path");
        // SAFETY: plain data; all-zero is valid.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut names: [libc::sockaddr_in; BATCH] = unsafe { zeroed() };
        let mut cmsgs = [[0u64; CMSG_ROOM / 8]; BATCH];
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: self.rx_bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if off.gro {
                h.msg_control = cmsgs[i].as_mut_ptr().cast();
                h.msg_controllen = CMSG_ROOM as _;
            }
        }
        // SAFETY: msgs point at buffers, iovecs, cmsgs and address slots that outlive the call.
        let rc = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc <= 0 {
            self.offload = Some(off);
            return 0;
        }
        let table = self.shared.table.load();
        for i in 0..rc as usize {
            let n = msgs[i].msg_len as usize;
            let from = Ipv4Addr::from(u32::from_be(names[i].sin_addr.s_addr));
            if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.tally.drop(DropReason::Malformed);
                continue;
            }
            let mut seg = n;
            if off.gro && msgs[i].msg_hdr.msg_controllen > 0 {
                // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs.
                unsafe {
                    let mut c = libc::CMSG_FIRSTHDR(&msgs[i].msg_hdr);
                    while !c.is_null() {
                        if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                            let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                            if v > 0 {
                                seg = v as usize;
                            }
                        }
                        c = libc::CMSG_NXTHDR(&msgs[i].msg_hdr, c);
                    }
                }
            }
            let mut at = 0;
            while at < n {
                let end = (at + seg).min(n);
                let chunk = &mut self.rx_bufs[i][at..end];
                at = end;
                match inbound(chunk, from, &table) {
                    Inbound::Deliver { len } => {
                        let pkt = &chunk[..len];
                        self.tally.rx_packets += 1;
                        self.tally.rx_bytes += len as u64;
                        if off.coalescer.offer(pkt) {
                            continue;
                        }
                        if let Some(merged) = off.coalescer.flush() {
                            if self.tun.send(merged).is_err() {
                                self.tally.tun_errors += 1;
                            }
                        }
                        if !off.coalescer.offer(pkt) && self.tun.send2(&ZERO_VNET, pkt).is_err() {
                            self.tally.tun_errors += 1;
                        }
                    }
                    Inbound::Drop(reason) => self.tally.drop(reason),
                }
            }
        }
        if let Some(merged) = off.coalescer.flush() {
            if self.tun.send(merged).is_err() {
                self.tally.tun_errors += 1;
            }
        }
        self.offload = Some(off);
        rc as usize
    }
}
