//! Reads the facts a trace needs from this node (netlink, /proc, iptables-save, nft, the subnet
//! file) and from etcd, for the family of the traced packet. Runs in the calling thread's network
//! namespace. It never changes state.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;

use weft_control::etcd::{EtcdOptions, EtcdSubnetManager};
use weft_control::manager::parse_leases;
use weft_control::store::subnets_prefix;
use weft_control::{LeaseBook, SubnetStore};
use weft_core::{Lease, Refused, SubnetEnv};
use weft_kernel::netlink::{AddrFamily, AddrInfo, FdbEntry, LinkInfo, Neighbour, Netlink};

use crate::facts::{Facts, Leases, Lookup, Owner, SubnetFile};
use crate::family::Family;
use crate::options::{TraceError, TraceOptions};

fn read_subnet_file(path: &Path) -> SubnetFile {
    match std::fs::read_to_string(path) {
        Ok(text) => match SubnetEnv::parse(&text) {
            Ok(env) => SubnetFile::Present(env),
            Err(e) => SubnetFile::Invalid(e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SubnetFile::Missing,
        Err(e) => SubnetFile::Invalid(format!("cannot read it: {e}")),
    }
}

fn read_forwarding(family: Family) -> Option<bool> {
    let text = std::fs::read_to_string(family.forwarding_proc()).ok()?;
    Some(text.trim() != "0")
}

/// Runs a read-only listing tool; None when it is missing or fails.
fn listing(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What etcd says: the leases, the records weftd's admission refuses, and the config's cluster
/// network of `family` (`Network`, `IPv6Network`).
struct EtcdFacts {
    leases: Leases,
    refused: Vec<Refused>,
    network: Option<ipnet::IpNet>,
}

async fn read_etcd(opts: &EtcdOptions, within: Duration, family: Family) -> EtcdFacts {
    let read = async {
        let etcd = EtcdSubnetManager::connect(opts.clone()).await?;
        let dir = subnets_prefix(etcd.prefix());
        let (stored, revision) = SubnetStore::list(&etcd, &dir).await?;
        let leases = parse_leases(etcd.prefix(), &stored);
        let config = etcd.get_config().await.ok().flatten();
        // Judged as every weftd judges them (none without a valid config to judge by).
        let refused = config
            .as_ref()
            .map(|cfg| {
                LeaseBook::from_listing(cfg, &dir, &stored, revision)
                    .snapshot()
                    .refusals()
                    .collect()
            })
            .unwrap_or_default();
        let network = config.and_then(|c| match family {
            Family::V4 => c.network().map(IpNet::from),
            Family::V6 => c.ipv6.map(|p| p.network.into()),
        });
        Ok::<_, weft_control::ControlError>(EtcdFacts {
            leases: Leases::Listed(leases),
            refused,
            network,
        })
    };
    let failed = |why: String| EtcdFacts {
        leases: Leases::Failed(why),
        refused: Vec::new(),
        network: None,
    };
    match tokio::time::timeout(within, read).await {
        Ok(Ok(facts)) => facts,
        Ok(Err(e)) => failed(e.to_string()),
        Err(_) => failed(format!("no answer from {} within {within:?}", opts.endpoints.join(","))),
    }
}

/// The routing entry a lookup of `dst` matches, from any table; a failed lookup is a fact too.
async fn fib_match(nl: &Netlink, dst: IpAddr) -> Lookup {
    match nl.route_fib_match(dst).await {
        Ok(Some(route)) => Lookup::Found(route),
        Ok(None) => Lookup::NoRoute,
        Err(e) => Lookup::Failed(e.to_string()),
    }
}

/// Collects everything [`crate::walk::walk`] looks at.
pub async fn collect(opts: &TraceOptions) -> Result<Facts, TraceError> {
    let family = Family::of(opts.dst);
    let nl_family = match family {
        Family::V4 => AddrFamily::Ipv4,
        Family::V6 => AddrFamily::Ipv6,
    };
    let subnet_file = read_subnet_file(&opts.subnet_file);
    let EtcdFacts {
        leases,
        refused,
        network: etcd_network,
    } = match &opts.etcd {
        Some(etcd) => read_etcd(etcd, opts.etcd_timeout, family).await,
        None => EtcdFacts {
            leases: Leases::NotAsked,
            refused: Vec::new(),
            network: None,
        },
    };
    let nl = Netlink::new().map_err(TraceError::Netlink)?;
    let links = nl.list_links().await.map_err(TraceError::Netlink)?;
    let addrs = nl.list_addrs(None).await.map_err(TraceError::Netlink)?;
    let route = fib_match(&nl, opts.dst).await;

    let mut neighbours = Vec::new();
    let mut fdb = Vec::new();
    let route_dev = match &route {
        Lookup::Found(r) => r.oif.and_then(|i| links.iter().find(|l| l.index == i)),
        _ => None,
    };
    if let Some(dev) = route_dev {
        for n in nl
            .list_neighbours(dev.index, Some(nl_family))
            .await
            .map_err(TraceError::Netlink)?
        {
            neighbours.push((dev.index, n));
        }
        if dev.kind.as_deref() == Some("vxlan") {
            fdb = nl.list_fdb(dev.index).await.map_err(TraceError::Netlink)?;
        }
    }
    let owner = match &leases {
        Leases::Listed(all) => match crate::facts::owner(family, all, &refused, opts.dst) {
            Owner::Admitted(l) | Owner::Refused(l, _) => Some(l),
            Owner::Nobody => None,
        },
        _ => None,
    };
    let underlay = underlay_routes(&nl, family, opts.dst, &route, owner, &neighbours, &fdb).await;
    let port_fdb = bridge_facts(&nl, opts, &links, &addrs, nl_family, &mut neighbours).await?;

    Ok(Facts {
        src: opts.src,
        dst: opts.dst,
        subnet_file_path: opts.subnet_file.display().to_string(),
        subnet_file,
        etcd_network,
        leases,
        refused,
        ip_forward: read_forwarding(family),
        bridge: opts.bridge.clone(),
        links,
        addrs,
        route,
        neighbours,
        fdb,
        port_fdb,
        underlay,
        iptables_filter: listing(&format!("{}-save", family.iptables()), &["-t", "filter"]),
        nft_ruleset: listing("nft", &["-j", "list", "ruleset"]),
        udp_peers: read_udp_peers(&opts.subnet_file),
    })
}

/// The underlay routes to every address the packet may be sent to: the FDB destinations of the
/// VTEP MACs that matter (the next hop's in the kernel, the lease's) and the owning lease's
/// public address.
async fn underlay_routes(
    nl: &Netlink,
    family: Family,
    dst: IpAddr,
    route: &Lookup,
    owner: Option<&Lease>,
    neighbours: &[(u32, Neighbour)],
    fdb: &[FdbEntry],
) -> Vec<(IpAddr, Lookup)> {
    let next_hop = match route {
        Lookup::Found(r) => r.gateway.unwrap_or(dst),
        _ => dst,
    };
    let mut macs: Vec<[u8; 6]> = neighbours
        .iter()
        .filter(|(_, n)| n.ip == next_hop)
        .filter_map(|(_, n)| n.mac)
        .collect();
    macs.extend(owner.and_then(|l| family.lease_vtep_mac(l)));
    let mut targets: Vec<IpAddr> = fdb
        .iter()
        .filter(|e| macs.contains(&e.mac))
        .filter_map(|e| e.dst)
        .collect();
    targets.extend(owner.and_then(|l| family.lease_public_ip(l)));
    targets.sort();
    targets.dedup();
    let mut underlay = Vec::new();
    for target in targets {
        underlay.push((target, fib_match(nl, target).await));
    }
    underlay
}

/// The bridge's neighbours (added to `neighbours`) and, unless the source is this node, its
/// ports' FDB entries: (port index, entry).
async fn bridge_facts(
    nl: &Netlink,
    opts: &TraceOptions,
    links: &[LinkInfo],
    addrs: &[AddrInfo],
    nl_family: AddrFamily,
    neighbours: &mut Vec<(u32, Neighbour)>,
) -> Result<Vec<(u32, FdbEntry)>, TraceError> {
    let mut port_fdb = Vec::new();
    let Some(bridge) = links.iter().find(|l| l.name == opts.bridge) else {
        return Ok(port_fdb);
    };
    for n in nl
        .list_neighbours(bridge.index, Some(nl_family))
        .await
        .map_err(TraceError::Netlink)?
    {
        neighbours.push((bridge.index, n));
    }
    if addrs.iter().any(|a| a.addr.addr() == opts.src) {
        return Ok(port_fdb);
    }
    for port in links.iter().filter(|l| l.master == Some(bridge.index)) {
        for e in nl.list_fdb(port.index).await.map_err(TraceError::Netlink)? {
            port_fdb.push((port.index, e));
        }
    }
    Ok(port_fdb)
}

/// The udp peer table weftd publishes beside the subnet file.
fn read_udp_peers(subnet_file: &std::path::Path) -> Result<Vec<weft_core::peer_file::PeerEntry>, String> {
    let path = weft_core::peer_file::peer_file_for(subnet_file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    weft_core::peer_file::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}
