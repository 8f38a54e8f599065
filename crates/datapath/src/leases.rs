//! What every backend asks of a lease before it programs anything for it: is it ours, is it of
//! a backend we can talk to, is it inside the network, does it point at ourselves. And how the
//! answers are logged, the same way for every backend. The checks look at one address family
//! of a lease at a time ([`Side`]): a dual-stack backend asks once per family.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use weft_core::{Lease, SubnetKey};

/// Why a lease yields no peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseSkip {
    /// Our own lease.
    Own,
    /// A lease of a backend this one cannot talk to: nothing to program for it.
    OtherBackend(String),
    /// BackendData carries no usable VtepMAC (vxlan).
    BadVtepMac,
    /// The subnet is not inside the cluster network (we would never clean up after it).
    OutsideNetwork,
    /// The lease carries our own public IP: sending to it would loop.
    OwnPublicIp,
    /// The lease has no subnet (or no public address) of the family asked about: an IPv4-only
    /// lease in a dual-stack cluster, as its IPv6 side (or an IPv6-only lease, as its IPv4 side).
    NoSideOfFamily,
}

/// What the checks need to know about this node.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub own: Option<&'a SubnetKey>,
    pub network: Ipv4Net,
    pub public_ip: Ipv4Addr,
}

/// This node as seen by one address family: our subnet, the network and our public address of
/// that family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub own: Option<IpNet>,
    pub network: IpNet,
    pub public_ip: IpAddr,
}

impl From<Node<'_>> for Side {
    fn from(node: Node<'_>) -> Side {
        Side {
            own: node.own.and_then(|own| subnet_of_family(own, false)),
            network: node.network.into(),
            public_ip: node.public_ip.into(),
        }
    }
}

/// A lease key's subnet of one family (IPv6: the key's IPv6 part); None when it has none.
pub fn subnet_of_family(key: &SubnetKey, ipv6: bool) -> Option<IpNet> {
    if ipv6 {
        key.ipv6.map(IpNet::from)
    } else {
        key.ipv4.map(IpNet::from)
    }
}

/// A lease's subnet and public address of one family (IPv6: the key's IPv6 subnet and
/// PublicIPv6); None when the lease has no such side.
pub fn lease_side(lease: &Lease, ipv6: bool) -> Option<(IpNet, IpAddr)> {
    if ipv6 {
        Some((lease.subnet.ipv6?.into(), lease.attrs.public_ipv6?.into()))
    } else {
        Some((lease.subnet.ipv4?.into(), lease.attrs.public_ip.into()))
    }
}

/// The checks every backend makes, in this order; `speaks` says whether a lease's
/// BackendType is one this backend exchanges packets with. None: a candidate peer.
pub fn check(lease: &Lease, node: Node<'_>, speaks: impl Fn(&str) -> bool) -> Option<LeaseSkip> {
    check_side(lease, node.into(), speaks)
}

/// [`check`] for the family of `side.network`.
pub fn check_side(lease: &Lease, side: Side, speaks: impl Fn(&str) -> bool) -> Option<LeaseSkip> {
    let kind = lease.attrs.backend_type.as_str();
    let own = |ipv6| side.own.is_some() && subnet_of_family(&lease.subnet, ipv6) == side.own;
    if own(false) || own(true) {
        return Some(LeaseSkip::Own);
    }
    if !speaks(kind) {
        return Some(LeaseSkip::OtherBackend(kind.to_string()));
    }
    let Some((subnet, public_ip)) = lease_side(lease, side.network.addr().is_ipv6()) else {
        return Some(LeaseSkip::NoSideOfFamily);
    };
    if !side.network.contains(&subnet) {
        Some(LeaseSkip::OutsideNetwork)
    } else if public_ip == side.public_ip {
        Some(LeaseSkip::OwnPublicIp)
    } else {
        None
    }
}

/// Logs why each lease was skipped (another backend's at debug, the suspicious ones at warn;
/// our own not at all) and returns how many were skipped other than our own.
pub fn log_skipped(backend: &str, skipped: &[(SubnetKey, LeaseSkip)], node: impl Into<Side>) -> usize {
    let node: Side = node.into();
    let mut count = 0;
    for (subnet, why) in skipped {
        match why {
            LeaseSkip::Own => continue,
            LeaseSkip::NoSideOfFamily => {
                tracing::debug!(lease = %subnet, network = %node.network, "lease has no subnet of this family; reached over the other one");
                continue;
            }
            LeaseSkip::OtherBackend(kind) => {
                tracing::debug!(lease = %subnet, "lease of backend {kind:?} ignored by the {backend} backend")
            }
            LeaseSkip::BadVtepMac => {
                tracing::warn!(lease = %subnet, "lease has no valid BackendData.VtepMAC; skipped")
            }
            LeaseSkip::OutsideNetwork => {
                tracing::warn!(lease = %subnet, network = %node.network, "lease is outside the network; skipped")
            }
            LeaseSkip::OwnPublicIp => tracing::warn!(
                lease = %subnet,
                public_ip = %node.public_ip,
                "lease carries our own public IP (a stale lease of this node?); skipped"
            ),
        }
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(subnet: &str, public_ip: &str, kind: &str) -> Lease {
        Lease::v4(
            subnet.parse().unwrap(),
            public_ip.parse().unwrap(),
            kind,
            serde_json::Value::Null,
        )
    }

    #[test]
    fn checks_in_order_and_counts_all_but_our_own() {
        let own = SubnetKey::v4("10.5.1.0/24".parse().unwrap());
        let node = Node {
            own: Some(&own),
            network: "10.5.0.0/16".parse().unwrap(),
            public_ip: "198.51.100.1".parse().unwrap(),
        };
        let vxlan = |k: &str| k == "vxlan";
        let cases = [
            (lease("10.5.1.0/24", "198.51.100.1", "udp"), Some(LeaseSkip::Own)),
            (
                lease("10.5.2.0/24", "198.51.100.2", "udp"),
                Some(LeaseSkip::OtherBackend("udp".into())),
            ),
            (
                lease("10.9.2.0/24", "198.51.100.2", "vxlan"),
                Some(LeaseSkip::OutsideNetwork),
            ),
            (
                lease("10.5.3.0/24", "198.51.100.1", "vxlan"),
                Some(LeaseSkip::OwnPublicIp),
            ),
            (lease("10.5.4.0/24", "198.51.100.4", "vxlan"), None),
        ];
        let mut skipped = Vec::new();
        for (l, want) in cases {
            let got = check(&l, node, vxlan);
            assert_eq!(got, want, "{l:?}");
            skipped.extend(got.map(|why| (l.subnet, why)));
        }
        assert_eq!(log_skipped("vxlan", &skipped, node), 3);
    }
}
