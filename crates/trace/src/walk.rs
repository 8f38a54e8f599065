//! The pure walk: from the collected [`Facts`] to the steps of a [`Trace`], in the order a packet
//! meets them — subnet.env, source, owning lease, route, forwarding, the backend's tables
//! (vxlan: neighbour, FDB, underlay route; host-gw: gateway; udp: TUN), then MTUs. A step that
//! breaks says why and what to do; the walk goes on where later steps still mean something.
//! An IPv6 packet takes the same walk through the IPv6 side of a dual-stack node: subnet.env's
//! FLANNEL_IPV6_* lines, the lease's IPv6 subnet, PublicIPv6 and BackendV6Data, the
//! `flannel-v6.<VNI>` VTEP, IPv6 forwarding and ip6tables ([`Family`] names the differences).

use std::net::IpAddr;

use ipnet::IpNet;
use weft_core::{Lease, SubnetEnv};
use weft_kernel::netlink::{format_mac, LinkInfo, Neighbour, RouteInfo, RouteType};

use crate::facts::{owner, Facts, Leases, Lookup, Owner, SubnetFile};
use crate::family::Family;
use crate::forward::{iptables_forward, nft_forward, parse_nft, Packet, Verdict};
use crate::report::{Cause, Step, Trace};

/// The udp backend adds 28 bytes (VXLAN's overhead depends on the family: [`Family`]).
const UDP_OVERHEAD: u32 = 28;

const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;

/// How the route sends the packet on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Vxlan,
    /// Via the peer's PublicIP on the external interface (host-gw, or vxlan DirectRouting).
    Gateway,
    Udp,
}

impl Path {
    fn name(self, lease: Option<&Lease>) -> &'static str {
        match self {
            Path::Vxlan => "vxlan",
            Path::Udp => "udp",
            Path::Gateway if lease.is_some_and(|l| l.attrs.backend_type == "vxlan") => "vxlan (direct routing)",
            Path::Gateway => "host-gw",
        }
    }
}

fn nud_name(state: u16) -> String {
    const NAMES: [(u16, &str); 8] = [
        (0x01, "INCOMPLETE"),
        (0x02, "REACHABLE"),
        (0x04, "STALE"),
        (0x08, "DELAY"),
        (0x10, "PROBE"),
        (0x20, "FAILED"),
        (0x40, "NOARP"),
        (0x80, "PERMANENT"),
    ];
    let names: Vec<&str> = NAMES.iter().filter(|(b, _)| state & b != 0).map(|(_, n)| *n).collect();
    if names.is_empty() {
        "NONE".into()
    } else {
        names.join("|")
    }
}

fn table_name(table: Option<u32>) -> String {
    match table {
        Some(254) => "main".into(),
        Some(255) => "local".into(),
        Some(253) => "default".into(),
        Some(t) => t.to_string(),
        None => "?".into(),
    }
}

/// `unicast`, `blackhole`, `unreachable`, `prohibit`, ...
fn kind_name(kind: RouteType) -> String {
    format!("{kind:?}").to_lowercase()
}

/// A route as `ip route` prints it, plus its table.
fn describe_route(r: &RouteInfo, f: &Facts) -> String {
    let mut s = String::new();
    if r.kind != RouteType::Unicast {
        s.push_str(&kind_name(r.kind));
        s.push(' ');
    }
    s.push_str(&r.dst.to_string());
    if let Some(id) = r.nexthop_id {
        s.push_str(&format!(" nhid {id}"));
    }
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev {}", f.link_name(oif)));
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s.push_str(&format!(" table {}", table_name(Some(r.table).filter(|t| *t != 0))));
    s
}

fn describe_neighbour(n: &Neighbour, dev: &str) -> String {
    let mac = n.mac.map(|m| format_mac(&m)).unwrap_or_else(|| "(no lladdr)".into());
    format!("{} dev {dev} lladdr {mac} {}", n.ip, nud_name(n.state))
}

fn describe_env(path: &str, env: &SubnetEnv, family: Family) -> String {
    format!("{path}: {}", family.describe_env(env))
}

/// The lease as its fields of `family` say it (IPv6: the whole dual-stack key, PublicIPv6,
/// BackendV6Data).
fn describe_lease(l: &Lease, family: Family) -> String {
    let backend = if l.attrs.backend_type.is_empty() {
        "udp"
    } else {
        &l.attrs.backend_type
    };
    let public = family
        .lease_public_ip(l)
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "(none)".into());
    let mut s = format!("{} {} {public} backend {backend}", l.subnet, family.public_ip_field());
    let data = family.lease_backend_data(l);
    if !data.is_null() {
        s.push_str(&format!(" {} {data}", family.backend_data_field()));
    }
    s
}

/// Walks the facts; see the module docs.
pub fn walk(f: &Facts) -> Trace {
    let mut steps = Vec::new();
    let backend = walk_into(f, &mut steps);
    Trace::new(f.src, f.dst, backend, steps)
}

/// The walk stops here: the step that says why is already pushed.
struct Stop;

fn walk_into(f: &Facts, steps: &mut Vec<Step>) -> Option<String> {
    walk_steps(f, steps).ok()
}

/// The walk in order: subnet.env, source, destination, lease, route, forwarding, the backend's
/// own hops, MTU. Returns the path's name.
fn walk_steps(f: &Facts, steps: &mut Vec<Step>) -> Result<String, Stop> {
    let family = f.family();
    if !family.contains(f.src) {
        steps.push(Step::broken(
            "source",
            Cause::MixedFamilies,
            format!(
                "{} and {} are of different address families: trace two IPv4 or two IPv6 addresses",
                f.src, f.dst
            ),
        ));
        return Err(Stop);
    }
    let env = env_step(f, family, steps)?;
    let network = env
        .and_then(|e| family.env_network(e))
        .map(|n| n.trunc())
        .or(f.etcd_network);
    let own_subnet = env
        .and_then(|e| family.env_subnet(e))
        .map(|n| n.trunc())
        .or_else(|| bridge_nets(f, family).first().copied());
    let src_is_pod = source_step(f, own_subnet, steps);
    destination_step(f, network, steps)?;
    if let Some(own) = own_subnet.filter(|s| s.contains(&f.dst)) {
        local_destination(f, own, steps);
        return Ok("local".into());
    }
    let lease = lease_of(f, family, steps);
    let (route, dev, path) = route_step(f, family, lease, steps)?;
    forwarding(f, src_is_pod, network, &dev.name, steps);

    // the backend's own tables
    let underlay_dev = match path {
        Path::Vxlan => vxlan_hops(f, route, &dev.name, lease, steps),
        Path::Gateway => {
            gateway_hops(f, route, &dev.name, steps);
            None
        }
        Path::Udp => {
            match crate::wireguard::is_device(&dev.name) {
                true => crate::wireguard::peer_hop(f, &dev.name, lease, steps),
                false => udp_peer_hop(f, lease, steps),
            }
            let public = lease.and_then(|l| family.lease_public_ip(l));
            public.and_then(|public| underlay_hop(f, public, route.oif, &dev.name, steps))
        }
    };
    mtu_check(f, path, dev, underlay_dev, env, src_is_pod, steps);
    Ok(path.name(lease).to_string())
}

/// The pod subnets of `family` on the node's bridge.
fn bridge_nets(f: &Facts, family: Family) -> Vec<IpNet> {
    let Some(bridge) = f.link_named(&f.bridge) else {
        return Vec::new();
    };
    f.addrs
        .iter()
        .filter(|a| a.index == bridge.index && family.is_routable(&a.addr))
        .map(|a| a.addr.trunc())
        .collect()
}

/// subnet.env: there, readable, and with a subnet of the traced family. None (the walk goes on)
/// when it is missing or unreadable.
fn env_step<'f>(f: &'f Facts, family: Family, steps: &mut Vec<Step>) -> Result<Option<&'f SubnetEnv>, Stop> {
    let path = &f.subnet_file_path;
    match &f.subnet_file {
        SubnetFile::Present(env) if family.env_subnet(env).is_none() || family.env_network(env).is_none() => {
            let (cause, why) = match family {
                Family::V6 => (
                    Cause::Ipv6NotEnabled,
                    format!(
                    "{path} has no FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET: this node is not dual stack, so it has no \
                     IPv6 pod subnet and routes no IPv6 pod traffic. Put \"EnableIPv6\": true and an \"IPv6Network\" \
                     in the network config in etcd and restart weftd (it needs a global IPv6 address on its \
                     interface, or --public-ipv6)"
                ),
                ),
                Family::V4 => (
                    Cause::Ipv4NotEnabled,
                    format!(
                    "{path} has no FLANNEL_NETWORK/FLANNEL_SUBNET: the network is IPv6-only (\"EnableIPv4\": false), \
                     so this node has no IPv4 pod subnet and routes no IPv4 pod traffic; trace IPv6 addresses"
                ),
                ),
            };
            steps.push(Step::broken("subnet.env", cause, why).with_entry(describe_env(path, env, family)));
            Err(Stop)
        }
        SubnetFile::Present(env) => {
            steps.push(Step::ok(
                "subnet.env",
                describe_env(path, env, family),
                "weftd holds a lease on this node",
            ));
            Ok(Some(env))
        }
        SubnetFile::Missing => {
            steps.push(Step::broken(
                "subnet.env",
                Cause::MissingSubnetEnv,
                format!(
                    "{path} does not exist: weftd has not acquired a lease on this node, so CNI cannot set up \
                     pods here; check that weftd runs (and its log), or pass --subnet-file if it writes elsewhere"
                ),
            ));
            Ok(None)
        }
        SubnetFile::Invalid(why) => {
            steps.push(Step::broken(
                "subnet.env",
                Cause::InvalidSubnetEnv,
                format!("{path} cannot be used: {why}; restart weftd to write it again"),
            ));
            Ok(None)
        }
    }
}

/// The source: an address of this node, or a pod of its subnet. Returns whether it is a pod.
fn source_step(f: &Facts, own_subnet: Option<IpNet>, steps: &mut Vec<Step>) -> bool {
    if let Some(a) = f.addrs.iter().find(|a| a.addr.addr() == f.src) {
        steps.push(Step::ok(
            "source",
            format!("{} dev {}", a.addr, f.link_name(a.index)),
            format!(
                "{} is an address of this node: its packets are sent, not forwarded",
                f.src
            ),
        ));
        return false;
    }
    match own_subnet.filter(|s| s.contains(&f.src)) {
        Some(subnet) => {
            steps.push(Step::ok(
                "source",
                "",
                format!("{} is a pod of this node (subnet {subnet} on {})", f.src, f.bridge),
            ));
            true
        }
        None => {
            let subnet = own_subnet.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into());
            steps.push(Step::broken(
                "source",
                Cause::SourceNotLocal,
                format!(
                    "{} is neither an address of this node nor in its pod subnet ({subnet}): run weft trace on \
                     the node that hosts {}",
                    f.src, f.src
                ),
            ));
            false
        }
    }
}

/// The destination is in the cluster network (when the network is known).
fn destination_step(f: &Facts, network: Option<IpNet>, steps: &mut Vec<Step>) -> Result<(), Stop> {
    match network {
        Some(net) if !net.contains(&f.dst) => {
            steps.push(Step::broken(
                "destination",
                Cause::DestinationOutsideNetwork,
                format!(
                    "{} is outside the cluster network {net}: it is not an overlay address, so weft \
                     does not route it; give a pod address",
                    f.dst
                ),
            ));
            Err(Stop)
        }
        Some(_) => Ok(()),
        None => {
            steps.push(Step::info(
                "destination",
                "the cluster network is unknown (no subnet.env and no etcd config): cannot check that the destination is a pod address",
            ));
            Ok(())
        }
    }
}

/// The lease that owns the destination (admitted, or refused by every node), when etcd was read.
fn lease_of<'f>(f: &'f Facts, family: Family, steps: &mut Vec<Step>) -> Option<&'f Lease> {
    let leases = match &f.leases {
        Leases::Listed(leases) => leases,
        Leases::Failed(why) => {
            steps.push(Step::broken(
                "lease",
                Cause::EtcdUnreachable,
                format!("cannot read the leases from etcd: {why}; check --etcd-endpoints and the TLS flags"),
            ));
            return None;
        }
        Leases::NotAsked => {
            steps.push(Step::info(
                "lease",
                "no etcd options given: the owning lease is not checked",
            ));
            return None;
        }
    };
    match owner(family, leases, &f.refused, f.dst) {
        Owner::Admitted(l) => {
            lease_step(l, family, f.dst, steps);
            Some(l)
        }
        Owner::Refused(l, refused) => {
            steps.push(
                Step::broken(
                    "lease",
                    Cause::LeaseRefused,
                    format!(
                        "every node refuses the lease {}: {}; nothing is programmed for {}. The node that \
                         published it must lease what nobody holds: stop its weftd, delete the key (`etcdctl del \
                         <prefix>/subnets/{}`) and start it again, then re-create its pods. `weft leases` lists the refusals",
                        refused.name, refused.reason, f.dst, refused.name
                    ),
                )
                .with_entry(describe_lease(l, family)),
            );
            Some(l)
        }
        Owner::Nobody => {
            steps.push(Step::broken(
                "lease",
                Cause::NoLease,
                format!(
                    "no lease in etcd covers {}: no node holds that subnet (its node is gone or its lease \
                     expired, or the address is wrong{}); `weft leases` lists the cluster's subnets",
                    f.dst,
                    match family {
                        Family::V4 => "",
                        Family::V6 => ", or the node that hosts it runs without IPv6 and its lease has no IPv6 subnet",
                    }
                ),
            ));
            None
        }
    }
}

/// The kernel's route to the destination: a unicast route into the overlay (vxlan device, the
/// udp/wireguard TUN device, or host-gw's gateway route), of the lease's backend; its device up.
fn route_step<'f>(
    f: &'f Facts,
    family: Family,
    lease: Option<&Lease>,
    steps: &mut Vec<Step>,
) -> Result<(&'f RouteInfo, &'f LinkInfo, Path), Stop> {
    let route = match &f.route {
        Lookup::Found(r) => r,
        Lookup::NoRoute => {
            steps.push(Step::broken(
                "route",
                Cause::NoRoute,
                format!(
                    "the kernel has no route to {}: weftd has not programmed this node (check that weftd runs, \
                     with the cluster's backend, and its log)",
                    f.dst
                ),
            ));
            return Err(Stop);
        }
        Lookup::Failed(why) => {
            steps.push(Step::broken(
                "route",
                Cause::NoRoute,
                format!("route lookup for {} failed: {why}", f.dst),
            ));
            return Err(Stop);
        }
    };
    let entry = describe_route(route, f);
    if route.kind != RouteType::Unicast {
        steps.push(
            Step::broken(
                "route",
                Cause::NoRoute,
                format!(
                    "{} matches a {} route, which discards the packet: delete it (ip route del {})",
                    f.dst,
                    kind_name(route.kind),
                    route.dst
                ),
            )
            .with_entry(entry),
        );
        return Err(Stop);
    }
    let Some(dev) = route.oif.and_then(|i| f.link(i)) else {
        steps.push(Step::broken("route", Cause::NoRoute, "the matched route has no output device").with_entry(entry));
        return Err(Stop);
    };
    let Some(path) = path_of(route, dev, family, lease) else {
        steps.push(route_not_into_overlay(f, route, dev, family, lease).with_entry(entry));
        return Err(Stop);
    };
    steps.push(route_matches_lease(f, path, &dev.name, lease).with_entry(entry));
    if !dev.up {
        let name = &dev.name;
        steps.push(Step::broken(
            "device",
            Cause::DeviceDown,
            format!("{name} is down: packets routed to it are dropped; `ip link set {name} up` (weftd does this on its next reconcile)"),
        ));
    }
    Ok((route, dev, path))
}

/// Which overlay path a route takes, by its device (or, host-gw, its gateway); None when it
/// leads out of the overlay.
fn path_of(route: &RouteInfo, dev: &LinkInfo, family: Family, lease: Option<&Lease>) -> Option<Path> {
    if dev.kind.as_deref() == Some("vxlan") {
        Some(Path::Vxlan)
    } else if dev.name == "flannel0" || dev.kind.as_deref() == Some("tun") {
        Some(Path::Udp)
    } else if route.gateway.is_some()
        && route.dst.prefix_len() > 0
        // Without a lease to compare with, any gateway route narrower than the default counts.
        && lease.is_none_or(|l| family.lease_public_ip(l) == route.gateway)
    {
        Some(Path::Gateway)
    } else {
        None
    }
}

/// The broken step of a route that leads out of the overlay: host-gw's route via another
/// address than the lease's, or no overlay route at all.
fn route_not_into_overlay(f: &Facts, route: &RouteInfo, dev: &LinkInfo, family: Family, lease: Option<&Lease>) -> Step {
    let public = lease
        .and_then(|l| family.lease_public_ip(l))
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "(none)".into());
    if lease.is_some_and(|l| l.attrs.backend_type == "host-gw") && route.dst.prefix_len() > 0 {
        let via = route
            .gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "no gateway".into());
        return Step::broken(
            "route",
            Cause::RouteMismatchesLease,
            format!(
                "the route sends {} via {via}, but the lease says the node is at {public}: weftd corrects the \
                 route on its next reconcile",
                f.dst
            ),
        );
    }
    let subnet = lease
        .and_then(|l| family.lease_subnet(l))
        .map(|n| n.to_string())
        .unwrap_or_else(|| "its subnet".into());
    let which = if route.dst.prefix_len() == 0 {
        "the default route"
    } else {
        "an unrelated route"
    };
    Step::broken(
        "route",
        Cause::RouteNotIntoOverlay,
        format!(
            "{} leaves through {} ({which}), not into the overlay: the route for {subnet} is missing; weftd \
             adds it on its next reconcile (check that weftd runs and its log)",
            f.dst, dev.name
        ),
    )
}

/// The route's step: ok when its path is the lease's backend's (or there is no lease to compare).
fn route_matches_lease(f: &Facts, path: Path, dev_name: &str, lease: Option<&Lease>) -> Step {
    let expected = lease.map(|l| l.attrs.backend_type.as_str());
    let consistent = match (path, expected) {
        (_, None) => true,
        (Path::Vxlan, Some(b)) => b == "vxlan",
        (Path::Udp, Some(b)) => {
            b.is_empty() || b == "udp" || (b == "wireguard" && crate::wireguard::is_device(dev_name))
        }
        (Path::Gateway, Some(b)) => b == "host-gw" || b == "vxlan",
    };
    match (consistent, lease) {
        (false, Some(l)) => Step::broken(
            "route",
            Cause::RouteMismatchesLease,
            format!(
                "the route goes through {dev_name} ({}), but the lease of {} says backend {:?}: nodes of one \
                 cluster must run the same backend; restart weftd on the node that differs",
                path.name(None),
                l.subnet,
                l.attrs.backend_type
            ),
        ),
        _ => Step::ok(
            "route",
            "",
            format!("{} goes out through {dev_name} ({})", f.dst, path.name(lease)),
        ),
    }
}

/// The owning lease: of an IPv6 destination it must also say how to reach the node over IPv6
/// (PublicIPv6, and for vxlan the IPv6 VTEP's MAC), or weft refuses it and nothing routes there.
fn lease_step(l: &Lease, family: Family, dst: IpAddr, steps: &mut Vec<Step>) {
    let entry = describe_lease(l, family);
    let mut missing = Vec::new();
    if family == Family::V6 {
        if l.attrs.public_ipv6.is_none() {
            missing.push("PublicIPv6".to_string());
        }
        if l.attrs.backend_type == "vxlan" && l.attrs.vtep_v6_mac().is_none() {
            missing.push("BackendV6Data VtepMAC".to_string());
        }
    }
    if missing.is_empty() {
        let public = family
            .lease_public_ip(l)
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "(none)".into());
        steps.push(Step::ok(
            "lease",
            entry,
            format!("the node at {public} owns the subnet of {dst}"),
        ));
    } else {
        steps.push(
            Step::broken(
                "lease",
                Cause::LeaseLacksIpv6,
                format!(
                    "the lease {} has an IPv6 subnet but no {}: weft (and flannel) refuse such a lease, so no node \
                     routes {dst}. The node at {} must publish them: restart its weftd with a global IPv6 address \
                     on its interface (or --public-ipv6)",
                    l.subnet,
                    missing.join(" and no "),
                    l.attrs.public_ip
                ),
            )
            .with_entry(entry),
        );
    }
}

/// How the kernel finds a neighbour's MAC in this family.
fn resolution(family: Family) -> &'static str {
    match family {
        Family::V4 => "ARP",
        Family::V6 => "neighbour discovery",
    }
}

/// The udp backend: weftd's peer table must send the destination's subnet to the lease's PublicIP.
fn udp_peer_hop(f: &Facts, lease: Option<&Lease>, steps: &mut Vec<Step>) {
    let peers = match &f.udp_peers {
        Ok(p) => p,
        Err(why) => {
            steps.push(Step::info(
                "peer table",
                format!("weftd's udp peer table is not readable ({why}); is weftd running in udp mode with this --subnet-file?"),
            ));
            return;
        }
    };
    let Some(peer) = peers.iter().find(|p| IpNet::from(p.subnet).contains(&f.dst)) else {
        steps.push(
            Step::broken(
                "peer table",
                Cause::UdpPeerMissing,
                format!(
                    "weftd's udp peer table has no entry for {}: its packets get ICMP net-unreachable. weftd adds the peer on \
                     its next reconcile once the lease is in etcd; check `weft leases`",
                    f.dst
                ),
            ),
        );
        return;
    };
    let entry = format!("{} -> {}:8285", peer.subnet, peer.public_ip);
    match lease {
        Some(l) if l.attrs.public_ip != peer.public_ip => steps.push(
            Step::broken(
                "peer table",
                Cause::UdpPeerMismatch,
                format!(
                    "weftd sends {} to {} but the lease says PublicIP {}: weftd has not caught up with the lease; it \
                     swaps its table on the next lease event or reconcile",
                    peer.subnet, peer.public_ip, l.attrs.public_ip
                ),
            )
            .with_entry(entry),
        ),
        _ => steps.push(Step::ok(
            "peer table",
            entry,
            format!("weftd wraps the packet in one UDP datagram to {}", peer.public_ip),
        )),
    }
}

/// The destination is a pod of this node: the route must lead to the bridge.
fn local_destination(f: &Facts, own: IpNet, steps: &mut Vec<Step>) {
    match &f.route {
        Lookup::Found(r) => {
            let entry = describe_route(r, f);
            if r.oif.map(|i| f.link_name(i)) == Some(f.bridge.clone()) {
                steps.push(Step::ok(
                    "route",
                    entry,
                    format!("{} is a pod of this node ({own}): delivered on {}", f.dst, f.bridge),
                ));
            } else {
                steps.push(
                    Step::broken(
                        "route",
                        Cause::RouteNotIntoOverlay,
                        format!(
                            "{} is in this node's subnet {own} but the route does not lead to {}: is {} up with \
                             its gateway address? (the CNI plugin creates it with the first pod)",
                            f.dst, f.bridge, f.bridge
                        ),
                    )
                    .with_entry(entry),
                );
            }
        }
        _ => steps.push(Step::broken(
            "route",
            Cause::NoRoute,
            format!(
                "no route to {} in this node's own subnet {own}: {} is missing or has no address",
                f.dst, f.bridge
            ),
        )),
    }
}

fn forwarding(f: &Facts, src_is_pod: bool, network: Option<IpNet>, out_dev: &str, steps: &mut Vec<Step>) {
    let family = f.family();
    let sysctl = family.forwarding_sysctl();
    match (f.ip_forward, src_is_pod) {
        (Some(true), _) => steps.push(Step::ok(
            "ip_forward",
            format!("{sysctl} = 1"),
            "this node forwards between its pods and the overlay",
        )),
        (Some(false), true) => steps.push(
            Step::broken(
                "ip_forward",
                Cause::IpForwardDisabled,
                format!(
                    "this node does not forward, so it drops every packet from its pods to other nodes: run \
                     `sysctl -w {sysctl}=1` and persist it in /etc/sysctl.d/"
                ),
            )
            .with_entry(format!("{sysctl} = 0")),
        ),
        (Some(false), false) => steps.push(Step::info(
            "ip_forward",
            format!("{sysctl} = 0: not needed for this node's own packets, but its pods cannot reach other nodes"),
        )),
        (None, _) => steps.push(Step::info(
            "ip_forward",
            format!("cannot read {}", family.forwarding_proc()),
        )),
    }
    if !src_is_pod {
        return;
    }
    let out = Packet {
        src: f.src,
        dst: f.dst,
        iif: f.bridge.clone(),
        oif: out_dev.to_string(),
    };
    let back = Packet {
        src: f.dst,
        dst: f.src,
        iif: out_dev.to_string(),
        oif: f.bridge.clone(),
    };
    let iptables_read_filter = f.iptables_filter.as_deref().is_some_and(|s| s.contains(":FORWARD "));
    let nft_ruleset = f.nft_ruleset.as_deref().and_then(parse_nft);
    let verdict = |p: &Packet| -> Option<Verdict> {
        let ipt = f.iptables_filter.as_deref().and_then(|s| iptables_forward(s, p));
        let nft = nft_ruleset
            .as_ref()
            .and_then(|r| nft_forward(r, p, iptables_read_filter));
        match (ipt, nft) {
            (Some(d @ Verdict::Drop { .. }), _) | (_, Some(d @ Verdict::Drop { .. })) => Some(d),
            (Some(Verdict::Accept { by: a }), Some(Verdict::Accept { by: b })) => Some(Verdict::Accept {
                by: format!("{a}; {b}"),
            }),
            (a, b) => a.or(b),
        }
    };
    let net = network
        .map(|n| n.to_string())
        .unwrap_or_else(|| "<cluster network>".into());
    let ipt = family.iptables();
    let fix = format!(
        "weftd installs accept rules for the cluster network unless --iptables-forward-rules=false; or add them: \
         `{ipt} -A FORWARD -s {net} -j ACCEPT; {ipt} -A FORWARD -d {net} -j ACCEPT`"
    );
    match (verdict(&out), verdict(&back)) {
        (Some(Verdict::Drop { by }), _) => steps.push(
            Step::broken(
                "forward",
                Cause::ForwardDropped,
                format!(
                    "the FORWARD hook drops {} -> {} (in {}, out {out_dev}): {fix}",
                    f.src, f.dst, f.bridge
                ),
            )
            .with_entry(by),
        ),
        (_, Some(Verdict::Drop { by })) => steps.push(
            Step::broken(
                "forward",
                Cause::ForwardDropped,
                format!("the FORWARD hook drops the replies {} -> {}: {fix}", f.dst, f.src),
            )
            .with_entry(by),
        ),
        (Some(Verdict::Accept { by }), _) => steps.push(Step::ok(
            "forward",
            by,
            "the FORWARD hook lets the packet and its replies through",
        )),
        _ => steps.push(Step::info(
            "forward",
            format!("no {ipt} or nftables forward rules could be read ({ipt}-save/nft missing?): nothing checked"),
        )),
    }
}

/// Neighbour, FDB entry and underlay route of a VXLAN path; returns the underlay device.
fn vxlan_hops(f: &Facts, route: &RouteInfo, dev: &str, lease: Option<&Lease>, steps: &mut Vec<Step>) -> Option<u32> {
    let family = f.family();
    let oif = route.oif?;
    let next_hop = route.gateway.unwrap_or(f.dst);
    let lease_mac = lease.and_then(|l| family.lease_vtep_mac(l));
    let kernel_mac = neighbour_hop(f, oif, next_hop, dev, lease_mac, steps);

    // FDB: which node (underlay IP) the VTEP MAC lives behind.
    let lease_ip = lease.and_then(|l| family.lease_public_ip(l));
    let Some(mac) = kernel_mac.or(lease_mac) else {
        steps.push(Step::info(
            "fdb",
            "no VTEP MAC known (no neighbour entry, no lease): FDB not checked",
        ));
        return lease_ip.and_then(|ip| underlay_hop(f, ip, Some(oif), dev, steps));
    };
    let fdb_dst = fdb_hop(f, mac, dev, lease_ip, steps);
    let target = fdb_dst.or(lease_ip)?;
    underlay_hop(f, target, Some(oif), dev, steps)
}

/// The neighbour entry of the VTEP address `next_hop` on the VXLAN device `oif`, against the
/// lease's VtepMAC; returns the MAC the kernel resolves it to.
fn neighbour_hop(
    f: &Facts,
    oif: u32,
    next_hop: IpAddr,
    dev: &str,
    lease_mac: Option<[u8; 6]>,
    steps: &mut Vec<Step>,
) -> Option<[u8; 6]> {
    let mac_field = f.family().vtep_mac_field();
    let lease_mac_text = lease_mac
        .map(|m| format_mac(&m))
        .unwrap_or_else(|| format!("<{mac_field} of the lease>"));
    let neighbour = f
        .neighbours
        .iter()
        .find(|(i, n)| *i == oif && n.ip == next_hop)
        .map(|(_, n)| n);
    match neighbour {
        None => {
            steps.push(Step::broken(
                "neighbour",
                Cause::MissingNeighbour,
                format!(
                    "{dev} has no neighbour entry for {next_hop}, the VTEP address of the owning node: the kernel \
                     cannot build the inner Ethernet header and drops the packet. weftd adds it on its next \
                     reconcile; by hand: `ip neigh replace {next_hop} lladdr {lease_mac_text} dev {dev} nud permanent`"
                ),
            ));
            None
        }
        Some(n) => {
            let entry = describe_neighbour(n, dev);
            match n.mac {
                None => steps.push(
                    Step::broken(
                        "neighbour",
                        Cause::NeighbourUnresolved,
                        format!("the entry for {next_hop} has no MAC: `ip neigh replace {next_hop} lladdr {lease_mac_text} dev {dev} nud permanent`"),
                    )
                    .with_entry(entry),
                ),
                Some(mac) if n.state & (NUD_FAILED | NUD_INCOMPLETE) != 0 => steps.push(
                    Step::broken(
                        "neighbour",
                        Cause::NeighbourUnresolved,
                        format!(
                            "the entry for {next_hop} is {}: `ip neigh replace {next_hop} lladdr {} dev {dev} nud permanent`",
                            nud_name(n.state),
                            lease_mac.map(|m| format_mac(&m)).unwrap_or_else(|| format_mac(&mac))
                        ),
                    )
                    .with_entry(entry),
                ),
                Some(mac) if lease_mac.is_some_and(|l| l != mac) => steps.push(
                    Step::broken(
                        "neighbour",
                        Cause::VtepMacMismatch,
                        format!(
                            "{dev} resolves {next_hop} to {}, but the owning node's lease advertises {mac_field} \
                             {lease_mac_text}: that node's device has another MAC now (it was re-created), so it \
                             drops these frames. weftd replaces the entry on its next reconcile; by hand: `ip neigh \
                             replace {next_hop} lladdr {lease_mac_text} dev {dev} nud permanent`",
                            format_mac(&mac)
                        ),
                    )
                    .with_entry(entry),
                ),
                Some(_) => steps.push(Step::ok(
                    "neighbour",
                    entry,
                    if lease_mac.is_some() {
                        "the inner frame goes to the owning node's VTEP MAC (as in its lease)"
                    } else {
                        "the inner frame goes to this VTEP MAC"
                    },
                )),
            }
            n.mac
        }
    }
}

/// The FDB entry of the VTEP MAC `mac`, against the lease's public address; returns the underlay
/// address the kernel sends to.
fn fdb_hop(f: &Facts, mac: [u8; 6], dev: &str, lease_ip: Option<IpAddr>, steps: &mut Vec<Step>) -> Option<IpAddr> {
    let public_field = f.family().public_ip_field();
    let mac_text = format_mac(&mac);
    let entries: Vec<_> = f.fdb.iter().filter(|e| e.mac == mac && e.dst.is_some()).collect();
    match entries.first() {
        None => {
            let dst = lease_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| format!("<{public_field} of the owning node>"));
            steps.push(Step::broken(
                "fdb",
                Cause::MissingFdb,
                format!(
                    "{dev} has no FDB entry for {mac_text}: the kernel does not know which node to send the VXLAN \
                     packet to and drops it. weftd adds it on its next reconcile; by hand: `bridge fdb replace \
                     {mac_text} dev {dev} dst {dst} self permanent`"
                ),
            ));
            None
        }
        Some(e) => {
            let dst = e.dst.expect("filtered");
            let entry = format!(
                "{mac_text} dev {dev} dst {dst}{}{}",
                if e.is_self { " self" } else { "" },
                if e.is_permanent() { " permanent" } else { "" }
            );
            match lease_ip {
                Some(ip) if ip != dst && !entries.iter().any(|e| e.dst == Some(ip)) => steps.push(
                    Step::broken(
                        "fdb",
                        Cause::FdbDestinationMismatch,
                        format!(
                            "{dev} sends {mac_text} to {dst}, but the owning node's lease says {public_field} {ip}: weftd \
                             corrects it on its next reconcile; by hand: `bridge fdb replace {mac_text} dev {dev} dst {ip} self permanent`"
                        ),
                    )
                    .with_entry(entry),
                ),
                _ => steps.push(Step::ok(
                    "fdb",
                    entry,
                    format!("the VXLAN packet goes to {dst}"),
                )),
            }
            Some(dst)
        }
    }
}

/// The underlay route to a node's address; returns its output device.
fn underlay_hop(f: &Facts, target: IpAddr, overlay: Option<u32>, dev: &str, steps: &mut Vec<Step>) -> Option<u32> {
    match f.underlay_lookup(target) {
        Some(Lookup::Found(r)) if r.kind == RouteType::Unicast && r.oif.is_some() && r.oif != overlay => {
            steps.push(Step::ok(
                "underlay",
                describe_route(r, f),
                format!(
                    "the encapsulated packet to {target} leaves through {}",
                    f.link_name(r.oif.expect("checked"))
                ),
            ));
            r.oif
        }
        Some(Lookup::Found(r)) => {
            steps.push(
                Step::broken(
                    "underlay",
                    Cause::NoUnderlayRoute,
                    format!(
                        "the route to {target} (the owning node) does not lead to the underlay{}: fix this node's \
                         routing so {target} is reached through the external interface",
                        if r.oif == overlay {
                            format!(" but back into {dev}")
                        } else {
                            String::new()
                        }
                    ),
                )
                .with_entry(describe_route(r, f)),
            );
            None
        }
        Some(Lookup::NoRoute) => {
            steps.push(Step::broken(
                "underlay",
                Cause::NoUnderlayRoute,
                format!(
                    "no route to {target}, the owning node's address: the encapsulated packet cannot leave this \
                     node; fix the underlay routing (the nodes must reach each other's {})",
                    f.family().public_ip_field()
                ),
            ));
            None
        }
        Some(Lookup::Failed(why)) => {
            steps.push(Step::broken(
                "underlay",
                Cause::NoUnderlayRoute,
                format!("route lookup for {target} failed: {why}"),
            ));
            None
        }
        None => {
            steps.push(Step::info(
                "underlay",
                format!("the route to {target} was not looked up"),
            ));
            None
        }
    }
}

/// host-gw (or DirectRouting): the gateway must answer ARP on the external interface.
fn gateway_hops(f: &Facts, route: &RouteInfo, dev: &str, steps: &mut Vec<Step>) {
    let (Some(gw), Some(oif)) = (route.gateway, route.oif) else {
        return;
    };
    match f
        .neighbours
        .iter()
        .find(|(i, n)| *i == oif && n.ip == gw)
        .map(|(_, n)| n)
    {
        Some(n) if n.state & (NUD_FAILED | NUD_INCOMPLETE) != 0 || n.mac.is_none() => steps.push(
            Step::broken(
                "neighbour",
                Cause::NeighbourUnresolved,
                format!(
                    "{gw} does not answer {} on {dev}: host-gw needs every node on one L2 segment; check that \
                     the node is up and on this segment, or use the vxlan backend",
                    resolution(f.family())
                ),
            )
            .with_entry(describe_neighbour(n, dev)),
        ),
        Some(n) => steps.push(Step::ok(
            "neighbour",
            describe_neighbour(n, dev),
            format!("the owning node {gw} answers on {dev}"),
        )),
        None => steps.push(Step::info(
            "neighbour",
            format!(
                "no {} entry for {gw} on {dev} yet: the kernel resolves it with the first packet",
                resolution(f.family())
            ),
        )),
    }
}

fn mtu_check(
    f: &Facts,
    path: Path,
    dev: &LinkInfo,
    underlay_dev: Option<u32>,
    env: Option<&SubnetEnv>,
    src_is_pod: bool,
    steps: &mut Vec<Step>,
) {
    let overlay_mtu = dev.mtu;
    let name = &dev.name;
    let mut seen = vec![format!("{name} {overlay_mtu}")];
    let mut problems = Vec::new();
    let underlay = underlay_dev.or(dev.vxlan.as_ref().and_then(|v| v.dev_index));
    let overhead = match path {
        Path::Vxlan => f.family().vxlan_overhead(),
        Path::Udp => UDP_OVERHEAD,
        Path::Gateway => 0,
    };
    if overhead > 0 {
        if let Some(u) = underlay.and_then(|i| f.link(i)) {
            seen.push(format!("{} {}", u.name, u.mtu));
            if overlay_mtu + overhead > u.mtu {
                problems.push(format!(
                    "{name} has MTU {overlay_mtu}, but with the {overhead}-byte header that exceeds {}'s MTU {}; \
                     {name} should have {}",
                    u.name,
                    u.mtu,
                    u.mtu.saturating_sub(overhead)
                ));
            }
        }
    }
    if let Some(env) = env {
        seen.push(format!("FLANNEL_MTU {}", env.mtu));
        // Dual stack: FLANNEL_MTU fits the IPv6 VTEP, 20 bytes below the IPv4 one, on purpose.
        let dual_stack_below = env.ipv6_subnet.is_some() && env.mtu < overlay_mtu;
        if env.mtu != overlay_mtu && !dual_stack_below {
            problems.push(format!(
                "subnet.env says FLANNEL_MTU={} but {name} has MTU {overlay_mtu}, so new pods get the wrong MTU",
                env.mtu
            ));
        }
    }
    if let Some(b) = f.link_named(&f.bridge) {
        seen.push(format!("{} {}", b.name, b.mtu));
        if b.mtu > overlay_mtu {
            problems.push(format!(
                "{} has MTU {} but {name} carries at most {overlay_mtu}",
                b.name, b.mtu
            ));
        }
        // The pods' veths on the bridge: the source pod's when it can be found, else all.
        let ports: Vec<_> = f.links.iter().filter(|l| l.master == Some(b.index)).collect();
        let src_port = src_is_pod
            .then(|| {
                let mac = f
                    .neighbours
                    .iter()
                    .find(|(i, n)| *i == b.index && n.ip == f.src)
                    .and_then(|(_, n)| n.mac)?;
                f.port_fdb.iter().find(|(_, e)| e.mac == mac).map(|(port, _)| *port)
            })
            .flatten();
        let checked: Vec<_> = match src_port {
            Some(p) => ports.into_iter().filter(|l| l.index == p).collect(),
            None => ports,
        };
        for port in checked {
            let who = if src_port.is_some() {
                format!("{}'s interface ({} on {})", f.src, port.name, f.bridge)
            } else {
                format!("pod interface {}", port.name)
            };
            seen.push(format!("{} {}", port.name, port.mtu));
            if port.mtu > overlay_mtu {
                problems.push(format!(
                    "{who} has MTU {} but {name} carries at most {overlay_mtu}",
                    port.mtu
                ));
            }
        }
    }
    let entry = seen.join(", ");
    if problems.is_empty() {
        steps.push(Step::ok("mtu", entry, "the MTUs along the path agree"));
    } else {
        steps.push(
            Step::broken(
                "mtu",
                Cause::MtuMismatch,
                format!(
                    "{}: large packets are dropped or fragmented (small pings pass, big transfers hang); give the \
                     bridge and the pods FLANNEL_MTU (re-create the pods) or fix Backend.MTU",
                    problems.join("; ")
                ),
            )
            .with_entry(entry),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Status;
    use serde_json::json;
    use weft_core::{LeaseAttrs, Refused, SubnetKey};
    use weft_kernel::netlink::{AddrInfo, FdbEntry, LinkInfo, VxlanInfo};

    const VETH0: u32 = 2;
    const CNI0: u32 = 3;
    const FLANNEL: u32 = 4;
    const POD_PORT: u32 = 5;
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x02];

    /// An Ipv4Addr or an IpAddr, as the context wants.
    fn ip<T: std::str::FromStr<Err = std::net::AddrParseError>>(s: &str) -> T {
        s.parse().unwrap()
    }

    /// An Ipv4Net or an IpNet, as the context wants.
    fn net<T: std::str::FromStr<Err = ipnet::AddrParseError>>(s: &str) -> T {
        s.parse().unwrap()
    }

    fn link(index: u32, name: &str, kind: Option<&str>, mtu: u32, master: Option<u32>) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            mac: None,
            mtu,
            up: true,
            kind: kind.map(str::to_string),
            master,
            vxlan: (kind == Some("vxlan")).then_some(VxlanInfo {
                vni: 1,
                port: 8472,
                local: Some(ip("198.51.100.1")),
                dev_index: Some(VETH0),
                learning: false,
                gbp: false,
            }),
        }
    }

    fn fib(dst: &str, gw: Option<&str>, oif: u32, onlink: bool) -> RouteInfo {
        RouteInfo {
            dst: net(dst),
            gateway: gw.map(ip),
            oif: Some(oif),
            onlink,
            nexthop_id: None,
            protocol: 3,
            scope: 0,
            priority: 0,
            pref_src: None,
            table: 254,
            kind: RouteType::Unicast,
        }
    }

    fn vx_lease(subnet: &str, public_ip: &str, mac: &str) -> Lease {
        Lease::v4(net(subnet), ip(public_ip), "vxlan", json!({"VNI": 1, "VtepMAC": mac}))
    }

    /// Node a (198.51.100.1, 10.5.1.0/24) tracing its pod 10.5.1.2 to node b's pod 10.5.2.3 over
    /// a healthy vxlan path.
    fn healthy() -> Facts {
        Facts {
            src: ip("10.5.1.2"),
            dst: ip("10.5.2.3"),
            subnet_file_path: "/run/flannel/subnet.env".into(),
            subnet_file: SubnetFile::Present(SubnetEnv {
                network: Some(net("10.5.0.0/16")),
                subnet: Some(net("10.5.1.1/24")),
                mtu: 1450,
                ipmasq: false,
                ipv6_network: None,
                ipv6_subnet: None,
            }),
            etcd_network: None,
            leases: Leases::Listed(vec![
                vx_lease("10.5.1.0/24", "198.51.100.1", "02:00:00:00:00:0a"),
                vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b"),
            ]),
            refused: vec![],
            ip_forward: Some(true),
            bridge: "cni0".into(),
            links: vec![
                link(VETH0, "veth0", Some("veth"), 1500, None),
                link(CNI0, "cni0", Some("bridge"), 1450, None),
                link(FLANNEL, "flannel.1", Some("vxlan"), 1450, None),
                link(POD_PORT, "veth1234", Some("veth"), 1450, Some(CNI0)),
            ],
            addrs: vec![
                AddrInfo {
                    index: VETH0,
                    addr: net("198.51.100.1/24"),
                },
                AddrInfo {
                    index: CNI0,
                    addr: net("10.5.1.1/24"),
                },
                AddrInfo {
                    index: FLANNEL,
                    addr: net("10.5.1.0/32"),
                },
            ],
            route: Lookup::Found(fib("10.5.2.0/24", Some("10.5.2.0"), FLANNEL, true)),
            neighbours: vec![
                (
                    FLANNEL,
                    Neighbour {
                        ip: ip("10.5.2.0"),
                        mac: Some(MAC_B),
                        state: 0x80,
                    },
                ),
                (
                    CNI0,
                    Neighbour {
                        ip: ip("10.5.1.2"),
                        mac: Some(POD_MAC),
                        state: 0x02,
                    },
                ),
            ],
            fdb: vec![FdbEntry {
                mac: MAC_B,
                dst: Some(ip("198.51.100.2")),
                state: 0x80,
                is_self: true,
            }],
            port_fdb: vec![(
                POD_PORT,
                FdbEntry {
                    mac: POD_MAC,
                    dst: None,
                    state: 0x02,
                    is_self: false,
                },
            )],
            underlay: vec![(
                ip("198.51.100.2"),
                Lookup::Found(fib("198.51.100.0/24", None, VETH0, false)),
            )],
            iptables_filter: Some("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n".into()),
            nft_ruleset: None,
            udp_peers: Err("not collected".into()),
        }
    }

    fn step<'a>(t: &'a Trace, check: &str) -> &'a Step {
        t.steps
            .iter()
            .find(|s| s.check == check)
            .unwrap_or_else(|| panic!("no {check} step in {t:#?}"))
    }

    #[test]
    fn healthy_vxlan_path_names_every_entry() {
        let t = walk(&healthy());
        assert!(t.ok, "{}", crate::render_text(&t));
        assert_eq!(t.backend.as_deref(), Some("vxlan"));
        let checks: Vec<&str> = t.steps.iter().map(|s| s.check).collect();
        assert_eq!(
            checks,
            [
                "subnet.env",
                "source",
                "lease",
                "route",
                "ip_forward",
                "forward",
                "neighbour",
                "fdb",
                "underlay",
                "mtu"
            ]
        );
        assert_eq!(
            step(&t, "route").entry.as_deref(),
            Some("10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink table main")
        );
        assert_eq!(
            step(&t, "neighbour").entry.as_deref(),
            Some("10.5.2.0 dev flannel.1 lladdr 02:00:00:00:00:0b PERMANENT")
        );
        assert_eq!(
            step(&t, "fdb").entry.as_deref(),
            Some("02:00:00:00:00:0b dev flannel.1 dst 198.51.100.2 self permanent")
        );
        assert_eq!(
            step(&t, "underlay").entry.as_deref(),
            Some("198.51.100.0/24 dev veth0 table main")
        );
        assert!(step(&t, "lease")
            .entry
            .as_deref()
            .unwrap()
            .contains(r#""VtepMAC":"02:00:00:00:00:0b""#));
        assert_eq!(
            step(&t, "mtu").entry.as_deref(),
            Some("flannel.1 1450, veth0 1500, FLANNEL_MTU 1450, cni0 1450, veth1234 1450")
        );
        let text = crate::render_text(&t);
        assert!(text.starts_with("trace 10.5.1.2 -> 10.5.2.3 (vxlan)\n"), "{text}");
        assert!(text.ends_with("result: no break found on this node\n"), "{text}");
        let js: serde_json::Value = serde_json::from_str(&crate::render_json(&t)).unwrap();
        assert_eq!(js["ok"], true);
        assert_eq!(js["steps"][3]["check"], "route");
        assert_eq!(js["steps"][3]["status"], "ok");
    }

    fn causes(f: &Facts) -> Vec<Cause> {
        walk(f).causes()
    }

    #[test]
    fn missing_subnet_env_is_named_and_the_walk_goes_on() {
        let mut f = healthy();
        f.subnet_file = SubnetFile::Missing;
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::MissingSubnetEnv]);
        assert!(step(&t, "subnet.env")
            .message
            .contains("/run/flannel/subnet.env does not exist"));
        assert_eq!(
            step(&t, "source").status,
            Status::Ok,
            "the bridge address still places the pod"
        );
    }

    #[test]
    fn ip_forward_off_breaks_pod_traffic_only() {
        let mut f = healthy();
        f.ip_forward = Some(false);
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::IpForwardDisabled]);
        assert!(step(&t, "ip_forward")
            .message
            .contains("sysctl -w net.ipv4.ip_forward=1"));
        f.src = ip("10.5.1.1");
        assert_eq!(causes(&f), vec![], "the node's own packets are not forwarded");
    }

    #[test]
    fn forward_drop_policy_without_rules_is_named_with_the_policy() {
        let mut f = healthy();
        f.iptables_filter = Some("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n".into());
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::ForwardDropped]);
        let s = step(&t, "forward");
        assert_eq!(s.entry.as_deref(), Some(":FORWARD DROP (iptables policy)"));
        assert!(
            s.message.contains("iptables -A FORWARD -s 10.5.0.0/16 -j ACCEPT"),
            "{}",
            s.message
        );
        f.iptables_filter = Some(
            "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -s 10.5.0.0/16 -j ACCEPT\n-A FORWARD -d 10.5.0.0/16 -j ACCEPT\nCOMMIT\n"
                .into(),
        );
        assert_eq!(causes(&f), vec![]);
        // Only the outbound direction accepted: the replies are dropped.
        f.iptables_filter = Some("*filter\n:FORWARD DROP [0:0]\n-A FORWARD -i cni0 -j ACCEPT\nCOMMIT\n".into());
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::ForwardDropped]);
        assert!(step(&t, "forward").message.contains("replies 10.5.2.3 -> 10.5.1.2"));
    }

    #[test]
    fn missing_neighbour_names_the_vtep_and_the_fix() {
        let mut f = healthy();
        f.neighbours.retain(|(i, _)| *i != FLANNEL);
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::MissingNeighbour]);
        let m = &step(&t, "neighbour").message;
        assert!(
            m.contains("ip neigh replace 10.5.2.0 lladdr 02:00:00:00:00:0b dev flannel.1 nud permanent"),
            "{m}"
        );
        // The FDB is still checked with the lease's MAC.
        assert_eq!(step(&t, "fdb").status, Status::Ok);
    }

    #[test]
    fn neighbour_mac_differing_from_the_lease_is_a_vtep_mac_mismatch() {
        let mut f = healthy();
        f.neighbours[0].1.mac = Some([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
        let t = walk(&f);
        // The kernel's MAC has no FDB entry either; both are named.
        assert_eq!(t.causes(), vec![Cause::VtepMacMismatch, Cause::MissingFdb]);
        let m = &step(&t, "neighbour").message;
        assert!(
            m.contains("02:11:22:33:44:55") && m.contains("VtepMAC 02:00:00:00:00:0b"),
            "{m}"
        );
    }

    #[test]
    fn missing_or_wrong_fdb_entry() {
        let mut f = healthy();
        f.fdb.clear();
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::MissingFdb]);
        assert!(step(&t, "fdb")
            .message
            .contains("bridge fdb replace 02:00:00:00:00:0b dev flannel.1 dst 198.51.100.2 self permanent"));
        assert_eq!(
            step(&t, "underlay").status,
            Status::Ok,
            "the lease's PublicIP is still checked"
        );

        let mut f = healthy();
        f.fdb[0].dst = Some(ip("198.51.100.9"));
        f.underlay.push((ip("198.51.100.9"), Lookup::NoRoute));
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::FdbDestinationMismatch, Cause::NoUnderlayRoute]);
    }

    #[test]
    fn no_lease_and_unreachable_etcd() {
        let mut f = healthy();
        f.leases = Leases::Listed(vec![vx_lease("10.5.1.0/24", "198.51.100.1", "02:00:00:00:00:0a")]);
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::NoLease]);
        assert!(step(&t, "lease").message.contains("no lease in etcd covers 10.5.2.3"));
        f.leases = Leases::Failed("connection refused".into());
        assert_eq!(causes(&f), vec![Cause::EtcdUnreachable]);
        f.leases = Leases::NotAsked;
        assert_eq!(causes(&f), vec![]);
    }

    #[test]
    fn missing_route_and_default_route() {
        let mut f = healthy();
        f.route = Lookup::NoRoute;
        assert_eq!(causes(&f), vec![Cause::NoRoute]);
        f.route = Lookup::Found(fib("0.0.0.0/0", Some("198.51.100.254"), VETH0, false));
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::RouteNotIntoOverlay]);
        assert!(step(&t, "route")
            .message
            .contains("the route for 10.5.2.0/24 is missing"));
    }

    #[test]
    fn mtu_mismatches_are_named() {
        let mut f = healthy();
        f.links[1].mtu = 1500; // cni0
        f.links[3].mtu = 1500; // the pod's veth
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::MtuMismatch]);
        let m = &step(&t, "mtu").message;
        assert!(
            m.contains("cni0 has MTU 1500 but flannel.1 carries at most 1450"),
            "{m}"
        );
        assert!(
            m.contains("10.5.1.2's interface (veth1234 on cni0) has MTU 1500"),
            "{m}"
        );

        let mut f = healthy();
        f.links[0].mtu = 1400; // underlay
        let m = walk(&f).steps.last().unwrap().message.clone();
        assert!(
            m.contains("exceeds veth0's MTU 1400; flannel.1 should have 1350"),
            "{m}"
        );
    }

    #[test]
    fn host_gw_path_via_public_ip() {
        let mut f = healthy();
        f.leases = Leases::Listed(vec![Lease {
            subnet: SubnetKey::v4(net("10.5.2.0/24")),
            attrs: LeaseAttrs::new(ip("198.51.100.2"), "host-gw", serde_json::Value::Null),
        }]);
        f.links.retain(|l| l.index != FLANNEL);
        f.links[1].mtu = 1500;
        f.links[2].mtu = 1500;
        f.subnet_file = match f.subnet_file {
            SubnetFile::Present(env) => SubnetFile::Present(SubnetEnv { mtu: 1500, ..env }),
            other => other,
        };
        f.route = Lookup::Found(fib("10.5.2.0/24", Some("198.51.100.2"), VETH0, false));
        f.neighbours = vec![(
            VETH0,
            Neighbour {
                ip: ip("198.51.100.2"),
                mac: Some(MAC_B),
                state: 0x02,
            },
        )];
        let t = walk(&f);
        assert!(t.ok, "{}", crate::render_text(&t));
        assert_eq!(t.backend.as_deref(), Some("host-gw"));
        assert_eq!(
            step(&t, "neighbour").entry.as_deref(),
            Some("198.51.100.2 dev veth0 lladdr 02:00:00:00:00:0b REACHABLE")
        );
        // A stale route to an old address of the node.
        f.route = Lookup::Found(fib("10.5.2.0/24", Some("198.51.100.9"), VETH0, false));
        assert_eq!(causes(&f), vec![Cause::RouteMismatchesLease]);
    }

    #[test]
    fn udp_path_through_the_tun() {
        let mut f = healthy();
        f.leases = Leases::Listed(vec![Lease {
            subnet: SubnetKey::v4(net("10.5.2.0/24")),
            attrs: LeaseAttrs::new(ip("198.51.100.2"), "", serde_json::Value::Null),
        }]);
        f.links[2] = link(FLANNEL, "flannel0", Some("tun"), 1472, None);
        f.links[1].mtu = 1472;
        f.links[3].mtu = 1472;
        f.subnet_file = match f.subnet_file {
            SubnetFile::Present(env) => SubnetFile::Present(SubnetEnv { mtu: 1472, ..env }),
            other => other,
        };
        f.route = Lookup::Found(fib("10.5.0.0/16", None, FLANNEL, false));
        let t = walk(&f);
        assert!(t.ok, "{}", crate::render_text(&t));
        assert_eq!(t.backend.as_deref(), Some("udp"));
        assert_eq!(
            step(&t, "peer table").status,
            Status::Info,
            "no table published: said, not a break"
        );
        assert_eq!(step(&t, "underlay").status, Status::Ok);

        use weft_core::peer_file::PeerEntry;
        let entry = |subnet: &str, public: &str| PeerEntry {
            subnet: net(subnet),
            public_ip: ip(public),
        };
        f.udp_peers = Ok(vec![entry("10.5.2.0/24", "198.51.100.2")]);
        let t = walk(&f);
        assert!(t.ok, "{}", crate::render_text(&t));
        assert_eq!(
            step(&t, "peer table").entry.as_deref(),
            Some("10.5.2.0/24 -> 198.51.100.2:8285")
        );
        f.udp_peers = Ok(vec![entry("10.5.2.0/24", "198.51.100.9")]);
        assert_eq!(causes(&f), vec![Cause::UdpPeerMismatch]);
        f.udp_peers = Ok(vec![]);
        assert_eq!(causes(&f), vec![Cause::UdpPeerMissing]);
    }

    #[test]
    fn source_elsewhere_and_destination_outside_or_local() {
        let mut f = healthy();
        f.src = ip("10.5.7.2");
        assert_eq!(causes(&f), vec![Cause::SourceNotLocal]);
        let mut f = healthy();
        f.dst = ip("192.0.2.1");
        assert_eq!(causes(&f), vec![Cause::DestinationOutsideNetwork]);
        let mut f = healthy();
        f.dst = ip("10.5.1.9");
        f.route = Lookup::Found(fib("10.5.1.0/24", None, CNI0, false));
        let t = walk(&f);
        assert!(t.ok);
        assert_eq!(t.backend.as_deref(), Some("local"));
    }

    const FLANNEL6: u32 = 6;
    const MAC_B6: [u8; 6] = [0x02, 0, 0, 0, 0x06, 0x0b];

    /// The lease of a dual-stack vxlan node: both subnets, both public addresses, both VTEP MACs.
    fn dual_lease(key: &str, node: u8) -> Lease {
        let mut attrs = LeaseAttrs::new(
            ip(&format!("198.51.100.{node}")),
            "vxlan",
            json!({"VNI": 1, "VtepMAC": format!("02:00:00:00:00:{:02x}", node + 9)}),
        );
        attrs.public_ipv6 = Some(ip(&format!("2001:db8::{node}")));
        attrs.backend_v6_data = json!({"VNI": 1, "VtepMAC": format!("02:00:00:00:06:{:02x}", node + 9)});
        Lease {
            subnet: SubnetKey::parse(key).unwrap(),
            attrs,
        }
    }

    /// The dual-stack twin of [`healthy`]: node a (2001:db8::1, fc00:0:0:1::/64) tracing its pod
    /// fc00:0:0:1::2 to node b's pod fc00:0:0:2::3 through flannel-v6.1.
    fn healthy_v6() -> Facts {
        let mut f = healthy();
        f.src = ip("fc00:0:0:1::2");
        f.dst = ip("fc00:0:0:2::3");
        f.subnet_file = SubnetFile::Present(SubnetEnv {
            network: Some(net("10.5.0.0/16")),
            subnet: Some(net("10.5.1.1/24")),
            mtu: 1430,
            ipmasq: false,
            ipv6_network: Some(net("fc00::/48")),
            ipv6_subnet: Some(net("fc00:0:0:1::1/64")),
        });
        f.leases = Leases::Listed(vec![
            dual_lease("10.5.1.0-24&fc00:0:0:1::-64", 1),
            dual_lease("10.5.2.0-24&fc00:0:0:2::-64", 2),
        ]);
        f.links[1].mtu = 1430; // cni0
        f.links[3].mtu = 1430; // the pod's veth
        f.links.push(link(FLANNEL6, "flannel-v6.1", Some("vxlan"), 1430, None));
        f.addrs.extend([
            AddrInfo {
                index: VETH0,
                addr: net("2001:db8::1/64"),
            },
            AddrInfo {
                index: CNI0,
                addr: net("fe80::1/64"),
            },
            AddrInfo {
                index: CNI0,
                addr: net("fc00:0:0:1::1/64"),
            },
            AddrInfo {
                index: FLANNEL6,
                addr: net("fc00:0:0:1::/128"),
            },
        ]);
        let mut route = fib("fc00:0:0:2::/64", Some("fc00:0:0:2::"), FLANNEL6, true);
        route.nexthop_id = Some(7);
        route.priority = 1024;
        f.route = Lookup::Found(route);
        f.neighbours = vec![
            (
                FLANNEL6,
                Neighbour {
                    ip: ip("fc00:0:0:2::"),
                    mac: Some(MAC_B6),
                    state: 0x80,
                },
            ),
            (
                CNI0,
                Neighbour {
                    ip: ip("fc00:0:0:1::2"),
                    mac: Some(POD_MAC),
                    state: 0x02,
                },
            ),
        ];
        f.fdb = vec![FdbEntry {
            mac: MAC_B6,
            dst: Some(ip("2001:db8::2")),
            state: 0x80,
            is_self: true,
        }];
        f.underlay = vec![(
            ip("2001:db8::2"),
            Lookup::Found(fib("2001:db8::/64", None, VETH0, false)),
        )];
        f.iptables_filter = Some(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:FLANNEL-FWD - [0:0]\n\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             -A FLANNEL-FWD -s fc00::/48 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -d fc00::/48 -m comment --comment \"flanneld forward\" -j ACCEPT\nCOMMIT\n"
                .into(),
        );
        f
    }

    #[test]
    fn healthy_ipv6_vxlan_path_uses_the_ipv6_side_of_everything() {
        let t = walk(&healthy_v6());
        assert!(t.ok, "{}", crate::render_text(&t));
        assert_eq!(t.backend.as_deref(), Some("vxlan"));
        let checks: Vec<&str> = t.steps.iter().map(|s| s.check).collect();
        assert_eq!(
            checks,
            [
                "subnet.env",
                "source",
                "lease",
                "route",
                "ip_forward",
                "forward",
                "neighbour",
                "fdb",
                "underlay",
                "mtu"
            ]
        );
        let entry = |check| step(&t, check).entry.clone().unwrap_or_default();
        assert_eq!(
            entry("subnet.env"),
            "/run/flannel/subnet.env: FLANNEL_IPV6_NETWORK=fc00::/48 FLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64 \
             FLANNEL_MTU=1430 FLANNEL_IPMASQ=false"
        );
        assert!(
            step(&t, "source")
                .message
                .contains("fc00:0:0:1::2 is a pod of this node (subnet fc00:0:0:1::/64 on cni0)"),
            "{t:#?}"
        );
        assert_eq!(
            entry("lease"),
            "10.5.2.0/24&fc00:0:0:2::/64 PublicIPv6 2001:db8::2 backend vxlan \
             BackendV6Data {\"VNI\":1,\"VtepMAC\":\"02:00:00:00:06:0b\"}"
        );
        assert!(step(&t, "lease").message.contains("the node at 2001:db8::2"));
        assert_eq!(
            entry("route"),
            "fc00:0:0:2::/64 nhid 7 via fc00:0:0:2:: dev flannel-v6.1 onlink table main"
        );
        assert_eq!(entry("ip_forward"), "net.ipv6.conf.all.forwarding = 1");
        assert!(entry("forward").starts_with("-A FLANNEL-FWD -s fc00::/48"), "{t:#?}");
        assert_eq!(
            entry("neighbour"),
            "fc00:0:0:2:: dev flannel-v6.1 lladdr 02:00:00:00:06:0b PERMANENT"
        );
        assert_eq!(
            entry("fdb"),
            "02:00:00:00:06:0b dev flannel-v6.1 dst 2001:db8::2 self permanent"
        );
        assert_eq!(entry("underlay"), "2001:db8::/64 dev veth0 table main");
        assert_eq!(
            entry("mtu"),
            "flannel-v6.1 1430, veth0 1500, FLANNEL_MTU 1430, cni0 1430, veth1234 1430",
            "IPv6 VXLAN's 70 bytes fit the 1500 underlay"
        );
        let text = crate::render_text(&t);
        assert!(
            text.starts_with("trace fc00:0:0:1::2 -> fc00:0:0:2::3 (vxlan)\n"),
            "{text}"
        );
        let js: serde_json::Value = serde_json::from_str(&crate::render_json(&t)).unwrap();
        assert_eq!(js["src"], "fc00:0:0:1::2");

        // The IPv4 trace of the same dual-stack node is still clean: FLANNEL_MTU fits the IPv6
        // VTEP, below flannel.1's 1450, on purpose.
        let mut f = healthy_v6();
        let v4 = healthy();
        (
            f.src,
            f.dst,
            f.route,
            f.neighbours,
            f.fdb,
            f.underlay,
            f.iptables_filter,
        ) = (
            v4.src,
            v4.dst,
            v4.route,
            v4.neighbours,
            v4.fdb,
            v4.underlay,
            v4.iptables_filter,
        );
        let t = walk(&f);
        assert!(t.ok, "{}", crate::render_text(&t));
        assert_eq!(
            step(&t, "neighbour").entry.as_deref(),
            Some("10.5.2.0 dev flannel.1 lladdr 02:00:00:00:00:0b PERMANENT")
        );
    }

    #[test]
    fn missing_ipv6_neighbour_names_the_v6_vtep_mac_and_the_fix() {
        let mut f = healthy_v6();
        f.neighbours.retain(|(i, _)| *i != FLANNEL6);
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::MissingNeighbour]);
        let m = &step(&t, "neighbour").message;
        assert!(
            m.contains("flannel-v6.1 has no neighbour entry for fc00:0:0:2::, the VTEP address of the owning node")
                && m.contains("ip neigh replace fc00:0:0:2:: lladdr 02:00:00:00:06:0b dev flannel-v6.1 nud permanent"),
            "{m}"
        );
        assert_eq!(step(&t, "fdb").status, Status::Ok, "checked with BackendV6Data's MAC");

        // The IPv4 VTEP's MAC on the IPv6 device is a mismatch with BackendV6Data.
        let mut f = healthy_v6();
        f.neighbours[0].1.mac = Some(MAC_B);
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::VtepMacMismatch, Cause::MissingFdb]);
        assert!(
            step(&t, "neighbour")
                .message
                .contains("advertises BackendV6Data VtepMAC 02:00:00:00:06:0b"),
            "{t:#?}"
        );
    }

    #[test]
    fn wrong_or_missing_ipv6_fdb_entry_is_checked_against_public_ipv6() {
        let mut f = healthy_v6();
        f.fdb[0].dst = Some(ip("198.51.100.2"));
        f.underlay.push((
            ip("198.51.100.2"),
            Lookup::Found(fib("198.51.100.0/24", None, VETH0, false)),
        ));
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::FdbDestinationMismatch]);
        let m = &step(&t, "fdb").message;
        assert!(
            m.contains("the owning node's lease says PublicIPv6 2001:db8::2")
                && m.contains("bridge fdb replace 02:00:00:00:06:0b dev flannel-v6.1 dst 2001:db8::2 self permanent"),
            "{m}"
        );

        let mut f = healthy_v6();
        f.fdb.clear();
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::MissingFdb]);
        assert_eq!(
            step(&t, "underlay").entry.as_deref(),
            Some("2001:db8::/64 dev veth0 table main"),
            "the lease's PublicIPv6 is still looked up"
        );
        f.underlay = vec![(ip("2001:db8::2"), Lookup::NoRoute)];
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::MissingFdb, Cause::NoUnderlayRoute]);
        assert!(step(&t, "underlay").message.contains("each other's PublicIPv6"));
    }

    #[test]
    fn no_ipv6_route_and_an_ipv6_default_route() {
        let mut f = healthy_v6();
        f.route = Lookup::NoRoute;
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::NoRoute]);
        assert!(step(&t, "route")
            .message
            .contains("the kernel has no route to fc00:0:0:2::3"));
        f.route = Lookup::Found(fib("::/0", Some("2001:db8::fe"), VETH0, false));
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::RouteNotIntoOverlay]);
        assert!(
            step(&t, "route")
                .message
                .contains("the route for fc00:0:0:2::/64 is missing"),
            "{t:#?}"
        );
    }

    #[test]
    fn ipv6_forwarding_and_forward_rules_are_the_ipv6_ones() {
        let mut f = healthy_v6();
        f.ip_forward = Some(false);
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::IpForwardDisabled]);
        assert!(step(&t, "ip_forward")
            .message
            .contains("sysctl -w net.ipv6.conf.all.forwarding=1"));
        let mut f = healthy_v6();
        // ip6tables-save with IPv4 rules only (impossible, but it shows the family is checked).
        f.iptables_filter = Some(
            "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -s 10.5.0.0/16 -j ACCEPT\n-A FORWARD -d 10.5.0.0/16 -j ACCEPT\nCOMMIT\n"
                .into(),
        );
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::ForwardDropped]);
        assert!(
            step(&t, "forward")
                .message
                .contains("`ip6tables -A FORWARD -s fc00::/48 -j ACCEPT; ip6tables -A FORWARD -d fc00::/48 -j ACCEPT`"),
            "{t:#?}"
        );
    }

    #[test]
    fn a_missing_dual_stack_piece_says_what_to_do() {
        // An IPv4-only node: no FLANNEL_IPV6_* in subnet.env.
        let mut f = healthy_v6();
        f.subnet_file = SubnetFile::Present(SubnetEnv {
            ipv6_network: None,
            ipv6_subnet: None,
            ..SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_MTU=1450\n").unwrap()
        });
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::Ipv6NotEnabled]);
        let m = &step(&t, "subnet.env").message;
        assert!(
            m.contains("has no FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET")
                && m.contains("\"EnableIPv6\": true")
                && m.contains("restart weftd"),
            "{m}"
        );
        // The owning node's lease lacks PublicIPv6 and BackendV6Data.
        let mut f = healthy_v6();
        if let Leases::Listed(leases) = &mut f.leases {
            leases[1].attrs.public_ipv6 = None;
            leases[1].attrs.backend_v6_data = serde_json::Value::Null;
        }
        let t = walk(&f);
        assert_eq!(t.causes()[0], Cause::LeaseLacksIpv6);
        let m = &step(&t, "lease").message;
        assert!(
            m.contains("has an IPv6 subnet but no PublicIPv6 and no BackendV6Data VtepMAC")
                && m.contains("--public-ipv6"),
            "{m}"
        );
        assert_eq!(
            step(&t, "lease").entry.as_deref(),
            Some("10.5.2.0/24&fc00:0:0:2::/64 PublicIPv6 (none) backend vxlan")
        );
        // No lease holds the IPv6 subnet (its node runs IPv4 only).
        let mut f = healthy_v6();
        f.leases = Leases::Listed(vec![vx_lease("10.5.2.0/24", "198.51.100.2", "02:00:00:00:00:0b")]);
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::NoLease]);
        assert!(step(&t, "lease").message.contains("runs without IPv6"));
        // An IPv4 source with an IPv6 destination.
        let mut f = healthy_v6();
        f.src = ip("10.5.1.2");
        assert_eq!(causes(&f), vec![Cause::MixedFamilies]);
    }

    #[test]
    fn an_ipv4_trace_in_an_ipv6_only_network_says_so() {
        let mut f = healthy();
        f.subnet_file = SubnetFile::Present(
            SubnetEnv::parse(
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1430\n",
            )
            .unwrap(),
        );
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::Ipv4NotEnabled]);
        let m = &step(&t, "subnet.env").message;
        assert!(
            m.contains("has no FLANNEL_NETWORK/FLANNEL_SUBNET") && m.contains("IPv6-only"),
            "{m}"
        );
    }

    #[test]
    fn host_gw_ipv6_path_via_public_ipv6() {
        let mut f = healthy_v6();
        let mut lease = dual_lease("10.5.2.0-24&fc00:0:0:2::-64", 2);
        lease.attrs.backend_type = "host-gw".into();
        lease.attrs.backend_data = serde_json::Value::Null;
        lease.attrs.backend_v6_data = serde_json::Value::Null;
        f.leases = Leases::Listed(vec![lease]);
        f.links.retain(|l| l.kind.as_deref() != Some("vxlan"));
        for l in &mut f.links {
            l.mtu = 1500;
        }
        if let SubnetFile::Present(env) = &mut f.subnet_file {
            env.mtu = 1500;
        }
        let mut route = fib("fc00:0:0:2::/64", Some("2001:db8::2"), VETH0, false);
        route.priority = 1024;
        f.route = Lookup::Found(route);
        f.neighbours = vec![(
            VETH0,
            Neighbour {
                ip: ip("2001:db8::2"),
                mac: Some(MAC_B),
                state: 0x02,
            },
        )];
        let t = walk(&f);
        assert!(t.ok, "{}", crate::render_text(&t));
        assert_eq!(t.backend.as_deref(), Some("host-gw"));
        assert_eq!(
            step(&t, "neighbour").entry.as_deref(),
            Some("2001:db8::2 dev veth0 lladdr 02:00:00:00:00:0b REACHABLE")
        );
        // A route via the node's IPv4 address cannot carry IPv6; via another IPv6 address is stale.
        f.route = Lookup::Found(fib("fc00:0:0:2::/64", Some("2001:db8::9"), VETH0, false));
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::RouteMismatchesLease]);
        assert!(
            step(&t, "route")
                .message
                .contains("but the lease says the node is at 2001:db8::2"),
            "{t:#?}"
        );
    }

    #[test]
    fn a_refused_lease_is_named_and_an_admitted_one_wins() {
        use weft_core::admission::Refusal;
        // Two nodes picked the same IPv6 subnet: every node refuses the younger lease.
        let mut f = healthy_v6();
        let younger = dual_lease("10.5.3.0-24&fc00:0:0:2::-64", 3);
        if let Leases::Listed(leases) = &mut f.leases {
            leases.push(younger);
        }
        let refused = |name: &str| Refused {
            name: name.into(),
            reason: Refusal::Conflict {
                what: "IPv6 subnet",
                value: "fc00:0:0:2::/64".into(),
                holder: "10.5.2.0-24&fc00:0:0:2::-64".into(),
            },
        };
        f.refused = vec![refused("10.5.3.0-24&fc00:0:0:2::-64")];
        let t = walk(&f);
        assert!(t.ok, "the admitted lease owns it: {}", crate::render_text(&t));
        assert!(step(&t, "lease").entry.as_deref().unwrap().starts_with("10.5.2.0/24&"));
        // The older one refused instead: the trace says so, and what to do.
        f.refused = vec![refused("10.5.2.0-24&fc00:0:0:2::-64")];
        f.refused[0].reason = Refusal::BadValue("no".into());
        if let Leases::Listed(leases) = &mut f.leases {
            leases.pop();
        }
        let t = walk(&f);
        assert_eq!(t.causes(), vec![Cause::LeaseRefused]);
        let m = &step(&t, "lease").message;
        assert!(
            m.starts_with("every node refuses the lease 10.5.2.0-24&fc00:0:0:2::-64: ")
                && m.contains("etcdctl del <prefix>/subnets/10.5.2.0-24&fc00:0:0:2::-64"),
            "{m}"
        );
    }
}
