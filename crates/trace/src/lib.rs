//! `weft trace <src> <dst>`: walks a packet's path on this node through the live kernel tables
//! (route, neighbour, FDB, underlay route, forwarding, MTUs) and the owning lease in etcd, and
//! says, for each hop, which entry decided it, or where and why the path breaks. IPv4 and IPv6
//! packets take the same walk, each through its own family's side of a dual-stack node
//! ([`family::Family`]).
//!
//! Collection ([`collect`]) only reads; the walk ([`walk::walk`]) is pure and unit-tested from
//! plain [`facts::Facts`]. It runs in the calling thread's network namespace.

pub mod collect;
pub mod facts;
pub mod family;
pub mod forward;
pub mod report;
pub mod walk;
pub mod wireguard;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_control::etcd::EtcdOptions;
use weft_kernel::netlink::NetlinkError;

pub use report::{render_json, render_text, Cause, Status, Step, Trace};

/// Where flanneld and weftd write subnet.env by default.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// The bridge the CNI plugin attaches pods to.
pub const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace: {0}")]
    Netlink(NetlinkError),
    #[error(
        "trace: the source {src} and the destination {dst} are of different address families: give two IPv4 \
         or two IPv6 addresses (a dual-stack pod has one of each)"
    )]
    MixedFamilies { src: IpAddr, dst: IpAddr },
}

/// What to trace, and where to read from.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// A pod of this node, or an address of the node itself.
    pub src: IpAddr,
    /// Any pod address in the cluster, of the source's family.
    pub dst: IpAddr,
    /// `--subnet-file`.
    pub subnet_file: PathBuf,
    /// The pods' bridge (`cni0`).
    pub bridge: String,
    /// How to reach etcd (weftd's `--etcd-*` flags); None skips the lease checks.
    pub etcd: Option<EtcdOptions>,
    /// Give up on etcd after this long.
    pub etcd_timeout: Duration,
}

impl TraceOptions {
    pub fn new(src: IpAddr, dst: IpAddr) -> TraceOptions {
        TraceOptions {
            src,
            dst,
            subnet_file: PathBuf::from(DEFAULT_SUBNET_FILE),
            bridge: DEFAULT_BRIDGE.to_string(),
            etcd: None,
            etcd_timeout: Duration::from_secs(10),
        }
    }
}

/// Reads this node's tables (and etcd) and walks `src -> dst`. Errors only when the kernel
/// cannot be read at all, or when `src` and `dst` are of different families; everything else is
/// a step of the trace.
pub async fn run_trace(opts: &TraceOptions) -> Result<Trace, TraceError> {
    if family::Family::of(opts.src) != family::Family::of(opts.dst) {
        return Err(TraceError::MixedFamilies {
            src: opts.src,
            dst: opts.dst,
        });
    }
    let facts = collect::collect(opts).await?;
    Ok(walk::walk(&facts))
}
