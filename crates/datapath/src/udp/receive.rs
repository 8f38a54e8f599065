//! The receive path of the udp backend, with no I/O: from one received message (with UDP_GRO,
//! several datagrams of one size back to back) to the writes into flannel0. Each datagram is
//! judged by [`inbound`] (length, IPv4 header and its checksum, sender, inner addresses, TTL);
//! on a vnet_hdr device, admitted TCP data segments are coalesced into super-segments, which
//! [`Coalescer::offer`] takes only once their checksums verify. The caller performs each
//! write; the counts of what was written and dropped go into its [`Tally`].

use std::net::Ipv4Addr;

use super::counters::Tally;
use super::offload::{Coalescer, Offer, VNET_HDR_LEN};
use super::packet::{inbound, DropReason, Inbound};
use super::peers::PeerTable;

/// The vnet header of a packet that needs no offload: the kernel verifies its checksums.
pub(crate) const ZERO_VNET: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// One write into flannel0: `head` (the vnet header on a vnet_hdr device, else empty), then
/// `packet`. Returns whether the kernel took it.
pub(crate) trait TunWriter {
    fn write(&mut self, head: &[u8], packet: &[u8]) -> bool;
}

impl<F: FnMut(&[u8], &[u8]) -> bool> TunWriter for F {
    fn write(&mut self, head: &[u8], packet: &[u8]) -> bool {
        self(head, packet)
    }
}

/// One message as the socket returned it.
pub(crate) struct Message<'a> {
    /// The datagram, or with UDP_GRO several of `segment` bytes each (the last may be shorter).
    pub data: &'a mut [u8],
    pub from: Ipv4Addr,
    /// Cut short by the kernel: longer than the receive buffer.
    pub truncated: bool,
    pub segment: Option<usize>,
}

/// The receive path of one worker; the coalescer's buffer is allocated once.
pub(crate) struct Receiver {
    /// Present on a vnet_hdr device (offloads on).
    coalescer: Option<Box<Coalescer>>,
}

impl Receiver {
    pub fn new(vnet_hdr: bool) -> Self {
        Receiver {
            coalescer: vnet_hdr.then(Box::default),
        }
    }

    /// Judges every datagram of `msg` against `table` and writes what is admitted (a TCP
    /// segment may wait in the coalescer until [`Receiver::flush`] or a segment that does not
    /// fit its merge).
    pub fn message(&mut self, msg: Message<'_>, table: &PeerTable, tally: &mut Tally, out: &mut impl TunWriter) {
        if msg.truncated {
            tally.drop(DropReason::Malformed);
            return;
        }
        if msg.data.is_empty() {
            tally.drop(DropReason::TooShort);
            return;
        }
        let seg = msg.segment.unwrap_or(msg.data.len()).max(1);
        for datagram in msg.data.chunks_mut(seg) {
            self.datagram(datagram, msg.from, table, tally, out);
        }
    }

    fn datagram(
        &mut self,
        pkt: &mut [u8],
        from: Ipv4Addr,
        table: &PeerTable,
        tally: &mut Tally,
        out: &mut impl TunWriter,
    ) {
        let len = match inbound(pkt, from, table) {
            Inbound::Deliver { len } => len,
            Inbound::Drop(reason) => return tally.drop(reason),
        };
        let pkt = &pkt[..len];
        let Some(coalescer) = self.coalescer.as_mut() else {
            return written(tally, out.write(&[], pkt), 1, len);
        };
        let mut offer = coalescer.offer(pkt);
        if offer == Offer::Refused && !coalescer.is_empty() {
            flush(coalescer, tally, out);
            offer = coalescer.offer(pkt);
        }
        match offer {
            Offer::Taken => {}
            Offer::BadChecksum => tally.drop(DropReason::BadTcpChecksum),
            Offer::Refused => written(tally, out.write(&ZERO_VNET, pkt), 1, len),
        }
    }

    /// Writes the pending merge, if any: at the end of every batch.
    pub fn flush(&mut self, tally: &mut Tally, out: &mut impl TunWriter) {
        if let Some(coalescer) = self.coalescer.as_mut() {
            flush(coalescer, tally, out);
        }
    }
}

fn flush(coalescer: &mut Coalescer, tally: &mut Tally, out: &mut impl TunWriter) {
    if let Some(merged) = coalescer.flush() {
        let (head, packet) = merged.frame.split_at(VNET_HDR_LEN);
        written(tally, out.write(head, packet), merged.packets, merged.bytes);
    }
}

fn written(tally: &mut Tally, ok: bool, packets: usize, bytes: usize) {
    if ok {
        tally.rx_packets += packets as u64;
        tally.rx_bytes += bytes as u64;
    } else {
        tally.tun_write_errors += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::*;
    use crate::udp::offload::{outbound_frame, pseudo_sum, split_tcp, FrameOut, VnetHdr, MAX_PACKET};
    use crate::udp::packet::{checksum, fold, parse_ipv4, set_ipv4_checksum, sum16, PROTO_TCP, PROTO_UDP};
    use crate::udp::peers::Peer;

    /// Counts the allocations of each thread, so a test can show a path makes none.
    struct CountingAllocator;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    fn count_allocation() {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count_allocation();
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count_allocation();
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count_allocation();
            System.realloc(ptr, layout, new_size)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
    }

    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator;

    /// Allocations this thread made while running `f`.
    fn allocations_in<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let before = ALLOCATIONS.with(Cell::get);
        let out = f();
        (out, ALLOCATIONS.with(Cell::get) - before)
    }

    const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

    /// Node a's table (10.5.1.0/24) or node b's (10.5.2.0/24), each knowing the other.
    fn table_of(node: Ipv4Addr) -> PeerTable {
        let (own, peer, peer_ip) = if node == NODE_A {
            ("10.5.1.0/24", "10.5.2.0/24", NODE_B)
        } else {
            ("10.5.2.0/24", "10.5.1.0/24", NODE_A)
        };
        PeerTable::new(
            Some("10.5.0.0/16".parse().unwrap()),
            Some(own.parse().unwrap()),
            &[Peer {
                subnet: peer.parse().unwrap(),
                public_ip: peer_ip,
            }],
        )
    }

    /// An IPv4/TCP segment `src:5201 -> dst:40000` with valid checksums, flags `flags`.
    fn tcp_segment(src: [u8; 4], dst: [u8; 4], seq: u32, id: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = 40 + payload.len();
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        set_ipv4_checksum(&mut p, 20);
        p[20..22].copy_from_slice(&5201u16.to_be_bytes());
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        let c = !fold(sum16(&p[20..], pseudo_sum(&p, len - 20)));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// A segment from b's pod to a's (what node a receives from node b).
    fn b_to_a(seq: u32, id: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        tcp_segment([10, 5, 2, 7], [10, 5, 1, 7], seq, id, flags, payload)
    }

    fn udp_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let len = 28 + payload.len();
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        set_ipv4_checksum(&mut p, 20);
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        p
    }

    fn tcp_checksum_ok(p: &[u8]) -> bool {
        fold(sum16(&p[20..], pseudo_sum(p, p.len() - 20))) == 0xffff
    }

    type Writes = Vec<(Vec<u8>, Vec<u8>)>;

    /// Receives `messages` (bytes, sender, UDP_GRO segment size) on `node` as one batch;
    /// returns every write into flannel0 (vnet header or nothing, packet) and the counts.
    fn receive(node: Ipv4Addr, vnet_hdr: bool, messages: &mut [(Vec<u8>, Ipv4Addr, Option<usize>)]) -> (Writes, Tally) {
        let table = table_of(node);
        let mut rx = Receiver::new(vnet_hdr);
        let mut tally = Tally::default();
        let mut writes = Vec::new();
        let mut out = |head: &[u8], packet: &[u8]| {
            writes.push((head.to_vec(), packet.to_vec()));
            true
        };
        for (data, from, segment) in messages.iter_mut() {
            let msg = Message {
                data,
                from: *from,
                truncated: false,
                segment: *segment,
            };
            rx.message(msg, &table, &mut tally, &mut out);
        }
        rx.flush(&mut tally, &mut out);
        (writes, tally)
    }

    /// The wire packets a write stands for: a GSO super-segment split again as the kernel
    /// would, anything else as it is.
    fn resplit(head: &[u8], packet: &[u8]) -> Vec<Vec<u8>> {
        let vnet = VnetHdr::parse(head).unwrap_or_default();
        if vnet.gso_type == 0 {
            return vec![packet.to_vec()];
        }
        let mut out = vec![0u8; 2 * MAX_PACKET];
        let s = split_tcp(packet, usize::from(vnet.gso_size), &mut out).expect("a super-segment splits");
        let mut segs = Vec::new();
        let mut off = 0;
        while off < s.total {
            let len = s.seg_len.min(s.total - off);
            segs.push(out[off..off + len].to_vec());
            off += len;
        }
        segs
    }

    #[test]
    fn every_class_of_bad_datagram_is_dropped_with_its_own_reason() {
        for vnet_hdr in [false, true] {
            let good = udp_packet([10, 5, 2, 7], [10, 5, 1, 7], b"ok");
            let mut bad_ip = good.clone();
            bad_ip[10] ^= 0xff;
            let mut truncated = good.clone();
            truncated.truncate(25);
            let mut bad_tcp = b_to_a(1, 1, 0x10, &[7; 100]);
            bad_tcp[45] ^= 0x20;
            let mut msgs = vec![
                (Vec::new(), NODE_B, None),
                (vec![0x45; 19], NODE_B, None),
                (truncated, NODE_B, None),
                (bad_ip, NODE_B, None),
                (bad_tcp, NODE_B, None),
                (udp_packet([10, 5, 3, 7], [10, 5, 1, 7], b"spoof"), NODE_B, None),
                (udp_packet([10, 5, 2, 7], [10, 5, 9, 7], b"elsewhere"), NODE_B, None),
                (good.clone(), STRANGER, None),
                (good.clone(), NODE_B, None),
            ];
            let (writes, tally) = receive(NODE_A, vnet_hdr, &mut msgs);
            let want_head: &[u8] = if vnet_hdr { &ZERO_VNET } else { &[] };
            let mut delivered = good.clone();
            delivered[8] -= 1;
            set_ipv4_checksum(&mut delivered, 20);
            if vnet_hdr {
                assert_eq!(writes, [(want_head.to_vec(), delivered)], "only the good datagram");
                assert_eq!(tally.dropped(DropReason::BadTcpChecksum), 1);
            } else {
                // Without offloads nothing is coalesced: the kernel checks the TCP checksum.
                assert_eq!(writes.len(), 2);
                assert_eq!(writes[1], (want_head.to_vec(), delivered));
            }
            assert_eq!(tally.dropped(DropReason::TooShort), 2, "zero-length and 19 bytes");
            assert_eq!(
                tally.dropped(DropReason::Malformed),
                1,
                "total length beyond the datagram"
            );
            assert_eq!(tally.dropped(DropReason::BadIpChecksum), 1);
            assert_eq!(tally.dropped(DropReason::SpoofedSource), 1);
            assert_eq!(tally.dropped(DropReason::NotForUs), 1);
            assert_eq!(tally.dropped(DropReason::UnknownPeer), 1);
        }
    }

    #[test]
    fn a_truncated_message_is_malformed_and_a_failed_write_is_counted() {
        let table = table_of(NODE_A);
        let mut rx = Receiver::new(false);
        let mut tally = Tally::default();
        let mut refuse = |_: &[u8], _: &[u8]| false;
        for truncated in [true, false] {
            let msg = Message {
                data: &mut udp_packet([10, 5, 2, 7], [10, 5, 1, 7], b"x"),
                from: NODE_B,
                truncated,
                segment: None,
            };
            rx.message(msg, &table, &mut tally, &mut refuse);
        }
        assert_eq!(tally.dropped(DropReason::Malformed), 1);
        assert_eq!((tally.tun_write_errors, tally.rx_packets), (1, 0));
    }

    #[test]
    fn a_flow_in_one_gro_message_becomes_one_super_segment_without_its_corrupt_segment() {
        let payload: Vec<u8> = (0..1000u32 * 8).map(|i| (i * 7 + 3) as u8).collect();
        let segs: Vec<Vec<u8>> = payload
            .chunks(1000)
            .enumerate()
            .map(|(i, c)| b_to_a(1 + 1000 * i as u32, i as u16, 0x10, c))
            .collect();
        let mut wire = segs.concat();
        wire[3 * 1040 + 500] ^= 0x04; // segment 3's payload
        let (writes, tally) = receive(NODE_A, true, &mut [(wire, NODE_B, Some(1040))]);
        assert_eq!(tally.dropped(DropReason::BadTcpChecksum), 1);
        assert_eq!(tally.rx_packets, 7);
        let heads: Vec<VnetHdr> = writes.iter().map(|(h, _)| VnetHdr::parse(h).unwrap()).collect();
        assert_eq!(
            heads.iter().map(|h| (h.gso_type, h.gso_size)).collect::<Vec<_>>(),
            [(1, 1000), (1, 1000)],
            "segments 0-2 and 4-7 merged, segment 3 left out"
        );
        let back: Vec<Vec<u8>> = writes.iter().flat_map(|(h, p)| resplit(h, p)).collect();
        let want: Vec<&Vec<u8>> = segs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(back.len(), want.len());
        for (b, w) in back.iter().zip(want) {
            assert_eq!(b[20..], w[20..], "the TCP segment as it was sent");
            assert_eq!(b[8], w[8] - 1, "TTL decremented");
        }
    }

    #[test]
    fn drop_reasons_are_listed_in_index_order_with_distinct_names() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    /// A packet b may send to a (or not quite: another source, another destination), TCP with
    /// assorted flags or UDP.
    fn plausible_packet() -> impl Strategy<Value = Vec<u8>> {
        let src = prop_oneof![Just([10, 5, 2, 7]), Just([10, 5, 3, 7])];
        let dst = prop_oneof![4 => Just([10, 5, 1, 7]), 1 => Just([10, 5, 9, 7])];
        let flags = prop_oneof![Just(0x10u8), Just(0x18), Just(0x02), Just(0x11), Just(0x12)];
        let payload = prop::collection::vec(any::<u8>(), 0..1500);
        (src, dst, any::<bool>(), any::<u32>(), flags, payload).prop_map(|(src, dst, tcp, seq, flags, payload)| {
            if tcp {
                tcp_segment(src, dst, seq, 1, flags, &payload)
            } else {
                udp_packet(src, dst, &payload)
            }
        })
    }

    /// Bytes as an attacker or a broken peer might send them: random, or a plausible packet
    /// with bytes flipped, cut or appended.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        let edits = prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..3);
        prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..80),
            3 => (plausible_packet(), edits, 0usize..30, prop::collection::vec(any::<u8>(), 0..4)).prop_map(
                |(mut p, flips, cut, tail)| {
                    for (at, v) in flips {
                        let i = at.index(p.len());
                        p[i] ^= v;
                    }
                    p.truncate(p.len().saturating_sub(cut));
                    p.extend(tail);
                    p
                }
            ),
        ]
    }

    /// A message: one datagram, or (UDP_GRO) several cut at the first one's length.
    fn message() -> impl Strategy<Value = (Vec<u8>, Ipv4Addr, Option<usize>)> {
        let from = prop_oneof![4 => Just(NODE_B), 1 => Just(STRANGER), 1 => Just(NODE_A)];
        (prop::collection::vec(datagram(), 1..4), from, any::<bool>()).prop_map(|(grams, from, gro)| {
            let segment = (gro && grams.len() > 1).then(|| grams[0].len().max(1));
            (grams.concat(), from, segment)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Whatever arrives: no panic, no allocation, every datagram either written or counted
        /// as dropped exactly once, and every write a whole IPv4 packet with a valid header
        /// checksum from b's subnet to a's; a super-segment only of TCP segments that verify.
        #[test]
        fn arbitrary_datagrams_are_written_whole_and_valid_or_dropped_and_counted(
            mut msgs in prop::collection::vec(message(), 1..6),
            vnet_hdr in any::<bool>(),
        ) {
            let datagrams: usize = msgs
                .iter()
                .map(|(d, _, seg)| if d.is_empty() { 1 } else { d.len().div_ceil(seg.unwrap_or(d.len())) })
                .sum();
            let table = table_of(NODE_A);
            let mut rx = Receiver::new(vnet_hdr);
            let mut tally = Tally::default();
            let mut merged = 0u64;
            let mut check = |head: &[u8], packet: &[u8]| {
                let hdr = parse_ipv4(packet).expect("an IPv4 packet");
                assert_eq!(hdr.total_len, packet.len(), "whole");
                assert_eq!(checksum(&packet[..hdr.header_len]), 0, "header checksum");
                assert!(hdr.src.octets()[..3] == [10, 5, 2] && hdr.dst.octets()[..3] == [10, 5, 1]);
                if vnet_hdr {
                    let vnet = VnetHdr::parse(head).expect("a vnet header");
                    if vnet.gso_type != 0 {
                        merged += 1;
                        assert_eq!(hdr.protocol, PROTO_TCP);
                        // Every segment verified before it was merged: re-split, each one still does.
                        let mut out = vec![0u8; 2 * MAX_PACKET];
                        let s = split_tcp(packet, usize::from(vnet.gso_size), &mut out).expect("splits");
                        assert!(s.count > 1);
                    } else {
                        assert_eq!(head, ZERO_VNET);
                    }
                } else {
                    assert!(head.is_empty());
                }
                true
            };
            let (_, allocations) = allocations_in(|| {
                for (data, from, segment) in msgs.iter_mut() {
                    let msg = Message { data, from: *from, truncated: false, segment: *segment };
                    rx.message(msg, &table, &mut tally, &mut check);
                }
                rx.flush(&mut tally, &mut check);
            });
            // The split above allocates in the writer; outside the writer nothing may.
            prop_assert!(allocations <= merged, "{allocations} allocations");
            prop_assert_eq!(tally.rx_packets + tally.dropped.iter().sum::<u64>(), datagrams as u64);
            prop_assert_eq!(tally.tun_write_errors, 0);
        }

        /// A TCP flow from b, in one GRO message or datagram by datagram, maybe with one byte
        /// flipped somewhere in one segment: re-splitting what was written gives back every
        /// good segment as it was sent, in order; the damaged one never inside a super-segment
        /// (dropped and counted, or written alone for the kernel to check).
        #[test]
        fn a_coalesced_flow_splits_back_into_its_segments_and_a_damaged_one_is_never_merged(
            mss in 1usize..1460,
            count in 1usize..50,
            last in 1usize..1460,
            seq in any::<u32>(),
            seed in any::<u8>(),
            one_message in any::<bool>(),
            damage in proptest::option::of((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u8..)),
        ) {
            let last = last.min(mss);
            let mut segs: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let len = if i + 1 == count { last } else { mss };
                    let payload: Vec<u8> = (0..len).map(|k| (k * 31 + i * 7) as u8 ^ seed).collect();
                    b_to_a(seq.wrapping_add((i * mss) as u32), i as u16, 0x10, &payload)
                })
                .collect();
            let good = segs.clone();
            let damaged = damage.map(|(which, at, v)| {
                let i = which.index(count);
                let b = at.index(segs[i].len());
                segs[i][b] ^= v;
                i
            });
            let mut msgs: Vec<(Vec<u8>, Ipv4Addr, Option<usize>)> = if one_message {
                vec![(segs.concat(), NODE_B, Some(40 + mss))]
            } else {
                segs.iter().map(|s| (s.clone(), NODE_B, None)).collect()
            };
            let (writes, tally) = receive(NODE_A, true, &mut msgs);
            let mut back = Vec::new();
            for (head, packet) in &writes {
                let split = resplit(head, packet);
                if split.len() > 1 {
                    if let Some(d) = damaged {
                        prop_assert!(!split.iter().any(|s| s[24..28] == segs[d][24..28] && s[20..] == segs[d][20..]));
                    }
                }
                back.extend(split);
            }
            let mut want: Vec<&[u8]> = Vec::new();
            for (i, g) in good.iter().enumerate() {
                if Some(i) != damaged {
                    want.push(g);
                    continue;
                }
                // The damaged segment, if written, went alone with an all-zero vnet header.
                if let Some(pos) = writes.iter().position(|(_, p)| p[20..] == segs[i][20..]) {
                    prop_assert_eq!(&writes[pos].0[..], &ZERO_VNET[..]);
                    want.push(&segs[i]);
                } else {
                    prop_assert_eq!(tally.dropped.iter().sum::<u64>(), 1);
                }
            }
            prop_assert_eq!(back.len(), want.len());
            for (b, w) in back.iter().zip(want) {
                prop_assert_eq!(&b[20..], &w[20..], "the TCP segment as sent");
                prop_assert_eq!(&b[12..20], &w[12..20]);
                prop_assert_eq!(b[8], w[8] - 1, "TTL decremented once");
                prop_assert!(tcp_checksum_ok(b) || Some(w) == damaged.map(|d| &segs[d][..]));
            }
            prop_assert_eq!(tally.rx_packets + tally.dropped.iter().sum::<u64>(), count as u64);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The vnet header: any 10 bytes or more parse, and write back to the same bytes.
        #[test]
        fn the_vnet_header_parses_any_ten_bytes_and_writes_them_back(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
            match VnetHdr::parse(&bytes) {
                Some(h) => {
                    let mut out = [0u8; VNET_HDR_LEN];
                    h.write(&mut out);
                    prop_assert_eq!(&out[..], &bytes[..VNET_HDR_LEN]);
                }
                None => prop_assert!(bytes.len() < VNET_HDR_LEN),
            }
        }
    }

    /// A frame as the kernel writes it into a vnet_hdr flannel0: an arbitrary vnet header, or a
    /// TSO one, in front of a plausible packet from a's pod to b's.
    fn tun_frame() -> impl Strategy<Value = Vec<u8>> {
        let packet = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (any::<u32>(), prop::collection::vec(any::<u8>(), 0..3000)).prop_map(|(seq, payload)| tcp_segment(
                [10, 5, 1, 7],
                [10, 5, 2, 7],
                seq,
                9,
                0x18,
                &payload
            )),
        ];
        let head = prop_oneof![
            prop::collection::vec(any::<u8>(), VNET_HDR_LEN),
            (any::<u16>(), any::<u8>()).prop_map(|(gso_size, flags)| {
                let mut h = [0u8; VNET_HDR_LEN];
                VnetHdr {
                    flags: flags & 1,
                    gso_type: 1,
                    hdr_len: 40,
                    gso_size,
                    csum_start: 20,
                    csum_offset: 16,
                }
                .write(&mut h);
                h.to_vec()
            }),
        ];
        (head, packet).prop_map(|(h, p)| [h, p].concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Whatever frame the TUN device hands over: no panic, no allocation, and what is sent
        /// is whole IPv4 packets with valid checksums for b's subnet.
        #[test]
        fn any_tun_frame_is_sent_as_valid_wire_packets_or_dropped(mut frame in tun_frame()) {
            let table = table_of(NODE_A);
            let mut out = vec![0u8; 2 * MAX_PACKET];
            let (decision, allocations) = allocations_in(|| outbound_frame(&mut frame, &table, &mut out));
            prop_assert_eq!(allocations, 0);
            if let FrameOut::Send { to, segments } = decision {
                prop_assert_eq!(to, NODE_B);
                prop_assert!(segments.total <= out.len() && segments.count >= 1);
                let mut off = 0;
                for _ in 0..segments.count {
                    let len = segments.seg_len.min(segments.total - off);
                    let p = &out[off..off + len];
                    let hdr = parse_ipv4(p).expect("IPv4");
                    prop_assert_eq!(hdr.total_len, len);
                    prop_assert_eq!(checksum(&p[..hdr.header_len]), 0);
                    prop_assert_eq!(&hdr.dst.octets()[..3], &[10, 5, 2]);
                    if segments.count > 1 {
                        prop_assert!(tcp_checksum_ok(p));
                    }
                    off += len;
                }
                prop_assert_eq!(off, segments.total);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Across the wire and back: a TSO super-segment read on a, split and sent as one GRO
        /// message, received on b and coalesced again, carries the same bytes.
        #[test]
        fn a_super_segment_crosses_from_a_to_b_with_the_same_bytes(
            payload in prop::collection::vec(any::<u8>(), 1..30000),
            mss in 500usize..1460,
            seq in any::<u32>(),
        ) {
            let sent = tcp_segment([10, 5, 1, 7], [10, 5, 2, 7], seq, 9, 0x18, &payload);
            let mut frame = vec![0u8; VNET_HDR_LEN];
            VnetHdr { flags: 1, gso_type: 1, hdr_len: 40, gso_size: mss as u16, csum_start: 20, csum_offset: 16 }
                .write(&mut frame);
            frame.extend_from_slice(&sent);
            let mut out = vec![0u8; 2 * MAX_PACKET];
            let FrameOut::Send { to, segments } = outbound_frame(&mut frame, &table_of(NODE_A), &mut out) else {
                panic!("a valid super-segment is sent");
            };
            prop_assert_eq!(to, NODE_B);
            let wire = out[..segments.total].to_vec();
            let gro = (segments.count > 1).then_some(segments.seg_len);
            let (writes, tally) = receive(NODE_B, true, &mut [(wire, NODE_A, gro)]);
            prop_assert_eq!(tally.rx_packets, segments.count as u64);
            prop_assert_eq!(tally.dropped.iter().sum::<u64>(), 0);
            let mut data = Vec::new();
            for (_, p) in &writes {
                data.extend_from_slice(&p[40..]);
            }
            prop_assert_eq!(data, payload);
            let (_, p) = &writes[0];
            prop_assert_eq!(&p[12..20], &sent[12..20]);
            prop_assert_eq!(p[8], 62, "one TTL step per node");
        }
    }
}
