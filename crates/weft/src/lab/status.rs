//! `weft lab status`: the hosts, the leases in etcd, and which pod reaches which.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::error::Result;
use super::etcd::EtcdAccess;
use super::{ping_once, process, read_subnet_env, Lab, PodState, SUBNETS_PREFIX};

#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub node: usize,
    pub ns: String,
    /// The host's underlay address (IPv6 in an IPv6-only lab).
    pub underlay_ip: IpAddr,
    pub weftd_pid: Option<u32>,
    pub weftd_alive: bool,
    /// FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET from the host's subnet.env, if it exists.
    pub subnet: Option<String>,
    pub pod_ip: Option<Ipv4Addr>,
    /// The pod's IPv6 address (dual-stack labs).
    pub pod_ip6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LeaseEntry {
    pub key: String,
    /// The lease value parsed as JSON (a string when it is not JSON).
    pub value: serde_json::Value,
    /// The value exactly as stored in etcd (flannel's field order).
    pub raw: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub name: String,
    pub backend: String,
    pub network: String,
    pub etcd_alive: bool,
    pub hosts: Vec<HostStatus>,
    pub leases: Vec<LeaseEntry>,
    /// Set when the leases could not be read.
    pub leases_error: Option<String>,
    /// Node numbers of the rows and columns of `reachability`.
    pub pod_nodes: Vec<usize>,
    /// `reachability[a][b]`: the pod of `pod_nodes[a]` reaches the pod of `pod_nodes[b]` (null on the
    /// diagonal).
    pub reachability: Vec<Vec<Option<bool>>>,
    /// The same over IPv6, in a dual-stack lab.
    pub reachability_v6: Option<Vec<Vec<Option<bool>>>>,
}

pub fn read_leases(etcd: &EtcdAccess) -> Result<Vec<LeaseEntry>> {
    Ok(etcd
        .get_prefix(SUBNETS_PREFIX)?
        .into_iter()
        .map(|(key, value)| LeaseEntry {
            key,
            raw: String::from_utf8_lossy(&value).into_owned(),
            value: serde_json::from_slice(&value)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&value).into_owned())),
        })
        .collect())
}

/// Pings every other pod from every pod at the address `addr` gives (a pod with none counts as
/// unreachable), all at once on scoped threads.
pub fn reachability(pods: &[&PodState], addr: impl Fn(&PodState) -> Option<IpAddr>) -> Vec<Vec<Option<bool>>> {
    std::thread::scope(|scope| {
        let handles: Vec<Vec<Option<_>>> = pods
            .iter()
            .enumerate()
            .map(|(a, from)| {
                pods.iter()
                    .enumerate()
                    .map(|(b, to)| {
                        let (ns, ip) = (from.ns.clone(), addr(to));
                        (a != b).then(|| scope.spawn(move || ip.is_some_and(|ip| ping_once(&ns, ip))))
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|row| row.into_iter().map(|h| h.map(|h| h.join().unwrap_or(false))).collect())
            .collect()
    })
}

pub fn collect(lab: &Lab) -> LabStatus {
    let state = lab.state();
    let hosts = state
        .hosts
        .iter()
        .map(|h| HostStatus {
            node: h.node,
            ns: h.ns.clone(),
            underlay_ip: match state.ipv6_only {
                true => super::topology::underlay_ipv6(h.node).into(),
                false => h.underlay_ip.into(),
            },
            weftd_pid: h.weftd_pid,
            weftd_alive: h.weftd_pid.is_some_and(process::alive),
            subnet: read_subnet_env(&h.subnet_file).ok().map(|env| env_subnets(&env)),
            pod_ip: h.pod.as_ref().and_then(|p| p.ip).map(|n| n.addr()),
            pod_ip6: h.pod.as_ref().and_then(|p| p.ip6).map(|n| n.addr()),
        })
        .collect();
    let (leases, leases_error) = match read_leases(&state.etcd) {
        Ok(leases) => (leases, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let pods = lab.pods();
    LabStatus {
        name: state.name.clone(),
        backend: state.backend.clone(),
        network: match (state.ipv6_only, state.dual_stack) {
            (true, _) => super::LAB_IPV6_NETWORK.to_string(),
            (false, true) => format!("{} and {}", state.network, super::LAB_IPV6_NETWORK),
            (false, false) => state.network.to_string(),
        },
        etcd_alive: process::alive(state.etcd_pid),
        hosts,
        leases,
        leases_error,
        pod_nodes: pods.iter().map(|p| p.node).collect(),
        // An IPv6-only lab's pods have no IPv4 address: no IPv4 matrix (left empty).
        reachability: match state.ipv6_only {
            true => Vec::new(),
            false => reachability(&pods, |p| p.ip.map(|n| n.addr().into())),
        },
        reachability_v6: state
            .dual_stack
            .then(|| reachability(&pods, |p| p.ip6.map(|n| IpAddr::from(n.addr())))),
    }
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alive = |b: bool| if b { "running" } else { "DOWN" };
        writeln!(
            f,
            "lab {}: backend {}, network {}, etcd {}",
            self.name,
            self.backend,
            self.network,
            alive(self.etcd_alive)
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<5} {:<20} {:<15} {:<16} {:<18} pod",
            "node", "namespace", "underlay", "weftd", "subnet"
        )?;
        for h in &self.hosts {
            let weftd = match h.weftd_pid {
                Some(pid) => format!("{pid} {}", alive(h.weftd_alive)),
                None => "stopped".to_string(),
            };
            let subnet = h.subnet.as_deref().unwrap_or("-");
            let addrs: Vec<String> = (h.pod_ip.map(IpAddr::from).into_iter())
                .chain(h.pod_ip6.map(IpAddr::from))
                .map(|ip| ip.to_string())
                .collect();
            let pod = if addrs.is_empty() {
                "-".to_string()
            } else {
                addrs.join(" ")
            };
            writeln!(
                f,
                "h{:<4} {:<20} {:<15} {:<16} {:<18} {pod}",
                h.node,
                h.ns,
                h.underlay_ip.to_string(),
                weftd,
                subnet
            )?;
        }
        writeln!(f)?;
        match &self.leases_error {
            Some(e) => writeln!(f, "leases: could not read: {e}")?,
            None => {
                writeln!(f, "leases ({}):", self.leases.len())?;
                for lease in &self.leases {
                    writeln!(f, "  {} {}", lease.key, lease.raw)?;
                }
            }
        }
        if self.pod_nodes.is_empty() {
            return writeln!(f, "\nno pods");
        }
        if !self.reachability.is_empty() {
            write_matrix(
                f,
                "reachability (row pings column)",
                &self.pod_nodes,
                &self.reachability,
            )?;
        }
        if let Some(v6) = &self.reachability_v6 {
            write_matrix(f, "IPv6 reachability (row pings column)", &self.pod_nodes, v6)?;
        }
        Ok(())
    }
}

/// A subnet.env's subnets, IPv4 first: `10.5.72.1/24`, `10.5.72.1/24 fc00:0:0:1::1/64`.
fn env_subnets(env: &weft_core::SubnetEnv) -> String {
    let v4 = env.subnet.map(|n| n.to_string());
    let v6 = env.ipv6_subnet.map(|n| n.to_string());
    v4.into_iter().chain(v6).collect::<Vec<_>>().join(" ")
}

fn write_matrix(f: &mut fmt::Formatter<'_>, title: &str, nodes: &[usize], matrix: &[Vec<Option<bool>>]) -> fmt::Result {
    writeln!(f)?;
    write!(f, "{title}:\n{:<6}", "")?;
    for node in nodes {
        write!(f, "{:<6}", format!("p{node}"))?;
    }
    writeln!(f)?;
    for (row, node) in matrix.iter().zip(nodes) {
        write!(f, "{:<6}", format!("p{node}"))?;
        for cell in row {
            let mark = match cell {
                None => "-",
                Some(true) => "ok",
                Some(false) => "FAIL",
            };
            write!(f, "{mark:<6}")?;
        }
        writeln!(f)?;
    }
    Ok(())
}
