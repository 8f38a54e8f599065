//! What the collector read from this node and from etcd, as plain values: the input of the pure
//! walk. Nothing here does I/O.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_core::{Lease, SubnetEnv};
use weft_kernel::netlink::{AddrInfo, FdbEntry, LinkInfo, Neighbour};

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

/// A device and the bridge it is a port of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub info: LinkInfo,
    /// IFLA_MASTER: the bridge (or VRF) this device is enslaved to.
    pub master: Option<u32>,
}

/// The routing entry the kernel's lookup matched (`ip route get fibmatch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FibRoute {
    /// The matched entry's destination (not the looked-up address).
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// The routing table; None when the kernel did not say.
    pub table: Option<u32>,
    pub onlink: bool,
    /// `unicast`, `blackhole`, `unreachable`, `prohibit`, ...
    pub kind: String,
}

/// The outcome of one route lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(FibRoute),
    /// The kernel has no route (ENETUNREACH).
    NoRoute,
    Failed(String),
}

/// Everything the walk looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub subnet_file_path: String,
    pub subnet_file: SubnetFile,
    /// `Network` of the etcd config, used when subnet.env is missing.
    pub etcd_network: Option<Ipv4Net>,
    pub leases: Leases,
    /// `net.ipv4.ip_forward`; None when unreadable.
    pub ip_forward: Option<bool>,
    /// The bridge pods hang off (`cni0`).
    pub bridge: String,
    pub links: Vec<Link>,
    pub addrs: Vec<AddrInfo>,
    /// The lookup for `dst`.
    pub route: Lookup,
    /// IPv4 neighbours of the route's device and of the bridge: (device index, entry).
    pub neighbours: Vec<(u32, Neighbour)>,
    /// FDB entries of the route's device (VXLAN).
    pub fdb: Vec<FdbEntry>,
    /// FDB entries of the bridge's ports: (port index, entry); finds the source pod's port.
    pub port_fdb: Vec<(u32, FdbEntry)>,
    /// Lookups of underlay addresses (VTEP destinations, PublicIPs).
    pub underlay: Vec<(Ipv4Addr, Lookup)>,
    /// `iptables-save -t filter` output; None when iptables-save is missing or failed.
    pub iptables_filter: Option<String>,
    /// `nft -j list ruleset` output (JSON); None when nft is missing or failed.
    pub nft_ruleset: Option<String>,
    /// The udp peer table weftd publishes next to subnet.env: Err says why it is unreadable.
    pub udp_peers: Result<Vec<weft_core::peer_file::PeerEntry>, String>,
}

impl Facts {
    pub fn link(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.info.index == index)
    }

    pub fn link_named(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.info.name == name)
    }

    pub fn link_name(&self, index: u32) -> String {
        self.link(index)
            .map(|l| l.info.name.clone())
            .unwrap_or_else(|| format!("#{index}"))
    }

    pub fn underlay_lookup(&self, ip: Ipv4Addr) -> Option<&Lookup> {
        self.underlay.iter().find(|(a, _)| *a == ip).map(|(_, l)| l)
    }
}
