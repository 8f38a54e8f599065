//! Nexthop objects (`ip nexthop`, RTM_NEWNEXTHOP/RTM_DELNEXTHOP/RTM_GETNEXTHOP): a gateway and a
//! device with an id that routes point at (`RTA_NH_ID`) instead of carrying their own gateway.
//! The kernel shares one fib entry per nexthop, so thousands of per-peer routes cost what one
//! does, where thousands of routes with their own gateways make the fib_info insert quadratic.
//!
//! netlink-packet-route has no nexthop messages, so this file builds and parses them itself
//! (`struct nhmsg` and its attributes from `linux/nexthop.h`) and sends them on a second
//! rtnetlink socket of the same namespace, opened beside the route socket.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_core::{
    DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::proto::{Connection, ConnectionHandle};
use rtnetlink::sys::SocketAddr;

use super::{family_of, AddrFamily, Netlink, NetlinkError};

pub(crate) const RTM_NEWNEXTHOP: u16 = 104;
pub(crate) const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_FDB: u16 = 11;

/// `RTNH_F_ONLINK`, the one flag userspace may set on a nexthop.
const RTNH_F_ONLINK: u32 = 4;
/// `RTPROT_BOOT`, the protocol weft's routes carry too.
const RTPROT_BOOT: u8 = 3;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
/// `struct nhmsg`: family, scope, protocol, reserved, flags (u32).
const NHMSG_LEN: usize = 8;

/// A single gateway nexthop, as written and as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexthopSpec {
    pub id: u32,
    pub gateway: IpAddr,
    pub oif: u32,
    pub onlink: bool,
}

impl fmt::Display for NexthopSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nexthop id {} via {} dev #{}", self.id, self.gateway, self.oif)?;
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

/// A nexthop read back: a single gateway or device nexthop, or one weft never writes (a group,
/// a blackhole, an FDB nexthop), kept so an id in use is still seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexthopInfo {
    pub id: u32,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
    /// A group, blackhole or FDB nexthop: nothing weft's routes would point at.
    pub special: bool,
}

impl NexthopInfo {
    /// The nexthop as a [`NexthopSpec`], if it is a plain gateway nexthop on a device.
    pub fn spec(&self) -> Option<NexthopSpec> {
        if self.special {
            return None;
        }
        Some(NexthopSpec {
            id: self.id,
            gateway: self.gateway?,
            oif: self.oif?,
            onlink: self.onlink,
        })
    }
}

/// One nexthop message: the `nhmsg` header and raw attributes (type, value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexthopMessage {
    kind: u16,
    family: u8,
    protocol: u8,
    flags: u32,
    attributes: Vec<(u16, Vec<u8>)>,
}

impl NexthopMessage {
    fn new(kind: u16, family: u8) -> Self {
        NexthopMessage {
            kind,
            family,
            protocol: 0,
            flags: 0,
            attributes: Vec::new(),
        }
    }

    fn with(mut self, kind: u16, value: Vec<u8>) -> Self {
        self.attributes.push((kind, value));
        self
    }

    /// Whether this is a notification or reply about a nexthop that now exists (vs. one deleted).
    pub(crate) fn is_deleted(&self) -> bool {
        self.kind == RTM_DELNEXTHOP
    }

    pub(crate) fn is_nexthop(&self) -> bool {
        matches!(self.kind, RTM_NEWNEXTHOP | RTM_DELNEXTHOP)
    }

    /// The nexthop the message describes.
    pub(crate) fn info(&self) -> Option<NexthopInfo> {
        let mut info = NexthopInfo {
            id: 0,
            gateway: None,
            oif: None,
            onlink: self.flags & RTNH_F_ONLINK != 0,
            protocol: self.protocol,
            special: false,
        };
        for (kind, value) in &self.attributes {
            match *kind {
                NHA_ID => info.id = u32::from_ne_bytes(value.as_slice().try_into().ok()?),
                NHA_OIF => info.oif = Some(u32::from_ne_bytes(value.as_slice().try_into().ok()?)),
                NHA_GATEWAY => {
                    info.gateway = match value.len() {
                        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value.as_slice()).ok()?))),
                        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(value.as_slice()).ok()?))),
                        _ => None,
                    }
                }
                NHA_GROUP | NHA_BLACKHOLE | NHA_FDB => info.special = true,
                _ => {}
            }
        }
        (info.id != 0).then_some(info)
    }
}

/// Attributes are 4-byte aligned.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

impl NetlinkSerializable for NexthopMessage {
    fn message_type(&self) -> u16 {
        self.kind
    }

    fn buffer_len(&self) -> usize {
        NHMSG_LEN + self.attributes.iter().map(|(_, v)| align(4 + v.len())).sum::<usize>()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer.fill(0);
        buffer[0] = self.family;
        buffer[2] = self.protocol;
        buffer[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        let mut at = NHMSG_LEN;
        for (kind, value) in &self.attributes {
            let len = 4 + value.len();
            buffer[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
            buffer[at + 2..at + 4].copy_from_slice(&kind.to_ne_bytes());
            buffer[at + 4..at + len].copy_from_slice(value);
            at += align(len);
        }
    }
}

impl NetlinkDeserializable for NexthopMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() < NHMSG_LEN {
            return Err(DecodeError::from(format!(
                "nexthop message of {} bytes is shorter than struct nhmsg",
                payload.len()
            )));
        }
        let mut msg = NexthopMessage {
            kind: header.message_type,
            family: payload[0],
            protocol: payload[2],
            flags: u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes")),
            attributes: Vec::new(),
        };
        let mut rest = &payload[NHMSG_LEN..];
        while rest.len() >= 4 {
            let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
            // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the type's top bits.
            let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
            if len < 4 || len > rest.len() {
                return Err(DecodeError::from(format!(
                    "nexthop attribute {kind} has a bad length {len}"
                )));
            }
            msg.attributes.push((kind, rest[4..len].to_vec()));
            rest = &rest[align(len).min(rest.len())..];
        }
        Ok(msg)
    }
}

/// A connection for nexthop messages on a new rtnetlink socket of the calling thread's
/// namespace.
#[allow(clippy::type_complexity)]
pub(crate) fn new_nexthop_connection() -> Result<
    (
        Connection<NexthopMessage>,
        ConnectionHandle<NexthopMessage>,
        futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<NexthopMessage>, SocketAddr)>,
    ),
    NetlinkError,
> {
    rtnetlink::proto::new_connection(rtnetlink::sys::protocols::NETLINK_ROUTE).map_err(NetlinkError::Socket)
}

fn gateway_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn nexthop_family(ip: &IpAddr) -> u8 {
    match family_of(ip) {
        netlink_packet_route::AddressFamily::Inet => AF_INET,
        _ => AF_INET6,
    }
}

/// Does the kernel lack nexthop objects (older than 5.3, or built without them)?
pub fn is_unsupported(e: &NetlinkError) -> bool {
    matches!(e.errno(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL))
}

impl Netlink {
    /// Sends one nexthop request and collects what comes back (dump parts or nothing), or the
    /// kernel's errno.
    async fn nexthop_request(
        &self,
        op: &str,
        msg: NexthopMessage,
        flags: u16,
    ) -> Result<Vec<NexthopMessage>, NetlinkError> {
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        req.finalize();
        req.header.flags = NLM_F_REQUEST | flags;
        super::replies(op, &self.nexthops, req).await
    }

    pub(super) fn nexthop_message(spec: &NexthopSpec) -> NexthopMessage {
        let mut msg = NexthopMessage::new(RTM_NEWNEXTHOP, nexthop_family(&spec.gateway))
            .with(NHA_ID, spec.id.to_ne_bytes().to_vec())
            .with(NHA_OIF, spec.oif.to_ne_bytes().to_vec())
            .with(NHA_GATEWAY, gateway_bytes(&spec.gateway));
        msg.protocol = RTPROT_BOOT;
        if spec.onlink {
            msg.flags = RTNH_F_ONLINK;
        }
        msg
    }

    pub(super) fn nexthop_delete_message(id: u32) -> NexthopMessage {
        NexthopMessage::new(RTM_DELNEXTHOP, 0).with(NHA_ID, id.to_ne_bytes().to_vec())
    }

    /// Creates the nexthop, or replaces the one with the same id (routes that point at it
    /// follow at once, with no moment without a path).
    pub async fn replace_nexthop(&self, spec: &NexthopSpec) -> Result<(), NetlinkError> {
        let op = format!("replace {spec}");
        self.nexthop_request(
            &op,
            Self::nexthop_message(spec),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map(drop)
    }

    /// Creates the nexthop; EEXIST when its id is taken.
    pub async fn add_nexthop(&self, spec: &NexthopSpec) -> Result<(), NetlinkError> {
        let op = format!("add {spec}");
        self.nexthop_request(&op, Self::nexthop_message(spec), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .await
            .map(drop)
    }

    /// Deletes the nexthop with this id, and with it every route that points at it; one that
    /// is already gone is not an error.
    pub async fn delete_nexthop(&self, id: u32) -> Result<(), NetlinkError> {
        let msg = Self::nexthop_delete_message(id);
        match self
            .nexthop_request(&format!("delete nexthop id {id}"), msg, NLM_F_ACK)
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// The nexthops of `family` (None: both, and groups). EOPNOTSUPP or EINVAL (see
    /// [`is_unsupported`]) when the kernel has no nexthop objects.
    pub async fn list_nexthops(&self, family: Option<AddrFamily>) -> Result<Vec<NexthopInfo>, NetlinkError> {
        let nh_family = match family {
            Some(AddrFamily::Ipv4) => AF_INET,
            Some(AddrFamily::Ipv6) => AF_INET6,
            None => 0,
        };
        let msg = NexthopMessage::new(RTM_GETNEXTHOP, nh_family);
        let replies = self.nexthop_request("list nexthops", msg, NLM_F_DUMP).await?;
        Ok(replies
            .iter()
            .filter(|m| m.is_nexthop() && !m.is_deleted())
            .filter_map(NexthopMessage::info)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: &NexthopMessage) -> NexthopMessage {
        let mut buf = vec![0xff; msg.buffer_len()];
        msg.serialize(&mut buf);
        let mut header = NetlinkHeader::default();
        header.message_type = msg.message_type();
        NexthopMessage::deserialize(&header, &buf).unwrap()
    }

    #[test]
    fn a_nexthop_message_reads_back_as_the_nexthop_it_was_built_from() {
        for spec in [
            NexthopSpec {
                id: 0x7700_0002,
                gateway: "10.5.2.0".parse().unwrap(),
                oif: 7,
                onlink: true,
            },
            NexthopSpec {
                id: 0x7780_0003,
                gateway: "fd00:5:3::".parse().unwrap(),
                oif: 9,
                onlink: false,
            },
        ] {
            let msg = Netlink::nexthop_message(&spec);
            let back = roundtrip(&msg);
            assert_eq!(back, msg);
            assert_eq!(back.info().unwrap().spec(), Some(spec), "{spec}");
        }
    }

    #[test]
    fn groups_and_blackholes_are_not_gateway_nexthops() {
        let msg = NexthopMessage::new(RTM_NEWNEXTHOP, 0)
            .with(NHA_ID, 5u32.to_ne_bytes().to_vec())
            .with(NHA_BLACKHOLE, Vec::new());
        let info = roundtrip(&msg).info().unwrap();
        assert!(info.special);
        assert_eq!(info.spec(), None);
    }

    #[test]
    fn a_truncated_attribute_is_refused() {
        let header = NetlinkHeader::default();
        let mut buf = vec![0u8; NHMSG_LEN + 4];
        buf[NHMSG_LEN..NHMSG_LEN + 2].copy_from_slice(&8u16.to_ne_bytes());
        assert!(NexthopMessage::deserialize(&header, &buf).is_err());
    }
}
