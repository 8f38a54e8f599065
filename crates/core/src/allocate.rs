//! Choosing this node's subnet (and, dual stack, its IPv6 subnet), as flannel does: keep a lease
//! that already names our public IP, else take back the subnets of the previous subnet.env if they
//! are free, else random free subnets among the first free ones between SubnetMin and SubnetMax
//! (IPv6SubnetMin and IPv6SubnetMax).

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config::{Ipv4Pool, Ipv6Pool, NetworkConfig};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};

/// flannel picks at random among this many of the lowest free subnets.
const RANDOM_AMONG_FIRST: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// A lease with our PublicIP already exists: keep it (and renew it).
    Reuse(SubnetKey),
    /// Create this subnet's lease (create-if-absent).
    Fresh(SubnetKey),
    /// A lease names our PublicIP but does not fit the config (another SubnetLen, IPv6 switched on
    /// or off): delete it, as flannel does, then choose again. Left in place it would keep our
    /// PublicIP claimed and every node would refuse the new lease.
    Stale(SubnetKey),
}

impl Allocation {
    pub fn subnet(&self) -> SubnetKey {
        match self {
            Allocation::Reuse(k) | Allocation::Fresh(k) | Allocation::Stale(k) => *k,
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
    #[error("out of IPv6 subnets: every /{len} subnet between IPv6SubnetMin {min} and IPv6SubnetMax {max} of {network} is leased; widen IPv6Network/IPv6SubnetMax or remove stale leases")]
    Ipv6Exhausted {
        len: u8,
        min: Ipv6Addr,
        max: Ipv6Addr,
        network: Ipv6Net,
    },
}

/// Whether a lease's subnets fit the config: a subnet in range for exactly the families the config
/// enables (flannel's isSubnetConfigCompat/isIPv6SubnetConfigCompat).
pub fn fits_config(cfg: &NetworkConfig, key: &SubnetKey) -> bool {
    let v4_fits = match (cfg.ipv4, key.ipv4) {
        (None, None) => true,
        (Some(pool), Some(v4)) => v4_in_range(&pool, &v4),
        _ => false,
    };
    let v6_fits = match (cfg.ipv6, key.ipv6) {
        (None, None) => true,
        (Some(pool), Some(v6)) => v6_in_range(&pool, &v6),
        _ => false,
    };
    v4_fits && v6_fits
}

fn v4_in_range(pool: &Ipv4Pool, v4: &Ipv4Net) -> bool {
    v4.prefix_len() == pool.subnet_len
        && u32::from(v4.network()) >= u32::from(pool.subnet_min)
        && u32::from(v4.network()) <= u32::from(pool.subnet_max)
}

fn v6_in_range(pool: &Ipv6Pool, v6: &Ipv6Net) -> bool {
    v6.prefix_len() == pool.subnet_len
        && u128::from(v6.network()) >= u128::from(pool.subnet_min)
        && u128::from(v6.network()) <= u128::from(pool.subnet_max)
}

/// Whether `lease` is this node's (whose lease attributes are `me`): flannel's rule, the same
/// PublicIP; in an IPv6-only network, and for an IPv6-only lease left from one, the same PublicIPv6.
fn is_ours(cfg: &NetworkConfig, me: &LeaseAttrs, lease: &Lease) -> bool {
    let by_v4 = !me.public_ip.is_unspecified() && lease.subnet.ipv4.is_some() && lease.attrs.public_ip == me.public_ip;
    let by_v6 = me.public_ipv6.is_some()
        && lease.attrs.public_ipv6 == me.public_ipv6
        && (cfg.ipv4.is_none() || lease.subnet.ipv4.is_none());
    by_v4 || by_v6
}

/// Picks our subnets. `me` holds the public addresses our lease will carry; `pick(n)` returns an
/// index below `n` (random in production, fixed in tests). `previous` is what the previous
/// subnet.env held: each family's previous subnet is taken back when it fits and is free (so
/// switching IPv6 on keeps the pods' IPv4 addresses), else a random free one is chosen.
pub fn choose_subnet(
    cfg: &NetworkConfig,
    leases: &[Lease],
    me: &LeaseAttrs,
    previous: Option<SubnetKey>,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Allocation, AllocError> {
    if let Some(own) = leases.iter().find(|l| is_ours(cfg, me, l)) {
        return Ok(if fits_config(cfg, &own.subnet) {
            Allocation::Reuse(own.subnet)
        } else {
            Allocation::Stale(own.subnet)
        });
    }
    let taken: HashSet<Ipv4Addr> = leases
        .iter()
        .filter_map(|l| l.subnet.ipv4)
        .map(|n| n.network())
        .collect();
    let taken6: Vec<Ipv6Net> = leases.iter().filter_map(|l| l.subnet.ipv6).collect();
    let free = |n: &Ipv4Net| !taken.contains(&n.network());
    let free6 = |n: &Ipv6Net| !taken6.iter().any(|t| t.contains(n) || n.contains(t));
    let ipv4 = match cfg.ipv4 {
        None => None,
        Some(pool) => match previous.and_then(|p| p.ipv4).map(|n| n.trunc()) {
            Some(v4) if v4_in_range(&pool, &v4) && free(&v4) => Some(v4),
            _ => Some(choose_ipv4(&pool, &taken, pick)?),
        },
    };
    let ipv6 = match cfg.ipv6 {
        None => None,
        Some(pool) => match previous.and_then(|p| p.ipv6).map(|n| n.trunc()) {
            Some(v6) if v6_in_range(&pool, &v6) && free6(&v6) => Some(v6),
            _ => Some(choose_ipv6(&pool, &free6, pick)?),
        },
    };
    Ok(Allocation::Fresh(SubnetKey { ipv4, ipv6 }))
}

/// A random one of the first free IPv4 subnets between SubnetMin and SubnetMax.
fn choose_ipv4(
    pool: &Ipv4Pool,
    taken: &HashSet<Ipv4Addr>,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Ipv4Net, AllocError> {
    let step = 1u32 << (32 - pool.subnet_len);
    let free: Vec<u32> = (u32::from(pool.subnet_min)..=u32::from(pool.subnet_max))
        .step_by(step as usize)
        .filter(|a| !taken.contains(&Ipv4Addr::from(*a)))
        .take(RANDOM_AMONG_FIRST)
        .collect();
    if free.is_empty() {
        return Err(AllocError::Exhausted {
            count: pool.subnet_count(),
            len: pool.subnet_len,
            min: pool.subnet_min,
            max: pool.subnet_max,
            network: pool.network,
        });
    }
    let addr = free[pick(free.len()) % free.len()];
    Ok(Ipv4Net::new(Ipv4Addr::from(addr), pool.subnet_len).expect("subnet_len was validated"))
}

/// A random one of the first free IPv6 subnets. The walk stops after RANDOM_AMONG_FIRST free ones,
/// so it visits at most that many plus the number of leases, however large the range.
fn choose_ipv6(
    pool: &Ipv6Pool,
    free: &dyn Fn(&Ipv6Net) -> bool,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Ipv6Net, AllocError> {
    let step = 1u128 << (128 - u32::from(pool.subnet_len));
    let (min, max) = (u128::from(pool.subnet_min), u128::from(pool.subnet_max));
    let mut found = Vec::new();
    let mut at = Some(min);
    while let Some(addr) = at.filter(|a| *a <= max) {
        let net = Ipv6Net::new(Ipv6Addr::from(addr), pool.subnet_len).expect("IPv6SubnetLen was validated");
        if free(&net) {
            found.push(net);
            if found.len() == RANDOM_AMONG_FIRST {
                break;
            }
        }
        at = addr.checked_add(step);
    }
    if found.is_empty() {
        return Err(AllocError::Ipv6Exhausted {
            len: pool.subnet_len,
            min: pool.subnet_min,
            max: pool.subnet_max,
            network: pool.network,
        });
    }
    Ok(found[pick(found.len()) % found.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn me(ip: [u8; 4]) -> LeaseAttrs {
        LeaseAttrs::new(Ipv4Addr::from(ip), "vxlan", serde_json::Value::Null)
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
        let got = choose_subnet(&c, &leases, &me([198, 51, 100, 2]), None, &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Reuse(SubnetKey::v4("10.5.9.0/24".parse().unwrap())));
    }

    #[test]
    fn takes_back_the_previous_subnet_when_free() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let leases = [lease("10.5.7.0/24", [198, 51, 100, 1])];
        let prev = Some(SubnetKey::v4("10.5.42.1/24".parse().unwrap()));
        let got = choose_subnet(&c, &leases, &me([198, 51, 100, 3]), prev, &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Fresh(SubnetKey::v4("10.5.42.0/24".parse().unwrap())));
        // Taken by someone else: fall back to a free one.
        let prev = Some(SubnetKey::v4("10.5.7.1/24".parse().unwrap()));
        let got = choose_subnet(&c, &leases, &me([198, 51, 100, 3]), prev, &mut |_| 0).unwrap();
        assert_eq!(got.subnet().ipv4, Some("10.5.1.0/24".parse::<Ipv4Net>().unwrap()));
    }

    #[test]
    fn random_pick_is_among_free_subnets_only() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let leases = [lease("10.5.1.0/24", [1, 1, 1, 1]), lease("10.5.2.0/24", [1, 1, 1, 2])];
        let mut seen = 0;
        let got = choose_subnet(&c, &leases, &me([9, 9, 9, 9]), None, &mut |n| {
            seen = n;
            0
        })
        .unwrap();
        assert_eq!(seen, 100);
        assert_eq!(got.subnet().ipv4, Some("10.5.3.0/24".parse::<Ipv4Net>().unwrap()));
    }

    #[test]
    fn out_of_subnets_is_a_clear_error() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}"#);
        let leases = [lease("10.5.1.0/24", [1, 1, 1, 1]), lease("10.5.2.0/24", [1, 1, 1, 2])];
        let e = choose_subnet(&c, &leases, &me([9, 9, 9, 9]), None, &mut |_| 0).unwrap_err();
        assert!(e.to_string().starts_with("out of subnets: all 2 /24 subnets"), "{e}");
    }

    fn dual(subnet: &str, v6: &str, ip: [u8; 4]) -> Lease {
        let mut l = lease(subnet, ip);
        l.subnet.ipv6 = Some(v6.parse().unwrap());
        l
    }

    const DUAL: &str =
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;

    #[test]
    fn dual_stack_picks_a_free_subnet_of_each_family() {
        let c = cfg(DUAL);
        let leases = [dual("10.5.1.0/24", "fc00:0:0:1::/64", [1, 1, 1, 1])];
        let got = choose_subnet(&c, &leases, &me([9, 9, 9, 9]), None, &mut |_| 0).unwrap();
        assert_eq!(got.subnet().to_key(), "10.5.2.0-24&fc00:0:0:2::-64");
        let got = choose_subnet(&c, &leases, &me([9, 9, 9, 9]), None, &mut |n| n - 1).unwrap();
        assert_eq!(
            got.subnet().to_key(),
            "10.5.101.0-24&fc00:0:0:65::-64",
            "the 100th free of each"
        );
    }

    #[test]
    fn dual_stack_takes_back_both_previous_subnets() {
        let c = cfg(DUAL);
        let leases = [dual("10.5.1.0/24", "fc00:0:0:1::/64", [1, 1, 1, 1])];
        let prev = SubnetKey::parse("10.5.42.0-24&fc00:0:0:2a::-64").unwrap();
        let got = choose_subnet(&c, &leases, &me([9, 9, 9, 9]), Some(prev), &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Fresh(prev));
        // IPv6 switched on (the previous subnet.env had IPv4 only): the IPv4 subnet is kept.
        let prev = SubnetKey::v4("10.5.42.0/24".parse().unwrap());
        let got = choose_subnet(&c, &leases, &me([9, 9, 9, 9]), Some(prev), &mut |_| 0).unwrap();
        assert_eq!(got.subnet().to_key(), "10.5.42.0-24&fc00:0:0:2::-64");
        // The previous IPv6 subnet taken by another node: a free one instead.
        let prev = SubnetKey::parse("10.5.42.0-24&fc00:0:0:1::-64").unwrap();
        let got = choose_subnet(&c, &leases, &me([9, 9, 9, 9]), Some(prev), &mut |_| 0).unwrap();
        assert_eq!(got.subnet().to_key(), "10.5.42.0-24&fc00:0:0:2::-64");
    }

    #[test]
    fn an_own_lease_that_no_longer_fits_is_stale() {
        let c = cfg(DUAL);
        let own = [lease("10.5.7.0/24", [198, 51, 100, 2])];
        let got = choose_subnet(&c, &own, &me([198, 51, 100, 2]), None, &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Stale(SubnetKey::v4("10.5.7.0/24".parse().unwrap())));
        let dual_own = [dual("10.5.7.0/24", "fc00:0:0:7::/64", [198, 51, 100, 2])];
        let got = choose_subnet(&c, &dual_own, &me([198, 51, 100, 2]), None, &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Reuse(dual_own[0].subnet));
        // IPv6 switched off again: the dual-stack lease is stale.
        let v4 = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let got = choose_subnet(&v4, &dual_own, &me([198, 51, 100, 2]), None, &mut |_| 0).unwrap();
        assert!(matches!(got, Allocation::Stale(_)));
    }

    #[test]
    fn out_of_ipv6_subnets_is_a_clear_error() {
        let c = cfg(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::","IPv6SubnetMax":"fc00:0:0:1::","Backend":{"Type":"vxlan"}}"#,
        );
        let leases = [dual("10.5.1.0/24", "fc00:0:0:1::/64", [1, 1, 1, 1])];
        let e = choose_subnet(&c, &leases, &me([9, 9, 9, 9]), None, &mut |_| 0).unwrap_err();
        assert!(
            e.to_string().starts_with("out of IPv6 subnets: every /64 subnet"),
            "{e}"
        );
    }

    const V6_ONLY: &str =
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;

    fn v6_only(v6: &str, ip6: &str) -> Lease {
        let mut attrs = me([0, 0, 0, 0]);
        attrs.public_ipv6 = Some(ip6.parse().unwrap());
        Lease {
            subnet: SubnetKey::v6(v6.parse().unwrap()),
            attrs,
        }
    }

    #[test]
    fn ipv6_only_nodes_are_told_apart_by_public_ipv6() {
        let c = cfg(V6_ONLY);
        let leases = [v6_only("fc00:0:0:1::/64", "2001:db8::1")];
        // Every IPv6-only lease carries PublicIP 0.0.0.0: flannel's PublicIP rule would hand
        // node 2 node 1's lease. Node 2 gets a subnet of its own.
        let node2 = v6_only("fc00:0:0:9::/64", "2001:db8::2").attrs;
        let got = choose_subnet(&c, &leases, &node2, None, &mut |_| 0).unwrap();
        assert_eq!(got.subnet().to_key(), "0.0.0.0-0&fc00:0:0:2::-64");
        let got = choose_subnet(&c, &leases, &leases[0].attrs, None, &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Reuse(leases[0].subnet));
        let prev = SubnetKey::parse("0.0.0.0-0&fc00:0:0:2a::-64").unwrap();
        let got = choose_subnet(&c, &leases, &node2, Some(prev), &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Fresh(prev));
    }

    #[test]
    fn switching_between_ipv6_only_and_dual_stack_replaces_our_lease() {
        let own = [v6_only("fc00:0:0:1::/64", "2001:db8::1")];
        let mut dual_me = own[0].attrs.clone();
        dual_me.public_ip = Ipv4Addr::new(192, 0, 2, 1);
        let got = choose_subnet(&cfg(DUAL), &own, &dual_me, None, &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Stale(own[0].subnet));
        let mut dual_own = dual("10.5.7.0/24", "fc00:0:0:7::/64", [192, 0, 2, 1]);
        dual_own.attrs.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        let got = choose_subnet(&cfg(V6_ONLY), &[dual_own.clone()], &own[0].attrs, None, &mut |_| 0).unwrap();
        assert_eq!(got, Allocation::Stale(dual_own.subnet));
    }
}
