//! Neighbour entries (ARP for IPv4, NDP for IPv6) and bridge FDB entries (AF_BRIDGE neighbours:
//! for a VXLAN device, which VTEP a MAC lives behind, over an IPv4 or an IPv6 underlay).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};

use super::{dump_family, family_of, format_mac, mac_from, AddrFamily, Netlink, NetlinkError};

/// A neighbour (ARP or NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
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
    /// The remote VTEP: IPv4 or IPv6, as the device's underlay.
    pub dst: Option<IpAddr>,
    pub state: u16,
    /// NTF_SELF: the entry belongs to the device itself, not to a bridge it is a port of.
    pub is_self: bool,
}

impl FdbEntry {
    pub fn is_permanent(&self) -> bool {
        self.state & u16::from(NeighbourState::Permanent) != 0
    }
}

impl Netlink {
    /// Dumps the neighbour table of `family` (Inet/Inet6: ARP/NDP, Unspec: both; Bridge: FDB)
    /// and decodes the entries of link `index` with `decode`.
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

    /// The neighbour entries of link `index`, of `family` (None: ARP and NDP).
    pub async fn list_neighbours(
        &self,
        index: u32,
        family: Option<AddrFamily>,
    ) -> Result<Vec<Neighbour>, NetlinkError> {
        let op = format!("list neighbours of link #{index}");
        self.list_neighbour_table(&op, dump_family(family), index, neighbour)
            .await
    }

    /// A neighbour message: permanent `ip -> mac` to set, or (no MAC) `ip` to delete.
    pub(super) fn neighbour_message(index: u32, ip: IpAddr, mac: Option<[u8; 6]>) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family_of(&ip);
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        if let Some(mac) = mac {
            msg.header.state = NeighbourState::Permanent;
            msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        msg
    }

    /// Adds or replaces a permanent neighbour entry `ip -> mac`.
    pub async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let msg = Self::neighbour_message(index, ip, Some(mac));
        self.ack(
            &format!("replace neighbour {ip} -> {} on link #{index}", format_mac(&mac)),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Deletes a neighbour entry; one that is already gone is not an error.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let msg = Self::neighbour_message(index, ip, None);
        self.delete(
            &format!("delete neighbour {ip} on link #{index}"),
            RouteNetlinkMessage::DelNeighbour(msg),
        )
        .await
    }

    /// The FDB entries of a device (for VXLAN, one per MAC and remote).
    pub async fn list_fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        let op = format!("list FDB of link #{index}");
        self.list_neighbour_table(&op, AddressFamily::Bridge, index, fdb_entry)
            .await
    }

    pub(super) fn fdb_message(index: u32, mac: [u8; 6], dst: IpAddr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        // NDA_DST of 4 or 16 bytes: the kernel tells the families apart by the length.
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
        msg
    }

    /// Adds `mac -> dst` (self, permanent), replacing the remote of an existing entry for `mac`
    /// (`bridge fdb replace`).
    pub async fn replace_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError> {
        self.ack(
            &format!("replace FDB entry {} -> {dst} on link #{index}", format_mac(&mac)),
            RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, mac, dst)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Adds one more remote for `mac` (`bridge fdb append`), as used for the all-zero MAC that
    /// floods to several VTEPs. An existing identical entry is not an error.
    pub async fn append_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError> {
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
    pub async fn delete_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError> {
        self.delete(
            &format!("delete FDB entry {} -> {dst} on link #{index}", format_mac(&mac)),
            RouteNetlinkMessage::DelNeighbour(Self::fdb_message(index, mac, dst)),
        )
        .await
    }
}

/// The ARP or NDP entry a neighbour message describes.
pub(crate) fn neighbour(msg: &NeighbourMessage) -> Option<Neighbour> {
    let ip = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
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

/// The FDB entry an AF_BRIDGE neighbour message describes.
pub(crate) fn fdb_entry(msg: &NeighbourMessage) -> Option<FdbEntry> {
    let mac = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => mac_from(bytes),
        _ => None,
    })?;
    // AF_BRIDGE messages carry NDA_DST as raw bytes: 4 for an IPv4 remote, 16 for an IPv6 one.
    let dst = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice())
                .ok()
                .map(|b| Ipv4Addr::from(b).into()),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(|b| Ipv6Addr::from(b).into()),
            _ => None,
        },
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
    use rtnetlink::packet_core::{Emitable, Parseable};

    /// The message as the kernel would read it: emitted, then parsed again.
    fn wire(msg: &NeighbourMessage) -> NeighbourMessage {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        NeighbourMessage::parse(buf.as_slice()).unwrap()
    }

    #[test]
    fn fdb_destinations_of_both_families_cross_the_wire() {
        let mac = [0x02, 0, 0, 0, 0, 0x0b];
        for dst in ["198.51.100.2", "2001:db8::2"] {
            let dst: IpAddr = dst.parse().unwrap();
            let msg = wire(&Netlink::fdb_message(7, mac, dst));
            let entry = fdb_entry(&msg).unwrap();
            assert_eq!((entry.mac, entry.dst), (mac, Some(dst)));
            assert!(entry.is_permanent() && entry.is_self);
        }
    }
}
