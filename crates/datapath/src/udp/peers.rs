//! The peer table of the udp backend: which node's public IP a destination subnet lives
//! behind, and which inner sources a datagram from a given public IP may carry. Built from the
//! lease set by [`peers_from_leases`] and swapped whole into the workers (no I/O here).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_core::{Lease, SubnetKey};

use crate::leases;

use super::drop::DropReason;

/// A remote node: its subnet and the public IP its datagrams come from and go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
}

pub use crate::leases::LeaseSkip;

/// Turns the full lease set into peers. udp leases carry no BackendType, so every lease counts
/// except ours and those of backends that do not read UDP datagrams.
pub fn peers_from_leases(
    leases: &[Lease],
    own: Option<&SubnetKey>,
    network: Ipv4Net,
    public_ip: Ipv4Addr,
) -> (Vec<Peer>, Vec<(SubnetKey, LeaseSkip)>) {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    for lease in leases {
        let node = leases::Node {
            own,
            network,
            public_ip,
        };
        // udp leases carry no BackendType; refuse only backends that never read our datagrams.
        let speaks = |kind: &str| !matches!(kind, "vxlan" | "host-gw" | "ipip" | "wireguard" | "alloc" | "extension");
        // `check` passes only leases with an IPv4 side.
        match (leases::check(lease, node, speaks), lease.subnet.ipv4) {
            (None, Some(subnet)) => peers.push(Peer {
                subnet: subnet.trunc(),
                public_ip: lease.attrs.public_ip,
            }),
            (why, _) => skipped.push((lease.subnet, why.unwrap_or(LeaseSkip::NoSideOfFamily))),
        }
    }
    peers.sort();
    peers.dedup();
    (peers, skipped)
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn contains(net: Ipv4Net, addr: Ipv4Addr) -> bool {
    u32::from(addr) & mask(net.prefix_len()) == u32::from(net.network())
}

/// Where each remote subnet lives, and what each peer may send. Immutable: a lease change
/// builds a new table.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    network: Option<Ipv4Net>,
    own: Option<Ipv4Net>,
    /// Per prefix length (longest first): subnet network address -> public IP.
    routes: Vec<(u32, HashMap<u32, Ipv4Addr>)>,
    /// Public IP -> the subnets leased to it.
    sources: HashMap<Ipv4Addr, Vec<Ipv4Net>>,
    peers: Vec<Peer>,
}

impl PeerTable {
    /// A table for the cluster `network`, our own subnet `own` (None until the lease is known)
    /// and the remote `peers`.
    pub fn new(network: Option<Ipv4Net>, own: Option<Ipv4Net>, peers: &[Peer]) -> Self {
        let mut by_prefix: HashMap<u8, HashMap<u32, Ipv4Addr>> = HashMap::new();
        let mut sources: HashMap<Ipv4Addr, Vec<Ipv4Net>> = HashMap::new();
        for p in peers {
            let subnet = p.subnet.trunc();
            by_prefix
                .entry(subnet.prefix_len())
                .or_default()
                .insert(u32::from(subnet.network()), p.public_ip);
            sources.entry(p.public_ip).or_default().push(subnet);
        }
        let mut routes: Vec<(u8, HashMap<u32, Ipv4Addr>)> = by_prefix.into_iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0));
        PeerTable {
            network: network.map(|n| n.trunc()),
            own: own.map(|o| o.trunc()),
            routes: routes.into_iter().map(|(p, m)| (mask(p), m)).collect(),
            sources,
            peers: peers.to_vec(),
        }
    }

    /// Our own subnet, once the lease is known.
    pub fn own(&self) -> Option<Ipv4Net> {
        self.own
    }

    /// The address ICMP replies come from: the cluster network's own address (10.5.0.0), which
    /// no node's subnet holds. flannel uses flannel0's address, but the kernel drops a packet
    /// arriving with one of its own addresses as source (martian), so its replies never arrive.
    pub fn icmp_source(&self) -> Option<Ipv4Addr> {
        self.network.map(|n| n.network())
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The public IP of the node whose subnet holds `dst` (longest prefix first).
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let dst = u32::from(dst);
        self.routes
            .iter()
            .find_map(|(mask, map)| map.get(&(dst & mask)).copied())
    }

    /// Whether a datagram from `from` carrying `src -> dst` may be delivered.
    pub fn admits(&self, from: Ipv4Addr, src: Ipv4Addr, dst: Ipv4Addr) -> Result<(), DropReason> {
        let own = self.own.ok_or(DropReason::NoLease)?;
        let subnets = self.sources.get(&from).ok_or(DropReason::UnknownPeer)?;
        if !subnets.iter().any(|s| contains(*s, src)) {
            return Err(DropReason::SpoofedSource);
        }
        if !contains(own, dst) {
            return Err(DropReason::NotForUs);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(subnet: &str, ip: &str, kind: &str) -> Lease {
        Lease::v4(
            subnet.parse().unwrap(),
            ip.parse().unwrap(),
            kind,
            serde_json::Value::Null,
        )
    }

    #[test]
    fn every_lease_but_ours_and_other_backends_is_a_peer() {
        let own = SubnetKey::v4("10.5.1.0/24".parse().unwrap());
        let leases = vec![
            lease("10.5.1.0/24", "198.51.100.1", ""),
            lease("10.5.2.0/24", "198.51.100.2", ""),
            lease("10.5.3.0/24", "198.51.100.3", "udp"),
            lease("10.5.4.0/24", "198.51.100.4", "vxlan"),
            lease("10.6.5.0/24", "198.51.100.5", ""),
            lease("10.5.6.0/24", "198.51.100.1", ""),
        ];
        let (peers, skipped) = peers_from_leases(
            &leases,
            Some(&own),
            "10.5.0.0/16".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        );
        let subnets: Vec<String> = peers.iter().map(|p| p.subnet.to_string()).collect();
        assert_eq!(subnets, ["10.5.2.0/24", "10.5.3.0/24"]);
        let why: Vec<LeaseSkip> = skipped.into_iter().map(|(_, w)| w).collect();
        assert_eq!(
            why,
            [
                LeaseSkip::Own,
                LeaseSkip::OtherBackend("vxlan".into()),
                LeaseSkip::OutsideNetwork,
                LeaseSkip::OwnPublicIp
            ]
        );
    }

    #[test]
    fn lookup_takes_the_longest_prefix() {
        let t = PeerTable::new(
            Some("10.5.0.0/16".parse().unwrap()),
            Some("10.5.1.0/24".parse().unwrap()),
            &[
                Peer {
                    subnet: "10.5.0.0/20".parse().unwrap(),
                    public_ip: "192.0.2.1".parse().unwrap(),
                },
                Peer {
                    subnet: "10.5.2.0/24".parse().unwrap(),
                    public_ip: "192.0.2.2".parse().unwrap(),
                },
            ],
        );
        assert_eq!(
            t.next_hop("10.5.2.200".parse().unwrap()),
            Some("192.0.2.2".parse().unwrap())
        );
        assert_eq!(
            t.next_hop("10.5.3.1".parse().unwrap()),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(t.next_hop("10.5.16.1".parse().unwrap()), None);
        assert_eq!(t.icmp_source(), Some("10.5.0.0".parse().unwrap()));
    }
}
