//! The network config stored at `<prefix>/config`, parsed and validated with flannel's defaults
//! and limits. Keys are matched case-insensitively, as Go's encoding/json does for flannel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

pub use crate::config_error::ConfigError;

/// Which datapath the config selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Vxlan,
    HostGw,
    Udp,
    Wireguard,
}

impl BackendKind {
    /// The name flannel uses, which is also the lease's BackendType (udp leases leave it empty).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
            BackendKind::Udp => "udp",
            BackendKind::Wireguard => "wireguard",
        }
    }

    pub fn lease_backend_type(self) -> &'static str {
        match self {
            BackendKind::Udp => "",
            other => other.name(),
        }
    }
}

/// Options of the vxlan backend, with flannel's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanOptions {
    pub vni: u32,
    pub port: u16,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
    /// Underlay MTU to use instead of the interface's.
    pub mtu: Option<u32>,
}

impl Default for VxlanOptions {
    /// flannel's: VNI 1, the Linux port 8472, no GBP, no learning, no direct routing.
    fn default() -> Self {
        VxlanOptions {
            vni: 1,
            port: 8472,
            gbp: false,
            learning: false,
            direct_routing: false,
            mtu: None,
        }
    }
}

/// Options of the udp backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpOptions {
    pub port: u16,
}

/// The IPv4 side of a config: `Network` and the node subnets in it, with flannel's defaults (a /24
/// per node, or prefix + 2 for networks smaller than /22; the first subnet skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Pool {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
}

impl Ipv4Pool {
    /// How many node subnets lie between SubnetMin and SubnetMax.
    pub fn subnet_count(&self) -> u32 {
        ((u32::from(self.subnet_max) - u32::from(self.subnet_min)) >> (32 - self.subnet_len)) + 1
    }
}

/// The IPv6 side of a dual-stack config: `IPv6Network` and the node subnets in it, with flannel's
/// defaults (a /64 per node, or prefix + 2 for networks smaller than /62; the first subnet skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Pool {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Pool {
    /// How many node subnets lie between IPv6SubnetMin and IPv6SubnetMax (saturating).
    pub fn subnet_count(&self) -> u128 {
        let span = u128::from(self.subnet_max) - u128::from(self.subnet_min);
        (span >> (128 - u32::from(self.subnet_len))).saturating_add(1)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The IPv4 pod network: `Some` exactly when `EnableIPv4` is true (flannel's default).
    pub ipv4: Option<Ipv4Pool>,
    /// The IPv6 pod network: `Some` exactly when `EnableIPv6` is true (dual stack or IPv6-only).
    pub ipv6: Option<Ipv6Pool>,
    pub enable_nftables: bool,
    pub backend: BackendKind,
    pub vxlan: VxlanOptions,
    pub udp: UdpOptions,
    pub wireguard: crate::wireguard::WireguardOptions,
    /// The Backend object as written, for diagnostics.
    pub backend_raw: Value,
}

/// Case-insensitive lookup of a JSON object key.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn get_str<'a>(obj: &'a Map<String, Value>, key: &'static str) -> Result<Option<&'a str>, ConfigError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(ConfigError::BadValue {
            key,
            value: v.to_string(),
            expected: "a string",
        }),
    }
}

fn get_bool(obj: &Map<String, Value>, key: &'static str, default: bool) -> Result<bool, ConfigError> {
    match get(obj, key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ConfigError::BadValue {
            key,
            value: v.to_string(),
            expected: "true or false",
        }),
    }
}

fn get_uint(obj: &Map<String, Value>, key: &'static str, max: u64) -> Result<Option<u64>, ConfigError> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(ConfigError::BadValue {
                key,
                value: v.to_string(),
                expected: "a whole number in range",
            }),
        },
    }
}

/// The keys naming one family's network and subnet range.
struct RangeKeys {
    network: &'static str,
    len: &'static str,
    min: &'static str,
    max: &'static str,
}

const IPV4_KEYS: RangeKeys = RangeKeys {
    network: "Network",
    len: "SubnetLen",
    min: "SubnetMin",
    max: "SubnetMax",
};

const IPV6_KEYS: RangeKeys = RangeKeys {
    network: "IPv6Network",
    len: "IPv6SubnetLen",
    min: "IPv6SubnetMin",
    max: "IPv6SubnetMax",
};

/// An address as a number (IPv4 in the low 32 bits), for subnet arithmetic on either family.
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// SubnetMin and SubnetMax (IPv6SubnetMin/Max) of `network` split into /`subnet_len`s, with
/// flannel's defaults: from the second subnet (the first one's first address would be the
/// network's) to the last one. Given ones must be inside the network and on a subnet boundary.
fn subnet_range(
    obj: &Map<String, Value>,
    keys: &RangeKeys,
    network: IpNet,
    subnet_len: u8,
) -> Result<(IpAddr, IpAddr), ConfigError> {
    let ipv6 = network.addr().is_ipv6();
    let addr_of = |b: u128| match ipv6 {
        false => IpAddr::V4(Ipv4Addr::from(b as u32)),
        true => IpAddr::V6(Ipv6Addr::from(b)),
    };
    let size = 1u128 << (network.max_prefix_len() - subnet_len);
    let mask = !(size - 1);
    let read = |key: &'static str| -> Result<Option<IpAddr>, ConfigError> {
        let Some(s) = get_str(obj, key)? else { return Ok(None) };
        match s.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv6() == ipv6 => Ok(Some(ip)),
            _ => Err(ConfigError::BadValue {
                key,
                value: format!("{s:?}"),
                expected: if ipv6 { "an IPv6 address" } else { "an IPv4 address" },
            }),
        }
    };
    let check = |key: &'static str, addr: IpAddr| -> Result<IpAddr, ConfigError> {
        if !network.contains(&addr) {
            return Err(ConfigError::OutsideNetwork {
                key,
                addr,
                network_key: keys.network,
                network,
            });
        }
        let aligned = addr_of(bits(addr) & mask);
        if aligned != addr {
            return Err(ConfigError::NotAligned {
                key,
                addr,
                len: subnet_len,
                len_key: keys.len,
                aligned,
            });
        }
        Ok(addr)
    };
    let min = match read(keys.min)? {
        Some(a) => check(keys.min, a)?,
        None => addr_of(bits(network.network()) + size),
    };
    let max = match read(keys.max)? {
        Some(a) => check(keys.max, a)?,
        None => addr_of(bits(network.broadcast()) & mask),
    };
    if bits(min) > bits(max) {
        return Err(ConfigError::MinAboveMax {
            min_key: keys.min,
            min,
            max_key: keys.max,
            max,
        });
    }
    Ok((min, max))
}

/// `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin`, `IPv6SubnetMax` with flannel's defaults and limits
/// (subnet/config.go: at most /126 per node, at least four subnets, a network no smaller than /124).
fn parse_ipv6_pool(obj: &Map<String, Value>) -> Result<Ipv6Pool, ConfigError> {
    let network: Ipv6Net = match get_str(obj, "IPv6Network")? {
        None => return Err(ConfigError::MissingIpv6Network),
        Some(s) => s.parse().map_err(|_| ConfigError::BadValue {
            key: "IPv6Network",
            value: format!("{s:?}"),
            expected: "an IPv6 CIDR such as fc00::/48",
        })?,
    };
    let network = network.trunc();
    let plen = network.prefix_len();
    let subnet_len = match get_uint(obj, "IPv6SubnetLen", 128)? {
        Some(len) if len != 0 => {
            let len = len as u8;
            if len > 126 {
                return Err(ConfigError::Ipv6SubnetLenTooLong(len));
            }
            if len < plen + 2 {
                return Err(ConfigError::Ipv6SubnetLenTooShort {
                    len,
                    network,
                    min: plen + 2,
                });
            }
            len
        }
        _ if plen > 124 => return Err(ConfigError::Ipv6NetworkTooSmall(network)),
        _ if plen <= 62 => 64,
        _ => plen + 2,
    };
    let (min, max) = subnet_range(obj, &IPV6_KEYS, network.into(), subnet_len)?;
    let (IpAddr::V6(subnet_min), IpAddr::V6(subnet_max)) = (min, max) else {
        unreachable!("subnet_range keeps the network's family")
    };
    Ok(Ipv6Pool {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

/// `Network`, `SubnetLen`, `SubnetMin`, `SubnetMax` with flannel's defaults and limits.
fn parse_ipv4_pool(obj: &Map<String, Value>) -> Result<Ipv4Pool, ConfigError> {
    let network: Ipv4Net = match get_str(obj, "Network")? {
        None => return Err(ConfigError::MissingNetwork),
        Some(s) => s.parse().map_err(|_| ConfigError::BadValue {
            key: "Network",
            value: format!("{s:?}"),
            expected: "an IPv4 CIDR such as 10.5.0.0/16",
        })?,
    };
    let network = network.trunc();
    let subnet_len = ipv4_subnet_len(obj, network)?;
    let (min, max) = subnet_range(obj, &IPV4_KEYS, network.into(), subnet_len)?;
    let (IpAddr::V4(subnet_min), IpAddr::V4(subnet_max)) = (min, max) else {
        unreachable!("subnet_range keeps the network's family")
    };
    Ok(Ipv4Pool {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

/// SubnetLen with flannel's default (a /24 for networks of /22 or larger, else prefix + 2) and
/// limits (at most /30, at least four subnets, a network no smaller than /28).
fn ipv4_subnet_len(obj: &Map<String, Value>, network: Ipv4Net) -> Result<u8, ConfigError> {
    let plen = network.prefix_len();
    match get_uint(obj, "SubnetLen", 32)? {
        Some(len) => {
            let len = len as u8;
            if len > 30 {
                return Err(ConfigError::SubnetLenTooLong(len));
            }
            if len < plen + 2 {
                return Err(ConfigError::SubnetLenTooShort {
                    len,
                    network,
                    min: plen + 2,
                });
            }
            Ok(len)
        }
        None if plen > 28 => Err(ConfigError::NetworkTooSmall(network)),
        None if plen <= 22 => Ok(24),
        None => Ok(plen + 2),
    }
}

/// Backend.Type; flannel's default when none is given is udp.
fn backend_kind(be: &Map<String, Value>) -> Result<BackendKind, ConfigError> {
    let type_name = get_str(be, "Type")?.unwrap_or("udp");
    Ok(match type_name.to_ascii_lowercase().as_str() {
        "vxlan" => BackendKind::Vxlan,
        "host-gw" => BackendKind::HostGw,
        "udp" => BackendKind::Udp,
        "wireguard" => BackendKind::Wireguard,
        "ipip" | "extension" | "alloc" | "alivpc" | "aws-vpc" | "gce" | "tencent-vpc" | "ipsec" => {
            return Err(ConfigError::UnsupportedBackend(type_name.to_string()))
        }
        _ => return Err(ConfigError::UnknownBackend(type_name.to_string())),
    })
}

impl NetworkConfig {
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(json).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| ConfigError::NotJson("the value is not a JSON object".into()))?;

        let ipv4 = match get_bool(obj, "EnableIPv4", true)? {
            true => Some(parse_ipv4_pool(obj)?),
            false => None,
        };
        let ipv6 = match get_bool(obj, "EnableIPv6", false)? {
            true => Some(parse_ipv6_pool(obj)?),
            false => None,
        };
        if ipv4.is_none() && ipv6.is_none() {
            return Err(ConfigError::NoFamily);
        }
        let enable_nftables = get_bool(obj, "EnableNFTables", false)?;

        let backend_raw = get(obj, "Backend").cloned().unwrap_or(Value::Null);
        let empty = Map::new();
        let be = match &backend_raw {
            Value::Null => &empty,
            Value::Object(m) => m,
            other => {
                return Err(ConfigError::BadValue {
                    key: "Backend",
                    value: other.to_string(),
                    expected: "an object such as {\"Type\":\"vxlan\"}",
                })
            }
        };
        let backend = backend_kind(be)?;
        // udp carries IPv4 only, as flannel's. (With IPv6 off, IPv4 is on: NoFamily above.)
        if backend == BackendKind::Udp && ipv6.is_some() {
            return Err(ConfigError::Ipv6Unsupported(backend.name()));
        }
        let vxlan = VxlanOptions {
            vni: get_uint(be, "VNI", 0xff_ffff)?.unwrap_or(1) as u32,
            port: get_uint(be, "Port", 65535)?.filter(|p| *p != 0).unwrap_or(8472) as u16,
            gbp: get_bool(be, "GBP", false)?,
            learning: get_bool(be, "Learning", false)?,
            direct_routing: get_bool(be, "DirectRouting", false)?,
            mtu: get_uint(be, "MTU", 65535)?.filter(|m| *m != 0).map(|m| m as u32),
        };
        let udp = UdpOptions {
            port: get_uint(be, "Port", 65535)?.filter(|p| *p != 0).unwrap_or(8285) as u16,
        };

        Ok(NetworkConfig {
            ipv4,
            ipv6,
            enable_nftables,
            backend,
            vxlan,
            udp,
            wireguard: match backend {
                BackendKind::Wireguard => {
                    let opts = crate::wireguard::WireguardOptions::parse(be)?;
                    opts.check_families(ipv4.is_some(), ipv6.is_some())?;
                    opts
                }
                _ => Default::default(),
            },
            backend_raw,
        })
    }

    /// The IPv4 pod network (`Network`), if IPv4 is enabled.
    pub fn network(&self) -> Option<Ipv4Net> {
        self.ipv4.map(|p| p.network)
    }

    /// The IPv6 pod network (`IPv6Network`), if IPv6 is enabled.
    pub fn ipv6_network(&self) -> Option<Ipv6Net> {
        self.ipv6.map(|p| p.network)
    }

    /// The IPv4 pool of a backend that carries IPv4 only (udp), which `parse` has made sure is
    /// there.
    pub fn ipv4_pool(&self) -> Result<Ipv4Pool, ConfigError> {
        self.ipv4.ok_or(ConfigError::Ipv4Required(self.backend.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse(s)
    }

    #[test]
    fn flannel_documented_defaults() {
        let c = parse(r#"{"Network":"10.3.0.0/16"}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 24);
        assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 3, 1, 0));
        assert_eq!(c.ipv4.unwrap().subnet_max, Ipv4Addr::new(10, 3, 255, 0));
        assert_eq!(c.backend, BackendKind::Udp);
        assert_eq!(c.udp.port, 8285);
        assert!(!c.enable_nftables);
        assert_eq!(c.ipv4.unwrap().subnet_count(), 255);
    }

    #[test]
    fn small_networks_get_prefix_plus_two() {
        let c = parse(r#"{"Network":"10.3.0.0/24"}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 26);
        assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 3, 0, 64));
        assert_eq!(c.ipv4.unwrap().subnet_max, Ipv4Addr::new(10, 3, 0, 192));
        assert_eq!(
            parse(r#"{"Network":"10.3.0.0/22"}"#).unwrap().ipv4.unwrap().subnet_len,
            24
        );
        assert_eq!(
            parse(r#"{"Network":"10.3.0.0/28"}"#).unwrap().ipv4.unwrap().subnet_len,
            30
        );
    }

    #[test]
    fn keys_are_case_insensitive() {
        let c = parse(
            r#"{"network":"10.5.0.0/16","subnetlen":26,"backend":{"type":"vxlan","vni":7,"directrouting":true}}"#,
        )
        .unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 26);
        assert_eq!(c.backend, BackendKind::Vxlan);
        assert_eq!(c.vxlan.vni, 7);
        assert_eq!(c.vxlan.port, 8472);
        assert!(c.vxlan.direct_routing);
    }

    #[test]
    fn vxlan_defaults() {
        let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(
            c.vxlan,
            VxlanOptions {
                vni: 1,
                port: 8472,
                gbp: false,
                learning: false,
                direct_routing: false,
                mtu: None
            }
        );
        assert_eq!(c.vxlan, VxlanOptions::default(), "the Default is flannel's");
        assert_eq!(c.backend.lease_backend_type(), "vxlan");
        assert_eq!(BackendKind::Udp.lease_backend_type(), "");
    }

    #[test]
    fn bad_inputs_are_refused_with_the_key_named() {
        let e = parse(r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#).unwrap_err();
        assert_eq!(e, ConfigError::SubnetLenTooLong(31));
        assert!(e.to_string().contains("SubnetLen 31"));
        let e = parse(r#"{"Network":"10.5.0.0/29"}"#).unwrap_err();
        assert!(matches!(e, ConfigError::NetworkTooSmall(_)), "{e}");
        let e = parse(r#"{"Network":"10.5.0.0/16","SubnetLen":17}"#).unwrap_err();
        assert!(matches!(e, ConfigError::SubnetLenTooShort { min: 18, .. }), "{e}");
        let e = parse(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.7"}"#).unwrap_err();
        assert!(
            e.to_string().contains("SubnetMin 10.5.1.7 is not on a /24 boundary"),
            "{e}"
        );
        let e = parse(r#"{"Network":"10.5.0.0/16","SubnetMax":"10.6.1.0"}"#).unwrap_err();
        assert!(matches!(e, ConfigError::OutsideNetwork { key: "SubnetMax", .. }), "{e}");
        let e = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"carrier-pigeon"}}"#).unwrap_err();
        assert!(e.to_string().contains("\"carrier-pigeon\""), "{e}");
        assert!(matches!(
            parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}"#),
            Err(ConfigError::UnsupportedBackend(_))
        ));
        assert_eq!(parse(r#"{"SubnetLen":24}"#).unwrap_err(), ConfigError::MissingNetwork);
        assert!(matches!(parse("{not json"), Err(ConfigError::NotJson(_))));
        assert!(matches!(
            parse(r#"{"Network":"10.5.0.0/33"}"#),
            Err(ConfigError::BadValue { key: "Network", .. })
        ));
        assert!(matches!(
            parse(r#"{"Network":"10.5.0.0/16","SubnetLen":"24"}"#),
            Err(ConfigError::BadValue { key: "SubnetLen", .. })
        ));
    }

    #[test]
    fn explicit_min_max_are_kept() {
        let c = parse(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.12.0"}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_count(), 3);
        assert!(matches!(
            parse(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.12.0","SubnetMax":"10.5.10.0"}"#),
            Err(ConfigError::MinAboveMax { .. })
        ));
    }

    #[test]
    fn ipv6_defaults_follow_flannel() {
        let c = parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.network, "fc00::/48".parse::<Ipv6Net>().unwrap());
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, "fc00:0:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_max, "fc00:0:0:ffff::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_count(), 65535);
        let small = parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/120","Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        let small = small.ipv6.unwrap();
        assert_eq!(small.subnet_len, 122);
        assert_eq!(small.subnet_min, "fc00::40".parse::<Ipv6Addr>().unwrap());
        assert_eq!(small.subnet_max, "fc00::c0".parse::<Ipv6Addr>().unwrap());
        let off = parse(r#"{"Network":"10.5.0.0/16","IPv6Network":"fc00::/48"}"#).unwrap();
        assert_eq!(
            off.ipv6, None,
            "IPv6Network without EnableIPv6 is ignored, as by flannel"
        );
    }

    #[test]
    fn bad_ipv6_configs_name_the_key() {
        let base = r#""Network":"10.5.0.0/16","EnableIPv6":true"#;
        let p = |rest: &str| {
            let backend = if rest.contains("Backend") {
                ""
            } else {
                r#","Backend":{"Type":"vxlan"}"#
            };
            parse(&format!("{{{base}{rest}{backend}}}"))
        };
        assert_eq!(p("").unwrap_err(), ConfigError::MissingIpv6Network);
        assert!(p("").unwrap_err().to_string().contains("IPv6Network is missing"));
        assert!(matches!(
            p(r#","IPv6Network":"fc00::/125""#),
            Err(ConfigError::Ipv6NetworkTooSmall(_))
        ));
        assert_eq!(
            p(r#","IPv6Network":"fc00::/48","IPv6SubnetLen":127"#).unwrap_err(),
            ConfigError::Ipv6SubnetLenTooLong(127)
        );
        let e = p(r#","IPv6Network":"fc00::/48","IPv6SubnetLen":49"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("IPv6SubnetLen 49 leaves fewer than four subnets"),
            "{e}"
        );
        let e = p(r#","IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::8""#).unwrap_err();
        assert!(
            e.to_string()
                .contains("IPv6SubnetMin fc00:0:0:1::8 is not on a /64 boundary (IPv6SubnetLen)"),
            "{e}"
        );
        let e = p(r#","IPv6Network":"fc00::/48","IPv6SubnetMax":"fc01::""#).unwrap_err();
        assert!(
            e.to_string()
                .contains("IPv6SubnetMax fc01:: is not inside IPv6Network fc00::/48"),
            "{e}"
        );
        assert!(matches!(
            p(r#","IPv6Network":"10.0.0.0/8""#),
            Err(ConfigError::BadValue { key: "IPv6Network", .. })
        ));
        let e = p(r#","IPv6Network":"fc00::/48","Backend":{"Type":"udp"}"#).unwrap_err();
        assert_eq!(e, ConfigError::Ipv6Unsupported("udp"));
        assert!(e.to_string().contains("udp"));
        assert_eq!(
            parse(r#"{"Network":"10.5.0.0/16","EnableIPv4":false}"#).unwrap_err(),
            ConfigError::NoFamily
        );
    }

    #[test]
    fn ipv6_only_as_flannel_allows_it() {
        let c = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert_eq!(c.ipv4, None, "no Network needed when EnableIPv4 is false");
        assert_eq!(c.ipv6_network(), Some("fc00::/48".parse().unwrap()));
        let ignored = parse(
            r#"{"EnableIPv4":false,"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        assert_eq!(ignored.network(), None, "Network is ignored when EnableIPv4 is false");
        let e = parse(r#"{"EnableIPv4":false,"Backend":{"Type":"udp"}}"#).unwrap_err();
        assert_eq!(e, ConfigError::NoFamily);
        let e = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"udp"}}"#)
            .unwrap_err();
        assert!(matches!(e, ConfigError::Ipv6Unsupported(_)), "{e}");
    }

    #[test]
    fn wireguard_takes_every_family_and_refuses_a_mode_without_its_underlay() {
        use crate::wireguard::WireguardMode;
        let wg = |families: &str, backend: &str| {
            parse(&format!(
                r#"{{{families}"IPv6Network":"fc00::/48","Backend":{{"Type":"wireguard"{backend}}}}}"#
            ))
        };
        let dual = wg(r#""Network":"10.5.0.0/16","EnableIPv6":true,"#, "").unwrap();
        assert_eq!(dual.wireguard.mode, WireguardMode::Separate);
        assert!(dual.ipv4.is_some() && dual.ipv6.is_some());
        let v6_only = wg(r#""EnableIPv4":false,"EnableIPv6":true,"#, "").unwrap();
        assert_eq!(
            (v6_only.ipv4, v6_only.ipv6_network()),
            (None, Some("fc00::/48".parse().unwrap()))
        );
        for mode in ["auto", "ipv4", "ipv6"] {
            wg(
                r#""Network":"10.5.0.0/16","EnableIPv6":true,"#,
                &format!(r#","Mode":"{mode}""#),
            )
            .unwrap();
        }
        for (families, mode) in [
            (r#""Network":"10.5.0.0/16","#, "ipv6"),
            (r#""EnableIPv4":false,"EnableIPv6":true,"#, "ipv4"),
        ] {
            let e = wg(families, &format!(r#","Mode":"{mode}""#)).unwrap_err();
            assert!(e.to_string().starts_with("Backend.Mode"), "{e}");
        }
    }
}
