//! The pure half of the vxlan backend: which peers the leases describe, which neighbour, FDB
//! and route entries they call for, and which kernel changes turn the actual entries into those.
//! No I/O here; everything is tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::{Lease, SubnetKey};

use crate::leases;
use crate::peer_routes::{at_default_metric, nexthop_id, nexthop_of, plan_nexthops, route_matches, stale_nexthops};
use weft_core::mac::is_unicast_mac;
use weft_kernel::netlink::{format_mac, FdbEntry, Neighbour, NexthopInfo, NexthopSpec, RouteInfo, RouteSpec};

/// `rtm_protocol` of routes the kernel adds for connected subnets; never ours.
const RTPROT_KERNEL: u8 = 2;

/// A remote node the vxlan backend must reach over one address family: its subnet, public
/// address and VtepMAC of that family (IPv6: the key's IPv6 subnet, PublicIPv6, BackendV6Data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    pub vtep_mac: [u8; 6],
}

pub use crate::leases::LeaseSkip;

/// What the reconcile needs to know about this node and its device, for one address family
/// (the family of `network`: `flannel.<VNI>` for IPv4, `flannel-v6.<VNI>` for IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub network: IpNet,
    pub own_subnet: IpNet,
    pub public_ip: IpAddr,
    pub vxlan_index: u32,
    pub ext_index: u32,
    /// The external interface's connected subnets of the family, for DirectRouting.
    pub ext_nets: Vec<IpNet>,
    pub direct_routing: bool,
    /// Routes point at per-peer nexthop objects (the kernel has them).
    pub nexthops: bool,
}

/// Turns the full lease set into peers, saying why each left-out lease was left out.
pub fn peers_from_leases(
    leases: &[Lease],
    own: &SubnetKey,
    topo: &Topology,
) -> (Vec<Peer>, Vec<(SubnetKey, LeaseSkip)>) {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    for lease in leases {
        match peer_of(lease, own, topo) {
            Ok(peer) => peers.push(peer),
            Err(skip) => skipped.push((lease.subnet, skip)),
        }
    }
    (peers, skipped)
}

/// The peer one lease describes, or why it describes none.
pub fn peer_of(lease: &Lease, own: &SubnetKey, topo: &Topology) -> Result<Peer, LeaseSkip> {
    let ipv6 = topo.network.addr().is_ipv6();
    let side = leases::Side {
        own: leases::subnet_of_family(own, ipv6),
        network: topo.network,
        public_ip: topo.public_ip,
    };
    if let Some(skip) = leases::check_side(lease, side, |kind| kind == "vxlan") {
        return Err(skip);
    }
    let (subnet, public_ip) = leases::lease_side(lease, ipv6).ok_or(LeaseSkip::NoSideOfFamily)?;
    let mac = if ipv6 {
        lease.attrs.vtep_v6_mac()
    } else {
        lease.attrs.vtep_mac()
    };
    match mac {
        Some(vtep_mac) if is_unicast_mac(&vtep_mac) => Ok(Peer {
            subnet,
            public_ip,
            vtep_mac,
        }),
        _ => Err(LeaseSkip::BadVtepMac),
    }
}

/// The entries the peers call for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// On the VXLAN device: remote subnet's network address -> remote VtepMAC.
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
    /// On the VXLAN device: remote VtepMAC -> remote public IP.
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
    /// Main table, keyed by destination.
    pub routes: BTreeMap<IpNet, RouteSpec>,
    /// The nexthop each route points at, keyed by the route's destination (none: plain routes).
    pub nexthops: BTreeMap<IpNet, NexthopSpec>,
}

/// The kernel entries of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEntries {
    /// On the VXLAN device: the peer subnet's network address -> its VtepMAC (none when routed
    /// directly).
    pub neighbour: Option<(IpAddr, [u8; 6])>,
    /// On the VXLAN device: VtepMAC -> public IP (none when routed directly).
    pub fdb: Option<([u8; 6], IpAddr)>,
    /// The route's gateway, device and onlink flag (in the nexthop when there is one).
    pub route: RouteSpec,
    /// The id of the nexthop object the route points at; None: a plain gateway route.
    pub nexthop: Option<u32>,
}

impl PeerEntries {
    /// The nexthop object the route points at.
    pub fn nexthop_spec(&self) -> Option<NexthopSpec> {
        nexthop_of(&self.route, self.nexthop?)
    }
}

/// A neighbour, an FDB entry and an onlink route through the VXLAN device; or, with
/// DirectRouting and a peer on our L2 segment, only a route via its public IP.
pub fn peer_entries(peer: &Peer, topo: &Topology) -> PeerEntries {
    let direct = topo.direct_routing && topo.ext_nets.iter().any(|n| n.contains(&peer.public_ip));
    let nexthop = topo.nexthops.then(|| nexthop_id(topo.network, peer.subnet)).flatten();
    if direct {
        return PeerEntries {
            nexthop,
            neighbour: None,
            fdb: None,
            route: RouteSpec {
                dst: peer.subnet,
                gateway: Some(peer.public_ip),
                oif: topo.ext_index,
                onlink: false,
            },
        };
    }
    let vtep_ip = peer.subnet.network();
    PeerEntries {
        nexthop,
        neighbour: Some((vtep_ip, peer.vtep_mac)),
        fdb: Some((peer.vtep_mac, peer.public_ip)),
        route: RouteSpec {
            dst: peer.subnet,
            gateway: Some(vtep_ip),
            oif: topo.vxlan_index,
            onlink: true,
        },
    }
}

/// Every peer's entries, by peer subnet.
pub fn peers_entries(peers: &[Peer], topo: &Topology) -> BTreeMap<IpNet, PeerEntries> {
    peers.iter().map(|p| (p.subnet, peer_entries(p, topo))).collect()
}

/// All the entries, by table.
pub fn desired_state<'a>(entries: impl IntoIterator<Item = &'a PeerEntries>) -> DesiredState {
    let mut desired = DesiredState::default();
    for e in entries {
        if let Some((ip, mac)) = e.neighbour {
            desired.neighbours.insert(ip, mac);
        }
        if let Some((mac, dst)) = e.fdb {
            desired.fdb.insert(mac, dst);
        }
        desired.routes.insert(e.route.dst, e.route);
        if let Some(nh) = e.nexthop_spec() {
            desired.nexthops.insert(e.route.dst, nh);
        }
    }
    desired
}

/// The changes that turn one peer's installed entries `old` into `new` (None: no such peer), in
/// the phases of [`plan`], without reading the kernel.
pub fn plan_peer(old: Option<&PeerEntries>, new: Option<&PeerEntries>, phases: &mut Phases) {
    let set = |c: bool| if c { Change::Replace } else { Change::Add };
    match (old, new) {
        (None, None) => {}
        (Some(old), None) => {
            phases.route_deletes.push(Action::DeleteRoute {
                spec: old.route,
                metric: 0,
                nexthop: old.nexthop,
            });
            if let Some((ip, _)) = old.neighbour {
                phases.deletes.push(Action::DeleteNeighbour { ip });
            }
            if let Some((mac, dst)) = old.fdb {
                phases.deletes.push(Action::DeleteFdb { mac, dst });
            }
            if let Some(id) = old.nexthop {
                phases.deletes.push(Action::DeleteNexthop { id, alone: false });
            }
        }
        (old, Some(new)) => {
            let had = |f: fn(&PeerEntries) -> bool| old.is_some_and(f);
            if let Some((ip, mac)) = new.neighbour {
                if old.and_then(|o| o.neighbour) != new.neighbour {
                    let change = set(had(|o| o.neighbour.is_some()));
                    phases.sets.push(Action::SetNeighbour { ip, mac, change });
                }
            }
            if let Some((mac, dst)) = new.fdb {
                if old.and_then(|o| o.fdb) != new.fdb {
                    let change = set(old.and_then(|o| o.fdb).is_some_and(|(m, _)| m == mac));
                    phases.sets.push(Action::SetFdb { mac, dst, change });
                }
            }
            if let Some(spec) = new.nexthop_spec() {
                let before = old.and_then(|o| o.nexthop_spec());
                if before != Some(spec) {
                    let change = set(before.is_some_and(|b| b.id == spec.id));
                    phases.sets.push(Action::SetNexthop { spec, change });
                }
            }
            // A route through a nexthop follows its nexthop: it changes only when the id does.
            let route_changed = match (old, new.nexthop) {
                (Some(o), Some(id)) => o.nexthop != Some(id),
                (Some(o), None) => o.nexthop.is_some() || o.route != new.route,
                (None, _) => true,
            };
            if route_changed {
                let change = set(old.is_some());
                phases.route_sets.push(Action::SetRoute {
                    spec: new.route,
                    change,
                    nexthop: new.nexthop,
                });
            }
            if let Some(old) = old {
                match old.neighbour {
                    Some((ip, _)) if new.neighbour.map(|(i, _)| i) != Some(ip) => {
                        phases.deletes.push(Action::DeleteNeighbour { ip })
                    }
                    _ => {}
                }
                match old.fdb {
                    Some(entry) if new.fdb != Some(entry) => phases.deletes.push(Action::DeleteFdb {
                        mac: entry.0,
                        dst: entry.1,
                    }),
                    _ => {}
                }
                match old.nexthop {
                    Some(id) if new.nexthop != Some(id) => {
                        phases.deletes.push(Action::DeleteNexthop { id, alone: false })
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Drops from `phases` the deletions of entries a peer still needs once a batch of lease changes
/// is planned (`installed`: every peer's entries after the batch). Two leases can share an entry
/// when one is retired and the other admitted in the same batch: the same VtepMAC and public IP
/// (a node re-keying its lease), or the same subnet under another key. These deletions run last,
/// so without this the retired lease's delete would take away what the admitted one just set.
/// (Route deletions run first, before the sets, and need no such care.)
pub fn keep_shared(phases: &mut Phases, installed: &BTreeMap<IpNet, PeerEntries>) {
    let needed = |a: &Action| match a {
        Action::DeleteFdb { mac, .. } => installed.values().any(|e| e.fdb.is_some_and(|(m, _)| m == *mac)),
        Action::DeleteNeighbour { ip } => installed.values().any(|e| e.neighbour.is_some_and(|(i, _)| i == *ip)),
        Action::DeleteNexthop { id, .. } => installed.values().any(|e| e.nexthop == Some(*id)),
        _ => false,
    };
    phases.deletes.retain(|a| !needed(a));
}

/// Actions grouped in the order they must run: stale routes out, then neighbour, FDB entries and
/// nexthops (so a new route never resolves through a missing entry), then routes, then stale
/// neighbour and FDB entries and nexthops. Actions within one phase are independent of each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phases {
    pub route_deletes: Vec<Action>,
    pub sets: Vec<Action>,
    pub route_sets: Vec<Action>,
    pub deletes: Vec<Action>,
}

impl Phases {
    pub fn into_vec(self) -> Vec<Action> {
        let mut all = self.route_deletes;
        all.extend(self.sets);
        all.extend(self.route_sets);
        all.extend(self.deletes);
        all
    }

    /// The phases in order.
    pub fn into_phases(self) -> [Vec<Action>; 4] {
        [self.route_deletes, self.sets, self.route_sets, self.deletes]
    }

    pub fn is_empty(&self) -> bool {
        self.route_deletes.is_empty() && self.sets.is_empty() && self.route_sets.is_empty() && self.deletes.is_empty()
    }
}

/// The entries read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualState {
    /// Neighbours of the VXLAN device.
    pub neighbours: Vec<Neighbour>,
    /// FDB entries of the VXLAN device.
    pub fdb: Vec<FdbEntry>,
    /// The main table's routes (all of them; [`plan`] picks ours).
    pub routes: Vec<RouteInfo>,
    /// The nexthop objects (all of them; only ids in weft's range are ours).
    pub nexthops: Vec<NexthopInfo>,
}

pub use crate::apply::Change;
use crate::apply::Effect;

/// One kernel change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `metric` 0 matches a route at any metric. A route that points at a nexthop is matched
    /// by its `nexthop` id only.
    DeleteRoute {
        spec: RouteSpec,
        metric: u32,
        nexthop: Option<u32>,
    },
    SetNeighbour {
        ip: IpAddr,
        mac: [u8; 6],
        change: Change,
    },
    SetFdb {
        mac: [u8; 6],
        dst: IpAddr,
        change: Change,
    },
    /// A plain route, or (`nexthop`) one that points at that nexthop.
    SetRoute {
        spec: RouteSpec,
        change: Change,
        nexthop: Option<u32>,
    },
    /// Add a nexthop object or replace the one with its id (its routes follow).
    SetNexthop {
        spec: NexthopSpec,
        change: Change,
    },
    /// Delete a nexthop object, and with it the routes that still point at it. `alone`: no
    /// route change of the same peer goes with it, so it counts as the removal.
    DeleteNexthop {
        id: u32,
        alone: bool,
    },
    DeleteNeighbour {
        ip: IpAddr,
    },
    DeleteFdb {
        mac: [u8; 6],
        dst: IpAddr,
    },
}

impl Action {
    /// What the action does to a kernel table when it succeeds.
    pub fn effect(&self) -> Effect {
        match self {
            // A nexthop comes and goes with its route, which is what is counted; replaced
            // alone, it is the route's change.
            Action::SetNexthop {
                change: Change::Add, ..
            }
            | Action::DeleteNexthop { alone: false, .. } => Effect::PartOfRoute,
            Action::SetNeighbour { change, .. }
            | Action::SetFdb { change, .. }
            | Action::SetRoute { change, .. }
            | Action::SetNexthop { change, .. } => Effect::Set(*change),
            Action::DeleteRoute { .. }
            | Action::DeleteNeighbour { .. }
            | Action::DeleteFdb { .. }
            | Action::DeleteNexthop { alone: true, .. } => Effect::Removed,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = |c: &Change| match c {
            Change::Add => "add",
            Change::Replace => "replace",
        };
        match self {
            Action::DeleteRoute {
                spec,
                metric,
                nexthop: Some(id),
            } => write!(f, "delete route {} nhid {id} metric {metric}", spec.dst),
            Action::DeleteRoute { spec, metric, .. } => write!(
                f,
                "delete route {} via {:?} dev #{} metric {metric}",
                spec.dst, spec.gateway, spec.oif
            ),
            Action::SetNeighbour { ip, mac, change } => {
                write!(f, "{} neighbour {ip} -> {}", verb(change), format_mac(mac))
            }
            Action::SetFdb { mac, dst, change } => write!(f, "{} FDB {} -> {dst}", verb(change), format_mac(mac)),
            Action::SetRoute {
                spec,
                change,
                nexthop: Some(id),
            } => write!(f, "{} route {} nhid {id}", verb(change), spec.dst),
            Action::SetNexthop { spec, change } => write!(f, "{} {spec}", verb(change)),
            Action::DeleteNexthop { id, .. } => write!(f, "delete nexthop id {id}"),
            Action::SetRoute { spec, change, .. } => write!(
                f,
                "{} route {} via {:?} dev #{}{}",
                verb(change),
                spec.dst,
                spec.gateway,
                spec.oif,
                if spec.onlink { " onlink" } else { "" }
            ),
            Action::DeleteNeighbour { ip } => write!(f, "delete neighbour {ip}"),
            Action::DeleteFdb { mac, dst } => write!(f, "delete FDB {} -> {dst}", format_mac(mac)),
        }
    }
}

/// Is this main-table route one the vxlan backend manages? Routes through the VXLAN device into
/// the cluster network, the whole network and its supernets included (only a bad lease could have
/// put those there), or through the external interface via a gateway into part of the network
/// (direct routing); never the route to our own subnet or a kernel-made connected route.
fn is_ours(route: &RouteInfo, topo: &Topology) -> bool {
    let Some(oif) = route.oif else { return false };
    let (network, own_subnet) = (topo.network, topo.own_subnet);
    if route.protocol == RTPROT_KERNEL || own_subnet.contains(&route.dst) {
        return false;
    }
    let overlaps_network = network.contains(&route.dst) || route.dst.contains(&network);
    let inside_network = network.contains(&route.dst) && route.dst.prefix_len() > network.prefix_len();
    (oif == topo.vxlan_index && overlaps_network)
        || (oif == topo.ext_index && route.gateway.is_some() && inside_network && !route.dst.contains(&own_subnet))
}

/// The changes that turn `actual` into `desired`, in a safe order (see [`Phases`]).
pub fn plan(desired: &DesiredState, actual: &ActualState, topo: &Topology) -> Vec<Action> {
    plan_phases(desired, actual, topo).into_vec()
}

/// [`plan`], by phase.
pub fn plan_phases(desired: &DesiredState, actual: &ActualState, topo: &Topology) -> Phases {
    let mut phases = Phases::default();
    plan_neighbours(desired, actual, &mut phases);
    plan_fdb(desired, actual, &mut phases);
    plan_routes(desired, actual, topo, &mut phases);
    let (sets, deletes) = plan_nexthops(desired.nexthops.values(), &actual.nexthops);
    // Nexthops before the neighbour and FDB entries' deletes; new ones before the routes.
    phases.sets.extend(
        sets.into_iter()
            .map(|(spec, change)| Action::SetNexthop { spec, change }),
    );
    phases
        .deletes
        .extend(deletes.into_iter().map(|id| Action::DeleteNexthop { id, alone: true }));
    phases
}

/// Neighbours: only permanent entries are ours to delete; others belong to the kernel.
fn plan_neighbours(desired: &DesiredState, actual: &ActualState, phases: &mut Phases) {
    let mut by_ip: BTreeMap<IpAddr, &Neighbour> = BTreeMap::new();
    for n in &actual.neighbours {
        by_ip.entry(n.ip).or_insert(n);
    }
    for (ip, mac) in &desired.neighbours {
        let change = match by_ip.get(ip) {
            Some(n) if n.mac == Some(*mac) && n.is_permanent() => continue,
            Some(_) => Change::Replace,
            None => Change::Add,
        };
        phases.sets.push(Action::SetNeighbour {
            ip: *ip,
            mac: *mac,
            change,
        });
    }
    let mut seen = BTreeSet::new();
    for n in &actual.neighbours {
        if n.is_permanent() && !desired.neighbours.contains_key(&n.ip) && seen.insert(n.ip) {
            phases.deletes.push(Action::DeleteNeighbour { ip: n.ip });
        }
    }
}

/// FDB: a MAC whose remote is wrong gets it replaced; extra remotes are deleted.
fn plan_fdb(desired: &DesiredState, actual: &ActualState, phases: &mut Phases) {
    let mut by_mac: BTreeMap<[u8; 6], Vec<&FdbEntry>> = BTreeMap::new();
    for e in actual.fdb.iter().filter(|e| e.dst.is_some()) {
        by_mac.entry(e.mac).or_default().push(e);
    }
    for (mac, dst) in &desired.fdb {
        let entries: &[&FdbEntry] = by_mac.get(mac).map_or(&[], |v| v.as_slice());
        if entries.iter().any(|e| e.dst == Some(*dst) && e.is_permanent()) {
            continue;
        }
        let change = if entries.is_empty() {
            Change::Add
        } else {
            Change::Replace
        };
        phases.sets.push(Action::SetFdb {
            mac: *mac,
            dst: *dst,
            change,
        });
    }
    let mut seen = BTreeSet::new();
    for e in &actual.fdb {
        let Some(dst) = e.dst else { continue };
        if !e.is_permanent() || desired.fdb.get(&e.mac) == Some(&dst) {
            continue;
        }
        // A wrong remote of a MAC we just replaced may already be gone; the delete then is a no-op.
        if seen.insert((e.mac, dst)) {
            phases.deletes.push(Action::DeleteFdb { mac: e.mac, dst });
        }
    }
}

/// Routes: one per destination; ours that are not desired (or duplicate) go.
fn plan_routes(desired: &DesiredState, actual: &ActualState, topo: &Topology, phases: &mut Phases) {
    let mut by_dst: BTreeMap<IpNet, Vec<&RouteInfo>> = BTreeMap::new();
    for r in &actual.routes {
        by_dst.entry(r.dst).or_default().push(r);
    }
    let mut kept = BTreeSet::new();
    for (dst, spec) in &desired.routes {
        let at_dst: &[&RouteInfo] = by_dst.get(dst).map_or(&[], |v| v.as_slice());
        let nexthop = desired.nexthops.get(dst).map(|n| n.id);
        let matches = |r: &&RouteInfo| route_matches(r, spec, nexthop) && is_ours(r, topo);
        if at_dst.iter().any(matches) {
            kept.insert(*dst);
            continue;
        }
        let exists = at_dst.iter().any(|r| at_default_metric(r));
        phases.route_sets.push(Action::SetRoute {
            spec: *spec,
            change: if exists { Change::Replace } else { Change::Add },
            nexthop,
        });
    }
    // A route through a stale nexthop of weft's goes when the nexthop is deleted.
    let stale = stale_nexthops(desired.nexthops.values(), &actual.nexthops);
    let goes_with_its_nexthop = |r: &RouteInfo| r.nexthop_id.is_some_and(|id| stale.contains(&id));
    let mut kept_once = BTreeSet::new();
    for r in actual.routes.iter().filter(|r| is_ours(r, topo)) {
        let spec = r.spec().expect("is_ours requires an oif");
        let wanted = desired.routes.get(&r.dst);
        let nexthop = desired.nexthops.get(&r.dst).map(|n| n.id);
        let is_the_kept_one =
            wanted.is_some_and(|w| route_matches(r, w, nexthop)) && kept.contains(&r.dst) && kept_once.insert(r.dst);
        // A route at the default metric to a desired destination is overwritten by the replace instead.
        let replaced_in_place = wanted.is_some() && at_default_metric(r) && !kept.contains(&r.dst);
        if !is_the_kept_one && !replaced_in_place && !goes_with_its_nexthop(r) {
            phases.route_deletes.push(Action::DeleteRoute {
                spec,
                metric: r.priority,
                nexthop: r.nexthop_id,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VX: u32 = 7;
    const EXT: u32 = 2;
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];

    /// An Ipv4Net or an IpNet, as the context wants.
    fn net<T: std::str::FromStr<Err = ipnet::AddrParseError>>(s: &str) -> T {
        s.parse().unwrap()
    }

    /// An Ipv4Addr or an IpAddr, as the context wants.
    fn ip<T: std::str::FromStr<Err = std::net::AddrParseError>>(s: &str) -> T {
        s.parse().unwrap()
    }

    /// The IPv4 lease key of the topology's own subnet.
    fn own_key(t: &Topology) -> SubnetKey {
        match t.own_subnet {
            IpNet::V4(v4) => SubnetKey::v4(v4),
            IpNet::V6(_) => panic!("an IPv4 topology"),
        }
    }

    fn topo() -> Topology {
        Topology {
            network: net("10.5.0.0/16"),
            own_subnet: net("10.5.1.0/24"),
            public_ip: ip("198.51.100.1"),
            vxlan_index: VX,
            ext_index: EXT,
            ext_nets: vec![net("198.51.100.0/24")],
            direct_routing: false,
            nexthops: false,
        }
    }

    fn lease(subnet: &str, public_ip: &str, backend: &str, data: serde_json::Value) -> Lease {
        Lease::v4(net(subnet), ip(public_ip), backend, data)
    }

    fn vx_lease(subnet: &str, public_ip: &str, mac: &str) -> Lease {
        lease(subnet, public_ip, "vxlan", json!({"VNI": 1, "VtepMAC": mac}))
    }

    fn perm_neigh(ipv4: &str, mac: [u8; 6]) -> Neighbour {
        Neighbour {
            ip: ip(ipv4),
            mac: Some(mac),
            state: 0x80,
        }
    }

    fn perm_fdb(mac: [u8; 6], dst: &str) -> FdbEntry {
        FdbEntry {
            mac,
            dst: Some(ip(dst)),
            state: 0x80,
            is_self: true,
        }
    }

    fn route(dst: &str, gw: Option<&str>, oif: u32, onlink: bool) -> RouteInfo {
        RouteInfo {
            dst: net(dst),
            gateway: gw.map(ip),
            oif: Some(oif),
            onlink,
            nexthop_id: None,
            protocol: 3,
            scope: 0,
            priority: 0,
            pref_src: None,
            table: 254,
            kind: weft_kernel::netlink::RouteType::Unicast,
        }
    }

    fn vx_route(dst: &str, gw: &str) -> RouteSpec {
        RouteSpec {
            dst: net(dst),
            gateway: Some(ip(gw)),
            oif: VX,
            onlink: true,
        }
    }

    fn desired_for(leases: &[Lease], topo: &Topology) -> DesiredState {
        let own = own_key(topo);
        let (peers, _) = peers_from_leases(leases, &own, topo);
        desired_state(peers_entries(&peers, topo).values())
    }

    #[test]
    fn leases_are_filtered_with_reasons() {
        let t = topo();
        let leases = [
            vx_lease("10.5.1.0/24", "198.51.100.1", "02:00:00:00:00:01"),
            vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b"),
            lease("10.5.3.0/24", "198.51.100.3", "", serde_json::Value::Null),
            lease("10.5.4.0/24", "198.51.100.4", "vxlan", json!({"VNI": 1})),
            vx_lease("10.5.5.0/24", "198.51.100.5", "01:00:5e:00:00:01"),
            vx_lease("10.9.0.0/24", "198.51.100.6", "02:00:00:00:00:0c"),
            vx_lease("10.5.7.0/24", "198.51.100.1", "02:00:00:00:00:0d"),
        ];
        let (peers, skipped) = peers_from_leases(&leases, &own_key(&t), &t);
        assert_eq!(
            peers,
            vec![Peer {
                subnet: net("10.5.2.0/24"),
                public_ip: ip("198.51.100.2"),
                vtep_mac: MAC_B
            }]
        );
        let reasons: Vec<LeaseSkip> = skipped.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            reasons,
            vec![
                LeaseSkip::Own,
                LeaseSkip::OtherBackend(String::new()),
                LeaseSkip::BadVtepMac,
                LeaseSkip::BadVtepMac,
                LeaseSkip::OutsideNetwork,
                LeaseSkip::OwnPublicIp,
            ]
        );
    }

    #[test]
    fn empty_kernel_gets_neighbour_fdb_and_onlink_route_per_peer() {
        let t = topo();
        let desired = desired_for(&[vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b")], &t);
        let actions = plan(&desired, &ActualState::default(), &t);
        assert_eq!(
            actions,
            vec![
                Action::SetNeighbour {
                    ip: ip("10.5.2.0"),
                    mac: MAC_B,
                    change: Change::Add
                },
                Action::SetFdb {
                    mac: MAC_B,
                    dst: ip("198.51.100.2"),
                    change: Change::Add
                },
                Action::SetRoute {
                    nexthop: None,
                    spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                    change: Change::Add
                },
            ]
        );
    }

    #[test]
    fn converged_state_plans_nothing() {
        let t = topo();
        let desired = desired_for(&[vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b")], &t);
        let actual = ActualState {
            nexthops: Vec::new(),
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2")],
            routes: vec![
                route("10.5.2.0/24", Some("10.5.2.0"), VX, true),
                route("0.0.0.0/0", Some("198.51.100.254"), EXT, false),
            ],
        };
        assert_eq!(plan(&desired, &actual, &t), vec![]);
    }

    #[test]
    fn changed_vtep_mac_and_public_ip_are_replaced_and_old_entries_removed() {
        let t = topo();
        // The peer restarted with a new VTEP MAC and moved to a new public IP.
        let desired = desired_for(&[vx_lease("10.5.2.0/24", "198.51.100.9", "02:00:00:00:00:0c")], &t);
        let actual = ActualState {
            nexthops: Vec::new(),
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2")],
            routes: vec![route("10.5.2.0/24", Some("10.5.2.0"), VX, true)],
        };
        assert_eq!(
            plan(&desired, &actual, &t),
            vec![
                Action::SetNeighbour {
                    ip: ip("10.5.2.0"),
                    mac: MAC_C,
                    change: Change::Replace
                },
                Action::SetFdb {
                    mac: MAC_C,
                    dst: ip("198.51.100.9"),
                    change: Change::Add
                },
                Action::DeleteFdb {
                    mac: MAC_B,
                    dst: ip("198.51.100.2")
                },
            ]
        );
    }

    #[test]
    fn fdb_remote_change_is_a_replace() {
        let t = topo();
        let desired = desired_for(&[vx_lease("10.5.2.0/24", "198.51.100.9", "02:00:00:00:00:0b")], &t);
        let actual = ActualState {
            nexthops: Vec::new(),
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2")],
            routes: vec![route("10.5.2.0/24", Some("10.5.2.0"), VX, true)],
        };
        assert_eq!(
            plan(&desired, &actual, &t),
            vec![
                Action::SetFdb {
                    mac: MAC_B,
                    dst: ip("198.51.100.9"),
                    change: Change::Replace
                },
                Action::DeleteFdb {
                    mac: MAC_B,
                    dst: ip("198.51.100.2")
                },
            ]
        );
    }

    #[test]
    fn removed_lease_removes_route_then_neighbour_and_fdb() {
        let t = topo();
        let desired = desired_for(&[], &t);
        let actual = ActualState {
            nexthops: Vec::new(),
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2")],
            routes: vec![route("10.5.2.0/24", Some("10.5.2.0"), VX, true)],
        };
        assert_eq!(
            plan(&desired, &actual, &t),
            vec![
                Action::DeleteRoute {
                    nexthop: None,
                    spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                    metric: 0
                },
                Action::DeleteNeighbour { ip: ip("10.5.2.0") },
                Action::DeleteFdb {
                    mac: MAC_B,
                    dst: ip("198.51.100.2")
                },
            ]
        );
    }

    #[test]
    fn foreign_and_own_routes_and_kernel_entries_are_left_alone() {
        let t = topo();
        let desired = desired_for(&[], &t);
        let mut connected = route("10.5.9.0/24", None, VX, false);
        connected.protocol = RTPROT_KERNEL;
        let actual = ActualState {
            nexthops: Vec::new(),
            // A learned (reachable) neighbour and a learned FDB entry belong to the kernel.
            neighbours: vec![Neighbour {
                ip: ip("10.5.3.0"),
                mac: Some(MAC_C),
                state: 0x02,
            }],
            fdb: vec![FdbEntry {
                mac: MAC_C,
                dst: Some(ip("198.51.100.3")),
                state: 0x02,
                is_self: true,
            }],
            routes: vec![
                // Our own subnet (e.g. through cni0), even if it points at flannel.1.
                route("10.5.1.0/24", None, VX, false),
                route("10.5.1.0/25", Some("10.5.1.9"), EXT, false),
                // Outside the cluster network.
                route("192.0.2.0/24", Some("10.5.2.0"), VX, true),
                // Inside the network on the external interface but with no gateway.
                route("10.5.4.0/24", None, EXT, false),
                // Some other device.
                route("10.5.6.0/24", Some("10.5.6.1"), 99, false),
                connected,
            ],
        };
        assert_eq!(plan(&desired, &actual, &t), vec![]);
    }

    #[test]
    fn wrong_route_is_replaced_and_metric_duplicate_deleted() {
        let t = topo();
        let desired = desired_for(&[vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b")], &t);
        let mut dup = route("10.5.2.0/24", Some("10.5.2.0"), VX, true);
        dup.priority = 100;
        let actual = ActualState {
            nexthops: Vec::new(),
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2")],
            // Missing onlink; plus a second copy at metric 100.
            routes: vec![route("10.5.2.0/24", Some("10.5.2.0"), VX, false), dup],
        };
        assert_eq!(
            plan(&desired, &actual, &t),
            vec![
                Action::DeleteRoute {
                    nexthop: None,
                    spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                    metric: 100
                },
                Action::SetRoute {
                    nexthop: None,
                    spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                    change: Change::Replace
                },
            ]
        );
    }

    #[test]
    fn direct_routing_uses_public_ip_for_peers_on_our_segment_only() {
        let mut t = topo();
        t.direct_routing = true;
        let leases = [
            vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b"),
            vx_lease("10.5.3.0/24", "203.0.113.3", "02:00:00:00:00:0c"),
        ];
        let desired = desired_for(&leases, &t);
        assert_eq!(
            desired.routes[&net::<IpNet>("10.5.2.0/24")],
            RouteSpec {
                dst: net("10.5.2.0/24"),
                gateway: Some(ip("198.51.100.2")),
                oif: EXT,
                onlink: false
            }
        );
        assert_eq!(
            desired.routes[&net::<IpNet>("10.5.3.0/24")],
            vx_route("10.5.3.0/24", "10.5.3.0")
        );
        assert_eq!(
            desired.neighbours.keys().copied().collect::<Vec<_>>(),
            vec![ip::<IpAddr>("10.5.3.0")]
        );
        assert_eq!(desired.fdb.keys().copied().collect::<Vec<_>>(), vec![MAC_C]);

        // The peer on our segment used to go through the tunnel: the replace switches it over,
        // and its neighbour/FDB entries go.
        let actual = ActualState {
            nexthops: Vec::new(),
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B), perm_neigh("10.5.3.0", MAC_C)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2"), perm_fdb(MAC_C, "203.0.113.3")],
            routes: vec![
                route("10.5.2.0/24", Some("10.5.2.0"), VX, true),
                route("10.5.3.0/24", Some("10.5.3.0"), VX, true),
            ],
        };
        assert_eq!(
            plan(&desired, &actual, &t),
            vec![
                Action::SetRoute {
                    nexthop: None,
                    spec: desired.routes[&net::<IpNet>("10.5.2.0/24")],
                    change: Change::Replace
                },
                Action::DeleteNeighbour { ip: ip("10.5.2.0") },
                Action::DeleteFdb {
                    mac: MAC_B,
                    dst: ip("198.51.100.2")
                },
            ]
        );
    }

    #[test]
    fn stale_direct_route_is_deleted() {
        let t = topo();
        let actual = ActualState {
            nexthops: Vec::new(),
            routes: vec![route("10.5.2.0/24", Some("198.51.100.2"), EXT, false)],
            ..ActualState::default()
        };
        let spec = actual.routes[0].spec().unwrap();
        assert_eq!(
            plan(&DesiredState::default(), &actual, &t),
            vec![Action::DeleteRoute {
                nexthop: None,
                spec,
                metric: 0
            }]
        );
    }

    #[test]
    fn routes_a_bad_lease_left_through_the_device_are_deleted() {
        let t = topo();
        let actual = ActualState {
            nexthops: Vec::new(),
            routes: vec![
                // The whole network, a supernet of our subnet, part of a peer's subnet, beyond the network.
                route("10.5.0.0/16", Some("10.5.0.0"), VX, true),
                route("10.5.0.0/23", Some("10.5.0.0"), VX, true),
                route("10.5.2.0/25", Some("10.5.2.0"), VX, true),
                route("10.0.0.0/8", Some("10.0.0.0"), VX, true),
            ],
            ..ActualState::default()
        };
        let deleted: Vec<_> = plan(&DesiredState::default(), &actual, &t)
            .into_iter()
            .map(|a| match a {
                Action::DeleteRoute { spec, .. } => spec.dst.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(deleted, ["10.5.0.0/16", "10.5.0.0/23", "10.5.2.0/25", "10.0.0.0/8"]);
    }

    #[test]
    fn a_batch_that_retires_one_lease_and_admits_another_keeps_what_they_share() {
        let t = topo();
        let own = own_key(&t);
        let entries = |l: &Lease| peer_entries(&peer_of(l, &own, &t).unwrap(), &t);
        // The node at 198.51.100.2 re-keys its lease: same VtepMAC and PublicIP, another subnet.
        let retired = entries(&vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b"));
        let admitted = entries(&vx_lease("10.5.9.0/24", "198.51.100.2", "02:00:00:00:00:0b"));
        let mut p = Phases::default();
        plan_peer(Some(&retired), None, &mut p);
        plan_peer(None, Some(&admitted), &mut p);
        let after = BTreeMap::from([("10.5.9.0/24".parse::<IpNet>().unwrap(), admitted)]);
        keep_shared(&mut p, &after);
        assert_eq!(
            p.deletes,
            vec![Action::DeleteNeighbour { ip: ip("10.5.2.0") }],
            "the shared FDB entry stays; the retired subnet's neighbour goes"
        );
        assert!(p.sets.contains(&Action::SetFdb {
            mac: MAC_B,
            dst: ip("198.51.100.2"),
            change: Change::Add
        }));
        // Nothing shared: every deletion stays.
        let mut p = Phases::default();
        plan_peer(Some(&retired), None, &mut p);
        keep_shared(&mut p, &BTreeMap::new());
        assert_eq!(p.deletes.len(), 2, "{:?}", p.deletes);
    }

    #[test]
    fn a_lease_change_touches_only_its_own_entries() {
        let t = topo();
        let own = own_key(&t);
        let entries = |l: &Lease| peer_entries(&peer_of(l, &own, &t).unwrap(), &t);
        let b = entries(&vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b"));

        // A new peer: neighbour and FDB before the route.
        let mut p = Phases::default();
        plan_peer(None, Some(&b), &mut p);
        assert_eq!(
            p.clone().into_vec(),
            vec![
                Action::SetNeighbour {
                    ip: ip("10.5.2.0"),
                    mac: MAC_B,
                    change: Change::Add
                },
                Action::SetFdb {
                    mac: MAC_B,
                    dst: ip("198.51.100.2"),
                    change: Change::Add
                },
                Action::SetRoute {
                    nexthop: None,
                    spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                    change: Change::Add
                },
            ]
        );

        // The same peer again: nothing.
        let mut p = Phases::default();
        plan_peer(Some(&b), Some(&b), &mut p);
        assert!(p.is_empty());

        // A new VtepMAC and PublicIP: the new entries set, the old FDB entry removed after.
        let b2 = entries(&vx_lease("10.5.2.0/24", "198.51.100.7", "02:00:00:00:00:0c"));
        let mut p = Phases::default();
        plan_peer(Some(&b), Some(&b2), &mut p);
        assert_eq!(
            p.into_vec(),
            vec![
                Action::SetNeighbour {
                    ip: ip("10.5.2.0"),
                    mac: MAC_C,
                    change: Change::Replace
                },
                Action::SetFdb {
                    mac: MAC_C,
                    dst: ip("198.51.100.7"),
                    change: Change::Add
                },
                Action::DeleteFdb {
                    mac: MAC_B,
                    dst: ip("198.51.100.2")
                },
            ]
        );

        // A departed peer: the route first, then its neighbour and FDB entry.
        let mut p = Phases::default();
        plan_peer(Some(&b), None, &mut p);
        assert_eq!(
            p.into_vec(),
            vec![
                Action::DeleteRoute {
                    nexthop: None,
                    spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                    metric: 0
                },
                Action::DeleteNeighbour { ip: ip("10.5.2.0") },
                Action::DeleteFdb {
                    mac: MAC_B,
                    dst: ip("198.51.100.2")
                },
            ]
        );
    }

    #[test]
    fn the_delta_plan_ends_where_the_full_plan_does() {
        // Applying one lease's delta to the entries of the old set gives the entries of the new set.
        let t = topo();
        let own = own_key(&t);
        let old = [vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b")];
        let new = [
            vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b"),
            vx_lease("10.5.3.0/24", "198.51.100.3", "02:00:00:00:00:0c"),
        ];
        let entries = |ls: &[Lease]| peers_entries(&peers_from_leases(ls, &own, &t).0, &t);
        let mut p = Phases::default();
        let added = entries(&new)[&net::<IpNet>("10.5.3.0/24")];
        plan_peer(None, Some(&added), &mut p);
        let full = plan(&desired_state(entries(&new).values()), &state_of(&entries(&old)), &t);
        assert_eq!(p.into_vec(), full);
    }

    /// The kernel state that holds exactly `entries`.
    fn state_of(entries: &BTreeMap<IpNet, PeerEntries>) -> ActualState {
        let mut actual = ActualState::default();
        for e in entries.values() {
            if let Some((ip, mac)) = e.neighbour {
                actual.neighbours.push(perm_neigh(&ip.to_string(), mac));
            }
            if let Some((mac, dst)) = e.fdb {
                actual.fdb.push(perm_fdb(mac, &dst.to_string()));
            }
            actual.routes.push(route(
                &e.route.dst.to_string(),
                e.route.gateway.map(|g| g.to_string()).as_deref(),
                e.route.oif,
                e.route.onlink,
            ));
        }
        actual
    }

    const NH_B: u32 = 0x7700_0002;

    fn nh_topo() -> Topology {
        Topology {
            nexthops: true,
            ..topo()
        }
    }

    fn nh_info(id: u32, gw: &str) -> NexthopInfo {
        NexthopInfo {
            id,
            gateway: Some(ip(gw)),
            oif: Some(VX),
            onlink: true,
            protocol: 3,
            special: false,
        }
    }

    fn nh_route(dst: &str, gw: &str, id: u32) -> RouteInfo {
        RouteInfo {
            nexthop_id: Some(id),
            ..route(dst, Some(gw), VX, true)
        }
    }

    fn nh_spec(id: u32, gw: &str) -> NexthopSpec {
        NexthopSpec {
            id,
            gateway: ip(gw),
            oif: VX,
            onlink: true,
        }
    }

    #[test]
    fn with_nexthops_each_peer_gets_its_nexthop_before_a_route_that_points_at_it() {
        let t = nh_topo();
        let desired = desired_for(&[vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b")], &t);
        let phases = plan_phases(&desired, &ActualState::default(), &t);
        assert_eq!(
            phases.sets.last(),
            Some(&Action::SetNexthop {
                spec: nh_spec(NH_B, "10.5.2.0"),
                change: Change::Add
            })
        );
        assert_eq!(
            phases.route_sets,
            vec![Action::SetRoute {
                spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                change: Change::Add,
                nexthop: Some(NH_B)
            }]
        );
    }

    #[test]
    fn a_plain_route_flanneld_left_is_replaced_by_the_nexthop_route_and_a_restart_changes_nothing() {
        let t = nh_topo();
        let desired = desired_for(&[vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b")], &t);
        let flanneld = ActualState {
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2")],
            routes: vec![route("10.5.2.0/24", Some("10.5.2.0"), VX, true)],
            nexthops: Vec::new(),
        };
        assert_eq!(
            plan(&desired, &flanneld, &t),
            vec![
                Action::SetNexthop {
                    spec: nh_spec(NH_B, "10.5.2.0"),
                    change: Change::Add
                },
                Action::SetRoute {
                    spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                    change: Change::Replace,
                    nexthop: Some(NH_B)
                },
            ]
        );
        let weft = ActualState {
            routes: vec![nh_route("10.5.2.0/24", "10.5.2.0", NH_B)],
            nexthops: vec![nh_info(NH_B, "10.5.2.0")],
            ..flanneld
        };
        assert_eq!(plan(&desired, &weft, &t), vec![]);
    }

    #[test]
    fn a_wrong_nexthop_is_replaced_in_place_and_stale_weft_nexthops_go_but_not_others() {
        let t = nh_topo();
        let desired = desired_for(&[vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b")], &t);
        let actual = ActualState {
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2")],
            routes: vec![
                nh_route("10.5.2.0/24", "10.5.2.9", NH_B),
                nh_route("10.5.3.0/24", "10.5.3.0", 0x7700_0003),
            ],
            nexthops: vec![
                nh_info(NH_B, "10.5.2.9"),
                nh_info(0x7700_0003, "10.5.3.0"),
                nh_info(12, "192.0.2.1"),
            ],
        };
        assert_eq!(
            plan(&desired, &actual, &t),
            // The stale nexthop's route goes with it.
            vec![
                Action::SetNexthop {
                    spec: nh_spec(NH_B, "10.5.2.0"),
                    change: Change::Replace
                },
                Action::DeleteNexthop {
                    id: 0x7700_0003,
                    alone: true
                },
            ]
        );
    }

    #[test]
    fn with_nexthops_a_lease_change_touches_its_nexthop_and_the_route_only_when_new() {
        let t = nh_topo();
        let own = own_key(&t);
        let entries = |l: &Lease| peer_entries(&peer_of(l, &own, &t).unwrap(), &t);
        let b = entries(&vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b"));
        assert_eq!(b.nexthop, Some(NH_B));
        let mut p = Phases::default();
        plan_peer(None, Some(&b), &mut p);
        assert!(p.sets.contains(&Action::SetNexthop {
            spec: nh_spec(NH_B, "10.5.2.0"),
            change: Change::Add
        }));
        assert_eq!(p.route_sets.len(), 1);

        // A new VtepMAC: neighbour and FDB change, the nexthop and route do not.
        let b2 = entries(&vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0c"));
        let mut p = Phases::default();
        plan_peer(Some(&b), Some(&b2), &mut p);
        assert!(p.route_sets.is_empty() && !p.sets.iter().any(|a| matches!(a, Action::SetNexthop { .. })));

        // Gone: its route, then its entries and nexthop.
        let mut p = Phases::default();
        plan_peer(Some(&b), None, &mut p);
        assert_eq!(
            p.route_deletes,
            vec![Action::DeleteRoute {
                spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                metric: 0,
                nexthop: Some(NH_B)
            }]
        );
        assert_eq!(
            p.deletes.last(),
            Some(&Action::DeleteNexthop { id: NH_B, alone: false })
        );
    }

    #[test]
    fn with_direct_routing_the_nexthop_switches_device_and_the_route_stays() {
        let mut t = nh_topo();
        t.direct_routing = true;
        let own = own_key(&t);
        let tunnel = Topology {
            ext_nets: Vec::new(),
            ..t.clone()
        };
        let lease = vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b");
        let before = peer_entries(&peer_of(&lease, &own, &tunnel).unwrap(), &tunnel);
        let after = peer_entries(&peer_of(&lease, &own, &t).unwrap(), &t);
        let mut p = Phases::default();
        plan_peer(Some(&before), Some(&after), &mut p);
        assert!(p.route_sets.is_empty());
        assert!(p.sets.contains(&Action::SetNexthop {
            spec: NexthopSpec {
                id: NH_B,
                gateway: ip("198.51.100.2"),
                oif: EXT,
                onlink: false
            },
            change: Change::Replace
        }));
    }
}
