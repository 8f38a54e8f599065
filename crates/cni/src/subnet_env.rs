//! subnet.env as weft-cni reads it: weft_core's parser, then the checks that make the values
//! usable for a pod (each subnet inside its network and big enough for a container, the IPv4 and
//! IPv6 keys in pairs, FLANNEL_MTU in range). Both address families are optional, as flanneld
//! writes them (EnableIPv4 false leaves the IPv4 pair out), but one must be there. Every refusal
//! names the file, the key and the value, before anything is created.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use weft_core::{SubnetEnv, SubnetEnvError};

use crate::error::{CniError, ErrorCode};

/// FLANNEL_MTU weft-cni accepts: IPv4's minimum (RFC 791) up to the largest MTU a bridge or a
/// veth takes (ETH_MAX_MTU).
pub const MTU_RANGE: RangeInclusive<u32> = 68..=65535;

/// The smallest FLANNEL_MTU when the node also has an IPv6 subnet (RFC 8200).
pub const MTU_MIN_IPV6: u32 = 1280;

/// The longest FLANNEL_SUBNET prefix: a /30 has a gateway and one container address.
pub const MAX_SUBNET_PREFIX: u8 = 30;

/// The longest FLANNEL_IPV6_SUBNET prefix: a /126 has a gateway and two container addresses
/// (IPv6 has no broadcast address; a /127 would leave none).
pub const MAX_IPV6_SUBNET_PREFIX: u8 = 126;

/// One address family of the node: the cluster network and this node's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodNetwork {
    /// FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK.
    pub network: IpNet,
    /// FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET: the first host with the lease prefix, 10.5.72.1/24.
    pub subnet: IpNet,
}

impl PodNetwork {
    /// The node subnet itself (10.5.72.0/24), the range containers get addresses from.
    pub fn range(&self) -> IpNet {
        self.subnet.trunc()
    }

    /// The gateway, the subnet's first address, with the subnet prefix: 10.5.72.1/24. Taken from
    /// the network address, not FLANNEL_SUBNET's host part, to be sure.
    pub fn gateway(&self) -> IpNet {
        let range = self.range();
        let first = match range.network() {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
        };
        IpNet::new(first, range.prefix_len()).expect("prefix comes from a valid net")
    }

    /// The default route's destination of this family: 0.0.0.0/0 or ::/0.
    pub fn default_dst(&self) -> IpNet {
        match self.network {
            IpNet::V4(_) => IpNet::V4(Default::default()),
            IpNet::V6(_) => IpNet::V6(Default::default()),
        }
    }
}

/// subnet.env, checked: at least one of the two families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEnv {
    pub ipv4: Option<PodNetwork>,
    pub ipv6: Option<PodNetwork>,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl NodeEnv {
    /// The families the node has, IPv4 first (the order of flannel's IPAM ranges).
    pub fn families(&self) -> impl Iterator<Item = &PodNetwork> {
        self.ipv4.iter().chain(self.ipv6.iter())
    }

    /// The file as flanneld v0.20.0 writes it (main.go WriteSubnetFile): the IPv4 pair, the
    /// IPv6 pair, MTU, IPMASQ.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(v4) = &self.ipv4 {
            s.push_str(&format!(
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\n",
                v4.network, v4.subnet
            ));
        }
        if let Some(v6) = &self.ipv6 {
            s.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={}\n",
                v6.network, v6.subnet
            ));
        }
        s.push_str(&format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq));
        s
    }
}

/// Reads subnet.env; a missing file is "try again later" (11): weftd has not leased a subnet yet.
pub fn read(path: &str) -> Result<NodeEnv, CniError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "{path} does not exist: weftd has not written subnet.env yet (it does once it holds a subnet \
                     lease); check that weftd is running on this node, or set subnetFile in the CNI config if it \
                     writes elsewhere"
                ),
            )
        } else {
            CniError::io(format!("read subnet.env {path}"), &e)
        }
    })?;
    parse(path, &text)
}

/// Whether a line of `text` sets `key`.
fn has_key(text: &str, key: &str) -> bool {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .any(|(name, _)| name.trim() == key)
}

/// weft_core's parser, with a missing key explained the way a user can act on.
fn parse_values(text: &str) -> Result<NodeEnv, String> {
    let env = SubnetEnv::parse(text).map_err(|e| {
        let SubnetEnvError::Missing(key) = e else {
            return e.to_string();
        };
        let pair = match key {
            "FLANNEL_NETWORK" => "FLANNEL_SUBNET",
            "FLANNEL_SUBNET" => "FLANNEL_NETWORK",
            "FLANNEL_IPV6_NETWORK" => "FLANNEL_IPV6_SUBNET",
            "FLANNEL_IPV6_SUBNET" => "FLANNEL_IPV6_NETWORK",
            _ => return e.to_string(),
        };
        if has_key(text, pair) {
            let when = if key.contains("IPV6") {
                "when EnableIPv6 is true"
            } else {
                "(or neither, when EnableIPv4 is false)"
            };
            format!("{pair} is set but {key} is missing; flanneld writes both {when}")
        } else {
            format!(
                "{key} is missing, and there is no FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET either: the file has \
                 no subnet for pods"
            )
        }
    })?;
    let pod_network = |network: Option<IpNet>, subnet: Option<IpNet>| {
        network
            .zip(subnet)
            .map(|(network, subnet)| PodNetwork { network, subnet })
    };
    Ok(NodeEnv {
        ipv4: pod_network(env.network.map(IpNet::from), env.subnet.map(IpNet::from)),
        ipv6: pod_network(env.ipv6_network.map(IpNet::from), env.ipv6_subnet.map(IpNet::from)),
        mtu: env.mtu,
        ipmasq: env.ipmasq,
    })
}

/// Why an IPv6 node subnet cannot hold pods, if it cannot: addresses the kernel reserves for
/// itself or that name groups, not hosts.
fn unusable_ipv6(subnet: IpNet) -> Option<&'static str> {
    let IpAddr::V6(a) = subnet.trunc().network() else {
        return None;
    };
    if a.is_multicast() {
        Some("multicast (ff00::/8)")
    } else if a.is_unicast_link_local() {
        Some("link-local (fe80::/10)")
    } else if a.is_loopback() || a.is_unspecified() {
        Some("the loopback or unspecified address")
    } else {
        None
    }
}

/// Parses and checks the text of subnet.env read from `path` (code 5 when it is unusable).
pub fn parse(path: &str, text: &str) -> Result<NodeEnv, CniError> {
    let invalid = |detail: String| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("{path} is not a valid subnet.env: {detail}"),
        )
    };
    let env = parse_values(text).map_err(invalid)?;
    if let Some(v4) = &env.ipv4 {
        if !v4.network.contains(&v4.range()) {
            return Err(invalid(format!(
                "FLANNEL_SUBNET={} is outside FLANNEL_NETWORK={}; weftd always leases a subnet inside the \
                 network: check that subnetFile names the file weftd writes",
                v4.subnet, v4.network
            )));
        }
        if v4.subnet.prefix_len() > MAX_SUBNET_PREFIX {
            return Err(invalid(format!(
                "FLANNEL_SUBNET={} leaves no address for a container (the prefix must be /{MAX_SUBNET_PREFIX} or \
                 shorter)",
                v4.subnet
            )));
        }
    }
    if let Some(v6) = &env.ipv6 {
        if !v6.network.contains(&v6.range()) {
            return Err(invalid(format!(
                "FLANNEL_IPV6_SUBNET={} is outside FLANNEL_IPV6_NETWORK={}; weftd always leases a subnet inside \
                 the network: check that subnetFile names the file weftd writes",
                v6.subnet, v6.network
            )));
        }
        if v6.subnet.prefix_len() > MAX_IPV6_SUBNET_PREFIX {
            return Err(invalid(format!(
                "FLANNEL_IPV6_SUBNET={} leaves no address for a container (the prefix must be \
                 /{MAX_IPV6_SUBNET_PREFIX} or shorter)",
                v6.subnet
            )));
        }
        if let Some(why) = unusable_ipv6(v6.subnet) {
            return Err(invalid(format!(
                "FLANNEL_IPV6_SUBNET={} is {why}, not an address range for pods",
                v6.subnet
            )));
        }
    }
    let min = if env.ipv6.is_some() {
        MTU_MIN_IPV6
    } else {
        *MTU_RANGE.start()
    };
    if !(min..=*MTU_RANGE.end()).contains(&env.mtu) {
        return Err(invalid(format!(
            "FLANNEL_MTU={} is out of range: it must be {min} to {}{}",
            env.mtu,
            MTU_RANGE.end(),
            if env.ipv6.is_some() {
                " (IPv6 needs 1280 or more)"
            } else {
                ""
            }
        )));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PATH: &str = "/run/flannel/subnet.env";

    fn text(network: &str, subnet: &str, mtu: &str) -> String {
        format!("FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n")
    }

    #[test]
    fn a_subnet_outside_the_network_is_refused_naming_file_and_values() {
        let e = parse(PATH, &text("10.5.0.0/16", "10.6.72.1/24", "1450")).unwrap_err();
        assert_eq!(e.code, 5);
        for part in [
            PATH,
            "FLANNEL_SUBNET=10.6.72.1/24",
            "FLANNEL_NETWORK=10.5.0.0/16",
            "outside",
        ] {
            assert!(e.msg.contains(part), "{part}: {e}");
        }
        // A supernet of the network is outside it too.
        assert!(parse(PATH, &text("10.5.0.0/16", "10.4.0.1/15", "1450")).is_err());
        assert!(parse(PATH, &text("10.5.0.0/16", "10.5.255.1/24", "1450")).is_ok());
        let e = parse(PATH, &text("10.5.0.0/16", "10.5.72.1/31", "1450")).unwrap_err();
        assert!(e.msg.contains("FLANNEL_SUBNET=10.5.72.1/31 leaves no address"), "{e}");
    }

    #[test]
    fn mtu_out_of_range_is_refused_naming_file_and_key() {
        for bad in ["0", "67", "65536", "70000"] {
            let e = parse(PATH, &text("10.5.0.0/16", "10.5.72.1/24", bad)).unwrap_err();
            assert_eq!(e.code, 5);
            assert!(
                e.msg.contains(PATH) && e.msg.contains(&format!("FLANNEL_MTU={bad} ")),
                "{e}"
            );
        }
        for good in ["68", "1450", "65535"] {
            assert_eq!(
                parse(PATH, &text("10.5.0.0/16", "10.5.72.1/24", good))
                    .unwrap()
                    .mtu
                    .to_string(),
                good
            );
        }
        let dual = format!(
            "{}FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n",
            text("10.5.0.0/16", "10.5.72.1/24", "1200")
        );
        let e = parse(PATH, &dual).unwrap_err();
        assert!(e.msg.contains("FLANNEL_MTU=1200") && e.msg.contains("IPv6"), "{e}");
        let e = parse(PATH, &text("10.5.0.0/16", "10.5.72.1/24", "-1")).unwrap_err();
        assert!(e.msg.contains(PATH) && e.msg.contains("FLANNEL_MTU"), "{e}");
    }

    #[test]
    fn ipv6_subnet_outside_the_ipv6_network_is_refused() {
        let dual = format!(
            "{}FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n",
            text("10.5.0.0/16", "10.5.72.1/24", "1450")
        );
        let e = parse(PATH, &dual).unwrap_err();
        assert!(e.msg.contains("FLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64"), "{e}");
    }

    fn dual(v6_network: &str, v6_subnet: &str) -> String {
        format!(
            "{}FLANNEL_IPV6_NETWORK={v6_network}\nFLANNEL_IPV6_SUBNET={v6_subnet}\n",
            text("10.5.0.0/16", "10.5.72.1/24", "1450")
        )
    }

    #[test]
    fn dual_stack_gives_both_families_with_their_gateways() {
        let env = parse(PATH, &dual("fc00::/48", "fc00:0:0:1::1/64")).unwrap();
        let v4 = env.ipv4.unwrap();
        let v6 = env.ipv6.unwrap();
        assert_eq!(v4.gateway().to_string(), "10.5.72.1/24");
        assert_eq!(v6.range().to_string(), "fc00:0:0:1::/64");
        assert_eq!(v6.gateway().to_string(), "fc00:0:0:1::1/64");
        assert_eq!(v6.default_dst().to_string(), "::/0");
        assert_eq!(env.families().count(), 2);
        // flanneld's order: the IPv4 pair, the IPv6 pair, MTU, IPMASQ.
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\n\
             FLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn ipv6_only_as_flanneld_writes_it_with_enable_ipv4_false() {
        let text = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:7::1/64\nFLANNEL_MTU=1430\n\
                    FLANNEL_IPMASQ=false\n";
        let env = parse(PATH, text).unwrap();
        assert_eq!(env.ipv4, None);
        assert_eq!(env.ipv6.unwrap().gateway().to_string(), "fc00:0:0:7::1/64");
        assert_eq!((env.mtu, env.ipmasq), (1430, false));
        assert_eq!(env.render(), text);
        // A bad value still names its key, and a bad line its own line number.
        let e = parse(
            PATH,
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=nope\nFLANNEL_MTU=1430\n",
        )
        .unwrap_err();
        assert!(
            e.msg.contains(PATH) && e.msg.contains("FLANNEL_IPV6_SUBNET=\"nope\""),
            "{e}"
        );
        let e = parse(PATH, "FLANNEL_IPV6_NETWORK=fc00::/48\ngarbage\n").unwrap_err();
        assert!(e.msg.contains("line 2"), "{e}");
        let e = parse(PATH, "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n").unwrap_err();
        assert!(e.msg.contains("FLANNEL_MTU is missing"), "{e}");
    }

    #[test]
    fn a_file_without_any_subnet_or_with_half_a_pair_is_refused_naming_the_key() {
        let e = parse(PATH, "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap_err();
        assert!(
            e.msg.contains("FLANNEL_NETWORK is missing") && e.msg.contains("no subnet"),
            "{e}"
        );
        let e = parse(PATH, "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\n").unwrap_err();
        assert!(e.msg.contains("FLANNEL_NETWORK is missing"), "{e}");
        let half_v6 = format!(
            "{}FLANNEL_IPV6_NETWORK=fc00::/48\n",
            text("10.5.0.0/16", "10.5.72.1/24", "1450")
        );
        let e = parse(PATH, &half_v6).unwrap_err();
        assert!(
            e.msg.contains("FLANNEL_IPV6_SUBNET is missing") && e.msg.contains(PATH),
            "{e}"
        );
        let half_v6 = format!(
            "{}FLANNEL_IPV6_SUBNET=fc00::1/64\n",
            text("10.5.0.0/16", "10.5.72.1/24", "1450")
        );
        let e = parse(PATH, &half_v6).unwrap_err();
        assert!(e.msg.contains("FLANNEL_IPV6_NETWORK is missing"), "{e}");
        // IPv6 with half an IPv4 pair.
        let e = parse(PATH, "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1450\n").unwrap_err();
        assert!(e.msg.contains("FLANNEL_NETWORK is missing"), "{e}");
    }

    #[test]
    fn bad_ipv6_values_are_refused_naming_file_key_and_value() {
        for (network, subnet, expect) in [
            (
                "fc00::/48",
                "10.5.72.1/24",
                "FLANNEL_IPV6_SUBNET=\"10.5.72.1/24\" is not an IPv6 CIDR",
            ),
            (
                "10.0.0.0/8",
                "fc00::1/64",
                "FLANNEL_IPV6_NETWORK=\"10.0.0.0/8\" is not an IPv6 CIDR",
            ),
            ("fc00::/48", "fc00::1", "FLANNEL_IPV6_SUBNET=\"fc00::1\""),
            (
                "fc00::/48",
                "fc01::1/64",
                "FLANNEL_IPV6_SUBNET=fc01::1/64 is outside FLANNEL_IPV6_NETWORK=fc00::/48",
            ),
            ("fc00::/48", "fc00::/32", "FLANNEL_IPV6_SUBNET=fc00::/32 is outside"),
            (
                "fc00::/48",
                "fc00::1/127",
                "FLANNEL_IPV6_SUBNET=fc00::1/127 leaves no address",
            ),
            (
                "fe80::/10",
                "fe80::1/64",
                "FLANNEL_IPV6_SUBNET=fe80::1/64 is link-local",
            ),
            ("ff00::/8", "ff05::1/64", "FLANNEL_IPV6_SUBNET=ff05::1/64 is multicast"),
            ("::/0", "::1/128", "leaves no address"),
            ("::/0", "::/64", "unspecified"),
        ] {
            let e = parse(PATH, &dual(network, subnet)).unwrap_err();
            assert_eq!(e.code, 5);
            assert!(e.msg.starts_with(PATH) && e.msg.contains(expect), "{expect}: {e}");
        }
        assert!(parse(PATH, &dual("fc00::/48", "fc00::1/126")).is_ok());
    }

    fn cidr_v4() -> impl Strategy<Value = String> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3])),
            // Mostly subnets of 10.5.0.0/16, so that acceptance is common.
            (0u8..=255, 0u8..=255, 14u8..=32).prop_map(|(c, d, p)| format!("10.5.{c}.{d}/{p}")),
            "[0-9./a-z ]{0,20}",
        ]
    }

    fn mtu() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u32..=70_000).prop_map(|m| m.to_string()),
            any::<u64>().prop_map(|m| m.to_string()),
            "-?[0-9]{0,12}",
        ]
    }

    /// subnet.env-like text: the known keys (each maybe missing, quoted, or doubled), comments,
    /// blank and junk lines, in any order.
    fn subnet_env_text() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            prop_oneof![Just("10.5.0.0/16".to_string()), cidr_v4()].prop_map(|v| format!("FLANNEL_NETWORK={v}")),
            cidr_v4().prop_map(|v| format!("FLANNEL_SUBNET={v}")),
            mtu().prop_map(|v| format!("FLANNEL_MTU={v}")),
            prop_oneof![Just("true"), Just("false"), Just("yes")].prop_map(|v| format!("FLANNEL_IPMASQ={v}")),
            prop_oneof![Just("fc00::/48"), Just("fd00::/8"), Just("x")]
                .prop_map(|v| format!("FLANNEL_IPV6_NETWORK={v}")),
            prop_oneof![Just("fc00:0:0:1::1/64"), Just("fd00::1/64"), Just("::/0")]
                .prop_map(|v| format!("FLANNEL_IPV6_SUBNET={v}")),
            Just("# comment".to_string()),
            Just(String::new()),
            "[ -~]{0,30}",
        ];
        // Usually after a complete file, so that acceptance is common.
        let subnet = prop_oneof![
            3 => (0u8..=255, 0u8..=255, 16u8..=30).prop_map(|(c, d, p)| format!("10.5.{c}.{d}/{p}")),
            1 => cidr_v4(),
        ];
        let mtu = prop_oneof![3 => (68u32..=65535).prop_map(|m| m.to_string()), 1 => mtu()];
        let ipv4 = (subnet, mtu).prop_map(|(subnet, mtu)| text("10.5.0.0/16", &subnet, &mtu));
        // IPv6 only, as flanneld writes it with EnableIPv4 false.
        let ipv6 = (0u16..=0xffff, 32u8..=128, 1200u32..=9000).prop_map(|(n, p, mtu)| {
            format!(
                "FLANNEL_IPV6_NETWORK=fc00::/32\nFLANNEL_IPV6_SUBNET=fc00:0:{n:x}::1/{p}\nFLANNEL_MTU={mtu}\n\
                 FLANNEL_IPMASQ=false\n"
            )
        });
        let complete = prop_oneof![3 => ipv4, 1 => ipv6];
        (prop::option::weighted(0.7, complete), prop::collection::vec(line, 0..6))
            .prop_map(|(complete, lines)| complete.unwrap_or_default() + &lines.join("\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse(PATH, &text);
        }

        /// Whatever is accepted keeps the rules and re-encodes (SubnetEnv::render) to the same
        /// values; a refusal always names the file.
        #[test]
        fn accepted_files_are_usable_and_round_trip(text in subnet_env_text()) {
            match parse(PATH, &text) {
                Ok(env) => {
                    prop_assert!(env.families().count() >= 1);
                    for family in env.families() {
                        prop_assert!(family.network.contains(&family.range()));
                        prop_assert!(family.range().contains(&family.gateway().addr()));
                    }
                    prop_assert!(env.ipv4.is_none_or(|v4| v4.subnet.prefix_len() <= MAX_SUBNET_PREFIX));
                    prop_assert!(env.ipv6.is_none_or(|v6| v6.subnet.prefix_len() <= MAX_IPV6_SUBNET_PREFIX));
                    prop_assert!(MTU_RANGE.contains(&env.mtu));
                    prop_assert!(env.ipv6.is_none() || env.mtu >= MTU_MIN_IPV6);
                    prop_assert_eq!(parse(PATH, &env.render()), Ok(env));
                }
                Err(e) => {
                    prop_assert_eq!(e.code, 5);
                    prop_assert!(e.msg.starts_with(PATH), "{}", e.msg);
                }
            }
        }

        /// The model: a well-formed file is accepted exactly when the subnet lies in the network,
        /// leaves room for a container, and the MTU is in range.
        #[test]
        fn well_formed_files_are_accepted_exactly_when_the_rules_hold(
            subnet in (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, p)| ipnet::Ipv4Net::new(a.into(), p).unwrap()),
            inside in any::<bool>(),
            mtu in 0u32..=70_000,
        ) {
            let network: ipnet::Ipv4Net = "10.5.0.0/16".parse().unwrap();
            // Half the time, move the subnet into the network.
            let subnet = if inside && subnet.prefix_len() >= 16 {
                let host = u32::from(subnet.addr()) & 0xffff;
                ipnet::Ipv4Net::new((u32::from(network.addr()) | host).into(), subnet.prefix_len()).unwrap()
            } else {
                subnet
            };
            let ok = network.contains(&subnet.trunc()) && subnet.prefix_len() <= 30 && (68..=65535).contains(&mtu);
            let got = parse(PATH, &text("10.5.0.0/16", &subnet.to_string(), &mtu.to_string()));
            prop_assert_eq!(got.is_ok(), ok, "{:?}", got);
        }
    }
}
