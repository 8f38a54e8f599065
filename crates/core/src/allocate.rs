//! Choosing this node's subnet, as flannel does: keep a lease that already names our public IP,
//! else take back the subnet of the previous subnet.env if it is free, else a random free subnet
//! among the first free ones between SubnetMin and SubnetMax.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::NetworkConfig;
use crate::lease::{Lease, SubnetKey};

/// flannel picks at random among this many of the lowest free subnets.
const RANDOM_AMONG_FIRST: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// A lease with our PublicIP already exists: keep it (and renew it).
    Reuse(SubnetKey),
    /// Create this subnet's lease (create-if-absent).
    Fresh(SubnetKey),
}

impl Allocation {
    pub fn subnet(&self) -> SubnetKey {
        match self {
            Allocation::Reuse(k) | Allocation::Fresh(k) => *k,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("out of subnets: all {count} /{len} subnets between SubnetMin {min} and SubnetMax {max} of {network} are leased; widen Network/SubnetMax or remove stale leases")]
    Exhausted {
        count: u32,
        len: u8,
        min: Ipv4Addr,
        max: Ipv4Addr,
        network: Ipv4Net,
    },
}

/// Picks our subnet. `pick(n)` returns an index below `n` (random in production, fixed in tests).
pub fn choose_subnet(
    cfg: &NetworkConfig,
    leases: &[Lease],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Allocation, AllocError> {
    let in_range = |n: &Ipv4Net| {
        n.prefix_len() == cfg.subnet_len
            && u32::from(n.network()) >= u32::from(cfg.subnet_min)
            && u32::from(n.network()) <= u32::from(cfg.subnet_max)
    };
    if let Some(own) = leases
        .iter()
        .find(|l| l.attrs.public_ip == public_ip && in_range(&l.subnet.ipv4))
    {
        return Ok(Allocation::Reuse(own.subnet));
    }
    let taken: HashSet<Ipv4Addr> = leases.iter().map(|l| l.subnet.ipv4.network()).collect();
    if let Some(prev) = previous.map(|p| p.trunc()) {
        if in_range(&prev) && !taken.contains(&prev.network()) {
            return Ok(Allocation::Fresh(SubnetKey::v4(prev)));
        }
    }
    let step = 1u32 << (32 - cfg.subnet_len);
    let free: Vec<u32> = (u32::from(cfg.subnet_min)..=u32::from(cfg.subnet_max))
        .step_by(step as usize)
        .filter(|a| !taken.contains(&Ipv4Addr::from(*a)))
        .take(RANDOM_AMONG_FIRST)
        .collect();
    if free.is_empty() {
        return Err(AllocError::Exhausted {
            count: cfg.subnet_count(),
            len: cfg.subnet_len,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
            network: cfg.network,
        });
    }
    let addr = free[pick(free.len()) % free.len()];
    let net = Ipv4Net::new(Ipv4Addr::from(addr), cfg.subnet_len).expect("subnet_len was validated");
    Ok(Allocation::Fresh(SubnetKey::v4(net)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn lease(subnet: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: SubnetKey::v4(subnet.parse().unwrap()),
            attrs: LeaseAttrs::new(Ipv4Addr::from(ip), "vxlan", serde_json::Value::Null),
        }
    }

    #[test]
    fn reuses_the_lease_with_our_public_ip() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let leases = [
            lease("10.5.7.0/24", [198, 51, 100, 1]),
            lease("10.5.9.0/24", [198, 51, 100, 2]),
        ];
        let got = choose_subnet(&c, &leases, Ipv4Addr::new(198, 51, 100, 2), None, &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Reuse(SubnetKey::v4("10.5.9.0/24".parse().unwrap())));
    }

    #[test]
    fn takes_back_the_previous_subnet_when_free() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let leases = [lease("10.5.7.0/24", [198, 51, 100, 1])];
        let prev = Some("10.5.42.1/24".parse().unwrap());
        let got = choose_subnet(&c, &leases, Ipv4Addr::new(198, 51, 100, 3), prev, &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Fresh(SubnetKey::v4("10.5.42.0/24".parse().unwrap())));
        // Taken by someone else: fall back to a free one.
        let prev = Some("10.5.7.1/24".parse().unwrap());
        let got = choose_subnet(&c, &leases, Ipv4Addr::new(198, 51, 100, 3), prev, &mut |_| 0).unwrap();
        assert_eq!(got.subnet().ipv4, "10.5.1.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn random_pick_is_among_free_subnets_only() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let leases = [lease("10.5.1.0/24", [1, 1, 1, 1]), lease("10.5.2.0/24", [1, 1, 1, 2])];
        let mut seen = 0;
        let got = choose_subnet(&c, &leases, Ipv4Addr::new(9, 9, 9, 9), None, &mut |n| {
            seen = n;
            0
        })
        .unwrap();
        assert_eq!(seen, 100);
        assert_eq!(got.subnet().ipv4, "10.5.3.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn out_of_subnets_is_a_clear_error() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}"#);
        let leases = [lease("10.5.1.0/24", [1, 1, 1, 1]), lease("10.5.2.0/24", [1, 1, 1, 2])];
        let e = choose_subnet(&c, &leases, Ipv4Addr::new(9, 9, 9, 9), None, &mut |_| 0).unwrap_err();
        assert!(e.to_string().starts_with("out of subnets: all 2 /24 subnets"), "{e}");
    }
}
