//! IPv4 packet handling for the udp backend, with no I/O: header parsing, the TTL decrement
//! with an incremental checksum update (RFC 1624), the ICMP net-unreachable reply, and the
//! per-packet decisions ([`outbound`], [`inbound`]) against a [`PeerTable`].

use std::net::Ipv4Addr;

pub use super::drop::DropReason;
use super::peers::PeerTable;

pub const IPV4_HEADER_LEN: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The fields of an IPv4 header the datapath needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub header_len: usize,
    pub total_len: usize,
    pub ttl: u8,
    pub protocol: u8,
    /// Fragment offset in 8-byte units (0 for an unfragmented packet or a first fragment).
    pub fragment_offset: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// Parses the IPv4 header at the start of `pkt`, checking that version, header length and
/// total length agree with the bytes we have (`pkt` may be longer than the packet).
pub fn parse_ipv4(pkt: &[u8]) -> Option<Ipv4Header> {
    if pkt.len() < IPV4_HEADER_LEN || pkt[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(pkt[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if header_len < IPV4_HEADER_LEN || total_len < header_len || total_len > pkt.len() {
        return None;
    }
    Some(Ipv4Header {
        header_len,
        total_len,
        ttl: pkt[8],
        protocol: pkt[9],
        fragment_offset: u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff,
        src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
    })
}

/// One's complement sum of `data` (big-endian 16-bit words, odd tail padded), not folded.
///
/// The one's complement sum does not depend on byte order except for a final swap, so the
/// bytes are summed as native-endian 32-bit words into 64-bit accumulators (a loop the
/// compiler vectorizes, with no carry to track: 2^32 words would be needed to overflow), then
/// folded to 16 bits and swapped into network order.
pub fn sum16(data: &[u8], acc: u64) -> u64 {
    let mut lanes = [0u64; LANES];
    let mut blocks = data.chunks_exact(4 * LANES);
    for block in &mut blocks {
        add_block(&mut lanes, block);
    }
    acc + finish_sum(lanes, blocks.remainder())
}

/// Copies `src` into `dst` (of the same length) and returns `acc` plus the one's complement
/// sum of the bytes, as [`sum16`] does, reading them once: verifying a segment while it is
/// copied costs little more than the copy.
pub fn copy_sum16(src: &[u8], dst: &mut [u8], acc: u64) -> u64 {
    let mut lanes = [0u64; LANES];
    let mut blocks = src.chunks_exact(4 * LANES);
    let mut out = dst.chunks_exact_mut(4 * LANES);
    for (block, to) in (&mut blocks).zip(&mut out) {
        to.copy_from_slice(block);
        add_block(&mut lanes, block);
    }
    let rest = blocks.remainder();
    out.into_remainder().copy_from_slice(rest);
    acc + finish_sum(lanes, rest)
}

/// 32-bit words summed side by side, so the loop keeps vector registers busy.
const LANES: usize = 8;

fn add_block(lanes: &mut [u64; LANES], block: &[u8]) {
    for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(4)) {
        *lane += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
}

/// Adds the words of `rest` (fewer than a block; an odd tail padded) to the lanes, folds them
/// and swaps the result into network order.
fn finish_sum(lanes: [u64; LANES], rest: &[u8]) -> u64 {
    let mut wide: u64 = lanes.iter().sum();
    let mut words = rest.chunks_exact(4);
    for w in &mut words {
        wide += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    let odd = words.remainder();
    tail[..odd.len()].copy_from_slice(odd);
    wide += u64::from(u32::from_ne_bytes(tail));
    u64::from(u16::from_be(fold(wide)))
}

/// Folds a one's complement sum to 16 bits.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

/// Recomputes the IPv4 header checksum of the header at the start of `pkt`.
pub fn set_ipv4_checksum(pkt: &mut [u8], header_len: usize) {
    pkt[10] = 0;
    pkt[11] = 0;
    let c = checksum(&pkt[..header_len]);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Decrements the TTL of the IPv4 packet in `pkt` and patches the header checksum
/// incrementally (RFC 1624: HC' = ~(~HC + ~m + m')). Returns false, leaving the packet as it
/// was, when the TTL would reach 0: the packet must be dropped.
pub fn decrement_ttl(pkt: &mut [u8]) -> bool {
    let ttl = pkt[8];
    if ttl <= 1 {
        return false;
    }
    let old_word = u16::from_be_bytes([ttl, pkt[9]]);
    let new_word = u16::from_be_bytes([ttl - 1, pkt[9]]);
    let hc = u16::from_be_bytes([pkt[10], pkt[11]]);
    let sum = u64::from(!hc) + u64::from(!old_word) + u64::from(new_word);
    let new_hc = !fold(sum);
    pkt[8] = ttl - 1;
    pkt[10..12].copy_from_slice(&new_hc.to_be_bytes());
    true
}

/// The largest ICMP net-unreachable reply [`net_unreachable`] writes: IPv4 + ICMP headers, the
/// offender's header (up to 60 bytes) and 8 bytes of its payload.
pub const ICMP_REPLY_MAX: usize = IPV4_HEADER_LEN + 8 + 60 + 8;

/// ICMP error types, which never get an ICMP error in reply (RFC 1122 3.2.2).
fn is_icmp_error(kind: u8) -> bool {
    matches!(kind, 3 | 4 | 5 | 11 | 12)
}

/// Writes into `out` an ICMP destination-unreachable (net unreachable) from `local` to the
/// sender of `offender`, quoting its header and first 8 payload bytes, as flannel does for a
/// destination no lease covers. Returns the reply's length, or None when no reply is due: the
/// offender is an ICMP error, a non-first fragment, or from a non-unicast source.
pub fn net_unreachable(
    offender: &[u8],
    hdr: &Ipv4Header,
    local: Ipv4Addr,
    out: &mut [u8; ICMP_REPLY_MAX],
) -> Option<usize> {
    if hdr.fragment_offset != 0 {
        return None;
    }
    if hdr.protocol == PROTO_ICMP {
        let kind = *offender.get(hdr.header_len)?;
        if is_icmp_error(kind) {
            return None;
        }
    }
    if hdr.src.is_unspecified() || hdr.src.is_broadcast() || hdr.src.is_multicast() {
        return None;
    }
    let quoted = (hdr.header_len + 8).min(hdr.total_len);
    let len = IPV4_HEADER_LEN + 8 + quoted;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = 64;
    out[9] = PROTO_ICMP;
    out[12..16].copy_from_slice(&local.octets());
    out[16..20].copy_from_slice(&hdr.src.octets());
    set_ipv4_checksum(&mut out[..], IPV4_HEADER_LEN);
    let icmp = &mut out[IPV4_HEADER_LEN..len];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 0; // net unreachable
    icmp[8..].copy_from_slice(&offender[..quoted]);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

/// What to do with a packet read from the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// Send the first `len` bytes (TTL already decremented) to this peer's public IP.
    Send {
        to: Ipv4Addr,
        len: usize,
    },
    /// No lease covers the destination: answer with ICMP net unreachable into the TUN.
    Unreachable(Ipv4Header),
    Drop(DropReason),
}

fn unparsable(pkt: &[u8]) -> DropReason {
    match pkt.first() {
        Some(b) if b >> 4 == 6 => DropReason::NotIpv4,
        _ => DropReason::Malformed,
    }
}

/// Decides what to do with a packet the kernel routed into the TUN device; decrements its TTL
/// when it is to be sent.
pub fn outbound(pkt: &mut [u8], table: &PeerTable) -> Outbound {
    let Some(hdr) = parse_ipv4(pkt) else {
        return Outbound::Drop(unparsable(pkt));
    };
    let Some(to) = table.next_hop(hdr.dst) else {
        return Outbound::Unreachable(hdr);
    };
    if !decrement_ttl(pkt) {
        return Outbound::Drop(DropReason::TtlExpired);
    }
    Outbound::Send { to, len: hdr.total_len }
}

/// What to do with a datagram received from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Write the first `len` bytes (TTL already decremented) into the TUN device.
    Deliver {
        len: usize,
    },
    Drop(DropReason),
}

/// Decides what to do with a datagram from `from`: it must carry a whole IPv4 packet with a
/// valid header checksum, come from a current lease's PublicIP, and its inner source must be
/// inside that lease's subnet and its destination inside ours. Decrements the TTL (keeping the
/// checksum valid) when it is to be delivered.
pub fn inbound(pkt: &mut [u8], from: Ipv4Addr, table: &PeerTable) -> Inbound {
    if pkt.len() < IPV4_HEADER_LEN {
        return Inbound::Drop(DropReason::TooShort);
    }
    let Some(hdr) = parse_ipv4(pkt) else {
        return Inbound::Drop(unparsable(pkt));
    };
    // Before anything reads the addresses: a corrupt header says nothing about who sent it.
    if checksum(&pkt[..hdr.header_len]) != 0 {
        return Inbound::Drop(DropReason::BadIpChecksum);
    }
    if let Err(reason) = table.admits(from, hdr.src, hdr.dst) {
        return Inbound::Drop(reason);
    }
    if !decrement_ttl(pkt) {
        return Inbound::Drop(DropReason::TtlExpired);
    }
    Inbound::Deliver { len: hdr.total_len }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::udp::peers::Peer;

    /// The sum word by word, as RFC 1071 writes it.
    fn sum16_reference(data: &[u8], mut acc: u64) -> u64 {
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            acc += hi | pair.get(1).map_or(0, |b| u64::from(*b));
        }
        acc
    }

    #[test]
    fn sum16_matches_the_word_by_word_sum_for_every_length_and_content() {
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in 0..300 {
            for start in [0, 1, 3] {
                let d = &data[start..start + len];
                assert_eq!(
                    fold(sum16(d, 7)),
                    fold(sum16_reference(d, 7)),
                    "len {len} start {start}"
                );
            }
        }
        for len in [0, 1, 31, 32, 33, 64, 1412, 2999] {
            let src = &data[..len];
            let mut dst = vec![0u8; len];
            assert_eq!(
                fold(copy_sum16(src, &mut dst, 7)),
                fold(sum16_reference(src, 7)),
                "len {len}"
            );
            assert_eq!(dst, src, "copied");
        }
        let ones = vec![0xffu8; 2999];
        assert_eq!(fold(sum16(&ones, 0)), fold(sum16_reference(&ones, 0)));
        assert_eq!(fold(sum16(&data, 0)), fold(sum16_reference(&data, 0)));
    }

    /// An IPv4/UDP packet with a valid header checksum and `payload` bytes of payload.
    pub(crate) fn ipv4_udp(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: usize) -> Vec<u8> {
        let total = IPV4_HEADER_LEN + 8 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = ttl;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        set_ipv4_checksum(&mut p, IPV4_HEADER_LEN);
        p[20..22].copy_from_slice(&4000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5000u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        for (i, b) in p[28..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    fn table() -> PeerTable {
        PeerTable::new(
            Some("10.5.0.0/16".parse().unwrap()),
            Some("10.5.1.0/24".parse().unwrap()),
            &[
                Peer {
                    subnet: "10.5.2.0/24".parse().unwrap(),
                    public_ip: Ipv4Addr::new(198, 51, 100, 2),
                },
                Peer {
                    subnet: "10.5.3.0/24".parse().unwrap(),
                    public_ip: Ipv4Addr::new(198, 51, 100, 3),
                },
            ],
        )
    }

    #[test]
    fn parse_rejects_what_is_not_a_whole_ipv4_packet() {
        let p = ipv4_udp([10, 5, 1, 2], [10, 5, 2, 2], 64, 10);
        let h = parse_ipv4(&p).unwrap();
        assert_eq!((h.header_len, h.total_len, h.ttl, h.protocol), (20, 38, 64, PROTO_UDP));
        assert_eq!(h.dst, Ipv4Addr::new(10, 5, 2, 2));
        assert!(parse_ipv4(&p[..19]).is_none(), "shorter than a header");
        assert!(parse_ipv4(&p[..30]).is_none(), "total length beyond the data");
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert!(parse_ipv4(&v6).is_none(), "not version 4");
        let mut ihl = p.clone();
        ihl[0] = 0x44;
        assert!(parse_ipv4(&ihl).is_none(), "header shorter than 20 bytes");
        let mut total = p.clone();
        total[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert!(parse_ipv4(&total).is_none(), "total length shorter than the header");
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_valid() {
        for ttl in 2..=255u8 {
            for id in [0u16, 0x00ff, 0xfeff, 0xffff, 0x1234] {
                let mut p = ipv4_udp([10, 5, 1, 2], [10, 5, 2, 2], ttl, 4);
                p[4..6].copy_from_slice(&id.to_be_bytes());
                set_ipv4_checksum(&mut p, 20);
                assert!(decrement_ttl(&mut p));
                assert_eq!(p[8], ttl - 1);
                assert_eq!(
                    checksum(&p[..20]),
                    0,
                    "ttl {ttl} id {id:#x}: checksum must still verify"
                );
            }
        }
        let mut p = ipv4_udp([10, 5, 1, 2], [10, 5, 2, 2], 1, 4);
        let before = p.clone();
        assert!(!decrement_ttl(&mut p), "TTL 1 cannot be forwarded");
        assert_eq!(p, before);
    }

    #[test]
    fn outbound_sends_to_the_lease_holder_and_answers_unknown_subnets() {
        let t = table();
        let mut p = ipv4_udp([10, 5, 1, 2], [10, 5, 3, 7], 64, 100);
        assert_eq!(
            outbound(&mut p, &t),
            Outbound::Send {
                to: Ipv4Addr::new(198, 51, 100, 3),
                len: 128
            }
        );
        assert_eq!(p[8], 63);

        let mut p = ipv4_udp([10, 5, 1, 2], [10, 5, 9, 7], 64, 100);
        let Outbound::Unreachable(h) = outbound(&mut p, &t) else {
            panic!("a subnet no lease covers is unreachable")
        };
        let mut out = [0u8; ICMP_REPLY_MAX];
        let n = net_unreachable(&p, &h, Ipv4Addr::new(10, 5, 1, 0), &mut out).unwrap();
        let r = parse_ipv4(&out[..n]).unwrap();
        assert_eq!(
            (r.src, r.dst, r.protocol),
            (Ipv4Addr::new(10, 5, 1, 0), h.src, PROTO_ICMP)
        );
        assert_eq!(checksum(&out[..20]), 0);
        assert_eq!((out[20], out[21]), (3, 0), "type 3 code 0: net unreachable");
        assert_eq!(checksum(&out[20..n]), 0);
        assert_eq!(&out[28..n], &p[..28], "quotes the header and 8 bytes");

        let mut p = ipv4_udp([10, 5, 1, 2], [10, 5, 2, 7], 1, 10);
        assert_eq!(outbound(&mut p, &t), Outbound::Drop(DropReason::TtlExpired));
        assert_eq!(outbound(&mut [0x45, 0, 0], &t), Outbound::Drop(DropReason::Malformed));
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        assert_eq!(outbound(&mut v6, &t), Outbound::Drop(DropReason::NotIpv4));
    }

    #[test]
    fn no_icmp_about_icmp_errors_or_later_fragments() {
        let local = Ipv4Addr::new(10, 5, 1, 0);
        let mut out = [0u8; ICMP_REPLY_MAX];
        let mut p = ipv4_udp([10, 5, 1, 2], [10, 5, 9, 7], 64, 10);
        p[9] = PROTO_ICMP;
        p[20] = 3;
        let h = parse_ipv4(&p).unwrap();
        assert_eq!(net_unreachable(&p, &h, local, &mut out), None);
        p[20] = 8; // echo request: answered
        assert!(net_unreachable(&p, &h, local, &mut out).is_some());
        let mut frag = ipv4_udp([10, 5, 1, 2], [10, 5, 9, 7], 64, 10);
        frag[7] = 1;
        let h = parse_ipv4(&frag).unwrap();
        assert_eq!(net_unreachable(&frag, &h, local, &mut out), None);
    }

    #[test]
    fn inbound_admits_only_peers_speaking_for_their_own_subnet() {
        let t = table();
        let peer2 = Ipv4Addr::new(198, 51, 100, 2);
        let mut p = ipv4_udp([10, 5, 2, 9], [10, 5, 1, 2], 64, 10);
        assert_eq!(inbound(&mut p, peer2, &t), Inbound::Deliver { len: 38 });
        assert_eq!(p[8], 63);

        let mut p = ipv4_udp([10, 5, 2, 9], [10, 5, 1, 2], 64, 10);
        assert_eq!(
            inbound(&mut p, Ipv4Addr::new(192, 0, 2, 66), &t),
            Inbound::Drop(DropReason::UnknownPeer)
        );
        let mut p = ipv4_udp([10, 5, 3, 9], [10, 5, 1, 2], 64, 10);
        assert_eq!(inbound(&mut p, peer2, &t), Inbound::Drop(DropReason::SpoofedSource));
        let mut p = ipv4_udp([10, 5, 2, 9], [10, 5, 3, 2], 64, 10);
        assert_eq!(inbound(&mut p, peer2, &t), Inbound::Drop(DropReason::NotForUs));
        let mut junk = vec![0xffu8; 40];
        assert_eq!(inbound(&mut junk, peer2, &t), Inbound::Drop(DropReason::Malformed));
        assert_eq!(inbound(&mut [], peer2, &t), Inbound::Drop(DropReason::TooShort));
        assert_eq!(inbound(&mut [0x45; 19], peer2, &t), Inbound::Drop(DropReason::TooShort));
        let mut p = ipv4_udp([10, 5, 2, 9], [10, 5, 1, 2], 64, 10);
        p[11] ^= 0x01;
        let before = p.clone();
        assert_eq!(inbound(&mut p, peer2, &t), Inbound::Drop(DropReason::BadIpChecksum));
        assert_eq!(p, before, "a refused datagram is left as it came");
        let mut p = ipv4_udp([10, 5, 2, 9], [10, 5, 1, 2], 1, 10);
        assert_eq!(inbound(&mut p, peer2, &t), Inbound::Drop(DropReason::TtlExpired));

        let no_lease = PeerTable::new(None, None, &[]);
        let mut p = ipv4_udp([10, 5, 2, 9], [10, 5, 1, 2], 64, 10);
        assert_eq!(inbound(&mut p, peer2, &no_lease), Inbound::Drop(DropReason::NoLease));
    }
}
