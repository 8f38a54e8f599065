//! The pure half of the vxlan backend: which peers the leases describe, which neighbour, FDB
//! and route entries they call for, and which kernel changes turn the actual entries into those.
//! No I/O here; everything is tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_core::{Lease, SubnetKey};

use crate::leases;
use weft_kernel::netlink::{format_mac, parse_mac, FdbEntry, Neighbour, RouteInfo, RouteSpec};

/// `rtm_protocol` of routes the kernel adds for connected subnets; never ours.
const RTPROT_KERNEL: u8 = 2;

/// A remote node the vxlan backend must reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

pub use crate::leases::LeaseSkip;

/// What the reconcile needs to know about this node and its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub network: Ipv4Net,
    pub own_subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vxlan_index: u32,
    pub ext_index: u32,
    /// The external interface's connected subnets, for DirectRouting.
    pub ext_nets: Vec<Ipv4Net>,
    pub direct_routing: bool,
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
        let node = leases::Node {
            own: Some(own),
            network: topo.network,
            public_ip: topo.public_ip,
        };
        let skip = leases::check(lease, node, |kind| kind == "vxlan");
        if let Some(skip) = skip {
            skipped.push((lease.subnet, skip));
            continue;
        }
        let mac = lease
            .attrs
            .backend_data
            .get("VtepMAC")
            .and_then(|v| v.as_str())
            .and_then(parse_mac);
        match mac {
            Some(vtep_mac) if vtep_mac[0] & 0x01 == 0 && vtep_mac != [0; 6] => peers.push(Peer {
                subnet: lease.subnet.ipv4,
                public_ip: lease.attrs.public_ip,
                vtep_mac,
            }),
            _ => skipped.push((lease.subnet, LeaseSkip::BadVtepMac)),
        }
    }
    (peers, skipped)
}

/// The entries the peers call for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// On the VXLAN device: remote subnet's network address -> remote VtepMAC.
    pub neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// On the VXLAN device: remote VtepMAC -> remote public IP.
    pub fdb: BTreeMap<[u8; 6], Ipv4Addr>,
    /// Main table, keyed by destination.
    pub routes: BTreeMap<Ipv4Net, RouteSpec>,
}

/// Per peer: neighbour, FDB entry and an onlink route through the VXLAN device; or, with
/// DirectRouting and a peer on our L2 segment, only a route via its public IP.
pub fn desired_state(peers: &[Peer], topo: &Topology) -> DesiredState {
    let mut desired = DesiredState::default();
    for peer in peers {
        let direct = topo.direct_routing && topo.ext_nets.iter().any(|n| n.contains(&peer.public_ip));
        if direct {
            desired.routes.insert(
                peer.subnet,
                RouteSpec {
                    dst: peer.subnet,
                    gateway: Some(peer.public_ip),
                    oif: topo.ext_index,
                    onlink: false,
                },
            );
            continue;
        }
        let vtep_ip = peer.subnet.network();
        desired.neighbours.insert(vtep_ip, peer.vtep_mac);
        desired.fdb.insert(peer.vtep_mac, peer.public_ip);
        desired.routes.insert(
            peer.subnet,
            RouteSpec {
                dst: peer.subnet,
                gateway: Some(vtep_ip),
                oif: topo.vxlan_index,
                onlink: true,
            },
        );
    }
    desired
}

/// The entries read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualState {
    /// IPv4 neighbours of the VXLAN device.
    pub neighbours: Vec<Neighbour>,
    /// FDB entries of the VXLAN device.
    pub fdb: Vec<FdbEntry>,
    /// The main table's IPv4 routes (all of them; [`plan`] picks ours).
    pub routes: Vec<RouteInfo>,
}

pub use crate::apply::Change;

/// One kernel change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `metric` 0 matches a route at any metric.
    DeleteRoute {
        spec: RouteSpec,
        metric: u32,
    },
    SetNeighbour {
        ip: Ipv4Addr,
        mac: [u8; 6],
        change: Change,
    },
    SetFdb {
        mac: [u8; 6],
        dst: Ipv4Addr,
        change: Change,
    },
    SetRoute {
        spec: RouteSpec,
        change: Change,
    },
    DeleteNeighbour {
        ip: Ipv4Addr,
    },
    DeleteFdb {
        mac: [u8; 6],
        dst: Ipv4Addr,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = |c: &Change| match c {
            Change::Add => "add",
            Change::Replace => "replace",
        };
        match self {
            Action::DeleteRoute { spec, metric } => write!(
                f,
                "delete route {} via {:?} dev #{} metric {metric}",
                spec.dst, spec.gateway, spec.oif
            ),
            Action::SetNeighbour { ip, mac, change } => {
                write!(f, "{} neighbour {ip} -> {}", verb(change), format_mac(mac))
            }
            Action::SetFdb { mac, dst, change } => write!(f, "{} FDB {} -> {dst}", verb(change), format_mac(mac)),
            Action::SetRoute { spec, change } => write!(
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
    if route.protocol == RTPROT_KERNEL || topo.own_subnet.contains(&route.dst) {
        return false;
    }
    let overlaps_network = topo.network.contains(&route.dst) || route.dst.contains(&topo.network);
    let inside_network = topo.network.contains(&route.dst) && route.dst.prefix_len() > topo.network.prefix_len();
    (oif == topo.vxlan_index && overlaps_network)
        || (oif == topo.ext_index && route.gateway.is_some() && inside_network && !route.dst.contains(&topo.own_subnet))
}

/// The changes that turn `actual` into `desired`, in a safe order: stale routes out first,
/// then neighbour and FDB entries (so a new route never resolves through a missing entry),
/// then routes, then stale neighbour and FDB entries.
pub fn plan(desired: &DesiredState, actual: &ActualState, topo: &Topology) -> Vec<Action> {
    let mut route_deletes = Vec::new();
    let mut sets = Vec::new();
    let mut route_sets = Vec::new();
    let mut deletes = Vec::new();

    // Neighbours: only permanent entries are ours to delete; others belong to the kernel.
    for (ip, mac) in &desired.neighbours {
        match actual.neighbours.iter().find(|n| n.ip == *ip) {
            Some(n) if n.mac == Some(*mac) && n.is_permanent() => {}
            Some(_) => sets.push(Action::SetNeighbour {
                ip: *ip,
                mac: *mac,
                change: Change::Replace,
            }),
            None => sets.push(Action::SetNeighbour {
                ip: *ip,
                mac: *mac,
                change: Change::Add,
            }),
        }
    }
    let mut seen_neigh = BTreeSet::new();
    for n in &actual.neighbours {
        if n.is_permanent() && !desired.neighbours.contains_key(&n.ip) && seen_neigh.insert(n.ip) {
            deletes.push(Action::DeleteNeighbour { ip: n.ip });
        }
    }

    // FDB: a MAC whose remote is wrong gets it replaced; extra remotes are deleted.
    for (mac, dst) in &desired.fdb {
        let entries: Vec<&FdbEntry> = actual.fdb.iter().filter(|e| e.mac == *mac && e.dst.is_some()).collect();
        let exact = entries.iter().any(|e| e.dst == Some(*dst) && e.is_permanent());
        if !exact {
            let change = if entries.is_empty() {
                Change::Add
            } else {
                Change::Replace
            };
            sets.push(Action::SetFdb {
                mac: *mac,
                dst: *dst,
                change,
            });
        }
    }
    let mut seen_fdb = BTreeSet::new();
    for e in &actual.fdb {
        let Some(dst) = e.dst else { continue };
        if !e.is_permanent() || desired.fdb.get(&e.mac) == Some(&dst) {
            continue;
        }
        // A wrong remote of a MAC we just replaced may already be gone; the delete then is a no-op.
        if seen_fdb.insert((e.mac, dst)) {
            deletes.push(Action::DeleteFdb { mac: e.mac, dst });
        }
    }

    // Routes: one per destination; ours that are not desired (or duplicate) go.
    let ours: Vec<&RouteInfo> = actual.routes.iter().filter(|r| is_ours(r, topo)).collect();
    let mut kept = BTreeSet::new();
    for (dst, spec) in &desired.routes {
        let matches = |r: &&&RouteInfo| r.dst == *dst && r.spec() == Some(*spec) && r.priority == 0;
        if ours.iter().any(|r| matches(&r)) {
            kept.insert(*dst);
            continue;
        }
        let exists = actual.routes.iter().any(|r| r.dst == *dst && r.priority == 0);
        route_sets.push(Action::SetRoute {
            spec: *spec,
            change: if exists { Change::Replace } else { Change::Add },
        });
    }
    let mut kept_once = BTreeSet::new();
    for r in &ours {
        let spec = r.spec().expect("is_ours requires an oif");
        let wanted = desired.routes.get(&r.dst);
        let is_the_kept_one =
            wanted == Some(&spec) && r.priority == 0 && kept.contains(&r.dst) && kept_once.insert(r.dst);
        // A route at metric 0 to a desired destination is overwritten by the replace instead.
        let replaced_in_place = wanted.is_some() && r.priority == 0 && !kept.contains(&r.dst);
        if !is_the_kept_one && !replaced_in_place {
            route_deletes.push(Action::DeleteRoute {
                spec,
                metric: r.priority,
            });
        }
    }

    let mut actions = route_deletes;
    actions.extend(sets);
    actions.extend(route_sets);
    actions.extend(deletes);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VX: u32 = 7;
    const EXT: u32 = 2;
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
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
            protocol: 3,
            scope: 0,
            priority: 0,
            pref_src: None,
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
        let own = SubnetKey::v4(topo.own_subnet);
        let (peers, _) = peers_from_leases(leases, &own, topo);
        desired_state(&peers, topo)
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
        let (peers, skipped) = peers_from_leases(&leases, &SubnetKey::v4(t.own_subnet), &t);
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
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2")],
            routes: vec![route("10.5.2.0/24", Some("10.5.2.0"), VX, true)],
        };
        assert_eq!(
            plan(&desired, &actual, &t),
            vec![
                Action::DeleteRoute {
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
            neighbours: vec![perm_neigh("10.5.2.0", MAC_B)],
            fdb: vec![perm_fdb(MAC_B, "198.51.100.2")],
            // Missing onlink; plus a second copy at metric 100.
            routes: vec![route("10.5.2.0/24", Some("10.5.2.0"), VX, false), dup],
        };
        assert_eq!(
            plan(&desired, &actual, &t),
            vec![
                Action::DeleteRoute {
                    spec: vx_route("10.5.2.0/24", "10.5.2.0"),
                    metric: 100
                },
                Action::SetRoute {
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
            desired.routes[&net("10.5.2.0/24")],
            RouteSpec {
                dst: net("10.5.2.0/24"),
                gateway: Some(ip("198.51.100.2")),
                oif: EXT,
                onlink: false
            }
        );
        assert_eq!(desired.routes[&net("10.5.3.0/24")], vx_route("10.5.3.0/24", "10.5.3.0"));
        assert_eq!(
            desired.neighbours.keys().copied().collect::<Vec<_>>(),
            vec![ip("10.5.3.0")]
        );
        assert_eq!(desired.fdb.keys().copied().collect::<Vec<_>>(), vec![MAC_C]);

        // The peer on our segment used to go through the tunnel: the replace switches it over,
        // and its neighbour/FDB entries go.
        let actual = ActualState {
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
                    spec: desired.routes[&net("10.5.2.0/24")],
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
            routes: vec![route("10.5.2.0/24", Some("198.51.100.2"), EXT, false)],
            ..ActualState::default()
        };
        let spec = actual.routes[0].spec().unwrap();
        assert_eq!(
            plan(&DesiredState::default(), &actual, &t),
            vec![Action::DeleteRoute { spec, metric: 0 }]
        );
    }

    #[test]
    fn routes_a_bad_lease_left_through_the_device_are_deleted() {
        let t = topo();
        let actual = ActualState {
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
}
