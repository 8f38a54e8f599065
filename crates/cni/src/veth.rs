//! The veth pair: created in one request with the container end placed straight into the
//! container's namespace, named and sized, and the host end attached to the bridge and up (the
//! container end cannot come up in that request: the caller brings it up inside). The host end's
//! name is derived from the container, so DEL and GC find it without the container's namespace.

use std::os::fd::BorrowedFd;

use weft_kernel::netlink::{Netlink, VethSpec};

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

/// Creates the pair: `host_name` on bridge `bridge_index` and up, `container_name` in `netns`.
/// EEXIST (either name taken) is reported as such.
pub async fn create(
    host: &Netlink,
    host_name: &str,
    container_name: &str,
    mtu: u32,
    bridge_index: u32,
    netns: BorrowedFd<'_>,
) -> Result<(), CniError> {
    let spec = VethSpec {
        name: host_name,
        peer_name: container_name,
        mtu,
        master: Some(bridge_index),
        up: true,
        peer_netns: Some(netns),
    };
    host.create_veth(&spec).await.map_err(|e| {
        if e.is_exists() {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "create veth {host_name} <-> {container_name}: an interface with one of these names already \
                     exists (was ADD run twice for this container and interface?)"
                ),
            )
        } else {
            e.into()
        }
    })
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
