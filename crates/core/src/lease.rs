//! Subnet keys (`10.5.34.0-24`, dual stack `10.5.34.0-24&fc00:0:0:1::-64`) and lease values,
//! byte-compatible with flannel's etcd records.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("subnet key {key:?} is not of the form 10.5.34.0-24 (or 10.5.34.0-24&fc00::-64)")]
    BadKey { key: String },
    #[error("lease value for {key}: {reason}")]
    BadValue { key: String, reason: String },
}

/// The subnet a node leases, which is also the last path element of its etcd key. At least one
/// family is present: an IPv6-only lease is written with flannel's empty IPv4 part, `0.0.0.0-0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    pub ipv4: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Net>,
}

/// How flannel writes "no IPv4 subnet" in a key (its empty IP4Net).
const NO_IPV4: &str = "0.0.0.0-0";

impl SubnetKey {
    pub fn v4(ipv4: Ipv4Net) -> Self {
        SubnetKey {
            ipv4: Some(ipv4),
            ipv6: None,
        }
    }

    /// The key of an IPv6-only lease.
    pub fn v6(ipv6: Ipv6Net) -> Self {
        SubnetKey {
            ipv4: None,
            ipv6: Some(ipv6),
        }
    }

    /// The key's last path element, as flannel writes it.
    pub fn to_key(&self) -> String {
        let v4 = match self.ipv4 {
            Some(n) => format!("{}-{}", n.addr(), n.prefix_len()),
            None => NO_IPV4.to_string(),
        };
        match self.ipv6 {
            Some(v6) => format!("{v4}&{}-{}", v6.addr(), v6.prefix_len()),
            None => v4,
        }
    }

    /// Parses a key's last element, or a whole key path (everything before the last `/` is ignored).
    pub fn parse(key: &str) -> Result<Self, LeaseError> {
        let bad = || LeaseError::BadKey { key: key.to_string() };
        let last = key.rsplit('/').next().unwrap_or(key);
        let (v4part, v6part) = match last.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (last, None),
        };
        let ipv4 = match v4part {
            NO_IPV4 => None,
            part => {
                let (addr, len) = part.split_once('-').ok_or_else(bad)?;
                let addr = Ipv4Addr::from_str(addr).map_err(|_| bad())?;
                let len: u8 = len.parse().map_err(|_| bad())?;
                let net = Ipv4Net::new(addr, len).map_err(|_| bad())?;
                if net.network() != addr || len == 0 {
                    return Err(bad());
                }
                Some(net)
            }
        };
        let ipv6 = match v6part {
            None => None,
            Some(p) => {
                let (addr, len) = p.rsplit_once('-').ok_or_else(bad)?;
                let addr = Ipv6Addr::from_str(addr).map_err(|_| bad())?;
                let len: u8 = len.parse().map_err(|_| bad())?;
                let net = Ipv6Net::new(addr, len).map_err(|_| bad())?;
                if net.network() != addr || len == 0 {
                    return Err(bad());
                }
                Some(net)
            }
        };
        if ipv4.is_none() && ipv6.is_none() {
            return Err(bad());
        }
        Ok(SubnetKey { ipv4, ipv6 })
    }

    /// The first host address of the IPv4 subnet: the address the node puts on its devices
    /// (and on cni0/docker0), e.g. 10.5.72.1 for 10.5.72.0/24.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.ipv4.map(|n| Ipv4Addr::from(u32::from(n.network()) + 1))
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ipv4, self.ipv6) {
            (Some(v4), Some(v6)) => write!(f, "{v4}&{v6}"),
            (Some(v4), None) => write!(f, "{v4}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => f.write_str(NO_IPV4),
        }
    }
}

/// The JSON value stored at a lease key. Field order and presence match flannel's encoder:
/// `PublicIPv6` always present (null when unset), `BackendType`/`BackendData`/`BackendV6Data` left
/// out when empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", default, skip_serializing_if = "String::is_empty")]
    pub backend_type: String,
    #[serde(rename = "BackendData", default, skip_serializing_if = "is_null")]
    pub backend_data: serde_json::Value,
    /// The backend's data for the IPv6 side of a dual-stack lease (vxlan: the `flannel-v6` VTEP's MAC).
    #[serde(rename = "BackendV6Data", default, skip_serializing_if = "is_null")]
    pub backend_v6_data: serde_json::Value,
}

fn is_null(v: &serde_json::Value) -> bool {
    v.is_null()
}

impl LeaseAttrs {
    pub fn new(public_ip: Ipv4Addr, backend_type: &str, backend_data: serde_json::Value) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type.to_string(),
            backend_data,
            backend_v6_data: serde_json::Value::Null,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes always serialize")
    }

    /// BackendData.VtepMAC (vxlan), if it holds a MAC address.
    pub fn vtep_mac(&self) -> Option<[u8; 6]> {
        self.backend_data
            .get("VtepMAC")?
            .as_str()
            .and_then(crate::mac::parse_mac)
    }

    /// BackendV6Data.VtepMAC (vxlan, dual stack), if it holds a MAC address.
    pub fn vtep_v6_mac(&self) -> Option<[u8; 6]> {
        self.backend_v6_data
            .get("VtepMAC")?
            .as_str()
            .and_then(crate::mac::parse_mac)
    }

    /// Parses a lease value; `key` only names the record in the error.
    pub fn from_json(key: &str, value: &[u8]) -> Result<Self, LeaseError> {
        serde_json::from_slice(value).map_err(|e| LeaseError::BadValue {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }
}

/// One node's lease: which subnet, and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: SubnetKey,
    pub attrs: LeaseAttrs,
}

impl Lease {
    /// The lease of IPv4 `subnet` by the node at `public_ip`, for `backend_type` with its data.
    pub fn v4(subnet: Ipv4Net, public_ip: Ipv4Addr, backend_type: &str, backend_data: serde_json::Value) -> Self {
        Lease {
            subnet: SubnetKey::v4(subnet),
            attrs: LeaseAttrs::new(public_ip, backend_type, backend_data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips() {
        let k = SubnetKey::parse("10.5.34.0-24").unwrap();
        assert_eq!(k.ipv4, Some("10.5.34.0/24".parse::<Ipv4Net>().unwrap()));
        assert_eq!(k.to_key(), "10.5.34.0-24");
        assert_eq!(k.gateway(), Some(Ipv4Addr::new(10, 5, 34, 1)));
        let full = SubnetKey::parse("/coreos.com/network/subnets/10.5.34.0-24").unwrap();
        assert_eq!(full, k);
    }

    #[test]
    fn dual_stack_key_round_trips() {
        let k = SubnetKey::parse("10.5.34.0-24&fc00:0:0:1::-64").unwrap();
        assert_eq!(k.ipv6.unwrap(), "fc00:0:0:1::/64".parse::<Ipv6Net>().unwrap());
        assert_eq!(k.to_key(), "10.5.34.0-24&fc00:0:0:1::-64");
    }

    #[test]
    fn ipv6_only_key_is_flannels() {
        let k = SubnetKey::parse("/coreos.com/network/subnets/0.0.0.0-0&fc00:0:0:1::-64").unwrap();
        assert_eq!(k, SubnetKey::v6("fc00:0:0:1::/64".parse().unwrap()));
        assert_eq!(k.to_key(), "0.0.0.0-0&fc00:0:0:1::-64");
        assert_eq!(k.gateway(), None);
        assert_eq!(k.to_string(), "fc00:0:0:1::/64");
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in [
            "10.5.34.0",
            "10.5.34.1-24",
            "10.5.34.0-33",
            "x-24",
            "10.5.34.0-24&zz-64",
            "0.0.0.0-0",
            "10.5.34.0-24&fc00::1-64",
            "10.5.34.0-24&fc00::-0",
        ] {
            assert!(SubnetKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lease_json_matches_flannel_bytes() {
        let attrs = LeaseAttrs::new(
            Ipv4Addr::new(192, 168, 64, 3),
            "vxlan",
            serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}),
        );
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let udp = LeaseAttrs::new(Ipv4Addr::new(192, 168, 64, 3), "", serde_json::Value::Null);
        assert_eq!(udp.to_json(), r#"{"PublicIP":"192.168.64.3","PublicIPv6":null}"#);
        let back = LeaseAttrs::from_json("k", attrs.to_json().as_bytes()).unwrap();
        assert_eq!(back, attrs);
    }

    #[test]
    fn dual_stack_lease_json_matches_flannel_bytes() {
        let mut attrs = LeaseAttrs::new(
            Ipv4Addr::new(192, 0, 2, 3),
            "vxlan",
            serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}),
        );
        attrs.public_ipv6 = Some("2001:db8::3".parse().unwrap());
        attrs.backend_v6_data = serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:46"});
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}"#
        );
        assert_eq!(attrs.vtep_v6_mac(), Some([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x46]));
        assert_eq!(LeaseAttrs::from_json("k", attrs.to_json().as_bytes()).unwrap(), attrs);
    }

    #[test]
    fn lease_json_from_flannel_parses() {
        let v = br#"{"PublicIP":"198.51.100.2","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#;
        let a = LeaseAttrs::from_json("k", v).unwrap();
        assert_eq!(a.public_ipv6, None);
        assert_eq!(a.backend_data["VtepMAC"], "aa:bb:cc:dd:ee:ff");
        assert!(LeaseAttrs::from_json("k", b"{}").is_err());
    }
}
