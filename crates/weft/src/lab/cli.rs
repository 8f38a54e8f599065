//! The `weft lab ...` command line: argument parsing and printing; the work is in [`Lab`].

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::{Args, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use weft_core::BackendKind;

use super::error::{LabError, Result};
use super::{iproute, BenchOptions, ControlBenchOptions, Lab, LabSpec, WeftdBinary};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab: switch + etcd (TLS), N hosts running weftd, one pod per host.
    Up(UpArgs),
    /// Add host N+1 (and its pod) to a running lab.
    AddNode(NameArg),
    /// SIGTERM weftd on one host and wait for it to exit.
    StopNode(NodeArgs),
    /// Start weftd on one host again with the same arguments.
    StartNode(NodeArgs),
    /// Stop then start weftd on one host; kernel state is left alone.
    RestartNode(NodeArgs),
    /// Hosts, leases from etcd, and the pod-to-pod reachability matrix.
    Status {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a host's (or its pod's) network namespace.
    Exec {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        node: usize,
        /// Run in the host's pod instead of the host.
        #[arg(long)]
        pod: bool,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Replace weftd on hosts of a wireguard lab by Debian's wireguard-go, configured with `wg`
    /// from the leases as flannel's kernel backend would configure its device (interop, bench).
    WireguardGo {
        #[command(flatten)]
        name: NameArg,
        /// The hosts (repeatable).
        #[arg(long = "node", required = true)]
        nodes: Vec<usize>,
        /// A preshared key for every peer (base64, `wg genpsk`).
        #[arg(long)]
        psk: Option<String>,
    },
    /// TCP throughput and ping RTT, pod-to-pod vs host-to-host.
    Bench {
        #[command(flatten)]
        name: NameArg,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
        /// Over IPv6: pod IPv6 addresses against the IPv6 underlay (a --dual-stack lab).
        #[arg(long)]
        ipv6: bool,
    },
    /// Control-plane cost on fresh one-host vxlan labs, one per lease count: convergence of N
    /// leases, one lease added or deleted, idle CPU, RSS, healing of hand-deleted entries.
    BenchControl(BenchControlArgs),
    /// Tear a lab down (idempotent).
    Down {
        #[arg(long, default_value = "weft", conflicts_with = "all")]
        name: String,
        /// Every lab on this machine.
        #[arg(long)]
        all: bool,
    },
    /// List the labs on this machine.
    List,
}

#[derive(Debug, Args)]
pub struct NameArg {
    #[arg(long, default_value = "weft")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[arg(long)]
    pub node: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Backend {
    Vxlan,
    Udp,
    HostGw,
    Wireguard,
}

impl From<Backend> for BackendKind {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Vxlan => BackendKind::Vxlan,
            Backend::Udp => BackendKind::Udp,
            Backend::HostGw => BackendKind::HostGw,
            Backend::Wireguard => BackendKind::Wireguard,
        }
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[arg(long, default_value = "weft")]
    pub name: String,
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    #[arg(long, value_enum, default_value = "vxlan")]
    pub backend: Backend,
    #[arg(long, default_value = "10.5.0.0/16")]
    pub network: Ipv4Net,
    /// Pass --ip-masq to every weftd.
    #[arg(long)]
    pub ip_masq: bool,
    /// Set EnableNFTables in the network config.
    #[arg(long)]
    pub nftables: bool,
    /// Extra keys of the Backend object as JSON, e.g. '{"DirectRouting":true}'.
    #[arg(long)]
    pub backend_options: Option<String>,
    /// The weftd binary (default: next to this executable, else PATH).
    #[arg(long)]
    pub weftd: Option<PathBuf>,
    /// Start no weftd (and so no pods): for testing the lab itself.
    #[arg(long, conflicts_with = "weftd")]
    pub no_weftd: bool,
    /// An extra argument for every weftd (repeatable).
    #[arg(long = "weftd-arg", allow_hyphen_values = true)]
    pub weftd_args: Vec<String>,
    /// Seconds to wait for every host's subnet.env.
    #[arg(long, default_value_t = 30)]
    pub subnet_timeout: u64,
    /// Hosts run Debian's dockerd on weft's subnet (options from `weft docker-opts`) with one
    /// busybox container each, instead of the lab's cni0 pod.
    #[arg(long, conflicts_with = "no_weftd")]
    pub docker: bool,
    /// Dual stack: IPv6 underlay addresses from 2001:db8::/64, EnableIPv6 with IPv6Network
    /// fc00::/48, and pods with an IPv4 and an IPv6 address (vxlan and host-gw).
    #[arg(long)]
    pub dual_stack: bool,
    /// IPv6-only: as --dual-stack, but EnableIPv4 false, so pods have an IPv6 address only
    /// (vxlan and host-gw).
    #[arg(long, conflicts_with = "dual_stack")]
    pub ipv6_only: bool,
}

#[derive(Debug, Args)]
pub struct BenchControlArgs {
    /// The lab's name (rebuilt for each lease count).
    #[arg(long, default_value = "bench-control")]
    pub name: String,
    /// Lease counts, one lab each.
    #[arg(long, value_delimiter = ',', default_value = "500,5000,20000")]
    pub leases: Vec<usize>,
    /// Lease events after convergence (half adds, half deletes), each timed.
    #[arg(long, default_value_t = 100)]
    pub events: usize,
    /// Hand deletions of each kind (neighbour, FDB entry, route) to time the healing of.
    #[arg(long, default_value_t = 10)]
    pub heal_runs: usize,
    /// Seconds over which idle CPU is measured after the events (reported per 10 s).
    #[arg(long, default_value_t = 30)]
    pub idle_seconds: u64,
    /// The weftd binary (default: next to this executable, else PATH).
    #[arg(long)]
    pub weftd: Option<PathBuf>,
    /// An extra argument for weftd (repeatable); none by default, so weftd reconciles at its
    /// default interval.
    #[arg(long = "weftd-arg", allow_hyphen_values = true)]
    pub weftd_args: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

impl LabCommand {
    pub fn run(self) -> Result<ExitCode> {
        match self {
            LabCommand::Up(args) => up(args)?,
            LabCommand::WireguardGo {
                name: NameArg { name },
                nodes,
                psk,
            } => {
                let mut lab = Lab::open(&name)?;
                for (node, key) in nodes.iter().zip(lab.wireguard_go(&nodes, psk.as_deref())?) {
                    println!("h{node}: wireguard-go, public key {key}");
                }
            }
            LabCommand::AddNode(NameArg { name }) => {
                let mut lab = Lab::open(&name)?;
                let node = lab.add_node()?;
                let pod = lab.pod(node).map(|p| p.addresses()).unwrap_or_else(|_| "none".into());
                println!("added node {node} ({}), pod {pod}", lab.host_ns(node)?);
            }
            LabCommand::StopNode(NodeArgs {
                name: NameArg { name },
                node,
            }) => Lab::open(&name)?.stop_node(node)?,
            LabCommand::StartNode(NodeArgs {
                name: NameArg { name },
                node,
            }) => Lab::open(&name)?.start_node(node)?,
            LabCommand::RestartNode(NodeArgs {
                name: NameArg { name },
                node,
            }) => Lab::open(&name)?.restart_node(node)?,
            LabCommand::Status {
                name: NameArg { name },
                json,
            } => status(&name, json)?,
            LabCommand::Exec {
                name: NameArg { name },
                node,
                pod,
                cmd,
            } => return exec(&name, node, pod, cmd),
            LabCommand::Bench {
                name: NameArg { name },
                seconds,
                runs,
                json,
                ipv6,
            } => {
                let options = BenchOptions {
                    seconds,
                    runs,
                    ipv6,
                    ..BenchOptions::default()
                };
                let report = Lab::open(&name)?.bench(&options)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
                } else {
                    print!("{report}");
                }
            }
            LabCommand::BenchControl(args) => bench_control(args)?,
            LabCommand::Down { name, all } => {
                if all {
                    Lab::down_all()?;
                } else {
                    Lab::down_by_name(&name)?;
                }
            }
            LabCommand::List => {
                for name in Lab::list() {
                    let up = Lab::open(&name).is_ok();
                    let namespaces = iproute::netns_list()
                        .into_iter()
                        .filter(|ns| super::topology::is_lab_ns(&name, ns))
                        .count();
                    println!(
                        "{name}: {} ({namespaces} namespaces)",
                        if up { "up" } else { "partial" }
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `weft lab up`: builds the lab and prints its pods (and containers) and where its files are.
fn up(args: UpArgs) -> Result<()> {
    let mut spec = LabSpec::new(&args.name, args.nodes, args.backend.into());
    spec.network = args.network;
    spec.ip_masq = args.ip_masq;
    spec.nftables = args.nftables;
    spec.weftd_args = args.weftd_args;
    spec.subnet_timeout = std::time::Duration::from_secs(args.subnet_timeout);
    spec.keep = true;
    spec.docker = args.docker;
    spec.dual_stack = args.dual_stack || args.ipv6_only;
    spec.ipv6_only = args.ipv6_only;
    spec.weftd = match (args.no_weftd, args.weftd) {
        (true, _) => WeftdBinary::Skip,
        (false, Some(path)) => WeftdBinary::At(path),
        (false, None) => WeftdBinary::Find,
    };
    if let Some(json) = args.backend_options {
        spec.backend_options = serde_json::from_str(&json)
            .map_err(|e| LabError::BadSpec(format!("--backend-options {json:?} is not a JSON object: {e}")))?;
    }
    let lab = Lab::up(spec)?;
    println!(
        "lab {} is up: {} nodes, config {}",
        lab.name(),
        lab.nodes(),
        super::config_json(&lab.state().config)
    );
    for pod in lab.pods() {
        println!(
            "  h{}: {} pod {} ({})",
            pod.node,
            lab.state().hosts[pod.node - 1].ns,
            pod.addresses(),
            pod.ns
        );
    }
    if lab.state().docker {
        for node in 1..=lab.nodes() {
            let host = super::docker::DockerHost::of(&lab, node)?;
            println!(
                "  h{node}: container {}: {} -H {} ps",
                host.container(),
                super::docker::DOCKER,
                host.host_arg()
            );
        }
    }
    println!("files in {}", lab.dir().display());
    Ok(())
}

/// `weft lab status`: the table (or JSON), with Docker's containers in a Docker lab.
fn status(name: &str, json: bool) -> Result<()> {
    let lab = Lab::open(name)?;
    let status = lab.status();
    let containers = lab.state().docker.then(|| super::docker::containers(&lab));
    if json {
        let mut value = serde_json::to_value(&status).expect("status serializes");
        if let Some(containers) = &containers {
            value["containers"] = serde_json::to_value(containers).expect("containers serialize");
        }
        println!("{}", serde_json::to_string_pretty(&value).expect("status serializes"));
    } else {
        print!("{status}");
        if let Some(containers) = &containers {
            print!("{}", super::docker::ContainersTable(containers));
        }
    }
    Ok(())
}

/// `weft lab exec`: runs `cmd` in host `node`'s namespace (or its pod's), exiting with its code.
fn exec(name: &str, node: usize, pod: bool, cmd: Vec<String>) -> Result<ExitCode> {
    let lab = Lab::open(name)?;
    let ns = if pod { lab.pod_ns(node)? } else { lab.host_ns(node)? };
    // A wireguard host's own /run/flannel and /var/run/wireguard (`wg show`).
    let cmd = match (pod, lab.is_wireguard(), cmd.split_first()) {
        (false, true, Some((program, args))) => {
            let (program, args) = super::wireguard::wrap(lab.dir(), node, program, args)?;
            std::iter::once(program).chain(args).collect()
        }
        _ => cmd,
    };
    let status = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(&cmd)
        .status()
        .map_err(|source| LabError::Spawn {
            command: cmd.join(" "),
            source,
        })?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}

/// `weft lab bench-control`: the control-plane benchmark, progress on stderr, the table on stdout.
fn bench_control(args: BenchControlArgs) -> Result<()> {
    let options = ControlBenchOptions {
        name: args.name,
        leases: args.leases,
        events: args.events,
        heal_runs: args.heal_runs,
        idle: std::time::Duration::from_secs(args.idle_seconds),
        weftd: args.weftd.map(WeftdBinary::At).unwrap_or(WeftdBinary::Find),
        weftd_args: args.weftd_args,
    };
    let report = super::bench_control::run(&options, &mut |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
    } else {
        print!("{report}");
    }
    Ok(())
}
