//! subnet.env, the file flanneld writes for CNI plugins and Docker:
//! `FLANNEL_NETWORK`, `FLANNEL_SUBNET` (first host address with the lease prefix), `FLANNEL_MTU`,
//! `FLANNEL_IPMASQ`, and for dual stack `FLANNEL_IPV6_NETWORK`/`FLANNEL_IPV6_SUBNET`.

use ipnet::{Ipv4Net, Ipv6Net};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubnetEnvError {
    #[error("line {line}: {text:?} is not NAME=value")]
    BadLine { line: usize, text: String },
    #[error("{name}={value:?} is not {expected}")]
    BadValue {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0} is missing")]
    Missing(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`; absent in an IPv6-only network, as flanneld leaves it out.
    pub network: Option<Ipv4Net>,
    /// The lease's first host address with the lease prefix, e.g. 10.5.72.1/24.
    pub subnet: Option<Ipv4Net>,
    pub mtu: u32,
    pub ipmasq: bool,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
}

impl SubnetEnv {
    pub fn render(&self) -> String {
        // flanneld's order (main.go WriteSubnetFile): the IPv4 pair, the IPv6 pair, MTU, IPMASQ.
        let mut s = String::new();
        if let Some(n) = self.network {
            s.push_str(&format!("FLANNEL_NETWORK={n}\n"));
        }
        if let Some(n) = self.subnet {
            s.push_str(&format!("FLANNEL_SUBNET={n}\n"));
        }
        if let Some(n) = self.ipv6_network {
            s.push_str(&format!("FLANNEL_IPV6_NETWORK={n}\n"));
        }
        if let Some(n) = self.ipv6_subnet {
            s.push_str(&format!("FLANNEL_IPV6_SUBNET={n}\n"));
        }
        s.push_str(&format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq));
        s
    }

    pub fn parse(text: &str) -> Result<Self, SubnetEnvError> {
        let (mut network, mut subnet, mut mtu, mut ipmasq, mut v6net, mut v6sub) = (None, None, None, None, None, None);
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once('=').ok_or_else(|| SubnetEnvError::BadLine {
                line: i + 1,
                text: raw.to_string(),
            })?;
            let value = value.trim().trim_matches('"');
            match name.trim() {
                "FLANNEL_NETWORK" => network = Some(parse_v(value, "FLANNEL_NETWORK", "an IPv4 CIDR")?),
                "FLANNEL_SUBNET" => subnet = Some(parse_v(value, "FLANNEL_SUBNET", "an IPv4 CIDR")?),
                "FLANNEL_MTU" => mtu = Some(parse_v(value, "FLANNEL_MTU", "a number")?),
                "FLANNEL_IPMASQ" => ipmasq = Some(parse_v(value, "FLANNEL_IPMASQ", "true or false")?),
                "FLANNEL_IPV6_NETWORK" => v6net = Some(parse_v(value, "FLANNEL_IPV6_NETWORK", "an IPv6 CIDR")?),
                "FLANNEL_IPV6_SUBNET" => v6sub = Some(parse_v(value, "FLANNEL_IPV6_SUBNET", "an IPv6 CIDR")?),
                _ => {} // unknown names are kept out, as flannel's readers do
            }
        }
        // Each family comes as a pair, and at least one family is there (IPv4 when neither is).
        let pair = |a: bool, b: bool, a_name, b_name| match (a, b) {
            (true, false) => Err(SubnetEnvError::Missing(b_name)),
            (false, true) => Err(SubnetEnvError::Missing(a_name)),
            _ => Ok(()),
        };
        pair(network.is_some(), subnet.is_some(), "FLANNEL_NETWORK", "FLANNEL_SUBNET")?;
        pair(
            v6net.is_some(),
            v6sub.is_some(),
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
        )?;
        if network.is_none() && v6net.is_none() {
            return Err(SubnetEnvError::Missing("FLANNEL_NETWORK"));
        }
        Ok(SubnetEnv {
            network,
            subnet,
            mtu: mtu.ok_or(SubnetEnvError::Missing("FLANNEL_MTU"))?,
            ipmasq: ipmasq.unwrap_or(false),
            ipv6_network: v6net,
            ipv6_subnet: v6sub,
        })
    }
}

fn parse_v<T: std::str::FromStr>(value: &str, name: &'static str, expected: &'static str) -> Result<T, SubnetEnvError> {
    value.parse().map_err(|_| SubnetEnvError::BadValue {
        name,
        value: value.to_string(),
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_format() {
        let env = SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.72.1/24".parse().unwrap()),
            mtu: 1450,
            ipmasq: false,
            ipv6_network: None,
            ipv6_subnet: None,
        };
        let text = env.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(SubnetEnv::parse(&text).unwrap(), env);
    }

    #[test]
    fn ipv6_lines_come_where_flanneld_writes_them() {
        let env = SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.72.1/24".parse().unwrap()),
            mtu: 1450,
            ipmasq: true,
            ipv6_network: Some("fc00::/48".parse().unwrap()),
            ipv6_subnet: Some("fc00:0:0:1::1/64".parse().unwrap()),
        };
        let text = env.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetEnv::parse(&text).unwrap(), env);
    }

    #[test]
    fn ipv6_only_has_no_ipv4_lines() {
        let text = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";
        let env = SubnetEnv::parse(text).unwrap();
        assert_eq!(env.network, None);
        assert_eq!(env.ipv6_subnet, Some("fc00:0:0:1::1/64".parse().unwrap()));
        assert_eq!(env.render(), text);
        assert_eq!(
            SubnetEnv::parse("FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_MTU=1430\n").unwrap_err(),
            SubnetEnvError::Missing("FLANNEL_IPV6_SUBNET")
        );
        assert_eq!(
            SubnetEnv::parse("FLANNEL_MTU=1430\n").unwrap_err(),
            SubnetEnvError::Missing("FLANNEL_NETWORK")
        );
    }

    #[test]
    fn bad_files_name_the_problem() {
        assert_eq!(
            SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\n").unwrap_err(),
            SubnetEnvError::Missing("FLANNEL_SUBNET")
        );
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=x\n").unwrap_err();
        assert!(e.to_string().contains("FLANNEL_SUBNET=\"x\""), "{e}");
        assert!(matches!(
            SubnetEnv::parse("garbage"),
            Err(SubnetEnvError::BadLine { line: 1, .. })
        ));
    }
}
