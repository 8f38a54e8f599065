//! The lab's network picture, built with iproute2:
//! - switch namespace `wl-<name>-sw`: bridge `br0` (198.51.100.254/24, the underlay and etcd's
//!   address) with one port `h<i>` per host, and `inet0` (a dummy device, or a veth when the
//!   kernel has no dummy module) holding 203.0.113.1/24, standing for the internet. It routes but
//!   never NATs.
//! - host namespace `wl-<name>-h<i>`: `eth0` `198.51.100.<i>/24`, default route via the switch.
//!   What arrives on a host's `eth0` is processed on that host's own CPU (CPU `(i - 1) mod
//!   ncpu`, by RPS), as a real host's NIC interrupts run on that host's CPUs. Without it a veth
//!   hands every packet to the next namespace on the sender's CPU, so one CPU would do both
//!   hosts' network work: the receiving host's decapsulation and forwarding would be charged
//!   to the sender, which no pair of real machines does.
//! - pod namespace `wl-<name>-h<i>-p1`: `eth0` on the host's bridge `cni0` (docker0's picture).
//!
//! A dual-stack lab adds IPv6 from the documentation range: `br0` 2001:db8::fe/64, host `eth0`
//! 2001:db8::<i>/64 with a default route via the switch, `inet0` 2001:db8:ffff::1/64, and each
//! pod an address of its host's FLANNEL_IPV6_SUBNET beside the IPv4 one.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_core::SubnetEnv;

use super::error::{LabError, Result};
use super::iproute::{add_address, bridge, default_route, dummy, link_up, netns_add, run, set_master, veth_pair};
use super::netns::sysctl;

pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
/// The address that stands for "the internet" outside the cluster, held by the switch.
pub const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const UNDERLAY_MTU: u32 = 1500;
/// The switch's IPv6 underlay address in a dual-stack lab.
pub const SWITCH_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
pub const UNDERLAY_V6_PREFIX_LEN: u8 = 64;
/// "The internet" over IPv6, held by the switch in a dual-stack lab.
pub const INTERNET_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
pub const MAX_NODES: usize = 250;
/// The pod's interface on the host's bridge, in the host namespace.
pub const POD_HOST_VETH: &str = "veth-p1";
pub const POD_BRIDGE: &str = "cni0";

pub fn underlay_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, node as u8)
}

/// Host `node`'s IPv6 underlay address in a dual-stack lab: `2001:db8::<node>`.
pub fn underlay_ipv6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, node as u16)
}

pub fn switch_ns(lab: &str) -> String {
    format!("wl-{lab}-sw")
}

pub fn host_ns(lab: &str, node: usize) -> String {
    format!("wl-{lab}-h{node}")
}

pub fn pod_ns(lab: &str, node: usize) -> String {
    format!("wl-{lab}-h{node}-p1")
}

/// True when `ns` is one of the names this lab creates (`wl-<lab>-sw`, `wl-<lab>-h<i>`,
/// `wl-<lab>-h<i>-p<j>`), and nothing else: lab "a" must not claim lab "a-b"'s namespaces.
pub fn is_lab_ns(lab: &str, ns: &str) -> bool {
    lab_of_ns(ns).is_some_and(|owner| owner == lab)
}

/// The lab a namespace name belongs to, when it is shaped like one of the lab's names.
pub fn lab_of_ns(ns: &str) -> Option<&str> {
    let rest = ns.strip_prefix("wl-")?;
    let (lab, last) = rest.rsplit_once('-')?;
    if last == "sw" || is_indexed(last, 'h') {
        return Some(lab).filter(|l| !l.is_empty());
    }
    if is_indexed(last, 'p') {
        let (lab, host) = lab.rsplit_once('-')?;
        return is_indexed(host, 'h').then_some(lab).filter(|l| !l.is_empty());
    }
    None
}

fn is_indexed(part: &str, letter: char) -> bool {
    part.strip_prefix(letter)
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// `ip/len` as an interface address.
fn net(ip: Ipv4Addr, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new(ip, len).expect("the lab's prefix lengths are valid"))
}

fn net6(ip: Ipv6Addr, len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new(ip, len).expect("the lab's prefix lengths are valid"))
}

/// A lab namespace: new IPv6 addresses there (link-local ones included) skip duplicate address
/// detection, so IPv6 works the moment a device is up rather than a second or two later.
fn lab_netns(ns: &str) -> Result<()> {
    netns_add(ns)?;
    sysctl(ns, "net/ipv6/conf/default/accept_dad", "0")?;
    sysctl(ns, "net/ipv6/conf/all/accept_dad", "0")
}

pub fn create_switch(ns: &str, dual_stack: bool) -> Result<()> {
    lab_netns(ns)?;
    bridge(ns, "br0", Some(net(SWITCH_IP, UNDERLAY_PREFIX_LEN)), None)?;
    // A dummy device when the kernel has the module, else a veth pair whose far end idles.
    if dummy(ns, "inet0").is_err() {
        veth_pair(ns, "inet0", ns, "inet0-peer", UNDERLAY_MTU)?;
    }
    add_address(ns, "inet0", net(INTERNET_IP, 24))?;
    link_up(ns, "inet0")?;
    if dual_stack {
        add_address(ns, "br0", net6(SWITCH_IPV6, UNDERLAY_V6_PREFIX_LEN))?;
        add_address(ns, "inet0", net6(INTERNET_IPV6, 64))?;
        sysctl(ns, "net/ipv6/conf/all/forwarding", "1")?;
    }
    sysctl(ns, "net/ipv4/ip_forward", "1")
}

/// The address families a lab host's underlay has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub ipv4: bool,
    pub ipv6: bool,
}

pub fn create_host(switch: &str, ns: &str, node: usize, families: Families) -> Result<()> {
    lab_netns(ns)?;
    let port = format!("h{node}");
    veth_pair(switch, &port, ns, "eth0", UNDERLAY_MTU)?;
    set_master(switch, &port, "br0")?;
    if families.ipv4 {
        add_address(ns, "eth0", net(underlay_ip(node), UNDERLAY_PREFIX_LEN))?;
        default_route(ns, SWITCH_IP.into())?;
    }
    if families.ipv6 {
        add_address(ns, "eth0", net6(underlay_ipv6(node), UNDERLAY_V6_PREFIX_LEN))?;
        default_route(ns, SWITCH_IPV6.into())?;
        sysctl(ns, "net/ipv6/conf/all/forwarding", "1")?;
    }
    receive_on_own_cpu(ns, node)?;
    sysctl(ns, "net/ipv4/ip_forward", "1")
}

/// The RPS mask that puts host `node`'s receive processing on CPU `(node - 1) mod cpus`, as
/// the hex string `rps_cpus` takes; None on a single CPU (nothing to separate).
pub fn host_rps_mask(node: usize, cpus: usize) -> Option<String> {
    if cpus < 2 {
        return None;
    }
    let cpu = (node.max(1) - 1) % cpus;
    // rps_cpus is a comma-separated list of 32-bit hex words, most significant first.
    let words = cpus.div_ceil(32);
    let mask: Vec<String> = (0..words)
        .rev()
        .map(|w| {
            if cpu / 32 == w {
                format!("{:08x}", 1u32 << (cpu % 32))
            } else {
                "00000000".into()
            }
        })
        .collect();
    Some(mask.join(","))
}

/// Steers what `eth0` of host `node` receives to the host's CPU (see the module comment).
/// sysfs shows a namespace's devices only to a process that mounted it there, hence `ip netns
/// exec` (which does).
fn receive_on_own_cpu(ns: &str, node: usize) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(mask) = host_rps_mask(node, cpus) else {
        return Ok(());
    };
    let write = format!("echo {mask} > /sys/class/net/eth0/queues/rx-0/rps_cpus");
    run("ip", &["netns", "exec", ns, "sh", "-c", &write]).map(drop)
}

/// What a pod gets from its host's subnet.env: the gateway (FLANNEL_SUBNET) and the next address,
/// and the same of FLANNEL_IPV6_SUBNET when the cluster is dual stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddressing {
    /// None in an IPv6-only network.
    pub gateway: Option<Ipv4Net>,
    pub ip: Option<Ipv4Net>,
    pub gateway6: Option<Ipv6Net>,
    pub ip6: Option<Ipv6Net>,
    pub mtu: u32,
}

impl PodAddressing {
    pub fn from_subnet_env(env: &SubnetEnv) -> Result<Self> {
        let (gateway, ip) = match env.subnet {
            None => (None, None),
            Some(gateway) => {
                let next = u32::from(gateway.addr()) + 1;
                let ip = Ipv4Net::new(Ipv4Addr::from(next), gateway.prefix_len())
                    .expect("prefix length taken from a valid net");
                if !gateway.contains(&ip.addr()) || ip.addr() == gateway.broadcast() {
                    return Err(LabError::Parse {
                        what: "subnet.env".into(),
                        detail: format!("FLANNEL_SUBNET={gateway} leaves no room for a pod address"),
                    });
                }
                (Some(gateway), Some(ip))
            }
        };
        let (gateway6, ip6) = match env.ipv6_subnet {
            None => (None, None),
            Some(gateway6) => {
                let next = Ipv6Addr::from(u128::from(gateway6.addr()) + 1);
                let ip6 = Ipv6Net::new(next, gateway6.prefix_len()).expect("prefix length taken from a valid net");
                if !gateway6.contains(&next) {
                    return Err(LabError::Parse {
                        what: "subnet.env".into(),
                        detail: format!("FLANNEL_IPV6_SUBNET={gateway6} leaves no room for a pod address"),
                    });
                }
                (Some(gateway6), Some(ip6))
            }
        };
        Ok(PodAddressing {
            gateway,
            ip,
            gateway6,
            ip6,
            mtu: env.mtu,
        })
    }
}

pub fn create_pod(host: &str, pod: &str, addressing: &PodAddressing) -> Result<()> {
    lab_netns(pod)?;
    bridge(
        host,
        POD_BRIDGE,
        addressing.gateway.map(IpNet::from),
        Some(addressing.mtu),
    )?;
    veth_pair(host, POD_HOST_VETH, pod, "eth0", addressing.mtu)?;
    set_master(host, POD_HOST_VETH, POD_BRIDGE)?;
    if let (Some(gateway), Some(ip)) = (addressing.gateway, addressing.ip) {
        add_address(pod, "eth0", ip.into())?;
        default_route(pod, gateway.addr().into())?;
    }
    if let (Some(gateway6), Some(ip6)) = (addressing.gateway6, addressing.ip6) {
        // The pod's IPv6 default route goes via the bridge's address; the host forwards it.
        sysctl(host, "net/ipv6/conf/all/forwarding", "1")?;
        add_address(host, POD_BRIDGE, gateway6.into())?;
        add_address(pod, "eth0", ip6.into())?;
        default_route(pod, gateway6.addr().into())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_belong_to_exactly_one_lab() {
        assert_eq!(lab_of_ns("wl-weft-sw"), Some("weft"));
        assert_eq!(lab_of_ns("wl-weft-h12"), Some("weft"));
        assert_eq!(lab_of_ns("wl-weft-h3-p1"), Some("weft"));
        assert_eq!(lab_of_ns("wl-a-b-h1"), Some("a-b"));
        assert!(!is_lab_ns("a", "wl-a-b-h1"));
        assert!(is_lab_ns("a-b", "wl-a-b-h1-p1"));
        for other in [
            "wl-weft",
            "wl--sw",
            "wl-weft-hx",
            "wl-weft-p1",
            "xwl-weft-sw",
            "wl-weft-h1-q1",
            "wd-x-sw",
        ] {
            assert_eq!(lab_of_ns(other), None, "{other}");
        }
    }

    #[test]
    fn each_host_receives_on_its_own_cpu() {
        assert_eq!(host_rps_mask(1, 1), None);
        assert_eq!(host_rps_mask(1, 2).as_deref(), Some("00000001"));
        assert_eq!(host_rps_mask(2, 2).as_deref(), Some("00000002"));
        assert_eq!(host_rps_mask(3, 2).as_deref(), Some("00000001"));
        assert_eq!(host_rps_mask(34, 40).as_deref(), Some("00000002,00000000"));
    }

    #[test]
    fn pod_takes_the_address_after_the_gateway() {
        let env =
            SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\n").unwrap();
        let a = PodAddressing::from_subnet_env(&env).unwrap();
        assert_eq!(a.gateway.unwrap().to_string(), "10.5.72.1/24");
        assert_eq!(a.ip.unwrap().to_string(), "10.5.72.2/24");
        assert_eq!(a.mtu, 1450);
        assert_eq!((a.gateway6, a.ip6), (None, None));
        let dual = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:48::1/64\nFLANNEL_MTU=1430\n",
        )
        .unwrap();
        let a = PodAddressing::from_subnet_env(&dual).unwrap();
        assert_eq!(a.gateway6.unwrap().to_string(), "fc00:0:0:48::1/64");
        assert_eq!(a.ip6.unwrap().to_string(), "fc00:0:0:48::2/64");
    }
}
