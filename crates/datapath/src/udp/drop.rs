//! Why the udp datapath drops a packet: one counter per reason.

/// Why a packet was dropped; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not an IPv4 packet, or its header or length fields are inconsistent.
    Malformed,
    /// A datagram from an address that is no current lease's PublicIP.
    UnknownPeer,
    /// A datagram whose inner source is outside the subnet leased to the node that sent it.
    SpoofedSource,
    /// A datagram whose inner destination is outside our own subnet.
    NotForUs,
    /// The TTL ran out.
    TtlExpired,
    /// Our own lease is not known yet.
    NoLease,
    /// An IPv6 packet (the kernel's router solicitations on flannel0): the udp backend
    /// carries IPv4 only, like flannel's.
    NotIpv4,
    /// A datagram shorter than an IPv4 header (20 bytes), zero-length ones included.
    TooShort,
    /// A datagram whose inner IPv4 header checksum is wrong.
    BadIpChecksum,
    /// A TCP segment whose checksum (over the pseudo header and the segment) is wrong, found
    /// before it could be coalesced with others into a super-segment.
    BadTcpChecksum,
}

impl DropReason {
    /// Every reason, in [`DropReason::index`] order.
    pub const ALL: [DropReason; 10] = [
        DropReason::Malformed,
        DropReason::UnknownPeer,
        DropReason::SpoofedSource,
        DropReason::NotForUs,
        DropReason::TtlExpired,
        DropReason::NoLease,
        DropReason::NotIpv4,
        DropReason::TooShort,
        DropReason::BadIpChecksum,
        DropReason::BadTcpChecksum,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotForUs => "not_for_us",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoLease => "no_lease",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::TooShort => "too_short",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::BadTcpChecksum => "bad_tcp_checksum",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
