//! `weft lab`: a real multi-host weft cluster on one machine, built from network namespaces.
//!
//! A lab named `<name>` owns the namespaces `wl-<name>-sw` (underlay switch, etcd, "internet"),
//! `wl-<name>-h<i>` (host i, running weftd) and `wl-<name>-h<i>-p1` (host i's pod), and the
//! directory `/run/weft/lab/<name>/` (certificates, etcd data and log, each host's subnet.env and
//! weftd.log, and `lab.json`, the state a fresh process reopens with [`Lab::open`]). It must never
//! touch a namespace or process outside those names. With `docker` ([`LabSpec::docker`]) each
//! host's pod is a container of a dockerd the lab runs on the host ([`docker`] says what that
//! makes and how it is found again).
//!
//! Library use (integration tests): [`Lab::up`] builds a lab from a [`LabSpec`]; nodes are
//! numbered from 1. [`Lab::pods`], [`Lab::pod_ip`], [`Lab::exec_in_pod`], [`Lab::exec_in_host`],
//! [`Lab::ping`], [`Lab::wait_ping`], [`Lab::reachability`]; etcd through [`Lab::etcd_get`],
//! [`Lab::etcd_put`], [`Lab::etcd_delete`], [`Lab::etcd_get_prefix`], [`Lab::leases`]; weftd
//! through [`Lab::stop_node`], [`Lab::start_node`], [`Lab::restart_node`], [`Lab::add_node`];
//! [`Lab::down`] (or dropping the value) removes everything.
//! ```no_run
//! use weft::lab::{Lab, LabSpec};
//! use weft_core::BackendKind;
//! let lab = Lab::up(LabSpec::new("t1", 2, BackendKind::Vxlan)).unwrap();
//! let to = lab.pod_ip(2).unwrap();
//! assert!(lab.wait_ping(1, to, std::time::Duration::from_secs(5)));
//! // dropping `lab` tears it down (unless `lab.keep()` was called)
//! ```

mod bench;
pub mod bench_control;
mod certs;
pub mod cli;
pub mod docker;
mod error;
mod etcd;
pub mod iproute;
pub mod netns;
mod process;
mod status;
pub mod topology;
pub mod wireguard;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use weft_core::{BackendKind, SubnetEnv};

pub use bench::{BenchOptions, BenchReport};
pub use bench_control::{ControlBenchOptions, ControlBenchReport, ControlBenchRow};
pub use certs::CertPaths;
pub use error::{LabError, Result};
pub use etcd::EtcdAccess;
pub use netns::in_netns;
pub use status::{HostStatus, LabStatus, LeaseEntry};
pub use topology::{host_ns, pod_ns, switch_ns, underlay_ip, INTERNET_IP, SWITCH_IP};

/// Where every lab keeps its files.
pub const LAB_ROOT: &str = "/run/weft/lab";
/// The config key weftd reads (flannel's default prefix).
pub const CONFIG_KEY: &str = "/coreos.com/network/config";
/// The prefix of the lease keys.
pub const SUBNETS_PREFIX: &str = "/coreos.com/network/subnets/";

pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(name)
}

/// Which weftd binary a lab runs on its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeftdBinary {
    /// `weftd` next to the current executable (or its parent directory, for test binaries in
    /// target/debug/deps/), else in PATH.
    Find,
    At(PathBuf),
    /// Start no daemon: hosts get no subnet.env and so no pod (for testing the lab itself).
    Skip,
}

/// What [`Lab::up`] builds.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub name: String,
    pub nodes: usize,
    pub backend: BackendKind,
    /// Extra keys of the config's `Backend` object, e.g. `{"DirectRouting": true}`.
    pub backend_options: serde_json::Map<String, serde_json::Value>,
    pub network: Ipv4Net,
    pub ip_masq: bool,
    pub nftables: bool,
    pub weftd: WeftdBinary,
    pub weftd_args: Vec<String>,
    /// How long to wait for every host's subnet.env.
    pub subnet_timeout: Duration,
    /// Keep the lab when the [`Lab`] value is dropped (the CLI does; tests usually don't).
    pub keep: bool,
    /// Hosts run dockerd on weft's subnet with one container each instead of the cni0 pod
    /// (see [`docker`]).
    pub docker: bool,
    /// Dual stack: IPv6 underlay addresses (2001:db8::/64), `EnableIPv6` with [`LAB_IPV6_NETWORK`]
    /// in the config, and pods with an address of each family.
    pub dual_stack: bool,
    /// With `dual_stack`: `EnableIPv4` false, so pods have IPv6 addresses only, and so have the
    /// hosts (they reach etcd at the switch's IPv6 address).
    pub ipv6_only: bool,
}

/// The IPv6 pod network of a dual-stack lab.
pub const LAB_IPV6_NETWORK: &str = "fc00::/48";

impl LabSpec {
    /// A spec with the defaults: network 10.5.0.0/16, no masquerade, iptables, weftd found
    /// next to the executable, 30 s to get subnets, torn down on drop.
    pub fn new(name: &str, nodes: usize, backend: BackendKind) -> Self {
        LabSpec {
            name: name.to_string(),
            nodes,
            backend,
            backend_options: serde_json::Map::new(),
            network: "10.5.0.0/16".parse().expect("a valid CIDR"),
            ip_masq: false,
            nftables: false,
            weftd: WeftdBinary::Find,
            weftd_args: Vec::new(),
            subnet_timeout: Duration::from_secs(30),
            keep: false,
            docker: false,
            dual_stack: false,
            ipv6_only: false,
        }
    }

    /// The JSON written at [`CONFIG_KEY`].
    pub fn network_config(&self) -> serde_json::Value {
        let mut backend = serde_json::Map::new();
        backend.insert("Type".into(), self.backend.name().into());
        backend.extend(self.backend_options.clone());
        let mut config = serde_json::json!({
            "Network": self.network.to_string(),
            "Backend": backend,
        });
        if self.dual_stack {
            config["EnableIPv6"] = true.into();
            config["IPv6Network"] = LAB_IPV6_NETWORK.into();
        }
        if self.ipv6_only {
            config["EnableIPv4"] = false.into();
            config.as_object_mut().expect("an object").remove("Network");
        }
        if self.nftables {
            config["EnableNFTables"] = true.into();
        }
        config
    }

    fn validate(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 24
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-')
            && !self.name.ends_with('-');
        if !name_ok {
            return Err(LabError::BadSpec(format!(
                "lab name {:?} must be 1-24 characters of a-z, 0-9 and inner '-'",
                self.name
            )));
        }
        if self.nodes == 0 || self.nodes > topology::MAX_NODES {
            return Err(LabError::BadSpec(format!(
                "--nodes {} is not in 1..={}",
                self.nodes,
                topology::MAX_NODES
            )));
        }
        if self.ipv6_only && !self.dual_stack {
            return Err(LabError::BadSpec(
                "an IPv6-only lab needs the IPv6 underlay of a dual-stack one: set dual_stack too".into(),
            ));
        }
        if self.docker && self.dual_stack {
            return Err(LabError::BadSpec(
                "--docker builds Docker's IPv4 default network (dockerd without --ipv6): its containers would have \
                 no IPv6 address; leave out --dual-stack or --docker"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One host of the lab, as saved in lab.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostState {
    pub node: usize,
    pub ns: String,
    pub underlay_ip: Ipv4Addr,
    pub weftd_pid: Option<u32>,
    pub subnet_file: PathBuf,
    pub weftd_log: PathBuf,
    pub pod: Option<PodState>,
}

/// A host's pod: its namespace, address (with the subnet's prefix) and gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodState {
    pub node: usize,
    pub ns: String,
    /// None in an IPv6-only lab.
    pub ip: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Net>,
    pub mtu: u32,
    /// The pod's IPv6 address in a dual-stack lab.
    #[serde(default)]
    pub ip6: Option<Ipv6Net>,
}

impl PodState {
    /// The pod's addresses, IPv4 first: `10.5.72.2/24 fc00:0:0:1::2/64`.
    pub fn addresses(&self) -> String {
        let v4 = self.ip.map(|n| n.to_string());
        let v6 = self.ip6.map(|n| n.to_string());
        v4.into_iter().chain(v6).collect::<Vec<_>>().join(" ")
    }
}

/// Everything a fresh process needs to work on a running lab: `<labdir>/lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    pub backend: String,
    pub network: Ipv4Net,
    pub config: serde_json::Value,
    pub ip_masq: bool,
    pub nftables: bool,
    pub switch_ns: String,
    pub etcd_pid: u32,
    pub etcd: EtcdAccess,
    /// None when the lab runs without weftd.
    pub weftd: Option<PathBuf>,
    pub weftd_args: Vec<String>,
    pub subnet_timeout_secs: u64,
    pub hosts: Vec<HostState>,
    /// Each host's pod is a Docker container (see [`docker`]).
    #[serde(default)]
    pub docker: bool,
    #[serde(default)]
    pub dual_stack: bool,
    #[serde(default)]
    pub ipv6_only: bool,
}

/// A running lab. Dropping it tears the lab down unless [`Lab::keep`] was called (or the spec
/// said `keep`, or it was reopened with [`Lab::open`]).
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    keep: bool,
}

impl Lab {
    /// Builds the lab: switch, etcd with TLS, the network config, hosts, weftd on each host, and
    /// one pod per host once its subnet.env exists. A failure part way removes what was built.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        spec.validate()?;
        preflight()?;
        if spec.docker {
            docker::preflight()?;
        }
        let dir = lab_dir(&spec.name);
        let taken = iproute::netns_list()
            .into_iter()
            .any(|ns| topology::is_lab_ns(&spec.name, &ns));
        if dir.exists() || taken {
            return Err(LabError::AlreadyUp {
                name: spec.name.clone(),
                path: dir,
            });
        }
        let weftd = match &spec.weftd {
            WeftdBinary::Skip => None,
            WeftdBinary::At(path) if process::is_executable(path) => Some(path.clone()),
            WeftdBinary::At(path) => {
                return Err(LabError::BadSpec(format!(
                    "--weftd {} is not an executable file",
                    path.display()
                )))
            }
            WeftdBinary::Find => Some(find_weftd().ok_or(LabError::ProgramNotFound {
                program: "weftd",
                hint: "build it (cargo build -p weftd) or pass --weftd PATH",
            })?),
        };
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating lab directory", &dir, e))?;
        // It holds private keys.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| LabError::io("restricting lab directory", &dir, e))?;
        let switch = switch_ns(&spec.name);
        // From here on, a failure drops `lab`, which removes everything named after it.
        let mut lab = Lab {
            state: LabState {
                name: spec.name.clone(),
                dir: dir.clone(),
                backend: spec.backend.name().to_string(),
                network: spec.network,
                config: spec.network_config(),
                ip_masq: spec.ip_masq,
                nftables: spec.nftables,
                switch_ns: switch.clone(),
                etcd_pid: 0,
                etcd: EtcdAccess {
                    ns: switch.clone(),
                    endpoint: etcd::endpoint(),
                    certs: CertPaths::default(),
                },
                weftd,
                weftd_args: spec.weftd_args.clone(),
                subnet_timeout_secs: spec.subnet_timeout.as_secs().max(1),
                hosts: Vec::new(),
                docker: spec.docker,
                dual_stack: spec.dual_stack,
                ipv6_only: spec.ipv6_only,
            },
            keep: false,
        };
        topology::create_switch(&switch, spec.dual_stack)?;
        lab.state.etcd.certs = certs::generate(&dir, &[&SWITCH_IP.to_string(), etcd::ETCD_IPV6, "127.0.0.1"])?;
        lab.state.etcd_pid = etcd::start(&switch, &dir, &lab.state.etcd.certs, spec.dual_stack)?;
        lab.save()?;
        lab.state
            .etcd
            .wait_ready(lab.state.etcd_pid, &dir.join("etcd.log"), Duration::from_secs(20))?;
        let config = config_json(&lab.state.config);
        lab.state.etcd.put(CONFIG_KEY, config.as_bytes())?;
        for node in 1..=spec.nodes {
            lab.create_host(node)?;
        }
        lab.save()?;
        for node in 1..=spec.nodes {
            lab.start_weftd(node)?;
        }
        lab.save()?;
        let nodes: Vec<usize> = (1..=spec.nodes).collect();
        lab.create_pods(&nodes)?;
        lab.save()?;
        lab.keep = spec.keep;
        Ok(lab)
    }

    /// Reopens a running lab from its lab.json. The value does not tear the lab down on drop.
    pub fn open(name: &str) -> Result<Lab> {
        let path = lab_dir(name).join("lab.json");
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LabError::NotUp {
                name: name.to_string(),
                path: path.clone(),
            },
            _ => LabError::io("reading", &path, e),
        })?;
        let state = serde_json::from_slice(&text).map_err(|source| LabError::State { path, source })?;
        Ok(Lab { state, keep: true })
    }

    /// Names of the labs that have a directory under [`LAB_ROOT`] or namespaces on this machine.
    pub fn list() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(LAB_ROOT)
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.extend(
            iproute::netns_list()
                .iter()
                .filter_map(|ns| topology::lab_of_ns(ns))
                .map(str::to_string),
        );
        names.sort();
        names.dedup();
        names
    }

    /// Keep the lab running after this value is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Choose whether dropping this value tears the lab down.
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// Number of hosts (nodes are numbered 1..=nodes()).
    pub fn nodes(&self) -> usize {
        self.state.hosts.len()
    }

    pub fn switch_ns(&self) -> &str {
        &self.state.switch_ns
    }

    pub fn host(&self, node: usize) -> Result<&HostState> {
        self.state
            .hosts
            .get(node.wrapping_sub(1))
            .ok_or_else(|| LabError::NoSuchNode {
                name: self.state.name.clone(),
                node,
                nodes: self.nodes(),
            })
    }

    fn host_mut(&mut self, node: usize) -> Result<&mut HostState> {
        let (name, nodes) = (self.state.name.clone(), self.nodes());
        self.state
            .hosts
            .get_mut(node.wrapping_sub(1))
            .ok_or(LabError::NoSuchNode { name, node, nodes })
    }

    /// The network namespace of host `node`.
    pub fn host_ns(&self, node: usize) -> Result<&str> {
        Ok(&self.host(node)?.ns)
    }

    /// Host `node`'s underlay address (`198.51.100.<node>`).
    pub fn underlay_ip(&self, node: usize) -> Result<Ipv4Addr> {
        Ok(self.host(node)?.underlay_ip)
    }

    /// Every pod of the lab, in node order.
    pub fn pods(&self) -> Vec<&PodState> {
        self.state.hosts.iter().filter_map(|h| h.pod.as_ref()).collect()
    }

    pub fn pod(&self, node: usize) -> Result<&PodState> {
        self.host(node)?.pod.as_ref().ok_or(LabError::NoPod { node })
    }

    pub fn pod_ns(&self, node: usize) -> Result<&str> {
        Ok(&self.pod(node)?.ns)
    }

    /// The IPv4 address of the pod of host `node` (none in an IPv6-only lab).
    pub fn pod_ip(&self, node: usize) -> Result<Ipv4Addr> {
        self.pod(node)?.ip.map(|n| n.addr()).ok_or(LabError::NoPod { node })
    }

    /// Host `node`'s subnet.env as weftd wrote it.
    pub fn subnet_env(&self, node: usize) -> Result<SubnetEnv> {
        read_subnet_env(&self.host(node)?.subnet_file)
    }

    /// How to reach etcd (also usable from other threads: it is Clone + Send).
    pub fn etcd(&self) -> &EtcdAccess {
        &self.state.etcd
    }

    pub fn etcd_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.state.etcd.get(key)
    }

    pub fn etcd_get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.state.etcd.get_prefix(prefix)
    }

    pub fn etcd_put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        self.state.etcd.put(key, value.as_ref())
    }

    /// Deletes a key; returns whether it existed.
    pub fn etcd_delete(&self, key: &str) -> Result<bool> {
        self.state.etcd.delete(key)
    }

    /// The leases under [`SUBNETS_PREFIX`]: (key, value parsed as JSON).
    pub fn leases(&self) -> Result<Vec<LeaseEntry>> {
        status::read_leases(&self.state.etcd)
    }

    /// Runs `cmd` in host `node`'s namespace (`ip netns exec`), waiting for it.
    pub fn exec_in_host(&self, node: usize, cmd: &[&str]) -> Result<Output> {
        exec_in(self.host_ns(node)?, cmd)
    }

    /// Runs `cmd` in the pod of host `node`, waiting for it.
    pub fn exec_in_pod(&self, node: usize, cmd: &[&str]) -> Result<Output> {
        exec_in(self.pod_ns(node)?, cmd)
    }

    /// One `ping -c1 -W1` from the pod of host `from_pod` to `to`: true if a reply came back.
    pub fn ping(&self, from_pod: usize, to: impl Into<IpAddr>) -> bool {
        let to = to.into();
        self.pod_ns(from_pod).is_ok_and(|ns| ping_once(ns, to))
    }

    /// Pings from the pod of `from_pod` until one succeeds or `within` passes.
    pub fn wait_ping(&self, from_pod: usize, to: impl Into<IpAddr>, within: Duration) -> bool {
        let to = to.into();
        let deadline = Instant::now() + within;
        loop {
            if self.ping(from_pod, to) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pod-to-pod reachability: `matrix[a][b]` is whether pod a reaches pod b (None on the
    /// diagonal), indexed like [`Lab::pods`]. Pings run in parallel.
    pub fn reachability(&self) -> Vec<Vec<Option<bool>>> {
        status::reachability(&self.pods(), |p| p.ip.map(|n| n.addr().into()))
    }

    /// [`Lab::reachability`] over IPv6 (dual-stack labs): pods without an IPv6 address count as
    /// unreachable.
    pub fn reachability_v6(&self) -> Vec<Vec<Option<bool>>> {
        status::reachability(&self.pods(), |p| p.ip6.map(|n| n.addr().into()))
    }

    /// The IPv6 address of the pod of host `node` (dual-stack labs).
    pub fn pod_ip6(&self, node: usize) -> Result<std::net::Ipv6Addr> {
        self.pod(node)?.ip6.map(|n| n.addr()).ok_or(LabError::NoPod { node })
    }

    /// weftd's pid on host `node`, if it was started.
    pub fn weftd_pid(&self, node: usize) -> Option<u32> {
        self.host(node).ok()?.weftd_pid
    }

    pub fn weftd_alive(&self, node: usize) -> bool {
        self.weftd_pid(node).is_some_and(process::alive)
    }

    /// SIGTERMs weftd on host `node` and waits for it to exit (SIGKILL after 10 s). Kernel state
    /// and subnet.env are left as they are.
    pub fn stop_node(&mut self, node: usize) -> Result<()> {
        let host = self.host(node)?;
        if let Some(pid) = host.weftd_pid {
            // Only signal the pid if it still lives in this host's namespace (pids get reused).
            let inode = netns::netns_inode(&host.ns);
            if inode.is_some() && process::netns_inode_of(pid) == inode {
                process::terminate(&[pid], Duration::from_secs(10))?;
            }
        }
        self.host_mut(node)?.weftd_pid = None;
        self.save()
    }

    /// SIGKILLs weftd on host `node` (a crash: no chance to clean up) and waits for it to go.
    pub fn kill_node(&mut self, node: usize) -> Result<()> {
        let host = self.host(node)?;
        if let Some(pid) = host.weftd_pid {
            let inode = netns::netns_inode(&host.ns);
            if inode.is_some() && process::netns_inode_of(pid) == inode {
                process::terminate(&[pid], Duration::ZERO)?;
            }
        }
        self.host_mut(node)?.weftd_pid = None;
        self.save()
    }

    /// Starts weftd on host `node` again with the same arguments (no-op if it is running).
    pub fn start_node(&mut self, node: usize) -> Result<()> {
        if self.weftd_alive(node) {
            return Ok(());
        }
        self.start_weftd(node)?;
        self.save()
    }

    /// Stops then starts weftd on host `node`; touches nothing else.
    pub fn restart_node(&mut self, node: usize) -> Result<()> {
        self.stop_node(node)?;
        self.start_node(node)
    }

    /// Adds host N+1 (with weftd and, once it has a subnet, its pod). Returns its node number.
    pub fn add_node(&mut self) -> Result<usize> {
        let node = self.nodes() + 1;
        if node > topology::MAX_NODES {
            return Err(LabError::BadSpec(format!(
                "a lab holds at most {} nodes",
                topology::MAX_NODES
            )));
        }
        self.create_host(node)?;
        self.save()?;
        self.start_weftd(node)?;
        self.save()?;
        self.create_pods(&[node])?;
        self.save()?;
        Ok(node)
    }

    /// Hosts, leases and the reachability matrix.
    pub fn status(&self) -> LabStatus {
        status::collect(self)
    }

    /// Throughput and latency, pod-to-pod against host-to-host (needs two nodes with pods).
    pub fn bench(&self, options: &BenchOptions) -> Result<BenchReport> {
        bench::run(self, options)
    }

    /// Tears the lab down: every process in its namespaces, the namespaces, the lab directory.
    pub fn down(mut self) -> Result<()> {
        self.keep = true;
        Lab::down_by_name(&self.state.name)
    }

    /// Tears down lab `name` whether or not its lab.json exists; a lab already gone is success.
    /// Touches only namespaces named like this lab's (see [`topology::is_lab_ns`]), processes
    /// inside them, and `/run/weft/lab/<name>`.
    pub fn down_by_name(name: &str) -> Result<()> {
        let mut errors = Vec::new();
        // Containers live in namespaces of their own: found by their cgroups, not by netns.
        if let Err(e) = docker::stop(name) {
            errors.push(e.to_string());
        }
        let namespaces: Vec<String> = iproute::netns_list()
            .into_iter()
            .filter(|ns| topology::is_lab_ns(name, ns))
            .collect();
        let inodes: Vec<u64> = namespaces.iter().filter_map(|ns| netns::netns_inode(ns)).collect();
        let pids = process::processes_in(&inodes);
        if let Err(e) = process::terminate(&pids, Duration::from_secs(5)) {
            errors.push(e.to_string());
        }
        // Pods first, then hosts, then the switch: the deepest names are the longest.
        let mut ordered = namespaces;
        ordered.sort_by_key(|ns| std::cmp::Reverse(ns.len()));
        for ns in &ordered {
            if let Err(e) = iproute::netns_delete(ns) {
                errors.push(e.to_string());
            }
        }
        errors.extend(docker::release(name));
        let dir = lab_dir(name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(LabError::io("removing lab directory", &dir, e).to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::Other(format!(
                "tearing down lab {name:?}: {}",
                errors.join("; ")
            )))
        }
    }

    /// Tears down every lab on this machine.
    pub fn down_all() -> Result<()> {
        let errors: Vec<String> = Lab::list()
            .iter()
            .filter_map(|name| Lab::down_by_name(name).err())
            .map(|e| e.to_string())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::Other(errors.join("; ")))
        }
    }

    /// Writes lab.json atomically.
    pub fn save(&self) -> Result<()> {
        let path = self.state.dir.join("lab.json");
        let tmp = self.state.dir.join("lab.json.tmp");
        let text = serde_json::to_vec_pretty(&self.state).expect("lab state serializes");
        std::fs::write(&tmp, text).map_err(|e| LabError::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io("writing", &path, e))
    }

    fn create_host(&mut self, node: usize) -> Result<()> {
        let ns = host_ns(&self.state.name, node);
        let host_dir = self.state.dir.join(format!("h{node}"));
        std::fs::create_dir_all(&host_dir).map_err(|e| LabError::io("creating host directory", &host_dir, e))?;
        // Recorded before building so that a failure part way is still torn down by name.
        self.state.hosts.push(HostState {
            node,
            ns: ns.clone(),
            underlay_ip: underlay_ip(node),
            weftd_pid: None,
            subnet_file: host_dir.join("subnet.env"),
            weftd_log: host_dir.join("weftd.log"),
            pod: None,
        });
        let families = topology::Families {
            ipv4: !self.state.ipv6_only,
            ipv6: self.state.dual_stack,
        };
        topology::create_host(&self.state.switch_ns, &ns, node, families)
    }

    fn weftd_args(&self, host: &HostState) -> Vec<String> {
        let certs = &self.state.etcd.certs;
        // IPv6-only hosts have no IPv4 address: they reach etcd over IPv6.
        let endpoint = match self.state.ipv6_only {
            true => etcd::endpoint_v6(),
            false => self.state.etcd.endpoint.clone(),
        };
        let mut args = vec![
            format!("--etcd-endpoints={endpoint}"),
            format!("--etcd-cafile={}", certs.ca.display()),
            format!("--etcd-certfile={}", certs.client_cert.display()),
            format!("--etcd-keyfile={}", certs.client_key.display()),
            format!("--subnet-file={}", host.subnet_file.display()),
            "--iface=eth0".to_string(),
        ];
        if self.state.ip_masq {
            args.push("--ip-masq".to_string());
        }
        args.extend(self.state.weftd_args.iter().cloned());
        args
    }

    fn start_weftd(&mut self, node: usize) -> Result<()> {
        let Some(weftd) = self.state.weftd.clone() else {
            return Ok(());
        };
        let host = self.host(node)?.clone();
        let args = self.weftd_args(&host);
        let (program, args) = match self.is_wireguard() {
            true => wireguard::wrap(&self.state.dir, node, &weftd.display().to_string(), &args)?,
            false => (weftd.display().to_string(), args),
        };
        let pid = process::spawn_detached(&host.ns, &program, &args, &host.weftd_log)?;
        self.host_mut(node)?.weftd_pid = Some(pid);
        Ok(())
    }

    /// Waits (bounded) for each node's subnet.env, then builds its pod.
    fn create_pods(&mut self, nodes: &[usize]) -> Result<()> {
        if self.state.weftd.is_none() {
            return Ok(());
        }
        let within = Duration::from_secs(self.state.subnet_timeout_secs);
        let deadline = Instant::now() + within;
        let mut waiting: Vec<usize> = nodes.to_vec();
        let mut docker_hosts = Vec::new();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for &node in &waiting {
                let host = self.host(node)?.clone();
                match read_subnet_env(&host.subnet_file) {
                    Ok(_) if self.state.docker => docker_hosts.push(node),
                    Ok(env) => {
                        let addressing = topology::PodAddressing::from_subnet_env(&env)?;
                        let ns = pod_ns(&self.state.name, node);
                        self.host_mut(node)?.pod = Some(PodState {
                            node,
                            ns: ns.clone(),
                            ip: addressing.ip,
                            gateway: addressing.gateway,
                            mtu: addressing.mtu,
                            ip6: addressing.ip6,
                        });
                        topology::create_pod(&host.ns, &ns, &addressing)?;
                    }
                    Err(_) if host.weftd_pid.is_some_and(|p| !process::alive(p)) => {
                        return Err(LabError::Exited {
                            what: format!("weftd on host {node} ({})", host.ns),
                            detail: format!(
                                " before writing {}; tail of {}:\n{}",
                                host.subnet_file.display(),
                                host.weftd_log.display(),
                                process::log_tail(&host.weftd_log, 20)
                            ),
                        });
                    }
                    Err(_) if Instant::now() >= deadline => {
                        return Err(LabError::Timeout {
                            what: format!(
                                "weftd on host {node} ({}) to write {}",
                                host.ns,
                                host.subnet_file.display()
                            ),
                            seconds: within.as_secs(),
                            detail: format!(
                                "; tail of {}:\n{}",
                                host.weftd_log.display(),
                                process::log_tail(&host.weftd_log, 20)
                            ),
                        });
                    }
                    Err(_) => still.push(node),
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if !docker_hosts.is_empty() {
            for pod in docker::start_hosts(&self.state, &docker_hosts)? {
                let node = pod.node;
                self.host_mut(node)?.pod = Some(pod);
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = Lab::down_by_name(&self.state.name) {
                eprintln!("weft lab: {e}");
            }
        }
    }
}

fn read_subnet_env(path: &Path) -> Result<SubnetEnv> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::io("reading", path, e))?;
    SubnetEnv::parse(&text).map_err(|e| LabError::Parse {
        what: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// Runs `cmd` inside namespace `ns` and waits for it.
pub fn exec_in(ns: &str, cmd: &[&str]) -> Result<Output> {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    iproute::output("ip", &args)
}

fn ping_once(ns: &str, to: IpAddr) -> bool {
    let to = to.to_string();
    exec_in(ns, &["ping", "-n", "-q", "-c1", "-W1", &to]).is_ok_and(|o| o.status.success())
}

fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    for (program, hint) in [
        ("etcd", "install it with `apt-get install etcd-server`"),
        ("ip", "install it with `apt-get install iproute2`"),
        ("ping", "install it with `apt-get install iputils-ping`"),
    ] {
        if process::which(program).is_none() {
            return Err(LabError::ProgramNotFound { program, hint });
        }
    }
    Ok(())
}

/// `weftd` next to the current executable, or in its parent directory, else in PATH.
pub fn find_weftd() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let beside = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("weftd"))
        .find(|p| process::is_executable(p));
    beside.or_else(|| process::which("weftd"))
}

/// A network config object as JSON with flannel's key order (Network first, then the other
/// top-level keys, Backend last with Type first), instead of serde_json's sorted keys.
pub fn config_json(config: &serde_json::Value) -> String {
    fn members<'a>(map: &'a serde_json::Map<String, serde_json::Value>, first: &str, last: &str) -> Vec<String> {
        let rank = |k: &str| {
            if k == first {
                0
            } else if k == last {
                2
            } else {
                1
            }
        };
        let mut keys: Vec<&'a String> = map.keys().collect();
        keys.sort_by_key(|k| rank(k));
        keys.into_iter()
            .map(|k| {
                let value = match &map[k] {
                    serde_json::Value::Object(inner) if k == "Backend" => {
                        format!("{{{}}}", members(inner, "Type", "").join(","))
                    }
                    other => other.to_string(),
                };
                format!("{}:{value}", serde_json::Value::from(k.as_str()))
            })
            .collect()
    }
    match config {
        serde_json::Value::Object(map) => format!("{{{}}}", members(map, "Network", "Backend").join(",")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::config_json;

    #[test]
    fn config_is_written_in_flannels_key_order() {
        let config = serde_json::json!({
            "Network": "10.5.0.0/16",
            "EnableNFTables": true,
            "Backend": {"Type": "vxlan", "VNI": 4, "DirectRouting": true},
        });
        let text = config_json(&config);
        assert_eq!(
            text,
            r#"{"Network":"10.5.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan","DirectRouting":true,"VNI":4}}"#
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, config, "the same object");
    }
}
