//! Built-in mode: weft-cni plugs the container into the node subnet itself, through netlink.
//! Bridge (default `cni0`) with the gateway (the subnet's first host) and FLANNEL_MTU; a veth
//! pair whose container end is created directly in the container namespace; an address from the
//! host-local-compatible store; a default (or cluster-network) route via the gateway.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};
use weft_core::SubnetEnv;
use weft_kernel::netlink::{format_mac, AddrFamily, Netlink, RouteSpec};

use crate::bridge;
use crate::error::{CniError, ErrorCode};
use crate::invocation::Invocation;
use crate::ipam::AddressStore;
use crate::netns::NetnsFile;
use crate::types::{CniResult, Interface, IpConfig, NetConf, Route, DEFAULT_BRIDGE, DEFAULT_IPAM_DATA_DIR};
use crate::veth::{self, host_veth_name};

/// What a built-in ADD decides from the config and subnet.env, before touching anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub bridge: String,
    pub mtu: u32,
    /// The node subnet with the gateway's address: `10.5.72.1/24`.
    pub gateway: Ipv4Net,
    pub route_dst: Ipv4Net,
    pub hairpin: bool,
}

impl Plan {
    pub fn new(conf: &NetConf, env: &SubnetEnv) -> Plan {
        let subnet = env.subnet.trunc();
        // FLANNEL_SUBNET carries the first host already; take it from the network to be sure.
        let gateway_ip = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        Plan {
            bridge: conf.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.to_string()),
            mtu: env.mtu,
            gateway: Ipv4Net::new(gateway_ip, subnet.prefix_len()).expect("prefix comes from a valid net"),
            route_dst: if conf.is_default_gateway.unwrap_or(true) {
                Ipv4Net::default()
            } else {
                env.network.trunc()
            },
            hairpin: conf.hairpin_mode.unwrap_or(false),
        }
    }
}

fn store(conf: &NetConf) -> Result<AddressStore, CniError> {
    let dir = conf.ipam_data_dir.as_deref().unwrap_or(DEFAULT_IPAM_DATA_DIR);
    AddressStore::open(Path::new(dir), &conf.name)
}

fn enable_ip_forward() -> Result<(), CniError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).map(|s| s.trim() == "1").unwrap_or(false) {
        return Ok(());
    }
    std::fs::write(PATH, "1")
        .map_err(|e| CniError::io("enable IPv4 forwarding (write 1 to /proc/sys/net/ipv4/ip_forward)", &e))
}

/// What ADD created so far, for the rollback.
#[derive(Default)]
struct Created {
    address: bool,
    host_veth: Option<String>,
}

/// ADD into the container namespace `netns` (checked by the caller to be one).
pub async fn add(conf: &NetConf, inv: &Invocation, netns: &NetnsFile, env: &SubnetEnv) -> Result<CniResult, CniError> {
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
    let ip = store.allocate(plan.gateway, plan.gateway.addr(), &inv.container_id, &inv.ifname)?;
    created.address = true;
    let address = Ipv4Net::new(ip, plan.gateway.prefix_len()).expect("same prefix as the gateway");

    let bridge = host.ensure_bridge(&plan.bridge, plan.mtu).await?;
    // Before the first port is attached, so that the gateway MAC never follows the ports.
    bridge::pin_mac(host, &bridge).await?;
    let gateway = plan.gateway.into();
    if !host
        .list_link_addrs(bridge.index, Some(AddrFamily::Ipv4))
        .await?
        .contains(&gateway)
    {
        host.add_addr(bridge.index, gateway).await?;
    }
    enable_ip_forward()?;

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
    inside.add_addr(link.index, address.into()).await?;
    inside
        .replace_route(&RouteSpec {
            dst: plan.route_dst.into(),
            gateway: Some(plan.gateway.addr().into()),
            oif: link.index,
            onlink: false,
        })
        .await?;

    // Read again now that the port is attached: the result shows the MAC the pods see.
    let bridge = host.link_by_index(bridge.index).await?.unwrap_or(bridge);
    let mac = |m: Option<[u8; 6]>| m.map(|m| format_mac(&m)).unwrap_or_default();
    Ok(CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: plan.bridge.clone(),
                mac: mac(bridge.mac),
                mtu: None,
                sandbox: None,
            },
            Interface {
                name: host_name,
                mac: mac(host_link.mac),
                mtu: None,
                sandbox: None,
            },
            Interface {
                name: inv.ifname.clone(),
                mac: mac(link.mac),
                mtu: Some(plan.mtu),
                sandbox: Some(inv.netns.clone()),
            },
        ],
        ips: vec![IpConfig {
            version: None,
            address,
            gateway: Some(plan.gateway.addr()),
            interface: Some(2),
        }],
        routes: vec![Route {
            dst: plan.route_dst,
            gw: Some(plan.gateway.addr()),
        }],
        dns: conf.dns.clone().unwrap_or_else(|| Value::Object(Map::new())),
    }
    .for_version(&conf.cni_version))
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
    let addrs = inside.list_link_addrs(link.index, Some(AddrFamily::Ipv4)).await?;
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(index)) {
        if !addrs.contains(&ip.address.into()) {
            return Err(mismatch(format!(
                "{} lacks address {} (has {addrs:?})",
                inv.ifname, ip.address
            )));
        }
    }
    let routes = inside.list_routes(Some(AddrFamily::Ipv4)).await?;
    for want in &prev.routes {
        let found = routes
            .iter()
            .any(|r| r.dst == want.dst.trunc().into() && (want.gw.is_none() || r.gateway == want.gw.map(Into::into)));
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
pub async fn check(conf: &NetConf, inv: &Invocation, netns: &NetnsFile, _env: &SubnetEnv) -> Result<(), CniError> {
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

    fn env() -> SubnetEnv {
        SubnetEnv::parse(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap()
    }

    #[test]
    fn plan_takes_gateway_mtu_and_route_from_subnet_env() {
        let (conf, _) = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni"}"#).unwrap();
        let plan = Plan::new(&conf, &env());
        assert_eq!(plan.bridge, "cni0");
        assert_eq!(plan.mtu, 1450);
        assert_eq!(plan.gateway, "10.5.72.1/24".parse().unwrap());
        assert_eq!(plan.route_dst, "0.0.0.0/0".parse().unwrap());
        let (conf, _) = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni","bridge":"br9","isDefaultGateway":false,"hairpinMode":true}"#,
        )
        .unwrap();
        let plan = Plan::new(&conf, &env());
        assert_eq!((plan.bridge.as_str(), plan.hairpin), ("br9", true));
        assert_eq!(plan.route_dst, "10.5.0.0/16".parse().unwrap());
    }
}
