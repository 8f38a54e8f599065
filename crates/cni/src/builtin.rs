//! Built-in mode: weft-cni plugs the container into the node subnet itself, through netlink.
//! Bridge (default `cni0`) with the gateway of each address family subnet.env has (the subnet's
//! first address; IPv6 without DAD, so it is usable at once) and FLANNEL_MTU; a veth pair whose
//! container end is created directly in the container namespace; one address of each family
//! from the host-local-compatible store; a default (or cluster-network) route per family via
//! its gateway.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde_json::{Map, Value};
use weft_kernel::netlink::{format_mac, AddrFamily, LinkInfo, Netlink, RouteSpec};

use crate::bridge;
use crate::error::{CniError, ErrorCode};
use crate::invocation::Invocation;
use crate::ipam::AddressStore;
use crate::netns::NetnsFile;
use crate::subnet_env::NodeEnv;
use crate::types::{CniResult, Interface, IpConfig, NetConf, Route, DEFAULT_BRIDGE, DEFAULT_IPAM_DATA_DIR};
use crate::veth::{self, host_veth_name};

/// One address family of a built-in ADD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyPlan {
    /// The range's index in the address store (host-local's `ranges` numbering: IPv4 first).
    pub range_id: usize,
    /// The node subnet with the gateway's address: `10.5.72.1/24`, `fc00:0:0:1::1/64`.
    pub gateway: IpNet,
    pub route_dst: IpNet,
}

/// What a built-in ADD decides from the config and subnet.env, before touching anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub bridge: String,
    pub mtu: u32,
    /// IPv4 first, then IPv6; those subnet.env has.
    pub families: Vec<FamilyPlan>,
    pub hairpin: bool,
}

impl Plan {
    pub fn new(conf: &NetConf, env: &NodeEnv) -> Plan {
        let default_gateway = conf.is_default_gateway.unwrap_or(true);
        Plan {
            bridge: conf.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.to_string()),
            mtu: env.mtu,
            families: env
                .families()
                .enumerate()
                .map(|(range_id, family)| FamilyPlan {
                    range_id,
                    gateway: family.gateway(),
                    route_dst: if default_gateway {
                        family.default_dst()
                    } else {
                        family.network.trunc()
                    },
                })
                .collect(),
            hairpin: conf.hairpin_mode.unwrap_or(false),
        }
    }
}

fn store(conf: &NetConf) -> Result<AddressStore, CniError> {
    let dir = conf.ipam_data_dir.as_deref().unwrap_or(DEFAULT_IPAM_DATA_DIR);
    AddressStore::open(Path::new(dir), &conf.name)
}

/// Turns on forwarding for the family of `gateway` in the node's namespace, as the reference
/// bridge plugin (flannel's delegate) does for each family it configures a gateway of.
fn enable_forwarding(gateway: IpAddr) -> Result<(), CniError> {
    let (path, family) = match gateway {
        IpAddr::V4(_) => ("/proc/sys/net/ipv4/ip_forward", "IPv4"),
        IpAddr::V6(_) => ("/proc/sys/net/ipv6/conf/all/forwarding", "IPv6"),
    };
    if std::fs::read_to_string(path).map(|s| s.trim() == "1").unwrap_or(false) {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| CniError::io(format!("enable {family} forwarding (write 1 to {path})"), &e))
}

/// Adds an address that the store made unique: IPv6 without DAD, so that it (and a route via
/// it) works at once. `device` and `place` name the device for the error ("eth0", "in
/// /var/run/netns/x").
async fn add_unique_addr(
    netlink: &Netlink,
    index: u32,
    addr: IpNet,
    device: &str,
    place: &str,
) -> Result<(), CniError> {
    let added = match addr {
        IpNet::V4(_) => netlink.add_addr(index, addr).await,
        IpNet::V6(_) => netlink.add_addr_nodad(index, addr).await,
    };
    match added {
        // The kernel's answer when the device has IPv6 turned off.
        Err(e) if addr.addr().is_ipv6() && e.errno() == Some(libc::EACCES) => Err(CniError::new(
            ErrorCode::Kernel,
            format!(
                "cannot add {addr} to {device} {place}: IPv6 is disabled there \
                 (net.ipv6.conf.{device}.disable_ipv6=1, new devices take net.ipv6.conf.default.disable_ipv6); \
                 enable IPv6 in that namespace, or run weftd without EnableIPv6"
            ),
        )),
        other => Ok(other?),
    }
}

/// What ADD created so far, for the rollback.
#[derive(Default)]
struct Created {
    address: bool,
    host_veth: Option<String>,
}

/// ADD into the container namespace `netns` (checked by the caller to be one).
pub async fn add(conf: &NetConf, inv: &Invocation, netns: &NetnsFile, env: &NodeEnv) -> Result<CniResult, CniError> {
    let plan = Plan::new(conf, env);
    let store = store(conf)?;
    let host = Netlink::new()?;
    let mut created = Created::default();
    match add_steps(conf, inv, &plan, netns, &store, &host, &mut created).await {
        Ok(result) => Ok(result),
        Err(e) => {
            // Remove what this ADD created, and only that.
            if let Some(name) = &created.host_veth {
                if let Ok(Some(link)) = host.link_by_name(name).await {
                    let _ = host.delete_link(link.index).await;
                }
            }
            if created.address {
                let _ = store.release(&inv.container_id, &inv.ifname);
            }
            Err(e)
        }
    }
}

async fn add_steps(
    conf: &NetConf,
    inv: &Invocation,
    plan: &Plan,
    netns: &NetnsFile,
    store: &AddressStore,
    host: &Netlink,
    created: &mut Created,
) -> Result<CniResult, CniError> {
    let addresses = allocate(inv, plan, store, created)?;

    let bridge = host.ensure_bridge(&plan.bridge, plan.mtu).await?;
    // Before the first port is attached, so that the gateway MAC never follows the ports.
    bridge::pin_mac(host, &bridge).await?;
    for family in &plan.families {
        let on_bridge = host
            .list_link_addrs(bridge.index, Some(AddrFamily::of(&family.gateway)))
            .await?;
        if !on_bridge.contains(&family.gateway) {
            add_unique_addr(host, bridge.index, family.gateway, &plan.bridge, "on the node").await?;
        }
        enable_forwarding(family.gateway.addr())?;
    }

    let host_name = host_veth_name(&inv.container_id, &inv.ifname);
    let netns_fd = std::os::fd::AsFd::as_fd(&netns.file);
    veth::create(host, &host_name, &inv.ifname, plan.mtu, bridge.index, netns_fd).await?;
    created.host_veth = Some(host_name.clone());
    let host_link = host.link_by_name(&host_name).await?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Kernel,
            format!("veth {host_name} vanished right after it was created"),
        )
    })?;
    if plan.hairpin {
        host.set_hairpin(host_link.index, true).await?;
    }

    let inside = netns.netlink(&tokio::runtime::Handle::current())?;
    let link = inside.link_by_name(&inv.ifname).await?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Kernel,
            format!(
                "{} did not appear in {} after the veth was created",
                inv.ifname, inv.netns
            ),
        )
    })?;
    inside.set_link_up(link.index).await?;
    for (family, address) in plan.families.iter().zip(&addresses) {
        add_unique_addr(&inside, link.index, *address, &inv.ifname, &format!("in {}", inv.netns)).await?;
        inside
            .replace_route(&RouteSpec {
                dst: family.route_dst,
                gateway: Some(family.gateway.addr()),
                oif: link.index,
                onlink: false,
            })
            .await?;
    }

    // Read again now that the port is attached: the result shows the MAC the pods see.
    let bridge = host.link_by_index(bridge.index).await?.unwrap_or(bridge);
    let links = [
        (plan.bridge.clone(), bridge),
        (host_name, host_link),
        (inv.ifname.clone(), link),
    ];
    Ok(add_result(conf, inv, plan, &addresses, links))
}

/// One address of each family's subnet for the container, from the store; an interface that
/// already has addresses is refused (DEL first).
fn allocate(
    inv: &Invocation,
    plan: &Plan,
    store: &AddressStore,
    created: &mut Created,
) -> Result<Vec<IpNet>, CniError> {
    if !store.find(&inv.container_id, &inv.ifname)?.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "container {} already has an address for {} in {}; run DEL before adding it again",
                inv.container_id,
                inv.ifname,
                store.dir().display()
            ),
        ));
    }
    let mut addresses = Vec::with_capacity(plan.families.len());
    for family in &plan.families {
        let ip = store.allocate(
            family.gateway,
            family.gateway.addr(),
            family.range_id,
            &inv.container_id,
            &inv.ifname,
        )?;
        created.address = true;
        addresses.push(IpNet::new(ip, family.gateway.prefix_len()).expect("same prefix as the gateway"));
    }
    Ok(addresses)
}

/// ADD's result: the bridge, the host veth and the container's interface (`links`, in that
/// order), each address with its gateway, and each family's route.
fn add_result(
    conf: &NetConf,
    inv: &Invocation,
    plan: &Plan,
    addresses: &[IpNet],
    links: [(String, LinkInfo); 3],
) -> CniResult {
    let mac = |m: Option<[u8; 6]>| m.map(|m| format_mac(&m)).unwrap_or_default();
    let interfaces = links
        .into_iter()
        .enumerate()
        .map(|(i, (name, link))| {
            let in_container = i == 2;
            Interface {
                name,
                mac: mac(link.mac),
                mtu: in_container.then_some(plan.mtu),
                sandbox: in_container.then(|| inv.netns.clone()),
            }
        })
        .collect();
    CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces,
        ips: plan
            .families
            .iter()
            .zip(addresses)
            .map(|(family, address)| IpConfig {
                version: None,
                address: *address,
                gateway: Some(family.gateway.addr()),
                interface: Some(2),
            })
            .collect(),
        routes: plan
            .families
            .iter()
            .map(|family| Route {
                dst: family.route_dst,
                gw: Some(family.gateway.addr()),
            })
            .collect(),
        dns: conf.dns.clone().unwrap_or_else(|| Value::Object(Map::new())),
    }
    .for_version(&conf.cni_version)
}

async fn delete_host_veth(host: &Netlink, container_id: &str, ifname: &str) -> Result<(), CniError> {
    let name = host_veth_name(container_id, ifname);
    if let Some(link) = host.link_by_name(&name).await? {
        if link.kind.as_deref() == Some("veth") {
            host.delete_link(link.index).await?;
        }
    }
    Ok(())
}

/// Releases the address and removes the veth. Everything already gone is success; every step
/// runs even when an earlier one failed.
pub async fn del(conf: &NetConf, inv: &Invocation) -> Result<(), CniError> {
    let released = store(conf).and_then(|s| s.release(&inv.container_id, &inv.ifname).map(|_| ()));
    let removed = match Netlink::new() {
        Ok(host) => delete_host_veth(&host, &inv.container_id, &inv.ifname).await,
        Err(e) => Err(e.into()),
    };
    released.and(removed)
}

/// Verifies the container side against prevResult: the interface (and its MAC), its addresses,
/// and the routes (a route without a gateway in prevResult matches any gateway). Returns the
/// parsed prevResult and the index of the container interface in it. Shared by both modes.
pub async fn check_container(
    conf: &NetConf,
    inv: &Invocation,
    netns: &NetnsFile,
) -> Result<(CniResult, usize), CniError> {
    let prev = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "CHECK needs prevResult in the network configuration",
        )
    })?;
    let prev: CniResult = serde_json::from_value(prev).map_err(|e| {
        CniError::new(
            ErrorCode::DecodingFailure,
            format!("prevResult is not a CNI result: {e}"),
        )
    })?;
    let mismatch = |m: String| CniError::new(ErrorCode::CheckMismatch, m);
    let (index, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == inv.ifname && i.sandbox.is_some())
        .ok_or_else(|| mismatch(format!("prevResult has no interface {} in a sandbox", inv.ifname)))?;

    let inside = netns.netlink(&tokio::runtime::Handle::current())?;
    let link = inside
        .link_by_name(&inv.ifname)
        .await?
        .ok_or_else(|| mismatch(format!("{} does not exist in {}", inv.ifname, inv.netns)))?;
    let mac = link.mac.map(|m| format_mac(&m)).unwrap_or_default();
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&mac) {
        return Err(mismatch(format!(
            "{} has MAC {mac}, prevResult says {}",
            inv.ifname, iface.mac
        )));
    }
    let addrs = inside.list_link_addrs(link.index, None).await?;
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(index)) {
        if !addrs.contains(&ip.address) {
            return Err(mismatch(format!(
                "{} lacks address {} (has {addrs:?})",
                inv.ifname, ip.address
            )));
        }
    }
    let routes = inside.list_routes(None).await?;
    for want in &prev.routes {
        let found = routes
            .iter()
            .any(|r| r.dst == want.dst.trunc() && (want.gw.is_none() || r.gateway == want.gw));
        if !found {
            return Err(mismatch(format!(
                "route {}{} is missing in {}",
                want.dst,
                want.gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                inv.netns
            )));
        }
    }
    Ok((prev, index))
}

/// Verifies the container's interface, address and routes against prevResult, and that the
/// address is still reserved and the host end of the veth exists.
pub async fn check(conf: &NetConf, inv: &Invocation, netns: &NetnsFile, _env: &NodeEnv) -> Result<(), CniError> {
    let (prev, index) = check_container(conf, inv, netns).await?;
    let mismatch = |m: String| CniError::new(ErrorCode::CheckMismatch, m);
    let reserved = store(conf)?.find(&inv.container_id, &inv.ifname)?;
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(index)) {
        if !reserved.contains(&ip.address.addr()) {
            return Err(mismatch(format!(
                "address {} is not reserved for container {} in the address store",
                ip.address, inv.container_id
            )));
        }
    }
    let host = Netlink::new()?;
    let host_name = host_veth_name(&inv.container_id, &inv.ifname);
    if host.link_by_name(&host_name).await?.is_none() {
        return Err(mismatch(format!("the host end {host_name} of the veth is gone")));
    }
    Ok(())
}

/// Releases the addresses (and veths) of attachments not in `cni.dev/valid-attachments`.
pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let stale = store(conf)?.release_unless(|r| {
        valid
            .iter()
            .any(|a| a.container_id == r.container_id && a.ifname == r.ifname)
    })?;
    let host = Netlink::new()?;
    let mut first_error = None;
    for r in stale {
        if let Err(e) = delete_host_veth(&host, &r.container_id, &r.ifname).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet_env;

    fn env(text: &str) -> NodeEnv {
        subnet_env::parse("subnet.env", text).unwrap()
    }

    const V4: &str =
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    const V6: &str = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n";

    fn family(range_id: usize, gateway: &str, route_dst: &str) -> FamilyPlan {
        FamilyPlan {
            range_id,
            gateway: gateway.parse().unwrap(),
            route_dst: route_dst.parse().unwrap(),
        }
    }

    #[test]
    fn plan_takes_gateway_mtu_and_route_from_subnet_env() {
        let (conf, _) = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni"}"#).unwrap();
        let plan = Plan::new(&conf, &env(V4));
        assert_eq!(plan.bridge, "cni0");
        assert_eq!(plan.mtu, 1450);
        assert_eq!(plan.families, vec![family(0, "10.5.72.1/24", "0.0.0.0/0")]);
        let (conf, _) = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni","bridge":"br9","isDefaultGateway":false,"hairpinMode":true}"#,
        )
        .unwrap();
        let plan = Plan::new(&conf, &env(V4));
        assert_eq!((plan.bridge.as_str(), plan.hairpin), ("br9", true));
        assert_eq!(plan.families[0].route_dst, "10.5.0.0/16".parse().unwrap());
    }

    #[test]
    fn dual_stack_and_ipv6_only_plans_have_a_gateway_and_route_per_family() {
        let (conf, _) = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni"}"#).unwrap();
        let plan = Plan::new(&conf, &env(&format!("{V4}{V6}")));
        assert_eq!(
            plan.families,
            vec![
                family(0, "10.5.72.1/24", "0.0.0.0/0"),
                family(1, "fc00:0:0:1::1/64", "::/0")
            ]
        );
        let plan = Plan::new(&conf, &env(&format!("{V6}FLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n")));
        assert_eq!(plan.families, vec![family(0, "fc00:0:0:1::1/64", "::/0")]);
        let (conf, _) =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni","isDefaultGateway":false}"#).unwrap();
        let plan = Plan::new(&conf, &env(&format!("{V4}{V6}")));
        assert_eq!(plan.families[1].route_dst, "fc00::/48".parse().unwrap());
    }
}
