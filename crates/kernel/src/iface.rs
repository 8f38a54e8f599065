//! Choosing the external interface, as flanneld does: `--iface` (names or IPs, tried in order),
//! then `--iface-can-reach`, then `--iface-regex`; with none of them, the interface that holds
//! the default route. The public IP (`--public-ip`) is the caller's business. With dual stack the
//! same interface's first global IPv6 address is the node's IPv6 underlay address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::Regex;

use crate::netlink::{AddrFamily, AddrInfo, LinkInfo, Netlink, NetlinkError};

/// The interface the overlay's encapsulated traffic leaves through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub name: String,
    pub index: u32,
    /// The interface's IPv4 address (the one named in `--iface`, else its first address).
    pub ip: Ipv4Addr,
    pub mtu: u32,
}

/// The `--iface`, `--iface-regex` and `--iface-can-reach` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceSelection {
    /// Interface names or IPv4 addresses, tried in order.
    pub ifaces: Vec<String>,
    /// Regular expressions matched against interface IPs, then names, tried in order.
    pub iface_regex: Vec<String>,
    /// Use the interface of the route to this address.
    pub can_reach: Option<Ipv4Addr>,
}

impl IfaceSelection {
    pub fn is_empty(&self) -> bool {
        self.ifaces.is_empty() && self.iface_regex.is_empty() && self.can_reach.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("no default IPv4 route: pass --iface (a name or an IP) to choose the external interface")]
    NoDefaultRoute,
    #[error("--iface-regex {pattern:?} is not a valid regular expression: {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error("no interface named {0} and no interface holds address {0}")]
    NotFound(String),
    #[error("interface {0} has no IPv4 address: give it one or choose another with --iface")]
    NoAddress(String),
    #[error("interface {0} has no global IPv6 address and the network config enables IPv6: give it one, or pass --public-ipv6")]
    NoIpv6Address(String),
    #[error("interface {name} reports MTU 0: cannot size the overlay; check the device")]
    NoMtu { name: String },
    #[error("no route to {0} (--iface-can-reach): fix routing or use --iface")]
    Unreachable(Ipv4Addr),
    #[error("no interface matches --iface {ifaces:?}, --iface-can-reach {can_reach:?} or --iface-regex {regexes:?}")]
    NoMatch {
        ifaces: Vec<String>,
        can_reach: Option<Ipv4Addr>,
        regexes: Vec<String>,
    },
}

/// Chooses the external interface according to `sel` (see the module docs for the order).
pub async fn select_external_interface(nl: &Netlink, sel: &IfaceSelection) -> Result<ExternalInterface, IfaceError> {
    let regexes = sel
        .iface_regex
        .iter()
        .map(|p| {
            Regex::new(p).map_err(|e| IfaceError::BadRegex {
                pattern: p.clone(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    if sel.is_empty() {
        let index = nl
            .default_route_oif(AddrFamily::Ipv4)
            .await?
            .ok_or(IfaceError::NoDefaultRoute)?;
        let link = nl
            .link_by_index(index)
            .await?
            .ok_or_else(|| IfaceError::NotFound(format!("#{index}")))?;
        return with_first_addr(nl, link).await;
    }

    let links = nl.list_links().await?;
    let addrs = nl.list_addrs(Some(AddrFamily::Ipv4)).await?;

    let mut last_error = None;
    for wanted in &sel.ifaces {
        match by_name_or_ip(wanted, &links, &addrs) {
            Ok(found) => return Ok(found),
            Err(e) => {
                tracing::warn!("--iface {wanted}: {e}");
                last_error = Some(e);
            }
        }
    }
    if sel.ifaces.len() == 1 && sel.can_reach.is_none() && regexes.is_empty() {
        // One name given and nothing else to try: its own error says most.
        return Err(last_error.expect("one --iface was tried"));
    }

    if let Some(target) = sel.can_reach {
        let route = nl
            .route_get(target.into())
            .await?
            .ok_or(IfaceError::Unreachable(target))?;
        let index = route.oif.ok_or(IfaceError::Unreachable(target))?;
        if let Some(link) = links.iter().find(|l| l.index == index) {
            let ip = match route.pref_src {
                Some(IpAddr::V4(src)) if addrs.iter().any(|a| a.index == index && ipv4(a) == Some(src)) => Some(src),
                _ => first_addr(&addrs, index),
            };
            let ip = ip.ok_or_else(|| IfaceError::NoAddress(link.name.clone()))?;
            return external(link, ip);
        }
    }

    for re in &regexes {
        // Like flanneld: a regex is matched against every interface's IPs first, then names.
        for (a, ip) in addrs.iter().filter_map(|a| Some((a, ipv4(a)?))) {
            if re.is_match(&ip.to_string()) {
                if let Some(link) = links.iter().find(|l| l.index == a.index) {
                    return external(link, ip);
                }
            }
        }
        for link in &links {
            if re.is_match(&link.name) {
                if let Some(ip) = first_addr(&addrs, link.index) {
                    return external(link, ip);
                }
                tracing::warn!(
                    "--iface-regex {}: interface {} has no IPv4 address; skipped",
                    re,
                    link.name
                );
            }
        }
    }

    Err(IfaceError::NoMatch {
        ifaces: sel.ifaces.clone(),
        can_reach: sel.can_reach,
        regexes: sel.iface_regex.clone(),
    })
}

/// The external interface's IPv6 address for dual stack: its first global unicast address
/// (link-local and other scoped addresses cannot carry traffic between nodes), as flanneld
/// prefers; `None` when it has none.
pub async fn interface_ipv6(nl: &Netlink, ext: &ExternalInterface) -> Result<Option<Ipv6Addr>, IfaceError> {
    let addrs = nl.list_addrs(Some(AddrFamily::Ipv6)).await?;
    Ok(first_global_ipv6(&addrs, ext.index))
}

/// The IPv6 addresses of a dual-stack node: the one the VTEP sends from (the interface's) and the
/// one other nodes are told (`--public-ipv6`, else the interface's).
pub fn dual_stack_addresses(
    ext: &ExternalInterface,
    iface_ipv6: Option<Ipv6Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<(Ipv6Addr, Ipv6Addr), IfaceError> {
    match (iface_ipv6, public_ipv6) {
        (Some(local), public) => Ok((local, public.unwrap_or(local))),
        (None, Some(public)) => Ok((public, public)),
        (None, None) => Err(IfaceError::NoIpv6Address(ext.name.clone())),
    }
}

fn first_global_ipv6(addrs: &[AddrInfo], index: u32) -> Option<Ipv6Addr> {
    addrs
        .iter()
        .filter(|a| a.index == index)
        .find_map(|a| match a.addr.addr() {
            IpAddr::V6(ip) if is_global_unicast(ip) => Some(ip),
            _ => None,
        })
}

/// Go's net.IP.IsGlobalUnicast for IPv6: not unspecified, loopback, multicast or link-local.
fn is_global_unicast(ip: Ipv6Addr) -> bool {
    let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || link_local)
}

fn by_name_or_ip(wanted: &str, links: &[LinkInfo], addrs: &[AddrInfo]) -> Result<ExternalInterface, IfaceError> {
    if let Ok(ip) = wanted.parse::<Ipv4Addr>() {
        let holder = addrs.iter().find(|a| ipv4(a) == Some(ip));
        let link = holder.and_then(|a| links.iter().find(|l| l.index == a.index));
        return match link {
            Some(link) => external(link, ip),
            None => Err(IfaceError::NotFound(wanted.to_string())),
        };
    }
    let link = links
        .iter()
        .find(|l| l.name == wanted)
        .ok_or_else(|| IfaceError::NotFound(wanted.to_string()))?;
    let ip = first_addr(addrs, link.index).ok_or_else(|| IfaceError::NoAddress(link.name.clone()))?;
    external(link, ip)
}

/// The address, if it is an IPv4 one (the external interface is chosen by its IPv4 address).
fn ipv4(a: &AddrInfo) -> Option<Ipv4Addr> {
    match a.addr.addr() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

fn first_addr(addrs: &[AddrInfo], index: u32) -> Option<Ipv4Addr> {
    addrs.iter().filter(|a| a.index == index).find_map(ipv4)
}

async fn with_first_addr(nl: &Netlink, link: LinkInfo) -> Result<ExternalInterface, IfaceError> {
    let addrs = nl.list_addrs(Some(AddrFamily::Ipv4)).await?;
    let ip = first_addr(&addrs, link.index).ok_or_else(|| IfaceError::NoAddress(link.name.clone()))?;
    external(&link, ip)
}

fn external(link: &LinkInfo, ip: Ipv4Addr) -> Result<ExternalInterface, IfaceError> {
    if link.mtu == 0 {
        return Err(IfaceError::NoMtu {
            name: link.name.clone(),
        });
    }
    Ok(ExternalInterface {
        name: link.name.clone(),
        index: link.index,
        ip,
        mtu: link.mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            mac: None,
            mtu: 1500,
            up: true,
            kind: None,
            master: None,
            vxlan: None,
        }
    }

    #[test]
    fn dual_stack_takes_the_first_global_ipv6_address() {
        let addrs = [
            AddrInfo {
                index: 2,
                addr: "fe80::1/64".parse().unwrap(),
            },
            AddrInfo {
                index: 3,
                addr: "2001:db8::9/64".parse().unwrap(),
            },
            AddrInfo {
                index: 2,
                addr: "2001:db8::7/64".parse().unwrap(),
            },
        ];
        assert_eq!(first_global_ipv6(&addrs, 2), Some("2001:db8::7".parse().unwrap()));
        assert_eq!(first_global_ipv6(&addrs[..1], 2), None, "link-local only");
        let ext = external(&link(2, "eth0"), Ipv4Addr::new(198, 51, 100, 7)).unwrap();
        let local: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let public: Ipv6Addr = "2001:db8:ffff::7".parse().unwrap();
        assert_eq!(dual_stack_addresses(&ext, Some(local), None).unwrap(), (local, local));
        assert_eq!(
            dual_stack_addresses(&ext, Some(local), Some(public)).unwrap(),
            (local, public)
        );
        assert_eq!(
            dual_stack_addresses(&ext, None, Some(public)).unwrap(),
            (public, public)
        );
        let e = dual_stack_addresses(&ext, None, None).unwrap_err().to_string();
        assert!(e.contains("eth0 has no global IPv6 address"), "{e}");
    }

    #[test]
    fn iface_by_name_takes_first_address_and_by_ip_takes_that_ip() {
        let links = [link(1, "lo"), link(2, "eth0")];
        let addrs = [
            AddrInfo {
                index: 2,
                addr: "198.51.100.7/24".parse().unwrap(),
            },
            AddrInfo {
                index: 2,
                addr: "198.51.100.8/24".parse().unwrap(),
            },
        ];
        let by_name = by_name_or_ip("eth0", &links, &addrs).unwrap();
        assert_eq!((by_name.index, by_name.ip), (2, Ipv4Addr::new(198, 51, 100, 7)));
        let by_ip = by_name_or_ip("198.51.100.8", &links, &addrs).unwrap();
        assert_eq!(
            (by_ip.name.as_str(), by_ip.ip),
            ("eth0", Ipv4Addr::new(198, 51, 100, 8))
        );
        let missing = by_name_or_ip("eth9", &links, &addrs).unwrap_err().to_string();
        assert_eq!(missing, "no interface named eth9 and no interface holds address eth9");
        assert!(matches!(
            by_name_or_ip("lo", &links, &addrs),
            Err(IfaceError::NoAddress(_))
        ));
    }
}
