//! The rtnetlink wrapper: links, addresses, routes, neighbours and FDB entries, and network
//! namespaces, and nexthop objects, for IPv4 and IPv6 alike (`IpAddr`/`IpNet` throughout).
//!
//! One handle per network namespace: [`Netlink::new`] opens its sockets (one for the messages
//! netlink-packet-route knows, one for nexthop messages) in the namespace of the calling thread, so a daemon that runs inside its namespace needs no `setns`; [`Netlink::new_in`]
//! opens one inside another namespace from a short-lived thread. Every method is one typed,
//! idempotent kernel operation; none decides what state should exist. Errors keep the errno so
//! callers can branch on EEXIST/ENOENT. This file holds the handle and the request, ACK and dump
//! plumbing; each object family has its own file.

mod addresses;
mod batch;
mod links;
mod namespaces;
mod neighbours;
mod nexthops;
mod routes;

use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use rtnetlink::sys::SocketAddr;

pub use self::addresses::AddrInfo;
pub use self::batch::Batch;
pub use self::links::{random_mac, LinkInfo, VethSpec, VxlanInfo, VxlanSpec};
pub use self::namespaces::{block_on_in_netns, in_netns, netns_path};
pub use self::neighbours::{FdbEntry, Neighbour};
pub use self::nexthops::{is_unsupported as nexthops_unsupported, NexthopInfo, NexthopMessage, NexthopSpec};
pub use self::routes::{RouteInfo, RouteSpec, RouteType};
pub use weft_core::mac::{format_mac, parse_mac};
/// The address family a listing is restricted to (`None` in a listing: both).
pub use weft_core::masq::AddrFamily;

pub(crate) use self::links::link_info;
pub(crate) use self::neighbours::{fdb_entry, neighbour};
pub(crate) use self::nexthops::new_nexthop_connection;
pub(crate) use self::routes::{route_info, MAIN_TABLE};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}; weftd needs CAP_NET_ADMIN")]
    Socket(#[source] std::io::Error),
    #[error("{op}: {message} (errno {errno})")]
    Kernel { op: String, errno: i32, message: String },
    #[error("{op}: the netlink connection is closed; restart weftd")]
    Closed { op: String },
    #[error("{op}: unexpected netlink reply: {detail}")]
    Unexpected { op: String, detail: String },
    #[error("{op}: {detail}")]
    Invalid { op: String, detail: String },
    /// `setns` into a network namespace failed (EINVAL: not a network namespace; EPERM: no
    /// CAP_SYS_ADMIN).
    #[error("cannot enter the network namespace: {message} (errno {errno})")]
    EnterNetns { errno: i32, message: String },
}

impl NetlinkError {
    fn kernel(op: &str, errno: i32) -> Self {
        NetlinkError::Kernel {
            op: op.to_string(),
            errno,
            message: std::io::Error::from_raw_os_error(errno).to_string(),
        }
    }

    fn invalid(op: &str, detail: impl Into<String>) -> Self {
        NetlinkError::Invalid {
            op: op.to_string(),
            detail: detail.into(),
        }
    }

    /// The errno the kernel answered with (to a request or to `setns`), if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } | NetlinkError::EnterNetns { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object (link, address, route, entry) does not exist: ENOENT, ENODEV, ESRCH or
    /// EADDRNOTAVAIL, depending on which table was asked.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }
}

/// The family of an address, as netlink numbers it.
fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The netlink family a dump asks for: one family, or AF_UNSPEC (both) for `None`.
fn dump_family(family: Option<AddrFamily>) -> AddressFamily {
    match family {
        Some(AddrFamily::Ipv4) => AddressFamily::Inet,
        Some(AddrFamily::Ipv6) => AddressFamily::Inet6,
        None => AddressFamily::Unspec,
    }
}

/// Whether an entry of `net` belongs to a listing restricted to `family`.
fn in_family(net: &IpNet, family: Option<AddrFamily>) -> bool {
    family.is_none_or(|f| AddrFamily::of(net) == f)
}

fn mac_from(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

/// The ACKs of a batch of requests wait in the socket's receive buffer until read: room for
/// several batches in flight (forced past net.core.rmem_max when the process may).
const REQUEST_RECEIVE_BUFFER: usize = 4 << 20;

fn enlarge_receive_buffer(socket: &rtnetlink::sys::Socket) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the socket outlives this call, and the fd is only borrowed for it.
    let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    let size = REQUEST_RECEIVE_BUFFER;
    if nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &size).is_err() {
        let _ = socket.set_rx_buf_sz(REQUEST_RECEIVE_BUFFER);
    }
}

/// The handle on one namespace's rtnetlink socket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::proto::ConnectionHandle<RouteNetlinkMessage>,
    /// Nexthop messages, which netlink-packet-route cannot decode, go on their own socket.
    nexthops: rtnetlink::proto::ConnectionHandle<NexthopMessage>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace. Must be called inside a tokio
    /// runtime: the connection task is spawned on it.
    pub fn new() -> Result<Self, NetlinkError> {
        use rtnetlink::sys::AsyncSocket;
        let (mut connection, handle, _) =
            rtnetlink::proto::new_connection(rtnetlink::sys::protocols::NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        enlarge_receive_buffer(connection.socket_mut().socket_mut());
        // A batch matches answers to changes by position: successes must reach it too.
        connection.set_forward_ack(true);
        tokio::spawn(connection);
        let (mut connection, nexthops, _) = new_nexthop_connection()?;
        enlarge_receive_buffer(connection.socket_mut().socket_mut());
        connection.set_forward_ack(true);
        tokio::spawn(connection);
        Ok(Netlink { handle, nexthops })
    }

    /// Sends a delete request; an object that is already gone is success (ENOENT/ESRCH).
    async fn delete(&self, op: &str, msg: RouteNetlinkMessage) -> Result<(), NetlinkError> {
        match self.ack(op, msg, 0).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Sends a request that expects an ACK.
    async fn ack(&self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut replies = self
            .handle
            .request(req, SocketAddr::new(0, 0))
            .map_err(|_| NetlinkError::Closed { op: op.to_string() })?;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(e) = reply.payload {
                if let Some(code) = e.code {
                    return Err(NetlinkError::kernel(op, -code.get()));
                }
            }
        }
        Ok(())
    }

    /// Sends a request (a dump when `dump`) and collects the replies.
    async fn query(
        &self,
        op: &str,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        replies(op, &self.handle, req).await
    }
}

/// Sends one request on `handle` and collects the messages of its answer; an error answer is
/// the kernel's errno, kept. Shared by the route socket and the nexthop socket.
async fn replies<T: std::fmt::Debug>(
    op: &str,
    handle: &rtnetlink::proto::ConnectionHandle<T>,
    req: NetlinkMessage<T>,
) -> Result<Vec<T>, NetlinkError> {
    let mut replies = handle
        .request(req, SocketAddr::new(0, 0))
        .map_err(|_| NetlinkError::Closed { op: op.to_string() })?;
    let mut out = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(m) => out.push(m),
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Err(NetlinkError::kernel(op, -code.get()));
                }
            }
            NetlinkPayload::Done(_) | NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
            other => {
                return Err(NetlinkError::Unexpected {
                    op: op.to_string(),
                    detail: format!("{other:?}"),
                })
            }
        }
    }
    Ok(out)
}
