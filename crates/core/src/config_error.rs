//! Why a network config is refused: one message per mistake, naming the key and what to do.
//! Shared by the config parser and the backends' option parsers (crate::wireguard).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("not valid JSON ({0}); it must be an object such as {{\"Network\":\"10.5.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}")]
    NotJson(String),
    #[error("{key} is {value}, which is not {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("Network is missing: set it to the cluster's CIDR, e.g. \"Network\":\"10.5.0.0/16\"")]
    MissingNetwork,
    #[error("Network {0} is smaller than /28, too small to give each node a subnet: use /28 or larger")]
    NetworkTooSmall(Ipv4Net),
    #[error("SubnetLen {0} is larger than 30: a node subnet needs room for a gateway and pods; use 30 or less")]
    SubnetLenTooLong(u8),
    #[error("SubnetLen {len} leaves fewer than four subnets in Network {network}: use at least {min}")]
    SubnetLenTooShort { len: u8, network: Ipv4Net, min: u8 },
    #[error("{key} {addr} is not inside {network_key} {network}")]
    OutsideNetwork {
        key: &'static str,
        addr: IpAddr,
        network_key: &'static str,
        network: IpNet,
    },
    #[error("{key} {addr} is not on a /{len} boundary ({len_key}): use {aligned}")]
    NotAligned {
        key: &'static str,
        addr: IpAddr,
        len: u8,
        len_key: &'static str,
        aligned: IpAddr,
    },
    #[error("{min_key} {min} is above {max_key} {max}")]
    MinAboveMax {
        min_key: &'static str,
        min: IpAddr,
        max_key: &'static str,
        max: IpAddr,
    },
    #[error("EnableIPv4 and EnableIPv6 are both false: enable at least one (EnableIPv4 with Network, or EnableIPv6 with IPv6Network)")]
    NoFamily,
    #[error("the {0} backend carries IPv4 only and EnableIPv4 is false: set EnableIPv4 to true with a Network, or use vxlan, host-gw or wireguard for an IPv6-only cluster")]
    Ipv4Required(&'static str),
    #[error("EnableIPv6 is true but IPv6Network is missing: set it to the cluster's IPv6 CIDR, e.g. \"IPv6Network\":\"fc00::/48\"")]
    MissingIpv6Network,
    #[error("IPv6Network {0} is smaller than /124, too small to give each node a subnet: use /124 or larger")]
    Ipv6NetworkTooSmall(Ipv6Net),
    #[error("IPv6SubnetLen {0} is larger than 126: a node subnet needs room for a gateway and pods; use 126 or less")]
    Ipv6SubnetLenTooLong(u8),
    #[error("IPv6SubnetLen {len} leaves fewer than four subnets in IPv6Network {network}: use at least {min}")]
    Ipv6SubnetLenTooShort { len: u8, network: Ipv6Net, min: u8 },
    #[error("EnableIPv6 is true but Backend.Type {0:?} carries IPv4 only ({why}): use \"vxlan\", \"host-gw\" or \"wireguard\" for dual stack, or set EnableIPv6 to false", why = ipv4_only_because(.0))]
    Ipv6Unsupported(&'static str),
    #[error("Backend.Type {0:?} is not a backend weft knows: use \"vxlan\", \"host-gw\", \"wireguard\" or \"udp\"")]
    UnknownBackend(String),
    #[error(
        "Backend.Type {0:?} is a flannel backend weft does not implement yet: use \"vxlan\", \"host-gw\", \"wireguard\" or \"udp\""
    )]
    UnsupportedBackend(String),
}

/// Why a backend refuses EnableIPv6.
fn ipv4_only_because(backend: &str) -> &'static str {
    match backend {
        "udp" => "as flannel's",
        _ => "weft's does not do IPv6",
    }
}
