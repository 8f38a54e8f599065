//! Addresses of devices, IPv4 and IPv6.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};

use super::{dump_family, family_of, in_family, AddrFamily, Netlink, NetlinkError};

/// An address on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: IpNet,
}

/// An IPv6 link-local address (fe80::/10): the kernel gives every device one and manages it.
fn is_ipv6_link_local(addr: &IpNet) -> bool {
    matches!(addr, IpNet::V6(net) if net.addr().is_unicast_link_local())
}

impl Netlink {
    async fn dump_addrs(&self, op: &str, family: Option<AddrFamily>) -> Result<Vec<AddrInfo>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = dump_family(family);
        let replies = self.query(op, RouteNetlinkMessage::GetAddress(msg), true).await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => addr_info(&a),
                _ => None,
            })
            .filter(|a| in_family(&a.addr, family))
            .collect())
    }

    /// The addresses of every device, of `family` (None: both).
    pub async fn list_addrs(&self, family: Option<AddrFamily>) -> Result<Vec<AddrInfo>, NetlinkError> {
        self.dump_addrs(&format!("list {} addresses", family_name(family)), family)
            .await
    }

    /// The addresses of link `index`, of `family` (None: both).
    pub async fn list_link_addrs(&self, index: u32, family: Option<AddrFamily>) -> Result<Vec<IpNet>, NetlinkError> {
        let op = format!("list {} addresses of link #{index}", family_name(family));
        let all = self.dump_addrs(&op, family).await?;
        Ok(all.into_iter().filter(|a| a.index == index).map(|a| a.addr).collect())
    }

    fn addr_message(index: u32, addr: IpNet) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(&addr.addr());
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        if let IpNet::V4(net) = addr {
            if net.prefix_len() < 31 {
                msg.attributes.push(AddressAttribute::Broadcast(net.broadcast()));
            }
        }
        msg
    }

    pub async fn add_addr(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let msg = Self::addr_message(index, addr);
        self.ack(
            &format!("add address {addr} to link #{index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Adds `addr` with IFA_F_NODAD: an IPv6 address is usable at once instead of staying
    /// tentative through duplicate address detection (for addresses an allocator already made
    /// unique, such as a pod's or its gateway's; hairpin ports would also echo DAD probes).
    pub async fn add_addr_nodad(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let mut msg = Self::addr_message(index, addr);
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.ack(
            &format!("add address {addr} (nodad) to link #{index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Deletes an address; one that is already gone is not an error.
    pub async fn delete_addr(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let msg = Self::addr_message(index, addr);
        self.delete(
            &format!("delete address {addr} from link #{index}"),
            RouteNetlinkMessage::DelAddress(msg),
        )
        .await
    }

    /// Makes `addr` the only address of its family on the device (IPv6 link-local addresses,
    /// which the kernel manages, stay): adds it if missing, then removes the others.
    pub async fn ensure_addr(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let current = self.list_link_addrs(index, Some(AddrFamily::of(&addr))).await?;
        if !current.contains(&addr) {
            self.add_addr(index, addr).await?;
        }
        for other in current.into_iter().filter(|a| *a != addr && !is_ipv6_link_local(a)) {
            self.delete_addr(index, other).await?;
        }
        Ok(())
    }
}

fn family_name(family: Option<AddrFamily>) -> &'static str {
    match family {
        Some(AddrFamily::Ipv4) => "IPv4",
        Some(AddrFamily::Ipv6) => "IPv6",
        None => "IP",
    }
}

fn addr_info(msg: &AddressMessage) -> Option<AddrInfo> {
    if !matches!(msg.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links
    // (IPv6 addresses usually carry IFA_ADDRESS alone).
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip: IpAddr = local.or(address)?;
    Some(AddrInfo {
        index: msg.header.index,
        addr: IpNet::new(ip, msg.header.prefix_len).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_family_and_a_broadcast_only_for_ipv4() {
        let v4 = Netlink::addr_message(3, "10.5.1.0/24".parse().unwrap());
        assert_eq!(v4.header.family, AddressFamily::Inet);
        assert!(v4
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(b) if b.to_string() == "10.5.1.255")));
        let v6 = Netlink::addr_message(3, "fd00:5:1::/128".parse().unwrap());
        assert_eq!((v6.header.family, v6.header.prefix_len), (AddressFamily::Inet6, 128));
        assert!(!v6
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
        // Read back, the message is the address it was built from.
        assert_eq!(
            addr_info(&v6).map(|a| a.addr.to_string()),
            Some("fd00:5:1::/128".into())
        );
    }
}
