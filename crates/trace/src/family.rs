//! What differs between an IPv4 and an IPv6 trace: which side of subnet.env and of a dual-stack
//! lease the packet uses, the sysctl that switches forwarding on, the firewall tool, the VXLAN
//! overhead, and the names a message gives them. Everything else in the walk is the same code for
//! both families. Pure.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::{Lease, SubnetEnv};
use weft_kernel::firewall::nftables::types::NfFamily;

/// The address family of a traced packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn contains(self, ip: IpAddr) -> bool {
        Family::of(ip) == self
    }

    /// The sysctl that makes the node forward packets of this family.
    pub fn forwarding_sysctl(self) -> &'static str {
        match self {
            Family::V4 => "net.ipv4.ip_forward",
            Family::V6 => "net.ipv6.conf.all.forwarding",
        }
    }

    /// The same sysctl under /proc.
    pub fn forwarding_proc(self) -> &'static str {
        match self {
            Family::V4 => "/proc/sys/net/ipv4/ip_forward",
            Family::V6 => "/proc/sys/net/ipv6/conf/all/forwarding",
        }
    }

    /// `iptables` or `ip6tables` (append `-save` for the listing).
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The nftables family whose tables see only packets of this family (`ip`, `ip6`).
    pub fn nft_family(self) -> NfFamily {
        match self {
            Family::V4 => NfFamily::IP,
            Family::V6 => NfFamily::IP6,
        }
    }

    /// The payload protocol of an nftables address match (`ip saddr`, `ip6 saddr`).
    pub fn nft_protocol(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// Bytes VXLAN adds with an outer header of this family (the VTEP of a family encapsulates
    /// over the underlay of the same family).
    pub fn vxlan_overhead(self) -> u32 {
        match self {
            Family::V4 => 50,
            Family::V6 => 70,
        }
    }

    /// The lease's field naming the node's address of this family.
    pub fn public_ip_field(self) -> &'static str {
        match self {
            Family::V4 => "PublicIP",
            Family::V6 => "PublicIPv6",
        }
    }

    /// The lease's field with the backend's data of this family.
    pub fn backend_data_field(self) -> &'static str {
        match self {
            Family::V4 => "BackendData",
            Family::V6 => "BackendV6Data",
        }
    }

    /// How messages name the lease's VTEP MAC of this family.
    pub fn vtep_mac_field(self) -> &'static str {
        match self {
            Family::V4 => "VtepMAC",
            Family::V6 => "BackendV6Data VtepMAC",
        }
    }

    /// The cluster network of this family in subnet.env (`FLANNEL_NETWORK`,
    /// `FLANNEL_IPV6_NETWORK`).
    pub fn env_network(self, env: &SubnetEnv) -> Option<IpNet> {
        match self {
            Family::V4 => env.network.map(IpNet::from),
            Family::V6 => env.ipv6_network.map(IpNet::from),
        }
    }

    /// This node's subnet of this family in subnet.env, as written: the first host address with
    /// the lease prefix (`FLANNEL_SUBNET`, `FLANNEL_IPV6_SUBNET`).
    pub fn env_subnet(self, env: &SubnetEnv) -> Option<IpNet> {
        match self {
            Family::V4 => env.subnet.map(IpNet::from),
            Family::V6 => env.ipv6_subnet.map(IpNet::from),
        }
    }

    /// subnet.env's lines of this family, then the MTU and masquerade, as `weft trace` shows them.
    pub fn describe_env(self, env: &SubnetEnv) -> String {
        let pair = match self {
            Family::V4 => format!(
                "FLANNEL_NETWORK={} FLANNEL_SUBNET={}",
                opt(env.network),
                opt(env.subnet)
            ),
            Family::V6 => format!(
                "FLANNEL_IPV6_NETWORK={} FLANNEL_IPV6_SUBNET={}",
                opt(env.ipv6_network),
                opt(env.ipv6_subnet)
            ),
        };
        format!("{pair} FLANNEL_MTU={} FLANNEL_IPMASQ={}", env.mtu, env.ipmasq)
    }

    /// The lease's subnet of this family (the key's IPv4 part, or its IPv6 part).
    pub fn lease_subnet(self, lease: &Lease) -> Option<IpNet> {
        match self {
            Family::V4 => lease.subnet.ipv4.map(IpNet::from),
            Family::V6 => lease.subnet.ipv6.map(IpNet::from),
        }
    }

    /// The lease's PublicIP or PublicIPv6.
    pub fn lease_public_ip(self, lease: &Lease) -> Option<IpAddr> {
        match self {
            // An IPv6-only lease's PublicIP is flannel's 0.0.0.0 placeholder.
            Family::V4 => lease.subnet.ipv4.map(|_| lease.attrs.public_ip.into()),
            Family::V6 => lease.attrs.public_ipv6.map(IpAddr::from),
        }
    }

    /// The VtepMAC of the lease's BackendData or BackendV6Data (vxlan).
    pub fn lease_vtep_mac(self, lease: &Lease) -> Option<[u8; 6]> {
        match self {
            Family::V4 => lease.attrs.vtep_mac(),
            Family::V6 => lease.attrs.vtep_v6_mac(),
        }
    }

    pub fn lease_backend_data(self, lease: &Lease) -> &serde_json::Value {
        match self {
            Family::V4 => &lease.attrs.backend_data,
            Family::V6 => &lease.attrs.backend_v6_data,
        }
    }

    /// The lease whose subnet of this family holds `ip` (the longest prefix wins).
    pub fn owning_lease(self, leases: &[Lease], ip: IpAddr) -> Option<&Lease> {
        leases
            .iter()
            .filter_map(|l| Some((self.lease_subnet(l)?, l)))
            .filter(|(subnet, _)| subnet.contains(&ip))
            .max_by_key(|(subnet, _)| subnet.prefix_len())
            .map(|(_, l)| l)
    }

    /// An address of a device that says where it sits: not IPv6 link-local (every IPv6 device has
    /// one, fe80::/64, and it names no pod subnet).
    pub fn is_routable(self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(_) => self == Family::V4,
            IpNet::V6(n) => self == Family::V6 && !n.addr().is_unicast_link_local(),
        }
    }
}

fn opt(net: Option<impl std::fmt::Display>) -> String {
    net.map(|n| n.to_string()).unwrap_or_else(|| "(missing)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::{LeaseAttrs, SubnetKey};

    #[test]
    fn a_dual_stack_lease_has_a_side_per_family() {
        let mut attrs = LeaseAttrs::new(
            "198.51.100.2".parse().unwrap(),
            "vxlan",
            serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:0b"}),
        );
        attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        attrs.backend_v6_data = serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:06:0b"});
        let lease = Lease {
            subnet: SubnetKey::parse("10.5.2.0-24&fc00:0:0:2::-64").unwrap(),
            attrs,
        };
        let v4_only = Lease::v4(
            "10.5.3.0/24".parse().unwrap(),
            "198.51.100.3".parse().unwrap(),
            "vxlan",
            serde_json::Value::Null,
        );
        let leases = [v4_only, lease.clone()];
        let ip6: IpAddr = "fc00:0:0:2::7".parse().unwrap();
        assert_eq!(Family::V6.owning_lease(&leases, ip6), Some(&lease));
        assert_eq!(Family::V4.owning_lease(&leases, ip6), None);
        assert_eq!(Family::V6.lease_public_ip(&lease), Some("2001:db8::2".parse().unwrap()));
        assert_eq!(Family::V6.lease_vtep_mac(&lease), Some([0x02, 0, 0, 0, 0x06, 0x0b]));
        assert_eq!(Family::V4.lease_vtep_mac(&lease), Some([0x02, 0, 0, 0, 0, 0x0b]));
        assert_eq!(Family::V6.lease_public_ip(&leases[0]), None);
    }
}
