//! The veth pair: created in one request with the container end placed straight into the
//! container's namespace (IFLA_NET_NS_FD), named and sized, and the host end attached to the
//! bridge and up. (The container end cannot come up in that request: a veth refuses to open
//! before its peer is registered, ENOTCONN; the caller brings it up inside.) Also the bridge
//! port's hairpin mode and the MACs of a bridge's ports. Uses rtnetlink directly because the
//! shared wrapper has no veth, netns-fd or bridge-port operation.

use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::error::{CniError, ErrorCode};

/// Host-side name of a container interface's veth: stable, so DEL and GC find it without the
/// container's namespace.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across builds and Rust versions, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("veth{:08x}", (hash ^ (hash >> 32)) as u32)
}

fn rtnl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The parameters of one pair.
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub container_name: &'a str,
    pub mtu: u32,
    pub bridge_index: u32,
    pub netns: BorrowedFd<'a>,
}

/// A raw rtnetlink handle in the plugin's (the host's) namespace.
pub struct VethHandle {
    handle: rtnetlink::Handle,
}

impl VethHandle {
    /// Must be called inside a tokio runtime.
    pub fn new() -> Result<Self, CniError> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::new(ErrorCode::Kernel, format!("cannot open a netlink socket: {e}")))?;
        tokio::spawn(connection);
        Ok(VethHandle { handle })
    }

    /// Creates the pair. EEXIST (either name taken) is reported as such.
    pub async fn create(&self, spec: &VethSpec<'_>) -> Result<(), CniError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.container_name)
            .mtu(spec.mtu)
            .setns_by_fd(spec.netns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(spec.host_name, spec.container_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(spec.mtu)
            .controller(spec.bridge_index)
            .up()
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            if rtnl_errno(&e) == Some(libc::EEXIST) {
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!(
                        "create veth {} <-> {}: an interface with one of these names already exists \
                         (was ADD run twice for this container and interface?)",
                        spec.host_name, spec.container_name
                    ),
                )
            } else {
                CniError::kernel(format!("create veth {} <-> {}", spec.host_name, spec.container_name), e)
            }
        })
    }

    /// The MACs of the ports of bridge `bridge_index` (the shared wrapper reports no controller).
    pub async fn port_macs(&self, bridge_index: u32) -> Result<Vec<[u8; 6]>, CniError> {
        let mut links = self.handle.link().get().execute();
        let mut macs = Vec::new();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(|e| CniError::kernel(format!("list the ports of bridge #{bridge_index}"), e))?
        {
            let port_of_bridge = msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge_index));
            let mac = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            });
            if let (true, Some(mac)) = (port_of_bridge, mac) {
                macs.push(mac);
            }
        }
        Ok(macs)
    }

    /// `ip link set <port> type bridge_slave hairpin on|off`.
    pub async fn set_hairpin(&self, port_index: u32, on: bool) -> Result<(), CniError> {
        let msg = LinkBridgePort::new(port_index).hairpin(on).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| CniError::kernel(format!("set hairpin mode on bridge port #{port_index}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 12);
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
    }
}
