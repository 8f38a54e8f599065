//! The rtnetlink wrapper: links, IPv4 addresses, routes, neighbours and VXLAN FDB entries.
//!
//! One socket per network namespace: [`Netlink::new`] opens it in the namespace of the calling
//! thread, so a daemon that runs inside its namespace needs no `setns`. Every method is one
//! typed, idempotent kernel operation; none decides what state should exist. Errors keep the
//! errno so callers can branch on EEXIST/ENOENT.

use std::net::{IpAddr, Ipv4Addr};

use futures::StreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};

/// `RT_TABLE_MAIN`: the only table weft reads or writes.
pub(crate) const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

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
}

impl NetlinkError {
    fn kernel(op: &str, errno: i32) -> Self {
        NetlinkError::Kernel {
            op: op.to_string(),
            errno,
            message: std::io::Error::from_raw_os_error(errno).to_string(),
        }
    }

    /// The errno the kernel answered with, if this error came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
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

/// VXLAN attributes of a link, as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    /// The underlay device (`dev`), if one was given.
    pub dev_index: Option<u32>,
    pub learning: bool,
    pub gbp: bool,
}

/// A network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The link kind (`vxlan`, `bridge`, `veth`, ...); None for physical devices.
    pub kind: Option<String>,
    pub vxlan: Option<VxlanInfo>,
}

/// The VXLAN device [`Netlink::ensure_vxlan`] makes sure exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    /// Underlay device index; 0 leaves it unset.
    pub dev_index: u32,
    pub learning: bool,
    pub gbp: bool,
    pub mtu: u32,
    /// MAC to give a device that has to be created; None keeps an existing device's MAC or,
    /// for a new device, picks a random locally administered one.
    pub mac: Option<[u8; 6]>,
}

/// An IPv4 route of the main table, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    /// `rtm_protocol`: 2 kernel, 3 boot, 4 static, ...
    pub protocol: u8,
    /// `rtm_scope`: 0 universe, 253 link, 254 host.
    pub scope: u8,
    pub priority: u32,
    pub pref_src: Option<Ipv4Addr>,
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

/// A unicast IPv4 route in the main table, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
    pub onlink: bool,
}

/// An IPv4 neighbour (ARP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: Option<[u8; 6]>,
    /// NUD state bits (0x80 permanent, 0x02 reachable, ...).
    pub state: u16,
}

impl Neighbour {
    pub fn is_permanent(&self) -> bool {
        self.state & u16::from(NeighbourState::Permanent) != 0
    }
}

/// A bridge FDB entry of a device (for VXLAN: which VTEP a MAC lives behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Option<Ipv4Addr>,
    pub state: u16,
    /// NTF_SELF: the entry belongs to the device itself, not to a bridge it is a port of.
    pub is_self: bool,
}

impl FdbEntry {
    pub fn is_permanent(&self) -> bool {
        self.state & u16::from(NeighbourState::Permanent) != 0
    }
}

/// An IPv4 address on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: Ipv4Net,
}

pub use weft_core::mac::{format_mac, parse_mac};

/// A random unicast, locally administered MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        // getrandom cannot fail for 6 bytes on Linux >= 3.17; fall back to the clock anyway.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        mac.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

fn mac_from(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

/// The handle on one namespace's rtnetlink socket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace. Must be called inside a tokio
    /// runtime: the connection task is spawned on it.
    pub fn new() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Sends a delete request; an object that is already gone is success (ENOENT/ESRCH).
    async fn delete(&self, op: &str, msg: RouteNetlinkMessage) -> Result<(), NetlinkError> {
        match self.ack(op, msg, 0).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Dumps the neighbour table of `family` (Inet: ARP; Bridge: FDB) and decodes the entries
    /// of link `index` with `decode`.
    async fn list_neighbour_table<T>(
        &self,
        op: &str,
        family: AddressFamily,
        index: u32,
        decode: fn(&NeighbourMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let replies = self.query(op, RouteNetlinkMessage::GetNeighbour(msg), true).await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => decode(&n),
                _ => None,
            })
            .collect())
    }

    /// Sends a request that expects an ACK.
    async fn ack(&self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(req)
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
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(req)
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

    // ---- links ----

    async fn get_link(&self, op: &str, msg: LinkMessage) -> Result<Option<LinkInfo>, NetlinkError> {
        match self.query(op, RouteNetlinkMessage::GetLink(msg), false).await {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_info(&l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(&format!("read link {name}"), msg).await
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(&format!("read link #{index}"), msg).await
    }

    pub async fn list_links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let replies = self
            .query("list links", RouteNetlinkMessage::GetLink(LinkMessage::default()), true)
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_info(&l)),
                _ => None,
            })
            .collect())
    }

    async fn require_link(&self, op: &str, index: u32) -> Result<LinkInfo, NetlinkError> {
        self.link_by_index(index).await?.ok_or_else(|| NetlinkError::Invalid {
            op: op.to_string(),
            detail: format!("link #{index} does not exist"),
        })
    }

    async fn set_link(&self, op: &str, msg: LinkMessage) -> Result<(), NetlinkError> {
        self.ack(op, RouteNetlinkMessage::SetLink(msg), 0).await
    }

    pub async fn set_link_up(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(&format!("set link #{index} up"), msg).await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(&format!("set MTU {mtu} on link #{index}"), msg).await
    }

    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link(&format!("set MAC {} on link #{index}", format_mac(&mac)), msg)
            .await
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.delete(&format!("delete link #{index}"), RouteNetlinkMessage::DelLink(msg))
            .await
    }

    /// Makes sure a VXLAN device matching `spec` exists and returns it (not necessarily up).
    /// A device with this name but another kind, VNI, port, local address, underlay device,
    /// learning or GBP setting is deleted and created again with the same MAC.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetlinkError> {
        let op = format!("ensure VXLAN device {}", spec.name);
        let mut mac = spec.mac;
        if let Some(existing) = self.link_by_name(&spec.name).await? {
            match vxlan_mismatch(&existing, spec) {
                None => {
                    if existing.mtu != spec.mtu {
                        self.set_mtu(existing.index, spec.mtu).await?;
                    }
                    return self.require_link(&op, existing.index).await;
                }
                Some(why) => {
                    tracing::warn!(device = %spec.name, "existing device is incompatible ({why}); recreating it");
                    mac = mac.or(existing.mac);
                    self.delete_link(existing.index).await?;
                }
            }
        }
        let mac = mac.unwrap_or_else(random_mac);
        let mut builder = rtnetlink::LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .local(spec.local)
            .learning(spec.learning)
            .mtu(spec.mtu)
            .address(mac.to_vec());
        if spec.dev_index != 0 {
            builder = builder.dev(spec.dev_index);
        }
        if spec.gbp {
            builder = builder.append_info_data(InfoVxlan::Gbp);
        }
        let created = self
            .ack(
                &op,
                RouteNetlinkMessage::NewLink(builder.build()),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await;
        match created {
            Ok(()) => {}
            // Someone created it between our read and our write: adopt it if it fits.
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
        let link = self
            .link_by_name(&spec.name)
            .await?
            .ok_or_else(|| NetlinkError::Invalid {
                op: op.clone(),
                detail: "the device vanished right after it was created".into(),
            })?;
        if let Some(why) = vxlan_mismatch(&link, spec) {
            return Err(NetlinkError::Invalid {
                op,
                detail: format!("another process created an incompatible device ({why}); delete it"),
            });
        }
        Ok(link)
    }

    /// Makes sure a bridge named `name` exists with this MTU and is up.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<LinkInfo, NetlinkError> {
        let op = format!("ensure bridge {name}");
        let link = match self.link_by_name(name).await? {
            Some(link) if link.kind.as_deref() == Some("bridge") => link,
            Some(_) => {
                return Err(NetlinkError::Invalid {
                    op,
                    detail: format!("a device named {name} exists and is not a bridge; rename or delete it"),
                })
            }
            None => {
                let msg = rtnetlink::LinkBridge::new(name).mtu(mtu).build();
                match self
                    .ack(&op, RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
                    .await
                {
                    Err(e) if !e.is_exists() => return Err(e),
                    _ => {}
                }
                self.link_by_name(name).await?.ok_or_else(|| NetlinkError::Invalid {
                    op: op.clone(),
                    detail: "the bridge vanished right after it was created".into(),
                })?
            }
        };
        if link.mtu != mtu {
            self.set_mtu(link.index, mtu).await?;
        }
        if !link.up {
            self.set_link_up(link.index).await?;
        }
        self.require_link(&op, link.index).await
    }

    // ---- addresses ----

    async fn dump_addrs_v4(&self, op: &str) -> Result<Vec<AddrInfo>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.query(op, RouteNetlinkMessage::GetAddress(msg), true).await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => addr_info(&a),
                _ => None,
            })
            .collect())
    }

    pub async fn list_all_addrs_v4(&self) -> Result<Vec<AddrInfo>, NetlinkError> {
        self.dump_addrs_v4("list IPv4 addresses").await
    }

    pub async fn list_addrs_v4(&self, index: u32) -> Result<Vec<Ipv4Net>, NetlinkError> {
        let all = self
            .dump_addrs_v4(&format!("list IPv4 addresses of link #{index}"))
            .await?;
        Ok(all.into_iter().filter(|a| a.index == index).map(|a| a.addr).collect())
    }

    fn addr_message(index: u32, addr: Ipv4Net) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
        msg.attributes.push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
        if addr.prefix_len() < 31 {
            msg.attributes.push(AddressAttribute::Broadcast(addr.broadcast()));
        }
        msg
    }

    pub async fn add_addr_v4(&self, index: u32, addr: Ipv4Net) -> Result<(), NetlinkError> {
        let msg = Self::addr_message(index, addr);
        self.ack(
            &format!("add address {addr} to link #{index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Deletes an address; one that is already gone is not an error.
    pub async fn delete_addr_v4(&self, index: u32, addr: Ipv4Net) -> Result<(), NetlinkError> {
        let msg = Self::addr_message(index, addr);
        self.delete(
            &format!("delete address {addr} from link #{index}"),
            RouteNetlinkMessage::DelAddress(msg),
        )
        .await
    }

    /// Makes `addr` the only IPv4 address of the device: adds it if missing, then removes others.
    pub async fn ensure_addr_v4(&self, index: u32, addr: Ipv4Net) -> Result<(), NetlinkError> {
        let current = self.list_addrs_v4(index).await?;
        if !current.contains(&addr) {
            self.add_addr_v4(index, addr).await?;
        }
        for other in current.into_iter().filter(|a| *a != addr) {
            self.delete_addr_v4(index, other).await?;
        }
        Ok(())
    }

    // ---- routes ----

    /// The unicast IPv4 routes of the main table.
    pub async fn list_routes_v4(&self) -> Result<Vec<RouteInfo>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let replies = self
            .query("list IPv4 routes", RouteNetlinkMessage::GetRoute(msg), true)
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_info(&r),
                _ => None,
            })
            .filter(|(table, kind, _)| *table == MAIN_TABLE && *kind == RouteType::Unicast)
            .map(|(_, _, r)| r)
            .collect())
    }

    /// The route the kernel would use to reach `dst` (`ip route get`).
    pub async fn route_get_v4(&self, dst: Ipv4Addr) -> Result<Option<RouteInfo>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let op = format!("look up the route to {dst}");
        match self.query(&op, RouteNetlinkMessage::GetRoute(msg), false).await {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_info(&r).map(|(_, _, r)| r),
                _ => None,
            })),
            // ENETUNREACH / EHOSTUNREACH: no route.
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENETUNREACH || errno == libc::EHOSTUNREACH => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The output interface of the main table's default route (lowest metric first).
    pub async fn default_route_v4_oif(&self) -> Result<Option<u32>, NetlinkError> {
        let mut defaults: Vec<RouteInfo> = self
            .list_routes_v4()
            .await?
            .into_iter()
            .filter(|r| r.dst.prefix_len() == 0 && r.oif.is_some())
            .collect();
        defaults.sort_by_key(|r| r.priority);
        Ok(defaults.first().and_then(|r| r.oif))
    }

    fn route_message(spec: &RouteSpec, for_delete: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
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
            .push(RouteAttribute::Destination(RouteAddress::Inet(spec.dst.network())));
        if let Some(gw) = spec.gateway {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(spec.oif));
        msg
    }

    /// Adds the route, or replaces the main table's route to the same destination.
    pub async fn replace_route_v4(&self, spec: &RouteSpec) -> Result<(), NetlinkError> {
        let msg = Self::route_message(spec, false);
        self.ack(
            &format!("replace route {}", describe_route(spec)),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Deletes the route (at any metric); one that is already gone is not an error.
    pub async fn delete_route_v4(&self, spec: &RouteSpec) -> Result<(), NetlinkError> {
        self.delete_route_v4_at_metric(spec, 0).await
    }

    /// Deletes the route with this metric (0: the first at any metric).
    pub async fn delete_route_v4_at_metric(&self, spec: &RouteSpec, metric: u32) -> Result<(), NetlinkError> {
        let mut msg = Self::route_message(spec, true);
        if metric != 0 {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        self.delete(
            &format!("delete route {}", describe_route(spec)),
            RouteNetlinkMessage::DelRoute(msg),
        )
        .await
    }

    // ---- neighbours ----

    pub async fn list_neighbours_v4(&self, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        let op = format!("list neighbours of link #{index}");
        self.list_neighbour_table(&op, AddressFamily::Inet, index, neighbour_v4)
            .await
    }

    /// Adds or replaces a permanent neighbour entry `ip -> mac`.
    pub async fn replace_neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.ack(
            &format!("replace neighbour {ip} -> {} on link #{index}", format_mac(&mac)),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Deletes a neighbour entry; one that is already gone is not an error.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.delete(
            &format!("delete neighbour {ip} on link #{index}"),
            RouteNetlinkMessage::DelNeighbour(msg),
        )
        .await
    }

    // ---- FDB (AF_BRIDGE neighbours) ----

    /// The FDB entries of a device (for VXLAN, one per MAC and remote).
    pub async fn list_fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        let op = format!("list FDB of link #{index}");
        self.list_neighbour_table(&op, AddressFamily::Bridge, index, fdb_entry)
            .await
    }

    fn fdb_message(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        msg
    }

    /// Adds `mac -> dst` (self, permanent), replacing the remote of an existing entry for `mac`
    /// (`bridge fdb replace`).
    pub async fn replace_fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetlinkError> {
        self.ack(
            &format!("replace FDB entry {} -> {dst} on link #{index}", format_mac(&mac)),
            RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, mac, dst)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Adds one more remote for `mac` (`bridge fdb append`), as used for the all-zero MAC that
    /// floods to several VTEPs. An existing identical entry is not an error.
    pub async fn append_fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetlinkError> {
        match self
            .ack(
                &format!("append FDB entry {} -> {dst} on link #{index}", format_mac(&mac)),
                RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, mac, dst)),
                NLM_F_CREATE | NLM_F_APPEND,
            )
            .await
        {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }

    /// Deletes the remote `dst` of `mac`; one that is already gone is not an error.
    pub async fn delete_fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetlinkError> {
        self.delete(
            &format!("delete FDB entry {} -> {dst} on link #{index}", format_mac(&mac)),
            RouteNetlinkMessage::DelNeighbour(Self::fdb_message(index, mac, dst)),
        )
        .await
    }
}

/// Why an existing device cannot serve as the VXLAN device `spec` asks for, if it cannot.
fn vxlan_mismatch(link: &LinkInfo, spec: &VxlanSpec) -> Option<String> {
    let Some(v) = &link.vxlan else {
        return Some(format!(
            "kind is {}, not vxlan",
            link.kind.as_deref().unwrap_or("physical")
        ));
    };
    let want_dev = (spec.dev_index != 0).then_some(spec.dev_index);
    let mut diffs = Vec::new();
    if v.vni != spec.vni {
        diffs.push(format!("VNI {} instead of {}", v.vni, spec.vni));
    }
    if v.port != spec.port {
        diffs.push(format!("port {} instead of {}", v.port, spec.port));
    }
    if v.local != Some(spec.local) {
        diffs.push(format!("local {:?} instead of {}", v.local, spec.local));
    }
    if v.dev_index != want_dev {
        diffs.push(format!("underlay device {:?} instead of {:?}", v.dev_index, want_dev));
    }
    if v.learning != spec.learning {
        diffs.push(format!("learning {} instead of {}", v.learning, spec.learning));
    }
    if v.gbp != spec.gbp {
        diffs.push(format!("GBP {} instead of {}", v.gbp, spec.gbp));
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

fn describe_route(spec: &RouteSpec) -> String {
    let mut s = spec.dst.to_string();
    if let Some(gw) = spec.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    s.push_str(&format!(" dev #{}", spec.oif));
    if spec.onlink {
        s.push_str(" onlink");
    }
    s
}

pub(crate) fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name = name.clone(),
            LinkAttribute::Address(bytes) => info.mac = mac_from(bytes),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        NlLinkInfo::Kind(kind) => info.kind = Some(kind.to_string()),
                        NlLinkInfo::Data(InfoData::Vxlan(attrs)) => info.vxlan = Some(vxlan_info(attrs)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if info.kind.as_deref() != Some(&InfoKind::Vxlan.to_string()) {
        info.vxlan = None;
    }
    info
}

fn vxlan_info(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut v = VxlanInfo {
        vni: 0,
        port: 0,
        local: None,
        dev_index: None,
        learning: false,
        gbp: false,
    };
    for attr in attrs {
        match attr {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Port(port) => v.port = *port,
            InfoVxlan::Local(ip) if !ip.is_unspecified() => v.local = Some(*ip),
            InfoVxlan::Link(index) if *index != 0 => v.dev_index = Some(*index),
            InfoVxlan::Learning(on) => v.learning = *on,
            InfoVxlan::Gbp => v.gbp = true,
            _ => {}
        }
    }
    v
}

fn addr_info(msg: &AddressMessage) -> Option<AddrInfo> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let ip = local.or(address)?;
    Some(AddrInfo {
        index: msg.header.index,
        addr: Ipv4Net::new(ip, msg.header.prefix_len).ok()?,
    })
}

/// Returns (table, type, route) for an IPv4 route message.
pub(crate) fn route_info(msg: &RouteMessage) -> Option<(u32, RouteType, RouteInfo)> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut route = RouteInfo {
        dst: Ipv4Net::default(),
        gateway: None,
        oif: None,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(msg.header.protocol),
        scope: u8::from(msg.header.scope),
        priority: 0,
        pref_src: None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(*ip),
            RouteAttribute::Oif(index) => route.oif = Some(*index),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => route.priority = *p,
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => route.pref_src = Some(*ip),
            _ => {}
        }
    }
    route.dst = Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?;
    Some((table, msg.header.kind, route))
}

pub(crate) fn neighbour_v4(msg: &NeighbourMessage) -> Option<Neighbour> {
    let ip = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })?;
    let mac = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => mac_from(bytes),
        _ => None,
    });
    Some(Neighbour {
        ip,
        mac,
        state: u16::from(msg.header.state),
    })
}

pub(crate) fn fdb_entry(msg: &NeighbourMessage) -> Option<FdbEntry> {
    let mac = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => mac_from(bytes),
        _ => None,
    })?;
    // AF_BRIDGE messages carry NDA_DST as raw bytes: 4 of them for an IPv4 remote.
    let dst = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(bytes.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    });
    Some(FdbEntry {
        mac,
        dst,
        state: u16::from(msg.header.state),
        is_self: msg.header.flags.contains(NeighbourFlags::Own),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips() {
        let mac = parse_mac("C6:d2:32:6f:8f:44").unwrap();
        assert_eq!(format_mac(&mac), "c6:d2:32:6f:8f:44");
        for bad in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "c6:d2:32:6f:8f:4",
            "zz:d2:32:6f:8f:44",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn random_mac_is_local_unicast() {
        let mac = random_mac();
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_ne!(random_mac(), mac);
    }

    #[test]
    fn vxlan_mismatch_names_each_difference() {
        let spec = VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            local: Ipv4Addr::new(198, 51, 100, 1),
            dev_index: 2,
            learning: false,
            gbp: false,
            mtu: 1450,
            mac: None,
        };
        let mut link = LinkInfo {
            index: 5,
            name: "flannel.1".into(),
            mac: None,
            mtu: 1450,
            up: true,
            kind: Some("vxlan".into()),
            vxlan: Some(VxlanInfo {
                vni: 1,
                port: 8472,
                local: Some(Ipv4Addr::new(198, 51, 100, 1)),
                dev_index: Some(2),
                learning: false,
                gbp: false,
            }),
        };
        assert_eq!(vxlan_mismatch(&link, &spec), None);
        link.vxlan.as_mut().unwrap().vni = 2;
        link.vxlan.as_mut().unwrap().port = 4789;
        let why = vxlan_mismatch(&link, &spec).unwrap();
        assert!(why.contains("VNI 2 instead of 1") && why.contains("port 4789"), "{why}");
        link.vxlan = None;
        link.kind = Some("bridge".into());
        assert!(vxlan_mismatch(&link, &spec).unwrap().contains("bridge"));
    }
}
