//! The two kernel reads the trace needs and `weft_kernel::netlink::Netlink` does not offer: the
//! routing entry a lookup matches (`ip route get fibmatch`, with its table) and which bridge
//! each device is a port of. One rtnetlink socket in the calling thread's namespace.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::StreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};

use crate::facts::{FibRoute, Lookup};

const ENETUNREACH: i32 = 101;
const EHOSTUNREACH: i32 = 113;

pub struct Rtnl {
    handle: rtnetlink::Handle,
}

impl Rtnl {
    /// Opens the socket; must run inside a tokio runtime.
    pub fn new() -> std::io::Result<Rtnl> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Rtnl { handle })
    }

    async fn query(&self, msg: RouteNetlinkMessage, dump: bool) -> Result<Vec<RouteNetlinkMessage>, i32> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        let mut handle = self.handle.clone();
        let mut replies = handle.request(req).map_err(|_| -1)?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(-code.get());
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The routing entry the kernel uses for `dst` (RTM_F_FIB_MATCH), from any table.
    pub async fn fib_match(&self, dst: Ipv4Addr) -> Lookup {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.header.flags = RouteFlags::FibMatch;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        match self.query(RouteNetlinkMessage::GetRoute(msg), false).await {
            Ok(replies) => replies
                .into_iter()
                .find_map(|m| match m {
                    RouteNetlinkMessage::NewRoute(r) => fib_route(&r),
                    _ => None,
                })
                .map(Lookup::Found)
                .unwrap_or(Lookup::NoRoute),
            Err(ENETUNREACH) | Err(EHOSTUNREACH) => Lookup::NoRoute,
            Err(errno) => Lookup::Failed(format!(
                "route lookup for {dst}: {}",
                std::io::Error::from_raw_os_error(errno)
            )),
        }
    }

    /// device index -> index of the bridge it is a port of.
    pub async fn masters(&self) -> Result<BTreeMap<u32, u32>, String> {
        let replies = self
            .query(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)
            .await
            .map_err(|errno| format!("list links: {}", std::io::Error::from_raw_os_error(errno)))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Controller(master) => Some((l.header.index, *master)),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }
}

fn fib_route(msg: &RouteMessage) -> Option<FibRoute> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = Some(u32::from(msg.header.table)).filter(|t| *t != 0);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = Some(*t),
            _ => {}
        }
    }
    let kind = match msg.header.kind {
        RouteType::Unicast => "unicast".to_string(),
        RouteType::Local => "local".to_string(),
        RouteType::BlackHole => "blackhole".to_string(),
        RouteType::Unreachable => "unreachable".to_string(),
        RouteType::Prohibit => "prohibit".to_string(),
        other => format!("{other:?}").to_lowercase(),
    };
    Some(FibRoute {
        dst: Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        table,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        kind,
    })
}
