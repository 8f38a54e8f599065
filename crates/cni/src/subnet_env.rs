//! subnet.env as weft-cni reads it: weft_core's parser, then the checks that make the values
//! usable for a pod (FLANNEL_SUBNET inside FLANNEL_NETWORK and big enough for a container,
//! FLANNEL_MTU in range). Every refusal names the file, the key and the value, before anything
//! is created.

use std::ops::RangeInclusive;

use weft_core::SubnetEnv;

use crate::error::{CniError, ErrorCode};

/// FLANNEL_MTU weft-cni accepts: IPv4's minimum (RFC 791) up to the largest MTU a bridge or a
/// veth takes (ETH_MAX_MTU).
pub const MTU_RANGE: RangeInclusive<u32> = 68..=65535;

/// The smallest FLANNEL_MTU when the node also has an IPv6 subnet (RFC 8200).
pub const MTU_MIN_IPV6: u32 = 1280;

/// The longest FLANNEL_SUBNET prefix: a /30 has a gateway and one container address.
pub const MAX_SUBNET_PREFIX: u8 = 30;

/// Reads subnet.env; a missing file is "try again later" (11): weftd has not leased a subnet yet.
pub fn read(path: &str) -> Result<SubnetEnv, CniError> {
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

/// Parses and checks the text of subnet.env read from `path` (code 5 when it is unusable).
pub fn parse(path: &str, text: &str) -> Result<SubnetEnv, CniError> {
    let invalid = |detail: String| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("{path} is not a valid subnet.env: {detail}"),
        )
    };
    let env = SubnetEnv::parse(text).map_err(|e| invalid(e.to_string()))?;
    let subnet = env.subnet.trunc();
    if !env.network.contains(&subnet) {
        return Err(invalid(format!(
            "FLANNEL_SUBNET={} is outside FLANNEL_NETWORK={}; weftd always leases a subnet inside the \
             network: check that subnetFile names the file weftd writes",
            env.subnet, env.network
        )));
    }
    if subnet.prefix_len() > MAX_SUBNET_PREFIX {
        return Err(invalid(format!(
            "FLANNEL_SUBNET={} leaves no address for a container (the prefix must be /{MAX_SUBNET_PREFIX} or \
             shorter)",
            env.subnet
        )));
    }
    if let (Some(network), Some(subnet)) = (env.ipv6_network, env.ipv6_subnet) {
        if !network.contains(&subnet.trunc()) {
            return Err(invalid(format!(
                "FLANNEL_IPV6_SUBNET={subnet} is outside FLANNEL_IPV6_NETWORK={network}"
            )));
        }
    }
    let min = if env.ipv6_subnet.is_some() {
        MTU_MIN_IPV6
    } else {
        *MTU_RANGE.start()
    };
    if !(min..=*MTU_RANGE.end()).contains(&env.mtu) {
        return Err(invalid(format!(
            "FLANNEL_MTU={} is out of range: it must be {min} to {}{}",
            env.mtu,
            MTU_RANGE.end(),
            if env.ipv6_subnet.is_some() {
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
        let complete = (subnet, mtu).prop_map(|(subnet, mtu)| text("10.5.0.0/16", &subnet, &mtu));
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
                    prop_assert!(env.network.contains(&env.subnet.trunc()));
                    prop_assert!(env.subnet.prefix_len() <= MAX_SUBNET_PREFIX);
                    prop_assert!(MTU_RANGE.contains(&env.mtu));
                    prop_assert!(env.ipv6_subnet.is_none() || env.mtu >= MTU_MIN_IPV6);
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
