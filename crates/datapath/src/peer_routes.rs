//! A peer's route through a nexthop object, shared by the vxlan and host-gw backends: which
//! nexthop id a peer gets, whether a kernel route is the one weft wants, and the nexthop half of
//! a full reconcile. Pure, except [`nexthops_usable`], the probe a backend runs once at start.
//!
//! Why nexthops: a route that carries its own gateway gets its own fib_info, and the kernel's
//! fib_info insert grows with their number, so 20,000 per-peer routes took seconds to program;
//! routes that point at a nexthop share its fib entry.
//!
//! Ids: weft owns `0x7700_0000..=0x77ff_ffff`. Bit 23 is the address family (IPv6 set) and
//! bits 0-22 the peer subnet's index inside the cluster network (`(subnet - network) >>
//! host bits`), so an id follows from the lease alone: stable across restarts and the same on
//! every node, with no table to keep. The kernel's own allocator (a nexthop added without an id)
//! counts up from 1, and nexthops written by hand or by routing daemons use small ids too; a
//! nexthop in weft's range that no lease asks for is removed as weft's. A network with more than
//! 2^23 subnets gives the subnets beyond that plain routes.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_kernel::netlink::{nexthops_unsupported, Netlink, NexthopInfo, NexthopSpec, RouteInfo, RouteSpec};

use crate::apply::Change;

/// The first id of weft's range.
pub const NEXTHOP_ID_BASE: u32 = 0x7700_0000;
const RANGE_MASK: u32 = 0xff00_0000;
const IPV6_BIT: u32 = 1 << 23;
const INDEX_LIMIT: u128 = 1 << 23;

/// Whether `id` is in weft's range.
pub fn is_weft_nexthop(id: u32) -> bool {
    id & RANGE_MASK == NEXTHOP_ID_BASE
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The nexthop id of the peer subnet `subnet` of `network`; None when the subnet is not inside
/// the network or its index does not fit weft's range.
pub fn nexthop_id(network: IpNet, subnet: IpNet) -> Option<u32> {
    let network = network.trunc();
    if !network.contains(&subnet) || subnet.prefix_len() <= network.prefix_len() {
        return None;
    }
    let host_bits = u32::from(subnet.max_prefix_len() - subnet.prefix_len());
    let index = (bits(subnet.network()) - bits(network.network())) >> host_bits;
    if index >= INDEX_LIMIT {
        return None;
    }
    let family = if subnet.addr().is_ipv6() { IPV6_BIT } else { 0 };
    Some(NEXTHOP_ID_BASE | family | index as u32)
}

/// The peer subnet (of prefix `subnet_len` in `network`) whose nexthop id is `id`.
pub fn subnet_of_nexthop(network: IpNet, subnet_len: u8, id: u32) -> Option<IpNet> {
    if !is_weft_nexthop(id) || (id & IPV6_BIT != 0) != network.addr().is_ipv6() {
        return None;
    }
    let host_bits = u32::from(network.max_prefix_len().checked_sub(subnet_len)?);
    let index = u128::from(id & (IPV6_BIT - 1));
    let addr = bits(network.trunc().network()).checked_add(index.checked_shl(host_bits)?)?;
    let addr = match network {
        IpNet::V4(_) => IpAddr::V4(u32::try_from(addr).ok()?.into()),
        IpNet::V6(_) => IpAddr::V6(addr.into()),
    };
    let subnet = IpNet::new(addr, subnet_len).ok()?;
    (nexthop_id(network, subnet) == Some(id)).then_some(subnet)
}

/// The nexthop `id` that carries `route`'s gateway, device and onlink flag.
pub fn nexthop_of(route: &RouteSpec, id: u32) -> Option<NexthopSpec> {
    Some(NexthopSpec {
        id,
        gateway: route.gateway?,
        oif: route.oif,
        onlink: route.onlink,
    })
}

/// The metric a route added without one gets: 0 for IPv4, 1024 for IPv6 (the kernel's
/// IP6_RT_PRIO_USER). weft's routes are at it; one at another metric is someone else's.
pub fn default_metric(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

/// Whether `route` is at its family's default metric (where weft puts its routes).
pub fn at_default_metric(route: &RouteInfo) -> bool {
    route.priority == default_metric(&route.dst)
}

/// Is the kernel's `actual` route the default-metric route weft wants, `spec` itself or, with a
/// `nexthop` id, a route that points at that nexthop (whose own shape is checked apart)? A route
/// flanneld wrote (no nexthop id) is not the nexthop route, so it gets replaced.
pub fn route_matches(actual: &RouteInfo, spec: &RouteSpec, nexthop: Option<u32>) -> bool {
    at_default_metric(actual)
        && actual.dst == spec.dst
        && match nexthop {
            Some(id) => actual.nexthop_id == Some(id),
            None => actual.nexthop_id.is_none() && actual.spec() == Some(*spec),
        }
}

/// The nexthop changes that turn the kernel's `actual` nexthops into `desired`: nexthops to set
/// (with whether one with the id exists) and ids in weft's range to delete.
pub fn plan_nexthops<'a>(
    desired: impl IntoIterator<Item = &'a NexthopSpec>,
    actual: &[NexthopInfo],
) -> (Vec<(NexthopSpec, Change)>, Vec<u32>) {
    let by_id: std::collections::HashMap<u32, &NexthopInfo> = actual.iter().map(|n| (n.id, n)).collect();
    let mut wanted = std::collections::HashSet::new();
    let mut sets = Vec::new();
    for spec in desired {
        wanted.insert(spec.id);
        match by_id.get(&spec.id) {
            Some(n) if n.spec() == Some(*spec) => {}
            Some(_) => sets.push((*spec, Change::Replace)),
            None => sets.push((*spec, Change::Add)),
        }
    }
    let mut deletes: Vec<u32> = actual
        .iter()
        .map(|n| n.id)
        .filter(|id| is_weft_nexthop(*id) && !wanted.contains(id))
        .collect();
    deletes.sort_unstable();
    deletes.dedup();
    (sets, deletes)
}

/// The ids in weft's range among `actual` that no desired nexthop has: what [`plan_nexthops`]
/// deletes, and with them the routes that point at them.
pub fn stale_nexthops<'a>(
    desired: impl IntoIterator<Item = &'a NexthopSpec>,
    actual: &[NexthopInfo],
) -> std::collections::HashSet<u32> {
    let wanted: std::collections::HashSet<u32> = desired.into_iter().map(|n| n.id).collect();
    actual
        .iter()
        .map(|n| n.id)
        .filter(|id| is_weft_nexthop(*id) && !wanted.contains(id))
        .collect()
}

/// Whether this kernel has nexthop objects: decided once when a backend starts (a nexthop dump
/// answers EOPNOTSUPP or EINVAL on kernels without them), and logged.
pub async fn nexthops_usable(nl: &Netlink, backend: &str) -> bool {
    match nl.list_nexthops(None).await {
        Ok(_) => {
            tracing::info!(backend, "routes to peers go through nexthop objects");
            true
        }
        Err(e) if nexthops_unsupported(&e) => {
            tracing::info!(
                backend,
                "the kernel has no nexthop objects ({e}); using plain gateway routes"
            );
            false
        }
        Err(e) => {
            tracing::warn!(backend, "cannot list nexthops ({e}); using plain gateway routes");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ids_follow_the_subnet_index_per_family_and_map_back() {
        let v4 = net("10.5.0.0/16");
        assert_eq!(nexthop_id(v4, net("10.5.0.0/24")), Some(0x7700_0000));
        assert_eq!(nexthop_id(v4, net("10.5.2.0/24")), Some(0x7700_0002));
        assert_eq!(nexthop_id(v4, net("10.5.255.0/24")), Some(0x7700_00ff));
        assert_eq!(nexthop_id(v4, net("10.6.2.0/24")), None, "outside the network");
        assert_eq!(nexthop_id(v4, net("10.5.0.0/16")), None, "the network itself");
        let v6 = net("fd00:5::/48");
        assert_eq!(nexthop_id(v6, net("fd00:5:0:2::/64")), Some(0x7780_0002));
        for (network, subnet) in [(v4, "10.5.2.0/24"), (v4, "10.5.255.0/24"), (v6, "fd00:5:0:2::/64")] {
            let subnet = net(subnet);
            let id = nexthop_id(network, subnet).unwrap();
            assert!(is_weft_nexthop(id));
            assert_eq!(subnet_of_nexthop(network, subnet.prefix_len(), id), Some(subnet));
        }
        assert_eq!(subnet_of_nexthop(v4, 24, 0x7780_0002), None, "the other family");
        assert_eq!(subnet_of_nexthop(v4, 24, 0x7700_0100), None, "beyond the network");
        assert_eq!(subnet_of_nexthop(v4, 24, 5), None);
    }

    #[test]
    fn a_network_with_too_many_subnets_leaves_the_far_ones_without_an_id() {
        // 10.0.0.0/8 with /30 subnets: 2^22 subnets fit; a /0 with /30 has 2^30.
        assert!(nexthop_id(net("10.0.0.0/8"), net("10.255.255.252/30")).is_some());
        assert_eq!(nexthop_id(net("0.0.0.0/0"), net("200.0.0.0/30")), None);
        assert!(nexthop_id(net("0.0.0.0/0"), net("0.0.0.4/30")).is_some());
    }

    fn info(id: u32, gw: &str, oif: u32) -> NexthopInfo {
        NexthopInfo {
            id,
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            onlink: true,
            protocol: 3,
            special: false,
        }
    }

    #[test]
    fn nexthops_are_set_when_missing_or_different_and_only_weft_ids_are_deleted() {
        let want = |id, gw: &str| NexthopSpec {
            id,
            gateway: gw.parse().unwrap(),
            oif: 7,
            onlink: true,
        };
        let desired = [
            want(0x7700_0002, "10.5.2.0"),
            want(0x7700_0003, "10.5.3.0"),
            want(0x7700_0004, "10.5.4.0"),
        ];
        let actual = [
            info(0x7700_0002, "10.5.2.0", 7),
            info(0x7700_0003, "10.5.3.9", 7),
            info(0x7700_0009, "10.5.9.0", 7),
            info(12, "192.0.2.9", 3),
        ];
        let (sets, deletes) = plan_nexthops(&desired, &actual);
        assert_eq!(sets, vec![(desired[1], Change::Replace), (desired[2], Change::Add)]);
        assert_eq!(deletes, vec![0x7700_0009]);
    }

    #[test]
    fn a_plain_route_is_not_the_nexthop_route_and_the_other_way_round() {
        let spec = RouteSpec {
            dst: net("10.5.2.0/24"),
            gateway: Some("10.5.2.0".parse().unwrap()),
            oif: 7,
            onlink: true,
        };
        let mut plain = RouteInfo {
            dst: spec.dst,
            gateway: spec.gateway,
            oif: Some(7),
            onlink: true,
            nexthop_id: None,
            protocol: 3,
            scope: 0,
            priority: 0,
            pref_src: None,
            table: 254,
            kind: weft_kernel::netlink::RouteType::Unicast,
        };
        assert!(route_matches(&plain, &spec, None));
        assert!(
            !route_matches(&plain, &spec, Some(0x7700_0002)),
            "flanneld's route is replaced"
        );
        plain.nexthop_id = Some(0x7700_0002);
        assert!(route_matches(&plain, &spec, Some(0x7700_0002)));
        assert!(!route_matches(&plain, &spec, None));
        plain.priority = 100;
        assert!(!route_matches(&plain, &spec, Some(0x7700_0002)));
    }
}
