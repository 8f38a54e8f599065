//! The lab's topology is built with iproute2 (`ip`): acceptable in a test tool, never in the
//! product. Every call goes through [`run`], whose error names the command and its stderr.

use std::process::{Command, Output};

use super::error::{LabError, Result};

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

/// `ip -n <ns> <args>`: the same, inside a named network namespace.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

pub fn netns_add(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
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
    std::path::Path::new("/run/netns").join(ns).exists()
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
    let mtu = mtu.to_string();
    ip_in(
        ns_a,
        &[
            "link", "add", name_a, "mtu", &mtu, "type", "veth", "peer", "name", name_b, "mtu", &mtu, "netns", ns_b,
        ],
    )?;
    ip_in(ns_a, &["link", "set", name_a, "up"])?;
    ip_in(ns_b, &["link", "set", name_b, "up"])?;
    Ok(())
}

/// A bridge with one address and a fixed MAC ([`bridge_mac`]), brought up. A bridge created
/// without an address takes the lowest MAC of its ports and changes it when one goes, which cuts
/// the pods behind it off until their ARP entries are probed again; one given an address keeps it.
pub fn bridge(ns: &str, name: &str, address: &str, mtu: Option<u32>) -> Result<()> {
    ip_in(
        ns,
        &["link", "add", name, "address", &bridge_mac(ns, name), "type", "bridge"],
    )?;
    if let Some(mtu) = mtu {
        ip_in(ns, &["link", "set", name, "mtu", &mtu.to_string()])?;
    }
    ip_in(ns, &["addr", "add", address, "dev", name])?;
    ip_in(ns, &["link", "set", name, "up"])?;
    Ok(())
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
    ip_in(ns, &["link", "set", port, "master", bridge]).map(|_| ())
}

pub fn add_address(ns: &str, dev: &str, address: &str) -> Result<()> {
    ip_in(ns, &["addr", "add", address, "dev", dev]).map(|_| ())
}

pub fn default_route(ns: &str, via: &str) -> Result<()> {
    ip_in(ns, &["route", "replace", "default", "via", via]).map(|_| ())
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
