//! TUN offloads for the udp and wireguard backends, with no I/O: the `virtio_net_hdr` that
//! precedes each packet on a vnet_hdr TUN device, splitting a TCP super-segment (TSO) read from
//! the device into wire-sized packets with full checksums, finishing a partial checksum, and
//! coalescing consecutive TCP segments of one flow into one super-segment (GRO) before it is
//! written to the device. Splitting and coalescing take IPv4 and IPv6 (without extension
//! headers) alike; the wire stays one ordinary packet per datagram.

use std::net::Ipv4Addr;

use super::packet::{
    copy_sum16, fold, outbound, set_ipv4_checksum, sum16, DropReason, Ipv4Header, Outbound, IPV4_HEADER_LEN, PROTO_TCP,
};
use super::peers::PeerTable;

pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
/// The largest IPv4 packet, and the largest IPv6 packet a super-segment is read or merged into.
pub const MAX_PACKET: usize = 65535;
const IPV6_HEADER_LEN: usize = 40;

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

/// The IP family of a TCP packet: what its header holds and how it is fixed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// The family and the IP header length of an IPv4 or IPv6 packet carrying TCP right after
    /// the IP header (IPv6 extension headers are not followed).
    fn of_tcp(pkt: &[u8]) -> Option<(Family, usize)> {
        match pkt.first()? >> 4 {
            4 if pkt.len() >= IPV4_HEADER_LEN && pkt[9] == PROTO_TCP => {
                let ip_hlen = usize::from(pkt[0] & 0x0f) * 4;
                (ip_hlen >= IPV4_HEADER_LEN).then_some((Family::V4, ip_hlen))
            }
            6 if pkt.len() >= IPV6_HEADER_LEN && pkt[6] == PROTO_TCP => Some((Family::V6, IPV6_HEADER_LEN)),
            _ => None,
        }
    }

    fn gso_type(self) -> u8 {
        match self {
            Family::V4 => GSO_TCPV4,
            Family::V6 => GSO_TCPV6,
        }
    }

    /// Writes the length of `pkt` (all of it) into its IP header: on IPv4 the total length and
    /// a fresh header checksum, on IPv6 the payload length.
    fn set_length(self, pkt: &mut [u8], ip_hlen: usize) {
        match self {
            Family::V4 => {
                let total = pkt.len() as u16;
                pkt[2..4].copy_from_slice(&total.to_be_bytes());
                set_ipv4_checksum(pkt, ip_hlen);
            }
            Family::V6 => {
                let payload = (pkt.len() - IPV6_HEADER_LEN) as u16;
                pkt[4..6].copy_from_slice(&payload.to_be_bytes());
            }
        }
    }

    /// Whether two segments' IP headers allow them in one merge: equal but for the lengths (and
    /// on IPv4 the id and checksum), as the kernel's GRO asks.
    fn same_ip_header(self, a: &[u8], b: &[u8]) -> bool {
        match self {
            // version..TOS, flags/fragment, TTL/protocol, addresses.
            Family::V4 => a[..2] == b[..2] && a[6..10] == b[6..10] && a[12..20] == b[12..20],
            // version, traffic class, flow label; next header, hop limit, addresses.
            Family::V6 => a[..4] == b[..4] && a[6..IPV6_HEADER_LEN] == b[6..IPV6_HEADER_LEN],
        }
    }
}

/// The one's complement sum (not folded) of the pseudo header of the TCP packet `pkt` (IPv4 or
/// IPv6, by its version) with `l4_len` bytes of TCP header and payload.
pub(crate) fn pseudo_sum(pkt: &[u8], l4_len: usize) -> u64 {
    let addresses = match pkt[0] >> 4 {
        6 => &pkt[8..IPV6_HEADER_LEN],
        _ => &pkt[12..20],
    };
    sum16(addresses, u64::from(PROTO_TCP) + l4_len as u64)
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

/// Splits the IPv4/TCP or IPv6/TCP super-segment `pkt` into packets carrying at most `mss`
/// payload bytes each, written back to back into `out`, each with its own IP length (on IPv4
/// also id and header checksum), TCP sequence number, flags (FIN/PSH on the last only, CWR on
/// the first only) and full TCP checksum. None when the packet is not a splittable TCP packet
/// or `out` is too small.
pub fn split_tcp(pkt: &[u8], mss: usize, out: &mut [u8]) -> Option<Segments> {
    let (family, ip_hlen) = Family::of_tcp(pkt)?;
    let tcp_hlen = usize::from(*pkt.get(ip_hlen + 12)? >> 4) * 4;
    let hlen = ip_hlen + tcp_hlen;
    if mss == 0 || tcp_hlen < 20 || hlen > pkt.len() {
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
        if family == Family::V4 {
            seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        }
        family.set_length(seg, ip_hlen);
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
/// does: one family, same addresses, ports, TTL (hop limit), TOS (traffic class), DF, IPv6
/// flow label and TCP options, contiguous sequence numbers, flags ACK (PSH allowed on the
/// last), every segment the size of the first but the last.
///
/// A merged super-segment goes to the kernel with a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM),
/// which the kernel takes as verified: so every segment's TCP checksum (and on IPv4 its header
/// checksum) is checked before it is merged, and one that fails is refused as [`Offer::BadChecksum`].
pub struct Coalescer {
    /// vnet header + packet.
    buf: Box<[u8]>,
    len: usize,
    family: Family,
    ip_hlen: usize,
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
            family: Family::V4,
            ip_hlen: 0,
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
    /// A TCP data segment whose TCP checksum (or IPv4 header checksum) is wrong: drop it.
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

/// The family, IP header length and TCP header length if `pkt` is exactly one plain TCP data
/// segment GRO may merge (IPv4 without options and not a fragment, or IPv6 without extension
/// headers; its length field matching its bytes; flags ACK or ACK|PSH; some payload).
fn mergeable(pkt: &[u8]) -> Option<(Family, usize, usize)> {
    let (family, ip_hlen) = Family::of_tcp(pkt)?;
    let whole = match family {
        Family::V4 => {
            ip_hlen == IPV4_HEADER_LEN
                && usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) == pkt.len()
                && u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff == 0 // not a fragment
        }
        Family::V6 => IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) == pkt.len(),
    };
    if !whole || pkt.len() < ip_hlen + 20 {
        return None;
    }
    let tcp_hlen = usize::from(pkt[ip_hlen + 12] >> 4) * 4;
    let flags = pkt[ip_hlen + 13];
    // ACK, optionally PSH; nothing else.
    if tcp_hlen < 20 || ip_hlen + tcp_hlen >= pkt.len() || flags & !0x08 != 0x10 {
        return None;
    }
    Some((family, ip_hlen, tcp_hlen))
}

/// Whether the IPv4 header (20 bytes, no options; IPv6 has no header checksum) and the TCP
/// checksum (pseudo header and segment) of `pkt` verify, while its payload (from `hlen`) is
/// copied into `payload_to`: the sender wrote full checksums, so this is one pass of the one's
/// complement sum over bytes that are read for the copy anyway.
fn checksums_ok(pkt: &[u8], payload_to: &mut [u8], family: Family, ip_hlen: usize, hlen: usize) -> bool {
    let ip_ok = family == Family::V6 || fold(sum16(&pkt[..ip_hlen], 0)) == 0xffff;
    let tcp_header = sum16(&pkt[ip_hlen..hlen], pseudo_sum(pkt, pkt.len() - ip_hlen));
    // The TCP header's length is a multiple of 4, so the payload's words line up with the segment's.
    let tcp = copy_sum16(&pkt[hlen..], payload_to, tcp_header);
    ip_ok && fold(tcp) == 0xffff
}

impl Coalescer {
    /// Whether a merge is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offers `pkt` (a whole IPv4 or IPv6 packet: its length is its length field's).
    pub fn offer(&mut self, pkt: &[u8]) -> Offer {
        let Some((family, ip_hlen, tcp_hlen)) = mergeable(pkt) else {
            return Offer::Refused;
        };
        let hlen = ip_hlen + tcp_hlen;
        let payload = pkt.len() - hlen;
        let tcp = ip_hlen;
        let seq = u32::from_be_bytes(pkt[tcp + 4..tcp + 8].try_into().expect("4 bytes"));
        let psh = pkt[tcp + 13] & 0x08;
        if self.len == 0 {
            // Copied and verified in one pass; nothing counts as merged until it verifies.
            let to = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()];
            to[..hlen].copy_from_slice(&pkt[..hlen]);
            if !checksums_ok(pkt, &mut to[hlen..], family, ip_hlen, hlen) {
                return Offer::BadChecksum;
            }
            self.len = pkt.len();
            self.family = family;
            self.ip_hlen = ip_hlen;
            self.hlen = hlen;
            self.mss = payload;
            self.count = 1;
            self.next_seq = seq.wrapping_add(payload as u32);
            self.closed = psh != 0;
            return Offer::Taken;
        }
        let head = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.hlen];
        let same_flow = !self.closed
            && family == self.family
            && hlen == self.hlen
            && seq == self.next_seq
            && payload <= self.mss
            && self.len + payload <= MAX_PACKET
            && family.same_ip_header(head, pkt)
            // ports, then the options.
            && head[tcp..tcp + 4] == pkt[tcp..tcp + 4]
            && head[tcp + 20..hlen] == pkt[tcp + 20..hlen];
        if !same_flow {
            return Offer::Refused;
        }
        let at = VNET_HDR_LEN + self.len;
        if !checksums_ok(pkt, &mut self.buf[at..at + payload], family, ip_hlen, hlen) {
            return Offer::BadChecksum;
        }
        self.len += payload;
        self.count += 1;
        self.next_seq = seq.wrapping_add(payload as u32);
        // The newest ACK, window and PSH win, as in the kernel's GRO.
        let h = VNET_HDR_LEN + tcp;
        self.buf[h + 8..h + 12].copy_from_slice(&pkt[tcp + 8..tcp + 12]);
        self.buf[h + 13] |= psh;
        self.buf[h + 14..h + 16].copy_from_slice(&pkt[tcp + 14..tcp + 16]);
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
            let (family, ip_hlen) = (self.family, self.ip_hlen);
            let pkt = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
            family.set_length(pkt, ip_hlen);
            // CHECKSUM_PARTIAL: the field holds the pseudo-header sum over the whole length.
            let partial = fold(pseudo_sum(pkt, len - ip_hlen));
            pkt[ip_hlen + 16..ip_hlen + 18].copy_from_slice(&partial.to_be_bytes());
            vnet = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: family.gso_type(),
                hdr_len: self.hlen as u16,
                gso_size: self.mss as u16,
                csum_start: ip_hlen as u16,
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

    /// A TCP segment with valid checksums, `flags`, `payload` from sequence number `seq`: IPv6
    /// (flow label 0x12345, hop limit 63, fd00:5:2::7 -> fd00:5:1::7) or IPv4 as [`tcp`], both
    /// with 12 bytes of TCP options.
    fn segment(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        if !v6 {
            let mut p = tcp(seq, payload.len(), flags);
            p[52..].copy_from_slice(payload);
            p[36..38].copy_from_slice(&[0, 0]);
            let c = !fold(sum16(&p[20..], pseudo_sum(&p, p.len() - 20)));
            p[36..38].copy_from_slice(&c.to_be_bytes());
            return p;
        }
        let len = 72 + payload.len(); // 40 IP + 32 TCP
        let mut p = vec![0u8; len];
        p[..4].copy_from_slice(&[0x60, 0x01, 0x23, 0x45]);
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = PROTO_TCP;
        p[7] = 63;
        p[8..24].copy_from_slice(&"fd00:5:2::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00:5:1::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[40..42].copy_from_slice(&5201u16.to_be_bytes());
        p[42..44].copy_from_slice(&40000u16.to_be_bytes());
        p[44..48].copy_from_slice(&seq.to_be_bytes());
        p[48..52].copy_from_slice(&99u32.to_be_bytes());
        p[52] = 8 << 4;
        p[53] = flags;
        p[54..56].copy_from_slice(&500u16.to_be_bytes());
        p[60..72].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p[72..].copy_from_slice(payload);
        let c = tcp6_checksum(&p);
        p[56..58].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// An IPv6/TCP segment of `payload` bytes (a pattern that follows the sequence number).
    fn tcp6(seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        let data: Vec<u8> = (0..payload).map(|i| (seq as usize + i) as u8).collect();
        segment(true, seq, flags, &data)
    }

    /// The TCP checksum of an IPv6 packet computed from scratch (RFC 8200 8.1: addresses,
    /// 32-bit upper-layer length, three zero bytes, next header), with the field taken as zero.
    fn tcp6_checksum(p: &[u8]) -> u16 {
        let mut bytes = p[8..40].to_vec();
        bytes.extend_from_slice(&((p.len() - 40) as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, PROTO_TCP]);
        let mut tcp = p[40..].to_vec();
        tcp[16..18].copy_from_slice(&[0, 0]);
        bytes.extend_from_slice(&tcp);
        checksum(&bytes)
    }

    fn tcp6_checksum_ok(p: &[u8]) -> bool {
        u16::from_be_bytes([p[56], p[57]]) == tcp6_checksum(p)
    }

    #[test]
    fn split_gso_tcpv6_gives_wire_packets_with_ipv6_headers() {
        // CWR, FIN, PSH and ACK on the super-segment.
        let big = tcp6(1000, 3000, 0x99);
        let mut out = vec![0u8; 8000];
        let s = split_tcp(&big, 1400, &mut out).unwrap();
        assert_eq!((s.seg_len, s.count, s.total), (72 + 1400, 3, 3 * 72 + 3000));
        let mut off = 0;
        let mut data = Vec::new();
        for i in 0..3 {
            let len = if i < 2 { 72 + 1400 } else { 72 + 200 };
            let seg = &out[off..off + len];
            assert_eq!(
                usize::from(u16::from_be_bytes([seg[4], seg[5]])),
                len - 40,
                "payload length"
            );
            assert_eq!(seg[..4], big[..4], "version, traffic class, flow label");
            assert_eq!(seg[6..40], big[6..40], "next header, hop limit, addresses");
            assert!(tcp6_checksum_ok(seg), "TCP checksum of segment {i}");
            assert_eq!(
                u32::from_be_bytes(seg[44..48].try_into().unwrap()),
                1000 + 1400 * i as u32
            );
            let flags = seg[53];
            assert_eq!(flags & 0x10, 0x10, "ACK on every segment");
            assert_eq!(flags & 0x80 != 0, i == 0, "CWR only on the first");
            assert_eq!(flags & 0x09 != 0, i == 2, "FIN and PSH only on the last");
            assert_eq!(seg[54..56], big[54..56], "window");
            assert_eq!(seg[60..72], big[60..72], "options");
            data.extend_from_slice(&seg[72..]);
            off += len;
        }
        assert_eq!(data, big[72..]);
    }

    #[test]
    fn split_refuses_ipv6_with_extension_headers() {
        let mut hop_by_hop = tcp6(1, 3000, 0x10);
        hop_by_hop[6] = 0;
        assert_eq!(split_tcp(&hop_by_hop, 1400, &mut [0u8; 8000]), None);
    }

    #[test]
    fn coalesce_ipv6_then_split_gives_back_the_segments() {
        let segs = [tcp6(1, 1000, 0x10), tcp6(1001, 1000, 0x10), tcp6(2001, 500, 0x18)];
        let mut c = Coalescer::default();
        for s in &segs {
            assert_eq!(c.offer(s), Offer::Taken);
        }
        assert_eq!(
            c.offer(&tcp6(2501, 10, 0x10)),
            Offer::Refused,
            "closed after a short segment"
        );
        let flushed = c.flush().unwrap();
        assert_eq!((flushed.packets, flushed.bytes), (3, 3 * 72 + 2500));
        let merged = flushed.frame.to_vec();
        let vnet = VnetHdr::parse(&merged).unwrap();
        assert_eq!(
            vnet,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV6,
                hdr_len: 72,
                gso_size: 1000,
                csum_start: 40,
                csum_offset: 16,
            }
        );
        let mut pkt = merged[VNET_HDR_LEN..].to_vec();
        assert_eq!(usize::from(u16::from_be_bytes([pkt[4], pkt[5]])), 32 + 2500);
        assert_eq!(pkt[53], 0x18, "PSH of the last segment kept");
        // The partial checksum, finished as the kernel would, is the full one.
        assert!(finish_checksum(&mut pkt, &vnet));
        assert!(tcp6_checksum_ok(&pkt));
        let mut out = vec![0u8; 8000];
        let s = split_tcp(&pkt, 1000, &mut out).unwrap();
        assert_eq!(s.count, 3);
        let mut off = 0;
        for seg in &segs {
            let back = &out[off..off + seg.len()];
            // The last segment had PSH: the merge keeps it, the split puts it on the last only.
            assert_eq!(back, &seg[..], "segment at {off} as it was sent");
            off += seg.len();
        }
        assert!(c.is_empty());
    }

    #[test]
    fn coalesce_refuses_other_ipv6_flows_gaps_and_other_flags() {
        let mut c = Coalescer::default();
        assert_eq!(c.offer(&tcp6(1, 100, 0x10)), Offer::Taken);
        assert_eq!(c.offer(&tcp6(500, 100, 0x10)), Offer::Refused, "gap in the sequence");
        assert_eq!(c.offer(&tcp6(1, 100, 0x10)), Offer::Refused, "the same segment again");
        let changed = |at: usize| {
            let mut p = tcp6(101, 100, 0x10);
            p[at] ^= 0x01;
            let c = tcp6_checksum(&p);
            p[56..58].copy_from_slice(&c.to_be_bytes());
            p
        };
        for (at, what) in [
            (3, "flow label"),
            (1, "traffic class"),
            (7, "hop limit"),
            (23, "source address"),
            (39, "destination address"),
            (43, "destination port"),
            (71, "TCP options"),
        ] {
            assert_eq!(c.offer(&changed(at)), Offer::Refused, "other {what}");
        }
        for (flags, what) in [
            (0x11, "FIN"),
            (0x12, "SYN"),
            (0x14, "RST"),
            (0x30, "URG"),
            (0x90, "CWR"),
        ] {
            assert_eq!(c.offer(&tcp6(101, 100, flags)), Offer::Refused, "{what}");
        }
        assert_eq!(c.offer(&tcp6(101, 0, 0x10)), Offer::Refused, "a pure ACK");
        assert_eq!(c.offer(&tcp6(101, 101, 0x10)), Offer::Refused, "larger than the first");
        assert_eq!(c.offer(&tcp(101, 100, 0x10)), Offer::Refused, "IPv4");
        let mut hop_by_hop = tcp6(101, 100, 0x10);
        hop_by_hop[6] = 0;
        assert_eq!(c.offer(&hop_by_hop), Offer::Refused, "an extension header");
        let mut long = tcp6(101, 100, 0x10);
        long.push(0);
        assert_eq!(c.offer(&long), Offer::Refused, "bytes beyond the payload length");
        let mut bad = tcp6(101, 100, 0x10);
        bad[100] ^= 0x01;
        assert_eq!(c.offer(&bad), Offer::BadChecksum, "a damaged payload");
        assert_eq!(c.offer(&tcp6(101, 100, 0x18)), Offer::Taken, "PSH closes the merge");
        assert_eq!(c.offer(&tcp6(201, 100, 0x10)), Offer::Refused, "after PSH");
        let merged = c.flush().unwrap();
        assert_eq!((merged.packets, merged.bytes), (2, 2 * 172));
        assert_eq!(
            &merged.frame[VNET_HDR_LEN + 72..],
            &[&tcp6(1, 100, 0x10)[72..], &tcp6(101, 100, 0x10)[72..]].concat()[..]
        );
        let mut single = Coalescer::default();
        assert_eq!(single.offer(&tcp6(1, 100, 0x10)), Offer::Taken);
        let out = single.flush().unwrap().frame;
        assert_eq!(
            VnetHdr::parse(out).unwrap(),
            VnetHdr::default(),
            "a lone segment goes out as is"
        );
        assert_eq!(&out[VNET_HDR_LEN..], &tcp6(1, 100, 0x10)[..]);
    }

    #[test]
    fn an_ipv4_merge_is_not_joined_by_ipv6() {
        let mut c = Coalescer::default();
        assert_eq!(c.offer(&tcp(1, 100, 0x10)), Offer::Taken);
        assert_eq!(c.offer(&tcp6(101, 100, 0x10)), Offer::Refused);
        assert_eq!(VnetHdr::parse(c.flush().unwrap().frame).unwrap(), VnetHdr::default());
    }

    /// Offers every packet as a worker does (flush and offer again when refused, a refused one
    /// written alone, a bad one dropped) and returns the writes, vnet header and packet.
    fn coalesce_all(packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut c = Coalescer::default();
        let mut writes = Vec::new();
        let flush = |c: &mut Coalescer, writes: &mut Vec<(VnetHdr, Vec<u8>)>| {
            if let Some(m) = c.flush() {
                writes.push((VnetHdr::parse(m.frame).unwrap(), m.frame[VNET_HDR_LEN..].to_vec()));
            }
        };
        for p in packets {
            let mut offer = c.offer(p);
            if offer == Offer::Refused && !c.is_empty() {
                flush(&mut c, &mut writes);
                offer = c.offer(p);
            }
            if offer == Offer::Refused {
                writes.push((VnetHdr::default(), p.clone()));
            }
        }
        flush(&mut c, &mut writes);
        writes
    }

    /// The wire packets a write stands for, as the kernel would cut it.
    fn resplit(vnet: &VnetHdr, packet: &[u8]) -> Vec<Vec<u8>> {
        if vnet.gso_type == GSO_NONE {
            return vec![packet.to_vec()];
        }
        let mut full = packet.to_vec();
        assert!(finish_checksum(&mut full, vnet));
        let mut out = vec![0u8; 2 * MAX_PACKET];
        let s = split_tcp(&full, usize::from(vnet.gso_size), &mut out).expect("a merge splits");
        (0..s.count)
            .map(|i| out[i * s.seg_len..(s.total).min((i + 1) * s.seg_len)].to_vec())
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// A super-segment of either family split into wire packets and coalesced again is the
        /// same packet, byte for byte (its checksum finished as the kernel would).
        #[test]
        fn split_then_coalesce_gives_back_the_super_segment(
            v6 in proptest::prelude::any::<bool>(),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..20000),
            mss in 500usize..1460,
            seq in proptest::prelude::any::<u32>(),
        ) {
            let sent = segment(v6, seq, 0x18, &payload);
            let mut out = vec![0u8; 2 * MAX_PACKET];
            let s = split_tcp(&sent, mss, &mut out).unwrap();
            let wire: Vec<Vec<u8>> = (0..s.count)
                .map(|i| out[i * s.seg_len..s.total.min((i + 1) * s.seg_len)].to_vec())
                .collect();
            let writes = coalesce_all(&wire);
            proptest::prop_assert_eq!(writes.len(), 1);
            let (vnet, mut back) = writes.into_iter().next().unwrap();
            if s.count > 1 {
                let family = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
                proptest::prop_assert_eq!((vnet.gso_type, usize::from(vnet.gso_size)), (family, mss));
                proptest::prop_assert!(finish_checksum(&mut back, &vnet));
            }
            proptest::prop_assert_eq!(back, sent);
        }

        /// A flow of either family, maybe with one byte flipped in one segment: re-splitting
        /// what was written gives back every segment as it was sent, in order; the damaged one
        /// never inside a merge.
        #[test]
        fn a_coalesced_flow_splits_back_into_its_segments(
            v6 in proptest::prelude::any::<bool>(),
            mss in 1usize..1460,
            count in 1usize..50,
            last in 1usize..1460,
            seq in proptest::prelude::any::<u32>(),
            damage in proptest::option::of((
                proptest::prelude::any::<proptest::sample::Index>(),
                proptest::prelude::any::<proptest::sample::Index>(),
                1u8..,
            )),
        ) {
            let last = last.min(mss);
            let mut segs: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let len = if i + 1 == count { last } else { mss };
                    let payload: Vec<u8> = (0..len).map(|k| (k * 31 + i * 7) as u8).collect();
                    let mut p = segment(v6, seq.wrapping_add((i * mss) as u32), 0x10, &payload);
                    if !v6 {
                        // Each IPv4 packet with the next id, as the sender (and the split) numbers them.
                        p[4..6].copy_from_slice(&(7 + i as u16).to_be_bytes());
                        set_ipv4_checksum(&mut p, 20);
                    }
                    p
                })
                .collect();
            let good = segs.clone();
            let damaged = damage.map(|(which, at, v)| {
                let i = which.index(count);
                let b = at.index(segs[i].len());
                segs[i][b] ^= v;
                i
            });
            let writes = coalesce_all(&segs);
            let mut back = Vec::new();
            for (vnet, packet) in &writes {
                let split = resplit(vnet, packet);
                if let (true, Some(d)) = (split.len() > 1, damaged) {
                    proptest::prop_assert!(!split.contains(&segs[d]), "the damaged segment merged");
                }
                back.extend(split);
            }
            let want: Vec<&Vec<u8>> = (0..count)
                .filter_map(|i| match Some(i) == damaged {
                    false => Some(&good[i]),
                    // Dropped with a bad checksum, or written alone for the kernel to judge.
                    true => back.contains(&segs[i]).then_some(&segs[i]),
                })
                .collect();
            proptest::prop_assert_eq!(back.iter().collect::<Vec<_>>(), want);
        }
    }
}
