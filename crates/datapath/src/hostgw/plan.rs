//! The pure half of the host-gw backend: which remote subnets the leases describe, which routes
//! they call for (`subnet via PublicIP dev <ext>`, through a nexthop object per peer when the
//! kernel has them), and which kernel changes turn the actual routes into those. No I/O here; everything is tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::{Lease, SubnetKey};

use crate::leases;
use crate::peer_routes::{at_default_metric, nexthop_id, nexthop_of, plan_nexthops, route_matches, stale_nexthops};
use weft_kernel::netlink::{NexthopInfo, NexthopSpec, RouteInfo, RouteSpec};

/// `rtm_protocol` of routes the kernel adds for connected subnets; never ours.
const RTPROT_KERNEL: u8 = 2;

/// The lease `BackendType` this backend programs.
pub const BACKEND_TYPE: &str = "host-gw";

/// A remote node the host-gw backend routes to over one address family: its subnet of that
/// family lives behind its public address of that family (IPv6: PublicIPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub subnet: IpNet,
    pub public_ip: IpAddr,
}

pub use crate::leases::LeaseSkip;

/// What the reconcile needs to know about this node, for the address family of `network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub network: IpNet,
    pub own_subnet: IpNet,
    pub public_ip: IpAddr,
    /// The external interface the routes leave through.
    pub ext_index: u32,
    /// Routes point at per-peer nexthop objects (the kernel has them).
    pub nexthops: bool,
}

impl Topology {
    /// The id of the nexthop the route to peer subnet `dst` points at; None: a plain route.
    pub fn nexthop_for(&self, dst: IpNet) -> Option<u32> {
        self.nexthops.then(|| nexthop_id(self.network, dst)).flatten()
    }
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
    if let Some(skip) = leases::check_side(lease, side, |kind| kind == BACKEND_TYPE) {
        return Err(skip);
    }
    let (subnet, public_ip) = leases::lease_side(lease, ipv6).ok_or(LeaseSkip::NoSideOfFamily)?;
    Ok(Peer {
        subnet: subnet.trunc(),
        public_ip,
    })
}

/// A peer's route: `subnet via PublicIP dev <ext>`.
pub fn route_of(peer: &Peer, topo: &Topology) -> RouteSpec {
    RouteSpec {
        dst: peer.subnet,
        gateway: Some(peer.public_ip),
        oif: topo.ext_index,
        onlink: false,
    }
}

/// One route per peer, keyed by destination.
pub fn desired_routes(peers: &[Peer], topo: &Topology) -> BTreeMap<IpNet, RouteSpec> {
    peers.iter().map(|p| (p.subnet, route_of(p, topo))).collect()
}

/// The changes that turn one peer's installed route `old` into `new` (None: no such peer),
/// without reading the kernel, in the order they must run. A route through a nexthop follows
/// it: a new gateway is a nexthop replace alone.
pub fn plan_route(old: Option<RouteSpec>, new: Option<RouteSpec>, topo: &Topology) -> Vec<Action> {
    let Some(dst) = new.or(old).map(|r| r.dst) else {
        return Vec::new();
    };
    let nexthop = topo.nexthop_for(dst);
    let set = |had: bool| if had { Change::Replace } else { Change::Add };
    match (old, new) {
        (Some(old), None) => {
            let mut actions = vec![Action::DeleteRoute {
                spec: old,
                metric: 0,
                nexthop,
            }];
            actions.extend(nexthop.map(|id| Action::DeleteNexthop { id, alone: false }));
            actions
        }
        (old, Some(new)) if old != Some(new) => {
            let mut actions = Vec::new();
            if let Some(spec) = nexthop.and_then(|id| nexthop_of(&new, id)) {
                actions.push(Action::SetNexthop {
                    spec,
                    change: set(old.is_some()),
                });
                if old.is_some() {
                    return actions;
                }
            }
            actions.push(Action::SetRoute {
                spec: new,
                change: set(old.is_some()),
                nexthop,
            });
            actions
        }
        _ => Vec::new(),
    }
}

pub use crate::apply::Change;
use crate::apply::Effect;

/// One kernel change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add the route, or replace the main table's route to the same destination; with
    /// `nexthop`, a route that points at that nexthop.
    SetRoute {
        spec: RouteSpec,
        change: Change,
        nexthop: Option<u32>,
    },
    /// Delete the route at this metric (one that points at a nexthop is matched by its id).
    DeleteRoute {
        spec: RouteSpec,
        metric: u32,
        nexthop: Option<u32>,
    },
    /// Add a nexthop object or replace the one with its id (its routes follow).
    SetNexthop { spec: NexthopSpec, change: Change },
    /// Delete a nexthop object, and with it the routes that still point at it. `alone`: no
    /// route change of the same peer goes with it, so it counts as the removal.
    DeleteNexthop { id: u32, alone: bool },
}

/// The order actions run in, one phase after the other: stale routes out (a moved subnet never
/// has two paths), nexthops in, routes in (pointing at nexthops that exist), stale nexthops out.
pub fn phase_of(action: &Action) -> usize {
    match action {
        Action::DeleteRoute { .. } => 0,
        Action::SetNexthop { .. } => 1,
        Action::SetRoute { .. } => 2,
        Action::DeleteNexthop { .. } => 3,
    }
}

impl Action {
    /// What the action does to the routing table when it succeeds.
    pub fn effect(&self) -> Effect {
        match self {
            // A nexthop comes and goes with its route, which is what is counted; replaced
            // alone, it is the route's change.
            Action::SetNexthop {
                change: Change::Add, ..
            }
            | Action::DeleteNexthop { alone: false, .. } => Effect::PartOfRoute,
            Action::SetRoute { change, .. } | Action::SetNexthop { change, .. } => Effect::Set(*change),
            Action::DeleteRoute { .. } | Action::DeleteNexthop { alone: true, .. } => Effect::Removed,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let describe = |spec: &RouteSpec| {
            let gw = spec.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            format!("{}{gw} dev #{}", spec.dst, spec.oif)
        };
        let verb = |change: &Change| match change {
            Change::Add => "add",
            Change::Replace => "replace",
        };
        match self {
            Action::SetRoute {
                spec,
                change,
                nexthop: Some(id),
            } => write!(f, "{} route {} nhid {id}", verb(change), spec.dst),
            Action::SetRoute { spec, change, .. } => write!(f, "{} route {}", verb(change), describe(spec)),
            Action::DeleteRoute {
                spec,
                metric,
                nexthop: Some(id),
            } => write!(f, "delete route {} nhid {id} metric {metric}", spec.dst),
            Action::DeleteRoute { spec, metric, .. } => {
                write!(f, "delete route {} metric {metric}", describe(spec))
            }
            Action::SetNexthop { spec, change } => write!(f, "{} {spec}", verb(change)),
            Action::DeleteNexthop { id, .. } => write!(f, "delete nexthop id {id}"),
        }
    }
}

/// Is this main-table route one the host-gw backend manages? Routes into the cluster network
/// (the whole network and supernets of our subnet included: only a bad lease could have put
/// those there) through the external interface via a gateway, except the route to our own
/// subnet and kernel-made connected routes.
pub fn is_ours(route: &RouteInfo, topo: &Topology) -> bool {
    route.oif == Some(topo.ext_index)
        && route.gateway.is_some()
        && route.protocol != RTPROT_KERNEL
        && topo.network.contains(&route.dst)
        && !topo.own_subnet.contains(&route.dst)
}

/// The changes that turn the actual main-table routes into the desired ones: stale routes out
/// first (so a moved subnet never has two paths), then missing or wrong routes set.
pub fn plan(desired: &BTreeMap<IpNet, RouteSpec>, actual: &[RouteInfo], topo: &Topology) -> Vec<Action> {
    plan_with_nexthops(desired, actual, &[], topo)
}

/// [`plan`], with the kernel's nexthop objects: the desired routes' nexthops set where missing
/// or wrong, nexthops in weft's range that no route wants deleted; in [`phase_of`] order.
pub fn plan_with_nexthops(
    desired: &BTreeMap<IpNet, RouteSpec>,
    actual: &[RouteInfo],
    nexthops: &[NexthopInfo],
    topo: &Topology,
) -> Vec<Action> {
    let ours: Vec<&RouteInfo> = actual.iter().filter(|r| is_ours(r, topo)).collect();
    let mut by_dst: BTreeMap<IpNet, Vec<&RouteInfo>> = BTreeMap::new();
    for r in actual {
        by_dst.entry(r.dst).or_default().push(r);
    }
    let mut actions = Vec::new();
    let mut kept = BTreeSet::new();
    for (dst, spec) in desired {
        let at_dst: &[&RouteInfo] = by_dst.get(dst).map_or(&[], |v| v.as_slice());
        let nexthop = topo.nexthop_for(*dst);
        let exact = at_dst
            .iter()
            .any(|r| route_matches(r, spec, nexthop) && is_ours(r, topo));
        if exact {
            kept.insert(*dst);
            continue;
        }
        // Any metric-0 route to this destination (ours or not) is overwritten by the replace.
        let exists = at_dst.iter().any(|r| at_default_metric(r));
        actions.push(Action::SetRoute {
            spec: *spec,
            change: if exists { Change::Replace } else { Change::Add },
            nexthop,
        });
    }
    let desired_nexthops: Vec<NexthopSpec> = desired
        .iter()
        .filter_map(|(dst, spec)| nexthop_of(spec, topo.nexthop_for(*dst)?))
        .collect();
    // A route through a stale nexthop of weft's goes when the nexthop is deleted.
    let stale = stale_nexthops(&desired_nexthops, nexthops);
    let goes_with_its_nexthop = |r: &RouteInfo| r.nexthop_id.is_some_and(|id| stale.contains(&id));
    let mut kept_once = BTreeSet::new();
    for r in &ours {
        let spec = r.spec().expect("is_ours requires an oif");
        let wanted = desired.get(&r.dst);
        let nexthop = topo.nexthop_for(r.dst);
        let is_the_kept_one =
            wanted.is_some_and(|w| route_matches(r, w, nexthop)) && kept.contains(&r.dst) && kept_once.insert(r.dst);
        let replaced_in_place = wanted.is_some() && at_default_metric(r) && !kept.contains(&r.dst);
        if !is_the_kept_one && !replaced_in_place && !goes_with_its_nexthop(r) {
            actions.push(Action::DeleteRoute {
                spec,
                metric: r.priority,
                nexthop: r.nexthop_id,
            });
        }
    }
    let (sets, deletes) = plan_nexthops(&desired_nexthops, nexthops);
    actions.extend(
        sets.into_iter()
            .map(|(spec, change)| Action::SetNexthop { spec, change }),
    );
    actions.extend(deletes.into_iter().map(|id| Action::DeleteNexthop { id, alone: true }));
    actions.sort_by_key(phase_of);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EXT: u32 = 2;

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
            ext_index: EXT,
            nexthops: false,
        }
    }

    fn lease(subnet: &str, public_ip: &str, backend: &str) -> Lease {
        let data = if backend == "vxlan" {
            json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:01"})
        } else {
            serde_json::Value::Null
        };
        Lease::v4(net(subnet), ip(public_ip), backend, data)
    }

    fn route(dst: &str, gw: Option<&str>, oif: u32) -> RouteInfo {
        RouteInfo {
            dst: net(dst),
            gateway: gw.map(ip),
            oif: Some(oif),
            onlink: false,
            nexthop_id: None,
            protocol: 3,
            scope: 0,
            priority: 0,
            pref_src: None,
            table: 254,
            kind: weft_kernel::netlink::RouteType::Unicast,
        }
    }

    fn gw_route(dst: &str, gw: &str) -> RouteSpec {
        RouteSpec {
            dst: net(dst),
            gateway: Some(ip(gw)),
            oif: EXT,
            onlink: false,
        }
    }

    fn desired_for(leases: &[Lease]) -> BTreeMap<IpNet, RouteSpec> {
        let t = topo();
        let (peers, _) = peers_from_leases(leases, &own_key(&t), &t);
        desired_routes(&peers, &t)
    }

    #[test]
    fn leases_are_filtered_with_reasons() {
        let t = topo();
        let leases = [
            lease("10.5.1.0/24", "198.51.100.1", "host-gw"),
            lease("10.5.2.0/24", "198.51.100.2", "host-gw"),
            lease("10.5.3.0/24", "198.51.100.3", "vxlan"),
            lease("10.5.4.0/24", "198.51.100.4", ""),
            lease("10.9.0.0/24", "198.51.100.6", "host-gw"),
            lease("10.5.7.0/24", "198.51.100.1", "host-gw"),
        ];
        let (peers, skipped) = peers_from_leases(&leases, &own_key(&t), &t);
        assert_eq!(
            peers,
            vec![Peer {
                subnet: net("10.5.2.0/24"),
                public_ip: ip("198.51.100.2")
            }]
        );
        let reasons: Vec<LeaseSkip> = skipped.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            reasons,
            vec![
                LeaseSkip::Own,
                LeaseSkip::OtherBackend("vxlan".into()),
                LeaseSkip::OtherBackend(String::new()),
                LeaseSkip::OutsideNetwork,
                LeaseSkip::OwnPublicIp,
            ]
        );
    }

    #[test]
    fn empty_kernel_gets_one_route_per_peer_via_its_public_ip() {
        let desired = desired_for(&[
            lease("10.5.2.0/24", "198.51.100.2", "host-gw"),
            lease("10.5.3.0/24", "198.51.100.3", "host-gw"),
        ]);
        assert_eq!(
            plan(&desired, &[], &topo()),
            vec![
                Action::SetRoute {
                    nexthop: None,
                    spec: gw_route("10.5.2.0/24", "198.51.100.2"),
                    change: Change::Add
                },
                Action::SetRoute {
                    nexthop: None,
                    spec: gw_route("10.5.3.0/24", "198.51.100.3"),
                    change: Change::Add
                },
            ]
        );
    }

    #[test]
    fn converged_state_plans_nothing() {
        let desired = desired_for(&[lease("10.5.2.0/24", "198.51.100.2", "host-gw")]);
        let actual = [
            route("10.5.2.0/24", Some("198.51.100.2"), EXT),
            route("0.0.0.0/0", Some("198.51.100.254"), EXT),
            route("198.51.100.0/24", None, EXT),
        ];
        assert_eq!(plan(&desired, &actual, &topo()), vec![]);
    }

    #[test]
    fn moved_peer_is_replaced_in_place() {
        let desired = desired_for(&[lease("10.5.2.0/24", "198.51.100.9", "host-gw")]);
        let actual = [route("10.5.2.0/24", Some("198.51.100.2"), EXT)];
        assert_eq!(
            plan(&desired, &actual, &topo()),
            vec![Action::SetRoute {
                nexthop: None,
                spec: gw_route("10.5.2.0/24", "198.51.100.9"),
                change: Change::Replace
            }]
        );
    }

    #[test]
    fn route_through_another_device_is_replaced() {
        // e.g. left over from the vxlan backend before the cluster switched to host-gw.
        let desired = desired_for(&[lease("10.5.2.0/24", "198.51.100.2", "host-gw")]);
        let mut old = route("10.5.2.0/24", Some("10.5.2.0"), 7);
        old.onlink = true;
        assert_eq!(
            plan(&desired, &[old], &topo()),
            vec![Action::SetRoute {
                nexthop: None,
                spec: gw_route("10.5.2.0/24", "198.51.100.2"),
                change: Change::Replace
            }]
        );
    }

    #[test]
    fn departed_peer_and_duplicates_are_deleted() {
        let desired = desired_for(&[lease("10.5.2.0/24", "198.51.100.2", "host-gw")]);
        let mut dup = route("10.5.2.0/24", Some("198.51.100.2"), EXT);
        dup.priority = 100;
        let actual = [
            route("10.5.2.0/24", Some("198.51.100.2"), EXT),
            dup,
            route("10.5.3.0/24", Some("198.51.100.3"), EXT),
        ];
        assert_eq!(
            plan(&desired, &actual, &topo()),
            vec![
                Action::DeleteRoute {
                    nexthop: None,
                    spec: gw_route("10.5.2.0/24", "198.51.100.2"),
                    metric: 100
                },
                Action::DeleteRoute {
                    nexthop: None,
                    spec: gw_route("10.5.3.0/24", "198.51.100.3"),
                    metric: 0
                },
            ]
        );
    }

    #[test]
    fn own_foreign_and_connected_routes_are_left_alone() {
        let mut connected = route("10.5.9.0/24", None, EXT);
        connected.protocol = RTPROT_KERNEL;
        let actual = [
            // Our own subnet, even via a gateway on the external interface.
            route("10.5.1.0/24", Some("198.51.100.7"), EXT),
            route("10.5.1.0/25", Some("198.51.100.7"), EXT),
            // Outside the cluster network.
            route("192.0.2.0/24", Some("198.51.100.7"), EXT),
            route("10.0.0.0/8", Some("198.51.100.7"), EXT),
            // No gateway, or another device.
            route("10.5.4.0/24", None, EXT),
            route("10.5.6.0/24", Some("10.5.6.1"), 99),
            connected,
        ];
        assert_eq!(plan(&BTreeMap::new(), &actual, &topo()), vec![]);
    }

    #[test]
    fn routes_a_bad_lease_left_for_the_whole_network_or_a_supernet_are_deleted() {
        let actual = [
            route("10.5.0.0/16", Some("198.51.100.7"), EXT),
            route("10.5.0.0/23", Some("198.51.100.7"), EXT),
        ];
        let deleted: Vec<_> = plan(&BTreeMap::new(), &actual, &topo())
            .into_iter()
            .map(|a| match a {
                Action::DeleteRoute { spec, .. } => spec.dst.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(deleted, ["10.5.0.0/16", "10.5.0.0/23"]);
    }

    #[test]
    fn with_nexthops_a_plain_route_is_replaced_by_one_through_the_peers_nexthop() {
        let t = Topology {
            nexthops: true,
            ..topo()
        };
        let desired: BTreeMap<IpNet, RouteSpec> = [(
            net("10.5.2.0/24"),
            RouteSpec {
                dst: net("10.5.2.0/24"),
                gateway: Some(ip("198.51.100.2")),
                oif: EXT,
                onlink: false,
            },
        )]
        .into();
        let spec = desired[&net::<IpNet>("10.5.2.0/24")];
        let nexthop = NexthopSpec {
            id: 0x7700_0002,
            gateway: ip("198.51.100.2"),
            oif: EXT,
            onlink: false,
        };
        let flanneld = [route("10.5.2.0/24", Some("198.51.100.2"), EXT)];
        assert_eq!(
            plan_with_nexthops(&desired, &flanneld, &[], &t),
            vec![
                Action::SetNexthop {
                    spec: nexthop,
                    change: Change::Add
                },
                Action::SetRoute {
                    spec,
                    change: Change::Replace,
                    nexthop: Some(0x7700_0002)
                },
            ]
        );
        let weft = [RouteInfo {
            nexthop_id: Some(0x7700_0002),
            ..flanneld[0].clone()
        }];
        let installed = [NexthopInfo {
            id: 0x7700_0002,
            gateway: Some(ip("198.51.100.2")),
            oif: Some(EXT),
            onlink: false,
            protocol: 3,
            special: false,
        }];
        assert_eq!(plan_with_nexthops(&desired, &weft, &installed, &t), vec![]);
        // A moved peer: the nexthop is replaced, the route stays.
        let moved = RouteSpec {
            gateway: Some(ip("198.51.100.7")),
            ..spec
        };
        assert_eq!(
            plan_route(Some(spec), Some(moved), &t),
            vec![Action::SetNexthop {
                spec: NexthopSpec {
                    gateway: ip("198.51.100.7"),
                    ..nexthop
                },
                change: Change::Replace
            }]
        );
    }
}
