//! Kernel change notifications: the rtnetlink multicast groups for links, IPv4 and IPv6 routes,
//! neighbours (ARP, NDP and FDB) and nexthop objects (on a second socket: netlink-packet-route
//! cannot decode them). Deleting a nexthop deletes the IPv4 routes that point at it without a
//! route notification, so the nexthop's own is the only sign. What anyone changes in those tables, weft included, arrives here
//! as it happens, so a backend can repair an entry someone deleted without re-reading the
//! tables. It only reports; it decides and changes nothing.

use futures::StreamExt;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

use crate::netlink::{
    fdb_entry, link_info, neighbour, new_nexthop_connection, route_info, FdbEntry, LinkInfo, Neighbour, NetlinkError,
    NexthopInfo, NexthopMessage, RouteInfo, RouteType, MAIN_TABLE,
};

/// The receive buffer asked for, so a burst (weft programming tens of thousands of entries, or
/// a device deleted with them) is not lost: forced past net.core.rmem_max when the process may
/// (CAP_NET_ADMIN), else as large as rmem_max allows. A limit, not an allocation.
const RECEIVE_BUFFER: usize = 64 << 20;

/// Asks for [`RECEIVE_BUFFER`] on a notification socket.
fn enlarge_receive_buffer(socket: &rtnetlink::sys::Socket, what: &str) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the socket outlives this call, and the fd is only borrowed for it.
    let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    let size = RECEIVE_BUFFER;
    if nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &size).is_ok() {
        return;
    }
    if let Err(e) = socket.set_rx_buf_sz(RECEIVE_BUFFER) {
        tracing::debug!("kernel notifications: cannot enlarge the {what} receive buffer: {e}");
    }
}

/// One change in a kernel table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    LinkChanged(LinkInfo),
    LinkGone(LinkInfo),
    /// A unicast route of the main table (IPv4 or IPv6).
    RouteAdded(RouteInfo),
    RouteGone(RouteInfo),
    NeighbourChanged {
        index: u32,
        neighbour: Neighbour,
    },
    NeighbourGone {
        index: u32,
        neighbour: Neighbour,
    },
    FdbChanged {
        index: u32,
        entry: FdbEntry,
    },
    FdbGone {
        index: u32,
        entry: FdbEntry,
    },
    /// A nexthop object was added or replaced.
    NexthopChanged(NexthopInfo),
    /// A nexthop object was deleted, and with it every route that pointed at it.
    NexthopGone(NexthopInfo),
    /// Notifications were lost (the receive buffer overflowed): compare everything again.
    Overrun,
}

/// Subscribes, in the calling thread's network namespace, to link, route (IPv4 and IPv6),
/// neighbour and nexthop changes. Must be called inside a tokio runtime. The stream ends when the socket fails (events
/// may then have been missed: the caller should compare everything once more).
pub fn subscribe() -> Result<mpsc::UnboundedReceiver<KernelEvent>, NetlinkError> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ];
    let (mut connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&groups).map_err(NetlinkError::Socket)?;
    use rtnetlink::sys::AsyncSocket;
    enlarge_receive_buffer(connection.socket_mut().socket_mut(), "link, route and neighbour");
    tokio::spawn(connection);
    let (tx, rx) = mpsc::unbounded_channel();
    subscribe_nexthops(tx.clone())?;
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let event = match msg.payload {
                NetlinkPayload::InnerMessage(msg) => decode(msg),
                // The socket's buffer filled up: changes were lost and only a full comparison
                // can tell which.
                NetlinkPayload::Overrun(_) => Some(KernelEvent::Overrun),
                _ => None,
            };
            if let Some(event) = event {
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// `RTNLGRP_NEXTHOP`: above 31, so joined with NETLINK_ADD_MEMBERSHIP rather than at bind.
const RTNLGRP_NEXTHOP: u32 = 32;

/// Nexthop notifications, into the same channel as the others. A kernel without nexthop
/// objects still lets the socket join the group; it then never says anything.
fn subscribe_nexthops(tx: mpsc::UnboundedSender<KernelEvent>) -> Result<(), NetlinkError> {
    let (mut connection, _handle, mut messages) = new_nexthop_connection()?;
    use rtnetlink::sys::AsyncSocket;
    let socket = connection.socket_mut().socket_mut();
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    if let Err(e) = socket.add_membership(RTNLGRP_NEXTHOP) {
        tracing::debug!("kernel notifications: cannot join the nexthop group: {e}");
        return Ok(());
    }
    enlarge_receive_buffer(socket, "nexthop");
    tokio::spawn(connection);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let event = match msg.payload {
                NetlinkPayload::InnerMessage(msg) => decode_nexthop(&msg),
                NetlinkPayload::Overrun(_) => Some(KernelEvent::Overrun),
                _ => None,
            };
            if let Some(event) = event {
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    });
    Ok(())
}

/// The event a nexthop notification reports.
pub fn decode_nexthop(msg: &NexthopMessage) -> Option<KernelEvent> {
    if !msg.is_nexthop() {
        return None;
    }
    let info = msg.info()?;
    Some(if msg.is_deleted() {
        KernelEvent::NexthopGone(info)
    } else {
        KernelEvent::NexthopChanged(info)
    })
}

/// The event a notification reports, if it is one weft cares about.
pub fn decode(msg: RouteNetlinkMessage) -> Option<KernelEvent> {
    let route = |m| route_info(m).filter(|r| r.table == MAIN_TABLE && r.kind == RouteType::Unicast);
    Some(match msg {
        RouteNetlinkMessage::NewLink(l) => KernelEvent::LinkChanged(link_info(&l)),
        RouteNetlinkMessage::DelLink(l) => KernelEvent::LinkGone(link_info(&l)),
        RouteNetlinkMessage::NewRoute(r) => KernelEvent::RouteAdded(route(&r)?),
        RouteNetlinkMessage::DelRoute(r) => KernelEvent::RouteGone(route(&r)?),
        RouteNetlinkMessage::NewNeighbour(n) => neighbour_event(&n, false)?,
        RouteNetlinkMessage::DelNeighbour(n) => neighbour_event(&n, true)?,
        _ => return None,
    })
}

fn neighbour_event(n: &NeighbourMessage, gone: bool) -> Option<KernelEvent> {
    let index = n.header.ifindex;
    match n.header.family {
        AddressFamily::Inet | AddressFamily::Inet6 => {
            let neighbour = neighbour(n)?;
            Some(if gone {
                KernelEvent::NeighbourGone { index, neighbour }
            } else {
                KernelEvent::NeighbourChanged { index, neighbour }
            })
        }
        AddressFamily::Bridge => {
            let entry = fdb_entry(n)?;
            Some(if gone {
                KernelEvent::FdbGone { index, entry }
            } else {
                KernelEvent::FdbChanged { index, entry }
            })
        }
        _ => None,
    }
}
