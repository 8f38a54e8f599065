//! flanneld's command line, flag for flag, each also read from `FLANNELD_<NAME>`, so an existing
//! flanneld unit file or DaemonSet works by changing the binary.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::{ArgAction, Parser};
use weft_control::etcd_args::EtcdArgs;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "weftd",
    version = crate::VERSION,
    about = "weft node daemon: a drop-in replacement for flanneld"
)]
pub struct Flags {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Interface (name or IP) for inter-host traffic; repeat to try several in order.
    #[arg(long, env = "FLANNELD_IFACE", value_delimiter = ',', action = ArgAction::Append)]
    pub iface: Vec<String>,
    /// Regex of interface names (or IPs) to choose from; repeatable.
    #[arg(long, env = "FLANNELD_IFACE_REGEX", value_delimiter = ',', action = ArgAction::Append)]
    pub iface_regex: Vec<String>,
    /// Use the interface that routes to this address.
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<Ipv4Addr>,
    /// IP other nodes use to reach this one (default: the chosen interface's IP).
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 other nodes use to reach this one when the config enables IPv6 (default: the chosen
    /// interface's first global IPv6 address).
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where to write the subnet.env file.
    #[arg(long, env = "FLANNELD_SUBNET_FILE", default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// Renew the lease this many minutes before it expires.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60)]
    pub subnet_lease_renew_margin: u64,
    /// Masquerade traffic leaving the cluster network.
    #[arg(long, env = "FLANNELD_IP_MASQ", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set)]
    pub ip_masq: bool,
    /// Seconds between checks of the masquerade and forward rules.
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5)]
    pub iptables_resync: u64,
    /// Add ACCEPT rules for the cluster network to FORWARD.
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = ArgAction::Set)]
    pub iptables_forward_rules: bool,
    /// Address the healthz server listens on.
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: Ipv4Addr,
    /// Port of the healthz server (0 = off).
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// weft: port serving Prometheus /metrics (0 = off; /metrics is also served on the healthz port).
    #[arg(long, env = "WEFTD_METRICS_PORT", default_value_t = 0)]
    pub metrics_port: u16,
    /// weft: seconds between full comparisons of the kernel state with the leases (lease events
    /// and kernel notifications are applied as they come; this is the safety net).
    #[arg(long, env = "WEFTD_RECONCILE_INTERVAL", default_value_t = 60)]
    pub reconcile_interval: u64,
    /// weft: seconds etcd may be unreachable before /healthz reports unhealthy.
    #[arg(long, env = "WEFTD_HEALTHZ_ETCD_GRACE", default_value_t = 60)]
    pub healthz_etcd_grace: u64,
    /// flanneld's Kubernetes subnet manager (not supported: weft uses etcd).
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, hide = true)]
    pub kube_subnet_mgr: bool,
    /// klog verbosity, accepted for flanneld compatibility (use RUST_LOG for weft's log levels).
    #[arg(long = "v", hide = true)]
    pub klog_v: Option<u32>,
    /// klog option, accepted and ignored for flanneld compatibility.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", hide = true)]
    pub logtostderr: Option<String>,
}

/// Go's flag package takes `-flag` as well as `--flag`; flanneld unit files use both.
pub fn normalize_go_style(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let single_dash_long = i > 0
                && a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && a.as_bytes()[1].is_ascii_alphabetic();
            if single_dash_long {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

impl Flags {
    pub fn parse_from_env_and_args() -> Self {
        Flags::parse_from(normalize_go_style(std::env::args()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Flags {
        let mut v = vec!["weftd".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        Flags::try_parse_from(normalize_go_style(v)).unwrap()
    }

    #[test]
    fn defaults_match_flanneld() {
        let f = parse(&[]);
        assert_eq!(
            f.etcd.etcd_endpoints,
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(f.etcd.etcd_prefix, "/coreos.com/network");
        assert_eq!(f.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(f.subnet_lease_renew_margin, 60);
        assert!(!f.ip_masq);
        assert_eq!(f.iptables_resync, 5);
        assert!(f.iptables_forward_rules);
        assert_eq!(f.healthz_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(f.healthz_port, 0);
    }

    #[test]
    fn go_style_flags_and_bools() {
        let f = parse(&[
            "-etcd-endpoints=https://198.51.100.254:2379",
            "--iface=eth0",
            "-iface",
            "192.0.2.7",
            "--ip-masq",
            "--iptables-forward-rules=false",
            "-v=2",
        ]);
        assert_eq!(f.etcd.etcd_endpoints, ["https://198.51.100.254:2379"]);
        assert_eq!(f.iface, ["eth0", "192.0.2.7"]);
        assert!(f.ip_masq);
        assert!(!f.iptables_forward_rules);
        assert!(!parse(&["--ip-masq=false"]).ip_masq);
    }
}
