//! Links: reading devices, their MTU, MAC and up state, and the devices weft creates: the VXLAN
//! device (over an IPv4 or an IPv6 underlay), the pod bridge and its ports, veth pairs (one end
//! straight into another namespace) and dummy devices.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::{LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::{format_mac, mac_from, Netlink, NetlinkError};

/// VXLAN attributes of a link, as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    /// IFLA_VXLAN_LOCAL or IFLA_VXLAN_LOCAL6.
    pub local: Option<IpAddr>,
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
    /// IFLA_MASTER: the bridge (or VRF) this device is a port of.
    pub master: Option<u32>,
    pub vxlan: Option<VxlanInfo>,
}

/// The VXLAN device [`Netlink::ensure_vxlan`] makes sure exists. The family of `local` is the
/// underlay's: an IPv6 `local` makes a VXLAN-over-IPv6 device (IFLA_VXLAN_LOCAL6), whose FDB
/// destinations are IPv6 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    /// Underlay device index; 0 leaves it unset.
    pub dev_index: u32,
    pub learning: bool,
    pub gbp: bool,
    pub mtu: u32,
    /// MAC to give a device that has to be created; None keeps an existing device's MAC or,
    /// for a new device, picks a random locally administered one.
    pub mac: Option<[u8; 6]>,
}

/// A veth pair [`Netlink::create_veth`] creates.
#[derive(Debug)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub peer_name: &'a str,
    pub mtu: u32,
    /// The bridge the first end becomes a port of (IFLA_MASTER), if any.
    pub master: Option<u32>,
    /// Bring the first end up in the same request.
    pub up: bool,
    /// The namespace the peer is created in (IFLA_NET_NS_FD); None keeps it in the socket's.
    pub peer_netns: Option<BorrowedFd<'a>>,
}

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

impl Netlink {
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

    /// The link named `name`; Invalid (naming `op`) when there is none.
    pub async fn require_link_named(&self, op: &str, name: &str) -> Result<LinkInfo, NetlinkError> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::invalid(op, format!("there is no link named {name}")))
    }

    async fn require_link(&self, op: &str, index: u32) -> Result<LinkInfo, NetlinkError> {
        self.link_by_index(index)
            .await?
            .ok_or_else(|| NetlinkError::invalid(op, format!("link #{index} does not exist")))
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

    /// Makes link `index` a port of bridge `master` (`ip link set <port> master <bridge>`).
    pub async fn set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Controller(master));
        self.set_link(&format!("attach link #{index} to bridge #{master}"), msg)
            .await
    }

    /// `ip link set <port> type bridge_slave hairpin on|off`.
    pub async fn set_hairpin(&self, port_index: u32, on: bool) -> Result<(), NetlinkError> {
        let msg = LinkBridgePort::new(port_index).hairpin(on).build();
        self.ack(
            &format!("set hairpin mode on bridge port #{port_index}"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .await
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.delete(&format!("delete link #{index}"), RouteNetlinkMessage::DelLink(msg))
            .await
    }

    /// Sends a create request (NLM_F_EXCL); EEXIST is returned as such.
    async fn create_link(&self, op: &str, msg: LinkMessage) -> Result<(), NetlinkError> {
        self.ack(op, RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .await
    }

    /// Creates a veth pair, the peer straight in `spec.peer_netns` when given (named and sized
    /// there; it cannot come up in this request: a veth refuses to open before its peer is
    /// registered, ENOTCONN). EEXIST (either name taken) is returned as such.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name)
            .mtu(spec.mtu);
        if let Some(ns) = spec.peer_netns {
            peer = peer.setns_by_fd(ns.as_raw_fd());
        }
        let mut builder = LinkVeth::new(spec.name, spec.peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .mtu(spec.mtu);
        if let Some(master) = spec.master {
            builder = builder.controller(master);
        }
        if spec.up {
            builder = builder.up();
        }
        let op = format!("create veth {} <-> {}", spec.name, spec.peer_name);
        self.create_link(&op, builder.build()).await
    }

    /// Creates a dummy device (`ip link add <name> type dummy`); EEXIST is returned as such.
    pub async fn create_dummy(&self, name: &str) -> Result<(), NetlinkError> {
        let msg = rtnetlink::LinkDummy::new(name).build();
        self.create_link(&format!("create dummy device {name}"), msg).await
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
            .learning(spec.learning)
            .mtu(spec.mtu)
            .address(mac.to_vec());
        builder = match spec.local {
            IpAddr::V4(ip) => builder.local(ip),
            IpAddr::V6(ip) => builder.local6(ip),
        };
        if spec.dev_index != 0 {
            builder = builder.dev(spec.dev_index);
        }
        if spec.gbp {
            builder = builder.append_info_data(InfoVxlan::Gbp);
        }
        match self.create_link(&op, builder.build()).await {
            Ok(()) => {}
            // Someone created it between our read and our write: adopt it if it fits.
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
        let link = self
            .link_by_name(&spec.name)
            .await?
            .ok_or_else(|| NetlinkError::invalid(&op, "the device vanished right after it was created"))?;
        if let Some(why) = vxlan_mismatch(&link, spec) {
            return Err(NetlinkError::invalid(
                &op,
                format!("another process created an incompatible device ({why}); delete it"),
            ));
        }
        Ok(link)
    }

    /// Makes sure a bridge named `name` exists with this MTU and is up.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<LinkInfo, NetlinkError> {
        let op = format!("ensure bridge {name}");
        let link = match self.link_by_name(name).await? {
            Some(link) if link.kind.as_deref() == Some("bridge") => link,
            Some(_) => {
                return Err(NetlinkError::invalid(
                    &op,
                    format!("a device named {name} exists and is not a bridge; rename or delete it"),
                ))
            }
            None => {
                let msg = rtnetlink::LinkBridge::new(name).mtu(mtu).build();
                match self.create_link(&op, msg).await {
                    Err(e) if !e.is_exists() => return Err(e),
                    _ => {}
                }
                self.link_by_name(name)
                    .await?
                    .ok_or_else(|| NetlinkError::invalid(&op, "the bridge vanished right after it was created"))?
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

pub(crate) fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        master: None,
        vxlan: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name = name.clone(),
            LinkAttribute::Address(bytes) => info.mac = mac_from(bytes),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::Controller(master) if *master != 0 => info.master = Some(*master),
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
            InfoVxlan::Local(ip) if !ip.is_unspecified() => v.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) if !ip.is_unspecified() => v.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(index) if *index != 0 => v.dev_index = Some(*index),
            InfoVxlan::Learning(on) => v.learning = *on,
            InfoVxlan::Gbp => v.gbp = true,
            _ => {}
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_mac_is_local_unicast() {
        let mac = random_mac();
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_ne!(random_mac(), mac);
    }

    fn spec(local: &str) -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            local: local.parse().unwrap(),
            dev_index: 2,
            learning: false,
            gbp: false,
            mtu: 1450,
            mac: None,
        }
    }

    /// The device `spec(local)` asks for, as the kernel reports it.
    fn link(local: &str) -> LinkInfo {
        LinkInfo {
            index: 5,
            name: "flannel.1".into(),
            mac: None,
            mtu: 1450,
            up: true,
            kind: Some("vxlan".into()),
            master: None,
            vxlan: Some(VxlanInfo {
                vni: 1,
                port: 8472,
                local: Some(local.parse().unwrap()),
                dev_index: Some(2),
                learning: false,
                gbp: false,
            }),
        }
    }

    #[test]
    fn vxlan_mismatch_names_each_difference() {
        let spec = spec("198.51.100.1");
        let mut link = link("198.51.100.1");
        assert_eq!(vxlan_mismatch(&link, &spec), None);
        link.vxlan.as_mut().unwrap().vni = 2;
        link.vxlan.as_mut().unwrap().port = 4789;
        let why = vxlan_mismatch(&link, &spec).unwrap();
        assert!(why.contains("VNI 2 instead of 1") && why.contains("port 4789"), "{why}");
        link.vxlan = None;
        link.kind = Some("bridge".into());
        assert!(vxlan_mismatch(&link, &spec).unwrap().contains("bridge"));
    }

    #[test]
    fn an_ipv6_local_is_read_back_and_compared_as_such() {
        let v = vxlan_info(&[
            InfoVxlan::Id(1),
            InfoVxlan::Local(std::net::Ipv4Addr::UNSPECIFIED),
            InfoVxlan::Local6("2001:db8::1".parse().unwrap()),
        ]);
        assert_eq!(v.local, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(vxlan_mismatch(&link("2001:db8::1"), &spec("2001:db8::1")), None);
        let why = vxlan_mismatch(&link("2001:db8::1"), &spec("198.51.100.1")).unwrap();
        assert!(
            why.contains("2001:db8::1") && why.contains("instead of 198.51.100.1"),
            "{why}"
        );
    }
}
