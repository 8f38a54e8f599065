//! What `weft trace` is asked (source, destination, where to read from) and how it fails.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_control::etcd::EtcdOptions;
use weft_kernel::netlink::NetlinkError;

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
