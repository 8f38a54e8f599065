//! Routes of the main table, IPv4 and IPv6, and route lookups (`ip route get`, with or without
//! `fibmatch`). A route either carries its own gateway and device or points at a nexthop object
//! (`nhid`); read back, both show the gateway, device and onlink flag they forward by.

use std::net::IpAddr;

use ipnet::IpNet;
pub use netlink_packet_route::route::RouteType;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};

use super::{dump_family, family_of, AddrFamily, Netlink, NetlinkError};

/// `RT_TABLE_MAIN`: the only table weft writes.
pub(crate) const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A route, as read back. For a route that points at a nexthop object, `gateway`, `oif` and
/// `onlink` are the nexthop's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    /// `RTA_NH_ID`: the nexthop object the route points at, if it does.
    pub nexthop_id: Option<u32>,
    /// `rtm_protocol`: 2 kernel, 3 boot, 4 static, ...
    pub protocol: u8,
    /// `rtm_scope`: 0 universe, 253 link, 254 host.
    pub scope: u8,
    /// The metric. IPv6 routes always have one: the kernel gives 1024 to a route added without.
    pub priority: u32,
    pub pref_src: Option<IpAddr>,
    /// The routing table (254 main, 255 local).
    pub table: u32,
    /// `rtm_type`: unicast, local, blackhole, unreachable, prohibit, ...
    pub kind: RouteType,
}

impl RouteInfo {
    /// The route as a [`RouteSpec`], if it has an output interface.
    pub fn spec(&self) -> Option<RouteSpec> {
        Some(RouteSpec {
            dst: self.dst,
            gateway: self.gateway,
            oif: self.oif?,
            onlink: self.onlink,
        })
    }
}

/// A unicast route in the main table, as written. The gateway is of the destination's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub onlink: bool,
}

impl std::fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev #{}", self.oif)?;
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

impl Netlink {
    /// The unicast routes of the main table, of `family` (None: both).
    pub async fn list_routes(&self, family: Option<AddrFamily>) -> Result<Vec<RouteInfo>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = dump_family(family);
        let replies = self
            .query("list routes", RouteNetlinkMessage::GetRoute(msg), true)
            .await?;
        let mut routes: Vec<RouteInfo> = replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_info(&r),
                _ => None,
            })
            .filter(|r| r.table == MAIN_TABLE && r.kind == RouteType::Unicast)
            .filter(|r| super::in_family(&r.dst, family))
            .collect();
        self.resolve_nexthops(&mut routes).await?;
        Ok(routes)
    }

    /// Fills in the gateway, device and onlink flag of routes that point at a nexthop object
    /// and came without them (`net.ipv4.nexthop_compat_mode` = 0): one nexthop dump, only then.
    pub async fn resolve_nexthops(&self, routes: &mut [RouteInfo]) -> Result<(), NetlinkError> {
        if !routes.iter().any(|r| r.nexthop_id.is_some() && r.oif.is_none()) {
            return Ok(());
        }
        let nexthops: std::collections::HashMap<u32, super::NexthopInfo> =
            self.list_nexthops(None).await?.into_iter().map(|n| (n.id, n)).collect();
        for route in routes.iter_mut().filter(|r| r.oif.is_none()) {
            if let Some(nh) = route.nexthop_id.and_then(|id| nexthops.get(&id)) {
                route.gateway = nh.gateway;
                route.oif = nh.oif;
                route.onlink = nh.onlink;
            }
        }
        Ok(())
    }

    async fn lookup(&self, dst: IpAddr, flags: RouteFlags) -> Result<Option<RouteInfo>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(&dst);
        msg.header.destination_prefix_length = IpNet::from(dst).max_prefix_len();
        msg.header.flags = flags;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let op = format!("look up the route to {dst}");
        match self.query(&op, RouteNetlinkMessage::GetRoute(msg), false).await {
            Ok(replies) => {
                let mut found: Vec<RouteInfo> = replies
                    .into_iter()
                    .find_map(|m| match m {
                        RouteNetlinkMessage::NewRoute(r) => route_info(&r),
                        _ => None,
                    })
                    .into_iter()
                    .collect();
                self.resolve_nexthops(&mut found).await?;
                Ok(found.pop())
            }
            // ENETUNREACH / EHOSTUNREACH: no route.
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENETUNREACH || errno == libc::EHOSTUNREACH => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The route the kernel would use to reach `dst` (`ip route get`): its destination is `dst`
    /// itself, with the gateway, device and preferred source the lookup chose.
    pub async fn route_get(&self, dst: IpAddr) -> Result<Option<RouteInfo>, NetlinkError> {
        self.lookup(dst, RouteFlags::empty()).await
    }

    /// The routing entry a lookup of `dst` matches, from any table (`ip route get fibmatch`):
    /// its destination prefix, table and type as installed.
    pub async fn route_fib_match(&self, dst: IpAddr) -> Result<Option<RouteInfo>, NetlinkError> {
        self.lookup(dst, RouteFlags::FibMatch).await
    }

    /// The output interface of the main table's default route of `family` (lowest metric first).
    pub async fn default_route_oif(&self, family: AddrFamily) -> Result<Option<u32>, NetlinkError> {
        let mut defaults: Vec<RouteInfo> = self
            .list_routes(Some(family))
            .await?
            .into_iter()
            .filter(|r| r.dst.prefix_len() == 0 && r.oif.is_some())
            .collect();
        defaults.sort_by_key(|r| r.priority);
        Ok(defaults.first().and_then(|r| r.oif))
    }

    pub(super) fn route_message(spec: &RouteSpec, for_delete: bool) -> Result<RouteMessage, NetlinkError> {
        if let Some(gw) = spec.gateway {
            if family_of(&gw) != family_of(&spec.dst.addr()) {
                return Err(NetlinkError::invalid(
                    &format!("route {spec}"),
                    "the gateway is not of the destination's address family",
                ));
            }
        }
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(&spec.dst.addr());
        msg.header.destination_prefix_length = spec.dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        if for_delete {
            // Match any scope and protocol, like `ip route del`.
            msg.header.scope = RouteScope::NoWhere;
        } else {
            msg.header.protocol = RouteProtocol::Boot;
            msg.header.scope = if spec.gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            };
            msg.header.kind = RouteType::Unicast;
        }
        if spec.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(spec.dst.network())));
        if let Some(gw) = spec.gateway {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(spec.oif));
        Ok(msg)
    }

    /// Adds the route, or replaces the main table's route to the same destination (for IPv6:
    /// at the same metric).
    pub async fn replace_route(&self, spec: &RouteSpec) -> Result<(), NetlinkError> {
        let msg = Self::route_message(spec, false)?;
        self.ack(
            &format!("replace route {spec}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    pub(super) fn nexthop_route_message(dst: IpNet, nexthop: u32, for_delete: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(&dst.addr());
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        if for_delete {
            msg.header.scope = RouteScope::NoWhere;
        } else {
            msg.header.protocol = RouteProtocol::Boot;
            msg.header.scope = RouteScope::Universe;
            msg.header.kind = RouteType::Unicast;
        }
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.network())));
        msg.attributes.push(RouteAttribute::NhId(nexthop));
        msg
    }

    /// Adds the route `dst nhid <nexthop>`, or replaces the main table's route to the same
    /// destination (a plain one included: the switch leaves no moment without a route). The
    /// nexthop must exist.
    pub async fn replace_route_via_nexthop(&self, dst: IpNet, nexthop: u32) -> Result<(), NetlinkError> {
        let msg = Self::nexthop_route_message(dst, nexthop, false);
        self.ack(
            &format!("replace route {dst} nhid {nexthop}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Deletes the route `dst nhid <nexthop>` with this metric (0: at any metric). A route that
    /// points at a nexthop is only matched by its nexthop id, never by a gateway and device.
    pub async fn delete_route_via_nexthop(&self, dst: IpNet, nexthop: u32, metric: u32) -> Result<(), NetlinkError> {
        let mut msg = Self::nexthop_route_message(dst, nexthop, true);
        if metric != 0 {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        self.delete(
            &format!("delete route {dst} nhid {nexthop}"),
            RouteNetlinkMessage::DelRoute(msg),
        )
        .await
    }

    /// Deletes the main table's first route to `dst`, whatever it points at (`ip route del
    /// <dst>`); one that is already gone is not an error.
    pub async fn delete_route_to(&self, dst: IpNet) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(&dst.addr());
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.scope = RouteScope::NoWhere;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.network())));
        self.delete(&format!("delete route {dst}"), RouteNetlinkMessage::DelRoute(msg))
            .await
    }

    /// Deletes the route (at any metric); one that is already gone is not an error. A route
    /// that points at a nexthop object is not matched by a gateway and device: use
    /// [`Netlink::delete_route_via_nexthop`] or [`Netlink::delete_route_to`].
    pub async fn delete_route(&self, spec: &RouteSpec) -> Result<(), NetlinkError> {
        self.delete_route_at_metric(spec, 0).await
    }

    /// Deletes the route with this metric (0: the first at any metric).
    pub async fn delete_route_at_metric(&self, spec: &RouteSpec, metric: u32) -> Result<(), NetlinkError> {
        let mut msg = Self::route_message(spec, true)?;
        if metric != 0 {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        self.delete(&format!("delete route {spec}"), RouteNetlinkMessage::DelRoute(msg))
            .await
    }
}

fn route_addr(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// The route an IPv4 or IPv6 route message describes.
pub(crate) fn route_info(msg: &RouteMessage) -> Option<RouteInfo> {
    let unspecified: IpAddr = match msg.header.address_family {
        AddressFamily::Inet => std::net::Ipv4Addr::UNSPECIFIED.into(),
        AddressFamily::Inet6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
        _ => return None,
    };
    let mut dst = unspecified;
    let mut route = RouteInfo {
        dst: IpNet::from(unspecified),
        gateway: None,
        oif: None,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        nexthop_id: None,
        protocol: u8::from(msg.header.protocol),
        scope: u8::from(msg.header.scope),
        priority: 0,
        pref_src: None,
        table: u32::from(msg.header.table),
        kind: msg.header.kind,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_addr(a).unwrap_or(dst),
            RouteAttribute::Gateway(a) => route.gateway = route_addr(a),
            RouteAttribute::Oif(index) => route.oif = Some(*index),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Priority(p) => route.priority = *p,
            RouteAttribute::PrefSource(a) => route.pref_src = route_addr(a),
            RouteAttribute::NhId(id) => route.nexthop_id = Some(*id),
            _ => {}
        }
    }
    route.dst = IpNet::new(dst, msg.header.destination_prefix_length).ok()?;
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dst: &str, gw: Option<&str>) -> RouteSpec {
        RouteSpec {
            dst: dst.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: 7,
            onlink: true,
        }
    }

    #[test]
    fn a_route_message_reads_back_as_the_route_it_was_built_from() {
        for s in [
            spec("10.5.2.0/24", Some("10.5.2.0")),
            spec("fd00:5:2::/64", Some("fd00:5:2::")),
            spec("fd00:5:3::/64", None),
        ] {
            let msg = Netlink::route_message(&s, false).unwrap();
            let back = route_info(&msg).unwrap();
            assert_eq!(back.spec(), Some(s), "{s}");
            assert_eq!((back.table, back.kind), (MAIN_TABLE, RouteType::Unicast));
        }
    }

    #[test]
    fn a_nexthop_route_reads_back_with_its_nexthop_id() {
        for dst in ["10.5.2.0/24", "fd00:5:2::/64"] {
            let dst: IpNet = dst.parse().unwrap();
            let back = route_info(&Netlink::nexthop_route_message(dst, 0x7700_0002, false)).unwrap();
            assert_eq!((back.dst, back.nexthop_id, back.oif), (dst, Some(0x7700_0002), None));
        }
    }

    #[test]
    fn a_gateway_of_the_other_family_is_refused_before_sending() {
        let e = Netlink::route_message(&spec("fd00:5:2::/64", Some("10.5.2.0")), false).unwrap_err();
        assert!(e.to_string().contains("fd00:5:2::/64 via 10.5.2.0"), "{e}");
    }
}
