//! TUN offloads for the udp backend, with no I/O: the `virtio_net_hdr` that precedes each packet
//! on a vnet_hdr TUN device, splitting a TCP super-segment (TSO) read from the device into
//! wire-sized packets with full checksums, finishing a partial checksum, and coalescing
//! consecutive TCP segments of one flow into one super-segment (GRO) before it is written to
//! the device. The wire stays one ordinary IPv4 packet per datagram.

use std::net::Ipv4Addr;

use super::packet::{
    copy_sum16, fold, outbound, set_ipv4_checksum, sum16, DropReason, Ipv4Header, Outbound, IPV4_HEADER_LEN, PROTO_TCP,
};
use super::peers::PeerTable;

pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
/// The largest IPv4 packet.
pub const MAX_PACKET: usize = 65535;

/// `struct virtio_net_hdr` (little-endian fields, as on x86 and arm64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16le(2),
            gso_size: u16le(4),
            csum_start: u16le(6),
            csum_offset: u16le(8),
        })
    }

    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// The one's complement sum of the IPv4 pseudo header (not folded).
pub(crate) fn pseudo_sum(pkt: &[u8], l4_len: usize) -> u64 {
    sum16(&pkt[12..20], u64::from(PROTO_TCP) + l4_len as u64)
}

/// Finishes a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field holds the pseudo-header
/// sum; sum the data from `csum_start` and store the complement. False when out of bounds.
pub fn finish_checksum(pkt: &mut [u8], hdr: &VnetHdr) -> bool {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > pkt.len() {
        return false;
    }
    let c = !fold(sum16(&pkt[start..], 0));
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Where a TSO super-segment's pieces went: `count` segments of `seg_len` bytes (the last one
/// possibly shorter), back to back in the output buffer, `total` bytes in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub seg_len: usize,
    pub count: usize,
    pub total: usize,
}

/// Splits the IPv4/TCP super-segment `pkt` into packets carrying at most `mss` payload bytes
/// each, written back to back into `out`, each with its own IP length, id and checksum, TCP
/// sequence number, flags (FIN/PSH on the last only, CWR on the first only) and full TCP
/// checksum. None when the packet is not a splittable IPv4/TCP packet or `out` is too small.
pub fn split_tcp(pkt: &[u8], mss: usize, out: &mut [u8]) -> Option<Segments> {
    if pkt.len() < IPV4_HEADER_LEN || pkt[0] >> 4 != 4 || pkt[9] != PROTO_TCP || mss == 0 {
        return None;
    }
    let ip_hlen = usize::from(pkt[0] & 0x0f) * 4;
    let tcp_hlen = usize::from(*pkt.get(ip_hlen + 12)? >> 4) * 4;
    let hlen = ip_hlen + tcp_hlen;
    if ip_hlen < IPV4_HEADER_LEN || tcp_hlen < 20 || hlen > pkt.len() {
        return None;
    }
    let payload = &pkt[hlen..];
    let count = payload.len().div_ceil(mss).max(1);
    let seg_len = hlen + mss.min(payload.len());
    let total = count * hlen + payload.len();
    if total > out.len() {
        return None;
    }
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = u32::from_be_bytes(pkt[ip_hlen + 4..ip_hlen + 8].try_into().ok()?);
    let flags = pkt[ip_hlen + 13];
    let mut off = 0;
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let len = hlen + chunk.len();
        let seg = &mut out[off..off + len];
        seg[..hlen].copy_from_slice(&pkt[..hlen]);
        seg[hlen..].copy_from_slice(chunk);
        seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        set_ipv4_checksum(seg, ip_hlen);
        let tcp = ip_hlen;
        seg[tcp + 4..tcp + 8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !0x09; // FIN, PSH only on the last segment
        }
        if i > 0 {
            f &= !0x80; // CWR only on the first
        }
        seg[tcp + 13] = f;
        seg[tcp + 16] = 0;
        seg[tcp + 17] = 0;
        let c = !fold(sum16(&seg[tcp..], pseudo_sum(seg, len - ip_hlen)));
        seg[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
        off += len;
    }
    if payload.is_empty() {
        out[..pkt.len()].copy_from_slice(pkt);
    }
    Some(Segments { seg_len, count, total })
}

/// What to do with one frame (vnet header + packet) read from a vnet_hdr TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOut {
    /// Send the wire packets written at the start of `out` to this peer's public IP.
    Send {
        to: Ipv4Addr,
        segments: Segments,
    },
    /// No lease covers the destination: answer with ICMP net unreachable (the packet is the
    /// frame past its vnet header).
    Unreachable(Ipv4Header),
    Drop(DropReason),
}

/// Decides what to do with a frame the kernel wrote into the TUN device, as [`outbound`] does
/// for a plain packet; what is to be sent is written into `out` as wire packets with full
/// checksums: a TSO super-segment split into segments of its `gso_size` payload bytes, a packet
/// with a partial checksum finished. `out` needs room for twice the packet (a header per
/// segment); the TTL is decremented.
pub fn outbound_frame(frame: &mut [u8], table: &PeerTable, out: &mut [u8]) -> FrameOut {
    let Some(vnet) = VnetHdr::parse(frame).filter(|_| frame.len() > VNET_HDR_LEN) else {
        return FrameOut::Drop(DropReason::Malformed);
    };
    let pkt = &mut frame[VNET_HDR_LEN..];
    let (to, len) = match outbound(pkt, table) {
        Outbound::Send { to, len } => (to, len),
        Outbound::Unreachable(hdr) => return FrameOut::Unreachable(hdr),
        Outbound::Drop(reason) => return FrameOut::Drop(reason),
    };
    let pkt = &mut pkt[..len];
    if vnet.gso_type != GSO_NONE {
        return match split_tcp(pkt, usize::from(vnet.gso_size), out) {
            Some(segments) => FrameOut::Send { to, segments },
            None => FrameOut::Drop(DropReason::Malformed),
        };
    }
    if vnet.flags & F_NEEDS_CSUM != 0 && !finish_checksum(pkt, &vnet) {
        return FrameOut::Drop(DropReason::Malformed);
    }
    let Some(dst) = out.get_mut(..len) else {
        return FrameOut::Drop(DropReason::Malformed);
    };
    dst.copy_from_slice(pkt);
    FrameOut::Send {
        to,
        segments: Segments {
            seg_len: len,
            count: 1,
            total: len,
        },
    }
}

/// Merges consecutive TCP segments of one flow into one super-segment, as the kernel's GRO
/// does: same addresses, ports, TTL, TOS, DF and TCP options, contiguous sequence numbers,
/// flags ACK (PSH allowed on the last), every segment the size of the first but the last.
///
/// A merged super-segment goes to the kernel with a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM),
/// which the kernel takes as verified: so every segment's IPv4 header and TCP checksums are
/// checked before it is merged, and one that fails is refused as [`Offer::BadChecksum`].
pub struct Coalescer {
    /// vnet header + packet.
    buf: Box<[u8]>,
    len: usize,
    hlen: usize,
    mss: usize,
    count: usize,
    next_seq: u32,
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            buf: vec![0u8; VNET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
            len: 0,
            hlen: 0,
            mss: 0,
            count: 0,
            next_seq: 0,
            closed: false,
        }
    }
}

/// What [`Coalescer::offer`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Taken: merged into the pending super-segment, or the start of a new one.
    Taken,
    /// Not for this merge (not a plain TCP data segment, another flow, a gap, a merge that is
    /// closed): flush, then offer it again (it may start a new merge) or write it alone.
    Refused,
    /// A TCP data segment whose IPv4 header or TCP checksum is wrong: drop it.
    BadChecksum,
}

/// A finished merge, ready for the TUN device: `frame` is the vnet header and the packet;
/// it carries `packets` segments, `bytes` bytes as they arrived.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged<'a> {
    pub frame: &'a [u8],
    pub packets: usize,
    pub bytes: usize,
}

/// The TCP header length if `pkt` is exactly one plain IPv4/TCP data segment GRO may merge
/// (header without options, not a fragment, flags ACK or ACK|PSH, some payload).
fn mergeable(pkt: &[u8]) -> Option<usize> {
    if pkt.len() < 40 || pkt[0] != 0x45 || pkt[9] != PROTO_TCP {
        return None;
    }
    if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() {
        return None;
    }
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return None; // a fragment
    }
    let tcp_hlen = usize::from(pkt[32] >> 4) * 4;
    let flags = pkt[33];
    // ACK, optionally PSH; nothing else.
    if tcp_hlen < 20 || 20 + tcp_hlen >= pkt.len() || flags & !0x08 != 0x10 {
        return None;
    }
    Some(tcp_hlen)
}

/// Whether the IPv4 header (20 bytes, no options) and the TCP checksum (pseudo header and
/// segment) of `pkt` verify, while its payload (from `hlen`) is copied into `payload_to`: the
/// sender wrote full checksums, so this is one pass of the one's complement sum over bytes that
/// are read for the copy anyway.
fn checksums_ok(pkt: &[u8], payload_to: &mut [u8], hlen: usize) -> bool {
    let ip = sum16(&pkt[..IPV4_HEADER_LEN], 0);
    let tcp_header = sum16(
        &pkt[IPV4_HEADER_LEN..hlen],
        pseudo_sum(pkt, pkt.len() - IPV4_HEADER_LEN),
    );
    // The TCP header's length is a multiple of 4, so the payload's words line up with the segment's.
    let tcp = copy_sum16(&pkt[hlen..], payload_to, tcp_header);
    fold(ip) == 0xffff && fold(tcp) == 0xffff
}

impl Coalescer {
    /// Whether a merge is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offers `pkt` (a whole IPv4 packet: its length is its total length).
    pub fn offer(&mut self, pkt: &[u8]) -> Offer {
        let Some(tcp_hlen) = mergeable(pkt) else {
            return Offer::Refused;
        };
        let hlen = IPV4_HEADER_LEN + tcp_hlen;
        let payload = pkt.len() - hlen;
        let seq = u32::from_be_bytes(pkt[24..28].try_into().expect("4 bytes"));
        if self.len == 0 {
            // Copied and verified in one pass; nothing counts as merged until it verifies.
            let to = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()];
            to[..hlen].copy_from_slice(&pkt[..hlen]);
            if !checksums_ok(pkt, &mut to[hlen..], hlen) {
                return Offer::BadChecksum;
            }
            self.len = pkt.len();
            self.hlen = hlen;
            self.mss = payload;
            self.count = 1;
            self.next_seq = seq.wrapping_add(payload as u32);
            self.closed = pkt[33] & 0x08 != 0;
            return Offer::Taken;
        }
        let head = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.hlen];
        let same_flow = !self.closed
            && hlen == self.hlen
            && seq == self.next_seq
            && payload <= self.mss
            && self.len + payload <= MAX_PACKET
            // version..TOS, flags/fragment, TTL/protocol, addresses.
            && head[..2] == pkt[..2]
            && head[6..10] == pkt[6..10]
            && head[12..20] == pkt[12..20]
            // ports, then the options.
            && head[20..24] == pkt[20..24]
            && head[40..hlen] == pkt[40..hlen];
        if !same_flow {
            return Offer::Refused;
        }
        let at = VNET_HDR_LEN + self.len;
        if !checksums_ok(pkt, &mut self.buf[at..at + payload], hlen) {
            return Offer::BadChecksum;
        }
        self.len += payload;
        self.count += 1;
        self.next_seq = seq.wrapping_add(payload as u32);
        let psh = pkt[33] & 0x08;
        // The newest ACK, window and PSH win, as in the kernel's GRO.
        let h = VNET_HDR_LEN;
        self.buf[h + 28..h + 32].copy_from_slice(&pkt[28..32]);
        self.buf[h + 33] |= psh;
        self.buf[h + 34..h + 36].copy_from_slice(&pkt[34..36]);
        if payload < self.mss || psh != 0 {
            self.closed = true;
        }
        Offer::Taken
    }

    /// Finishes the pending merge and returns it with its vnet header in front, ready for the
    /// TUN device; empties the coalescer. A single segment goes out as it came, with an
    /// all-zero vnet header (the kernel verifies its checksum again).
    pub fn flush(&mut self) -> Option<Merged<'_>> {
        if self.len == 0 {
            return None;
        }
        let len = self.len;
        let mut vnet = VnetHdr::default();
        if self.count > 1 {
            let pkt = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
            pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            set_ipv4_checksum(pkt, IPV4_HEADER_LEN);
            // CHECKSUM_PARTIAL: the field holds the pseudo-header sum over the whole length.
            let partial = fold(pseudo_sum(pkt, len - IPV4_HEADER_LEN));
            pkt[36..38].copy_from_slice(&partial.to_be_bytes());
            vnet = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: self.hlen as u16,
                gso_size: self.mss as u16,
                csum_start: IPV4_HEADER_LEN as u16,
                csum_offset: 16,
            };
        } else {
            vnet.gso_type = GSO_NONE;
        }
        vnet.write(&mut self.buf[..VNET_HDR_LEN]);
        self.len = 0;
        Some(Merged {
            frame: &self.buf[..VNET_HDR_LEN + len],
            packets: self.count,
            bytes: len + (self.count - 1) * self.hlen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::packet::{checksum, parse_ipv4};

    /// An IPv4/TCP segment with valid checksums: ACK, `payload` bytes starting at `seq`.
    fn tcp(seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        let len = 52 + payload; // 20 IP + 32 TCP (12 bytes of options)
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&7u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 63;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 5, 2, 1]);
        p[16..20].copy_from_slice(&[10, 5, 1, 1]);
        set_ipv4_checksum(&mut p, 20);
        p[20..22].copy_from_slice(&5201u16.to_be_bytes());
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&99u32.to_be_bytes());
        p[32] = 8 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&500u16.to_be_bytes());
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        for (i, b) in p[52..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        let c = !fold(sum16(&p[20..], pseudo_sum(&p, len - 20)));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp_checksum_ok(p: &[u8]) -> bool {
        fold(sum16(&p[20..], pseudo_sum(p, p.len() - 20))) == 0xffff
    }

    #[test]
    fn split_gives_wire_packets_with_valid_checksums() {
        let big = tcp(1000, 3000, 0x18);
        let mut out = vec![0u8; 8000];
        let s = split_tcp(&big, 1400, &mut out).unwrap();
        assert_eq!((s.seg_len, s.count, s.total), (1452, 3, 3 * 52 + 3000));
        let mut off = 0;
        let mut data = Vec::new();
        for i in 0..3 {
            let len = if i < 2 { 1452 } else { 52 + 200 };
            let seg = &out[off..off + len];
            let h = parse_ipv4(seg).unwrap();
            assert_eq!(h.total_len, len);
            assert_eq!(checksum(&seg[..20]), 0, "IP checksum of segment {i}");
            assert!(tcp_checksum_ok(seg), "TCP checksum of segment {i}");
            assert_eq!(
                u32::from_be_bytes(seg[24..28].try_into().unwrap()),
                1000 + 1400 * i as u32
            );
            assert_eq!(seg[33] & 0x08 != 0, i == 2, "PSH only on the last");
            data.extend_from_slice(&seg[52..]);
            off += len;
        }
        assert_eq!(data, big[52..]);
    }

    #[test]
    fn coalesce_then_split_gives_back_the_segments() {
        let segs = [tcp(1, 1000, 0x10), tcp(1001, 1000, 0x10), tcp(2001, 500, 0x18)];
        let mut c = Coalescer::default();
        for s in &segs {
            assert_eq!(c.offer(s), Offer::Taken);
        }
        assert_eq!(
            c.offer(&tcp(2501, 10, 0x10)),
            Offer::Refused,
            "closed after a short segment"
        );
        let flushed = c.flush().unwrap();
        assert_eq!((flushed.packets, flushed.bytes), (3, 3 * 52 + 2500));
        let merged = flushed.frame.to_vec();
        let vnet = VnetHdr::parse(&merged).unwrap();
        assert_eq!((vnet.gso_type, vnet.gso_size, vnet.hdr_len), (GSO_TCPV4, 1000, 52));
        let pkt = &merged[VNET_HDR_LEN..];
        assert_eq!(parse_ipv4(pkt).unwrap().total_len, 52 + 2500);
        assert_eq!(checksum(&pkt[..20]), 0);
        assert_eq!(pkt[33], 0x18, "PSH of the last segment kept");
        // The kernel would split it back the way split_tcp does.
        let mut full = pkt.to_vec();
        full[36..38].copy_from_slice(&[0, 0]);
        let mut out = vec![0u8; 8000];
        let s = split_tcp(&full, 1000, &mut out).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(
            &out[..1052][20..],
            &segs[0][20..],
            "first segment identical past the IP header"
        );
        assert!(c.is_empty());
    }

    #[test]
    fn coalesce_refuses_other_flows_gaps_and_control_segments() {
        let mut c = Coalescer::default();
        assert_eq!(c.offer(&tcp(1, 100, 0x10)), Offer::Taken);
        assert_eq!(c.offer(&tcp(500, 100, 0x10)), Offer::Refused, "gap in the sequence");
        let mut other = tcp(101, 100, 0x10);
        other[22] = 1;
        assert_eq!(c.offer(&other), Offer::Refused, "other port");
        assert_eq!(c.offer(&tcp(101, 100, 0x11)), Offer::Refused, "FIN");
        assert_eq!(c.offer(&tcp(101, 100, 0x10)), Offer::Taken);
        let one = c.flush().unwrap().frame;
        assert_eq!(VnetHdr::parse(one).unwrap().gso_type, GSO_TCPV4);
        let mut single = Coalescer::default();
        assert_eq!(single.offer(&tcp(1, 100, 0x10)), Offer::Taken);
        let out = single.flush().unwrap().frame;
        assert_eq!(
            VnetHdr::parse(out).unwrap(),
            VnetHdr::default(),
            "a lone segment goes out as is"
        );
        assert_eq!(&out[VNET_HDR_LEN..], &tcp(1, 100, 0x10)[..]);
    }

    #[test]
    fn coalesce_never_takes_a_segment_whose_checksums_fail() {
        let mut c = Coalescer::default();
        let mut bad_payload = tcp(1, 100, 0x10);
        bad_payload[60] ^= 0x01;
        assert_eq!(c.offer(&bad_payload), Offer::BadChecksum, "as the first of a merge");
        assert!(c.is_empty());
        assert_eq!(c.offer(&tcp(1, 100, 0x10)), Offer::Taken);
        let mut bad_field = tcp(101, 100, 0x10);
        bad_field[36] ^= 0x80;
        assert_eq!(c.offer(&bad_field), Offer::BadChecksum, "in the middle of a merge");
        let mut bad_ip = tcp(101, 100, 0x10);
        bad_ip[4] ^= 0x01; // the IP id: only the header checksum covers it
        assert!(tcp_checksum_ok(&bad_ip));
        assert_eq!(c.offer(&bad_ip), Offer::BadChecksum, "IPv4 header checksum");
        let mut long = tcp(101, 100, 0x10);
        long.push(0);
        assert_eq!(c.offer(&long), Offer::Refused, "bytes beyond the total length");
        assert_eq!(c.offer(&tcp(101, 100, 0x10)), Offer::Taken);
        let merged = c.flush().unwrap();
        assert_eq!((merged.packets, merged.bytes), (2, 2 * 152));
        assert_eq!(
            &merged.frame[VNET_HDR_LEN + 52..],
            &[&tcp(1, 100, 0x10)[52..], &tcp(101, 100, 0x10)[52..]].concat()[..]
        );
    }

    #[test]
    fn partial_checksum_is_finished() {
        let mut p = tcp(1, 100, 0x18);
        let good = p.clone();
        let partial = fold(pseudo_sum(&p, p.len() - 20));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert!(finish_checksum(&mut p, &hdr));
        assert_eq!(p, good);
    }
}
