//! What every backend asks of a lease before it programs anything for it: is it ours, is it of
//! a backend we can talk to, is it inside the network, does it point at ourselves. And how the
//! answers are logged, the same way for every backend.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
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
}

/// What the checks need to know about this node.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub own: Option<&'a SubnetKey>,
    pub network: Ipv4Net,
    pub public_ip: Ipv4Addr,
}

/// The checks every backend makes, in this order; `speaks` says whether a lease's
/// BackendType is one this backend exchanges packets with. None: a candidate peer.
pub fn check(lease: &Lease, node: Node<'_>, speaks: impl Fn(&str) -> bool) -> Option<LeaseSkip> {
    let kind = lease.attrs.backend_type.as_str();
    if node.own.is_some_and(|own| own.ipv4 == lease.subnet.ipv4) {
        Some(LeaseSkip::Own)
    } else if !speaks(kind) {
        Some(LeaseSkip::OtherBackend(kind.to_string()))
    } else if !node.network.contains(&lease.subnet.ipv4) {
        Some(LeaseSkip::OutsideNetwork)
    } else if lease.attrs.public_ip == node.public_ip {
        Some(LeaseSkip::OwnPublicIp)
    } else {
        None
    }
}

/// Logs why each lease was skipped (another backend's at debug, the suspicious ones at warn;
/// our own not at all) and returns how many were skipped other than our own.
pub fn log_skipped(backend: &str, skipped: &[(SubnetKey, LeaseSkip)], node: Node<'_>) -> usize {
    let mut count = 0;
    for (subnet, why) in skipped {
        match why {
            LeaseSkip::Own => continue,
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
