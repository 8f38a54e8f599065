//! The bridge's MAC address, pinned. A Linux bridge whose address was never set takes the lowest
//! MAC of its ports and moves with them: deleting the container whose veth holds it changes the
//! gateway MAC under every other pod on the node, which then loses traffic for seconds until its
//! ARP entry is probed again. Setting the address explicitly, as the reference bridge plugin
//! does, makes the kernel mark it `NET_ADDR_SET` and stop following the ports. This module only
//! decides and sets the bridge's MAC; creating the bridge is the shared netlink wrapper's job.

use weft_kernel::netlink::{LinkInfo, Netlink};

use crate::error::CniError;

/// `addr_assign_type` of an address set by a user (linux/netdevice.h): the bridge keeps it.
pub const NET_ADDR_SET: u8 = 3;

/// Whether the bridge's MAC still has to be pinned. `assign_type` is the kernel's
/// addr_assign_type when it could be read; without it, a bridge that follows its ports shows the
/// MAC of one of them (the lowest), and a bridge without ports may still be unpinned. Pinning a
/// pinned bridge again is harmless, only not free (the kernel flushes its neighbour entries).
pub fn needs_pinning(assign_type: Option<u8>, bridge_mac: [u8; 6], port_macs: &[[u8; 6]]) -> bool {
    match assign_type {
        Some(t) => t != NET_ADDR_SET,
        None => port_macs.is_empty() || port_macs.contains(&bridge_mac),
    }
}

/// addr_assign_type from sysfs, when /sys shows this bridge: sysfs lists the devices of the
/// namespace that mounted it, which need not be ours, so the index and the MAC must match too.
fn sysfs_addr_assign_type(bridge: &LinkInfo, mac: [u8; 6]) -> Option<u8> {
    let dir = std::path::Path::new("/sys/class/net").join(&bridge.name);
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    let index: u32 = read("ifindex")?.trim().parse().ok()?;
    let address = weft_kernel::netlink::parse_mac(read("address")?.trim())?;
    if index != bridge.index || address != mac {
        return None;
    }
    read("addr_assign_type")?.trim().parse().ok()
}

/// Pins the bridge's current MAC unless it is pinned already; returns whether it set it. Must
/// run before a port is attached, so that a new bridge keeps the address it was created with.
pub async fn pin_mac(host: &Netlink, bridge: &LinkInfo) -> Result<bool, CniError> {
    let Some(mac) = bridge.mac else {
        return Ok(false);
    };
    let assign_type = sysfs_addr_assign_type(bridge, mac);
    let port_macs = if assign_type.is_some() {
        Vec::new()
    } else {
        host.list_links()
            .await?
            .into_iter()
            .filter(|l| l.master == Some(bridge.index))
            .filter_map(|l| l.mac)
            .collect()
    };
    if !needs_pinning(assign_type, mac, &port_macs) {
        return Ok(false);
    }
    host.set_mac(bridge.index, mac).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_is_pinned_unless_the_kernel_says_it_is_or_its_mac_is_none_of_its_ports() {
        let (br, low, high) = ([0x6e, 0, 0, 0, 0, 9], [0x02, 0, 0, 0, 0, 1], [0x9a, 0, 0, 0, 0, 1]);
        assert!(!needs_pinning(Some(NET_ADDR_SET), br, &[]));
        assert!(needs_pinning(Some(1), br, &[low]), "random (a new bridge)");
        assert!(needs_pinning(Some(0), low, &[low, high]), "following its ports");
        // Without sysfs: a bridge with no ports, or one showing a port's MAC, may follow them.
        assert!(needs_pinning(None, br, &[]));
        assert!(needs_pinning(None, low, &[low, high]));
        assert!(
            !needs_pinning(None, br, &[low, high]),
            "a MAC of no port was set by someone"
        );
    }
}
