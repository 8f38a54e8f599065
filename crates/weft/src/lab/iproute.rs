//! The lab's topology: devices, addresses and routes inside the lab's namespaces through weft's
//! kernel wrapper (the same one weftd and weft-cni use); the namespaces themselves with iproute2
//! (`ip netns add/delete`, see [`netns_add`]). Also the command runner every lab command goes
//! through ([`run`]), whose error names the command and its stderr.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::{Command, Output};

use ipnet::IpNet;
use weft_kernel::netlink::{parse_mac, NetlinkError, RouteSpec, VethSpec};

use super::error::{LabError, Result};
use super::netns::{netns_path, with_netlink};

/// A bridge's MTU when none is asked for: the kernel's default.
const DEFAULT_MTU: u32 = 1500;

/// Runs a program to completion; fails with the command line and stderr unless it exits 0.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = output(program, args)?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: command_line(program, args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a program to completion and returns its output whatever the exit status.
pub fn output(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command_line(program, args),
            source,
        })
}

pub fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// `ip netns add <ns>`, then `lo` up inside. Named namespaces stay iproute2's business: one is
/// a bind mount under /run/netns with shared propagation, which `ip` sets up as every other tool
/// expects (the product never creates one).
pub fn netns_add(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    with_netlink(ns, |nl| async move {
        let lo = nl.require_link_named("bring lo up", "lo").await?;
        nl.set_link_up(lo.index).await
    })
}

/// Deletes a named namespace; a namespace that is already gone is success.
pub fn netns_delete(ns: &str) -> Result<()> {
    if !netns_exists(ns) {
        return Ok(());
    }
    match ip(&["netns", "delete", ns]) {
        Err(_) if !netns_exists(ns) => Ok(()),
        other => other.map(|_| ()),
    }
}

pub fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// Names of all named network namespaces (the files under /run/netns).
pub fn netns_list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    names
}

/// A veth pair whose ends live in two (possibly equal) namespaces, both brought up.
pub fn veth_pair(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str, mtu: u32) -> Result<()> {
    let path_b = netns_path(ns_b);
    let file_b = File::open(&path_b).map_err(|e| LabError::io("opening network namespace", &path_b, e))?;
    with_netlink(ns_a, |nl| async move {
        let spec = VethSpec {
            name: name_a,
            peer_name: name_b,
            mtu,
            master: None,
            up: true,
            peer_netns: Some(file_b.as_fd()),
        };
        nl.create_veth(&spec).await
    })?;
    link_up(ns_b, name_b)
}

/// A dummy device (`ip link add <name> type dummy`), down.
pub fn dummy(ns: &str, name: &str) -> Result<()> {
    with_netlink(ns, |nl| async move { nl.create_dummy(name).await })
}

pub fn link_up(ns: &str, name: &str) -> Result<()> {
    with_netlink(ns, |nl| async move {
        let link = nl.require_link_named("bring a link up", name).await?;
        nl.set_link_up(link.index).await
    })
}

/// A bridge with a fixed MAC ([`bridge_mac`]) and the address given, brought up. A bridge created
/// without a fixed MAC takes the lowest MAC of its ports and changes it when one goes, which cuts
/// the pods behind it off until their ARP entries are probed again; one given an address keeps it.
/// Without `mtu` it has the default 1500 until a port with a smaller one joins.
pub fn bridge(ns: &str, name: &str, address: Option<IpNet>, mtu: Option<u32>) -> Result<()> {
    let mac = parse_mac(&bridge_mac(ns, name)).expect("bridge_mac formats a MAC");
    with_netlink(ns, |nl| async move {
        let bridge = nl.ensure_bridge(name, mtu.unwrap_or(DEFAULT_MTU)).await?;
        nl.set_mac(bridge.index, mac).await?;
        match address {
            Some(address) => nl.add_addr(bridge.index, address).await,
            None => Ok(()),
        }
    })
}

/// The MAC of bridge `name` in namespace `ns`: locally administered, unicast, and stable for the
/// same lab (FNV-1a of the names), so two hosts' bridges differ.
pub fn bridge_mac(ns: &str, name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ns.bytes().chain([b'/']).chain(name.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&hash.to_be_bytes()[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn set_master(ns: &str, port: &str, bridge: &str) -> Result<()> {
    with_netlink(ns, |nl| async move {
        let op = format!("attach {port} to bridge {bridge}");
        let port = nl.require_link_named(&op, port).await?;
        let bridge = nl.require_link_named(&op, bridge).await?;
        nl.set_master(port.index, bridge.index).await
    })
}

/// Adds an address; an IPv6 one without duplicate address detection (every lab address is
/// unique by construction, and a tentative address would delay the lab's first packets).
pub fn add_address(ns: &str, dev: &str, address: IpNet) -> Result<()> {
    with_netlink(ns, |nl| async move {
        let link = nl.require_link_named(&format!("add address {address}"), dev).await?;
        match address {
            IpNet::V4(_) => nl.add_addr(link.index, address).await,
            IpNet::V6(_) => nl.add_addr_nodad(link.index, address).await,
        }
    })
}

/// `ip route replace default via <via>`: through the device that reaches `via`.
pub fn default_route(ns: &str, via: IpAddr) -> Result<()> {
    with_netlink(ns, |nl| async move {
        let op = format!("default route via {via}");
        let to_gateway = nl.route_get(via).await?;
        let oif = to_gateway.and_then(|r| r.oif).ok_or_else(|| NetlinkError::Invalid {
            op: op.clone(),
            detail: format!("no device reaches {via}"),
        })?;
        let default = IpNet::new(via, 0).expect("a /0 is valid").trunc();
        nl.replace_route(&RouteSpec {
            dst: default,
            gateway: Some(via),
            oif,
            onlink: false,
        })
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_macs_are_local_unicast_stable_and_per_host() {
        let mac = bridge_mac("wl-weft-h1", "cni0");
        assert_eq!(mac, bridge_mac("wl-weft-h1", "cni0"));
        assert_ne!(mac, bridge_mac("wl-weft-h2", "cni0"));
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "{mac}: locally administered unicast");
        assert_eq!(mac.len(), 17);
    }
}
