//! Choosing the external interface, as flanneld does: `--iface` (names or IPs, tried in order),
//! then `--iface-can-reach`, then `--iface-regex`; with none of them, the interface that holds
//! the default route. The public IP (`--public-ip`) is the caller's business. With dual stack the
//! same interface's first global IPv6 address is the node's IPv6 underlay address. In an
//! IPv6-only network (EnableIPv4 false) the interface is chosen by its IPv6 addresses and the
//! IPv6 default route instead, so a host needs no IPv4 address at all, as with flanneld.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::Regex;

use crate::netlink::{AddrFamily, AddrInfo, LinkInfo, Netlink, NetlinkError};

/// The interface the overlay's encapsulated traffic leaves through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub name: String,
    pub index: u32,
    /// The address the interface was chosen by: IPv4 (the one named in `--iface`, else its
    /// first), or in an IPv6-only network its first global IPv6 address.
    pub ip: IpAddr,
    pub mtu: u32,
}

impl ExternalInterface {
    /// The interface's IPv4 address, when it was chosen by one.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match self.ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
}

/// The `--iface`, `--iface-regex` and `--iface-can-reach` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceSelection {
    /// Interface names or addresses, tried in order.
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
    #[error("no default {family} route: pass --iface (a name or an IP) to choose the external interface", family = if *.0 == AddrFamily::Ipv4 { "IPv4" } else { "IPv6" })]
    NoDefaultRoute(AddrFamily),
    #[error("--iface-regex {pattern:?} is not a valid regular expression: {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error("no interface named {0} and no interface holds address {0}")]
    NotFound(String),
    #[error("interface {0} has no {family} address: give it one or choose another with --iface", family = family_name(*.1))]
    NoAddress(String, AddrFamily),
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

/// Chooses the external interface according to `sel` (see the module docs for the order), by
/// its IPv4 addresses.
pub async fn select_external_interface(nl: &Netlink, sel: &IfaceSelection) -> Result<ExternalInterface, IfaceError> {
    select_external_interface_for(nl, sel, AddrFamily::Ipv4).await
}

/// [`select_external_interface`] by the addresses of `family` (IPv6 for an IPv6-only network):
/// the default route of that family, `--iface` names or addresses of it, its addresses matched
/// by `--iface-regex`.
pub async fn select_external_interface_for(
    nl: &Netlink,
    sel: &IfaceSelection,
    family: AddrFamily,
) -> Result<ExternalInterface, IfaceError> {
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
            .default_route_oif(family)
            .await?
            .ok_or(IfaceError::NoDefaultRoute(family))?;
        let link = nl
            .link_by_index(index)
            .await?
            .ok_or_else(|| IfaceError::NotFound(format!("#{index}")))?;
        let addrs = nl.list_addrs(Some(family)).await?;
        let ip =
            first_addr(&addrs, link.index, family).ok_or_else(|| IfaceError::NoAddress(link.name.clone(), family))?;
        return external(&link, ip);
    }

    let links = nl.list_links().await?;
    let addrs = nl.list_addrs(Some(family)).await?;

    let mut last_error = None;
    for wanted in &sel.ifaces {
        match by_name_or_ip(wanted, &links, &addrs, family) {
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
                Some(src) if addrs.iter().any(|a| a.index == index && usable(a, family) == Some(src)) => Some(src),
                _ => first_addr(&addrs, index, family),
            };
            let ip = ip.ok_or_else(|| IfaceError::NoAddress(link.name.clone(), family))?;
            return external(link, ip);
        }
    }

    for re in &regexes {
        // Like flanneld: a regex is matched against every interface's IPs first, then names.
        for (a, ip) in addrs.iter().filter_map(|a| Some((a, usable(a, family)?))) {
            if re.is_match(&ip.to_string()) {
                if let Some(link) = links.iter().find(|l| l.index == a.index) {
                    return external(link, ip);
                }
            }
        }
        for link in &links {
            if re.is_match(&link.name) {
                if let Some(ip) = first_addr(&addrs, link.index, family) {
                    return external(link, ip);
                }
                tracing::warn!(
                    "--iface-regex {}: interface {} has no {} address; skipped",
                    re,
                    link.name,
                    family_name(family)
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

fn family_name(family: AddrFamily) -> &'static str {
    match family {
        AddrFamily::Ipv4 => "IPv4",
        AddrFamily::Ipv6 => "global IPv6",
    }
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
    match first_addr(addrs, index, AddrFamily::Ipv6)? {
        IpAddr::V6(ip) => Some(ip),
        IpAddr::V4(_) => None,
    }
}

/// Go's net.IP.IsGlobalUnicast for IPv6: not unspecified, loopback, multicast or link-local.
fn is_global_unicast(ip: Ipv6Addr) -> bool {
    let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || link_local)
}

fn by_name_or_ip(
    wanted: &str,
    links: &[LinkInfo],
    addrs: &[AddrInfo],
    family: AddrFamily,
) -> Result<ExternalInterface, IfaceError> {
    if let Ok(ip) = wanted.parse::<IpAddr>() {
        let holder = addrs.iter().find(|a| usable(a, family) == Some(ip));
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
    let ip = first_addr(addrs, link.index, family).ok_or_else(|| IfaceError::NoAddress(link.name.clone(), family))?;
    external(link, ip)
}

/// The address, if it is one the interface can be chosen by: an IPv4 address, or for IPv6 a
/// global unicast one (link-local addresses cannot carry traffic between nodes).
fn usable(a: &AddrInfo, family: AddrFamily) -> Option<IpAddr> {
    match (a.addr.addr(), family) {
        (IpAddr::V4(ip), AddrFamily::Ipv4) => Some(ip.into()),
        (IpAddr::V6(ip), AddrFamily::Ipv6) if is_global_unicast(ip) => Some(ip.into()),
        _ => None,
    }
}

fn first_addr(addrs: &[AddrInfo], index: u32, family: AddrFamily) -> Option<IpAddr> {
    addrs
        .iter()
        .filter(|a| a.index == index)
        .find_map(|a| usable(a, family))
}

fn external(link: &LinkInfo, ip: IpAddr) -> Result<ExternalInterface, IfaceError> {
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
        let ext = external(&link(2, "eth0"), Ipv4Addr::new(198, 51, 100, 7).into()).unwrap();
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
        let v4 = AddrFamily::Ipv4;
        let by_name = by_name_or_ip("eth0", &links, &addrs, v4).unwrap();
        assert_eq!((by_name.index, by_name.ip), (2, Ipv4Addr::new(198, 51, 100, 7).into()));
        let by_ip = by_name_or_ip("198.51.100.8", &links, &addrs, v4).unwrap();
        assert_eq!(
            (by_ip.name.as_str(), by_ip.ip),
            ("eth0", Ipv4Addr::new(198, 51, 100, 8).into())
        );
        let missing = by_name_or_ip("eth9", &links, &addrs, v4).unwrap_err().to_string();
        assert_eq!(missing, "no interface named eth9 and no interface holds address eth9");
        assert!(matches!(
            by_name_or_ip("lo", &links, &addrs, v4),
            Err(IfaceError::NoAddress(..))
        ));
    }

    #[test]
    fn an_ipv6_only_network_chooses_by_global_ipv6_addresses() {
        let links = [link(2, "eth0"), link(3, "eth1")];
        let addrs = [
            AddrInfo {
                index: 2,
                addr: "fe80::1/64".parse().unwrap(),
            },
            AddrInfo {
                index: 2,
                addr: "2001:db8::7/64".parse().unwrap(),
            },
            AddrInfo {
                index: 3,
                addr: "fe80::3/64".parse().unwrap(),
            },
        ];
        let v6 = AddrFamily::Ipv6;
        let by_name = by_name_or_ip("eth0", &links, &addrs, v6).unwrap();
        assert_eq!(by_name.ip, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(by_name.ipv4(), None);
        assert_eq!(by_name_or_ip("2001:db8::7", &links, &addrs, v6).unwrap().name, "eth0");
        let e = by_name_or_ip("eth1", &links, &addrs, v6).unwrap_err().to_string();
        assert_eq!(
            e,
            "interface eth1 has no global IPv6 address: give it one or choose another with --iface"
        );
        assert!(by_name_or_ip("fe80::1", &links, &addrs, v6).is_err(), "link-local");
    }
}
