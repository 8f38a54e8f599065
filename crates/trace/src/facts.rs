//! What the collector read from this node and from etcd, as plain values: the input of the pure
//! walk. Nothing here does I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::{Lease, Refused, SubnetEnv};
use weft_kernel::netlink::{AddrInfo, FdbEntry, LinkInfo, Neighbour, RouteInfo};

use crate::family::Family;

/// The subnet file, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetFile {
    Present(SubnetEnv),
    Missing,
    /// Unreadable or unparsable; the reason.
    Invalid(String),
}

/// The leases, as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub enum Leases {
    Listed(Vec<Lease>),
    /// etcd could not be read; the reason.
    Failed(String),
    /// No etcd options were given.
    NotAsked,
}

/// The outcome of one route lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The routing entry the lookup matched (`ip route get fibmatch`): its destination is the
    /// entry's prefix, not the looked-up address.
    Found(RouteInfo),
    /// The kernel has no route (ENETUNREACH).
    NoRoute,
    Failed(String),
}

/// Everything the walk looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Source and destination, of one family: the walk follows that family's side of the node.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub subnet_file_path: String,
    pub subnet_file: SubnetFile,
    /// `Network` (`IPv6Network` for an IPv6 trace) of the etcd config, used when subnet.env is
    /// missing.
    pub etcd_network: Option<IpNet>,
    pub leases: Leases,
    /// The records every node's admission refuses (judged against the stored config), with why.
    pub refused: Vec<Refused>,
    /// `net.ipv4.ip_forward` (`net.ipv6.conf.all.forwarding` for IPv6); None when unreadable.
    pub ip_forward: Option<bool>,
    /// The bridge pods hang off (`cni0`).
    pub bridge: String,
    /// Every device, with the bridge each is a port of.
    pub links: Vec<LinkInfo>,
    /// The addresses of every device, of both families.
    pub addrs: Vec<AddrInfo>,
    /// The lookup for `dst`.
    pub route: Lookup,
    /// Neighbours (of the trace's family) of the route's device and of the bridge: (device index,
    /// entry).
    pub neighbours: Vec<(u32, Neighbour)>,
    /// FDB entries of the route's device (VXLAN).
    pub fdb: Vec<FdbEntry>,
    /// FDB entries of the bridge's ports: (port index, entry); finds the source pod's port.
    pub port_fdb: Vec<(u32, FdbEntry)>,
    /// Lookups of underlay addresses (VTEP destinations, PublicIPs).
    pub underlay: Vec<(IpAddr, Lookup)>,
    /// `iptables-save -t filter` output (`ip6tables-save` for IPv6); None when it is missing or
    /// failed.
    pub iptables_filter: Option<String>,
    /// `nft -j list ruleset` output (JSON); None when nft is missing or failed.
    pub nft_ruleset: Option<String>,
    /// The udp peer table weftd publishes next to subnet.env: Err says why it is unreadable.
    pub udp_peers: Result<Vec<weft_core::peer_file::PeerEntry>, String>,
}

/// Who owns the destination's subnet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Owner<'a> {
    /// The lease the nodes act on.
    Admitted(&'a Lease),
    /// Only a record every node refuses claims it: nothing is programmed for it.
    Refused(&'a Lease, &'a Refused),
    Nobody,
}

/// The lease of `family` whose subnet holds `ip`: an admitted one if any, else a refused one.
pub fn owner<'a>(family: Family, leases: &'a [Lease], refused: &'a [Refused], ip: IpAddr) -> Owner<'a> {
    let refusal = |l: &Lease| {
        let key = l.subnet.to_key();
        refused.iter().find(|r| r.name == key)
    };
    let admitted: Vec<Lease> = leases.iter().filter(|l| refusal(l).is_none()).cloned().collect();
    if let Some(l) = family.owning_lease(&admitted, ip) {
        let l = leases.iter().find(|x| *x == l).expect("admitted is a subset of leases");
        return Owner::Admitted(l);
    }
    match family.owning_lease(leases, ip) {
        Some(l) => Owner::Refused(l, refusal(l).expect("not admitted, so refused")),
        None => Owner::Nobody,
    }
}

impl Facts {
    /// The family of the traced packet.
    pub fn family(&self) -> Family {
        Family::of(self.dst)
    }

    pub fn link(&self, index: u32) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn link_named(&self, name: &str) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_name(&self, index: u32) -> String {
        self.link(index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("#{index}"))
    }

    pub fn underlay_lookup(&self, ip: IpAddr) -> Option<&Lookup> {
        self.underlay.iter().find(|(a, _)| *a == ip).map(|(_, l)| l)
    }
}
