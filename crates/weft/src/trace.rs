//! `weft trace <src> <dst>`: how a packet from a local pod (or the node) travels to a pod address,
//! read from this node's live tables; where the walk breaks, it says why and what to do. IPv4 or
//! IPv6 (a dual-stack pod's IPv6 address takes the node's IPv6 path).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use weft_trace::{render_json, render_text, run_trace, TraceOptions, DEFAULT_SUBNET_FILE};

use weft_control::etcd_args::EtcdArgs;

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Source: a pod on this node, or an address of the node (IPv4 or IPv6).
    pub src: IpAddr,
    /// Destination: any pod address in the cluster, of the source's family.
    pub dst: IpAddr,
    /// weftd's subnet file.
    #[arg(long, env = "FLANNELD_SUBNET_FILE", default_value = DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,
    /// The pods' bridge.
    #[arg(long, default_value = "cni0")]
    pub bridge: String,
    /// Skip the lease checks (no etcd).
    #[arg(long)]
    pub no_etcd: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Print the walk as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the walk; exits 1 when it breaks somewhere.
pub fn run(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let mut opts = TraceOptions::new(args.src, args.dst);
    opts.subnet_file = args.subnet_file.clone();
    opts.bridge = args.bridge.clone();
    opts.etcd = (!args.no_etcd).then(|| args.etcd.options());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let trace = runtime.block_on(run_trace(&opts))?;
    if args.json {
        println!("{}", render_json(&trace));
    } else {
        print!("{}", render_text(&trace));
    }
    Ok(if trace.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
