//! The vxlan backend (flannel's `vxlan` type): device `flannel.<VNI>`, and per remote lease a
//! permanent neighbour, a permanent FDB entry and an onlink route (through a nexthop object of
//! its own when the kernel has them), kept in shape by reconcile. Dual stack adds a second VTEP,
//! `flannel-v6.<VNI>` over the IPv6 underlay, with the same entries per remote lease's IPv6 side
//! (as flannel does): each family is one [`Vtep`], and the backend runs every step on each.
//!
//! It owns the device and, on it, every neighbour and FDB entry; in the main table it owns the
//! routes into the cluster network through the device (and, for DirectRouting, through the
//! external interface via a gateway), and the nexthops in weft's id range. It never touches the route to our own subnet, anything
//! outside the cluster network, or other devices' neighbour tables, and it never flushes:
//! a restart adopts what is there and fixes only what is wrong.

pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_core::config::VxlanOptions;
use weft_core::{Lease, SubnetKey};
use weft_kernel::iface::ExternalInterface;
use weft_kernel::monitor::KernelEvent;
use weft_kernel::netlink::{format_mac, AddrFamily, Batch, LinkInfo, Netlink, NetlinkError, VxlanSpec};

use self::plan::{
    desired_state, keep_shared, peer_entries, peer_of, peers_entries, peers_from_leases, plan_peer, plan_phases,
    Action, ActualState, Change, LeaseSkip, PeerEntries, Phases, Topology,
};
use crate::apply::{run_batched, Applied, ApplyFailure};
use crate::backend::LeaseChange;
use crate::backend::{merge_reports, to_leases, Backend, BackendError, LeaseSet, Report};
use crate::peer_routes::{at_default_metric, is_weft_nexthop, nexthops_usable, route_matches, subnet_of_nexthop};

/// VXLAN over IPv4 adds 50 bytes: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// VXLAN over IPv6 adds 70: the outer header is IPv6 (40).
pub const VXLAN_V6_OVERHEAD: u32 = 70;

#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error("vxlan backend: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("vxlan backend: the underlay MTU {mtu} leaves no room for the {overhead}-byte VXLAN header; set Backend.MTU or fix the interface MTU")]
    MtuTooSmall { mtu: u32, overhead: u32 },
    #[error("vxlan backend: device {device} has no MAC address; delete it so weftd can create it again")]
    NoMac { device: String },
    #[error("vxlan backend: no lease yet; call set_lease with this node's subnet before reconcile")]
    NoLease,
    #[error("vxlan backend: {} of {} changes failed; first: {}", .0.failed, .0.attempted, .0.first)]
    Apply(ApplyFailure),
}

/// The IPv6 side of a dual-stack vxlan backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Side {
    /// IPv6Network.
    pub network: Ipv6Net,
    /// The external interface's IPv6 address: the VTEP's source.
    pub local: Ipv6Addr,
    /// PublicIPv6 of our lease.
    pub public: Ipv6Addr,
}

/// The vxlan backend of one node: the IPv4 VTEP, the IPv6 one, or both (dual stack); at least one.
#[derive(Debug)]
pub struct VxlanBackend {
    v4: Option<Vtep>,
    v6: Option<Vtep>,
}

/// One VTEP: the device of one address family and the entries on it and in the main table.
#[derive(Debug)]
pub struct Vtep {
    nl: Netlink,
    ext: ExternalInterface,
    /// Our lease's public address of this family (PublicIP, PublicIPv6).
    public_ip: IpAddr,
    /// The address the device sends from.
    local: IpAddr,
    opts: VxlanOptions,
    own: Option<SubnetKey>,
    /// The cluster network of this family.
    network: IpNet,
    device: LinkInfo,
    vtep_mac: [u8; 6],
    /// What weft installed, per peer subnet: the cache a lease change or a kernel notification
    /// is compared with, so neither needs to read the kernel's tables. Set by every full
    /// reconcile, updated by every delta.
    installed: BTreeMap<IpNet, PeerEntries>,
    /// VtepMAC -> peer subnet, for FDB notifications.
    by_mac: HashMap<[u8; 6], IpNet>,
    /// The external interface's connected subnets of this family at the last full reconcile
    /// (DirectRouting).
    ext_nets: Vec<IpNet>,
    /// Routes point at per-peer nexthop objects: the kernel has them (probed at start).
    nexthops: bool,
}

impl VxlanBackend {
    /// Creates or adopts `flannel.<VNI>` (keeping an existing device's MAC and every entry on
    /// it), sets its MTU and brings it up. Call before acquiring the lease: the lease's
    /// BackendData carries the device's MAC. Then call [`VxlanBackend::set_lease`].
    pub async fn start(
        nl: Netlink,
        ext: ExternalInterface,
        public_ip: Ipv4Addr,
        opts: VxlanOptions,
        network: Ipv4Net,
    ) -> Result<Self, VxlanError> {
        Self::start_dual_stack(nl, ext, opts, Some((public_ip, network)), None).await
    }

    /// [`VxlanBackend::start`] for each family given: `flannel.<VNI>` for `ipv4` (PublicIP,
    /// Network), `flannel-v6.<VNI>` over the IPv6 underlay for `ipv6`. At least one must be given.
    pub async fn start_dual_stack(
        nl: Netlink,
        ext: ExternalInterface,
        opts: VxlanOptions,
        ipv4: Option<(Ipv4Addr, Ipv4Net)>,
        ipv6: Option<Ipv6Side>,
    ) -> Result<Self, VxlanError> {
        let v4 = match ipv4 {
            None => None,
            Some((public_ip, network)) => Some(
                Vtep::start(
                    nl.clone(),
                    ext.clone(),
                    public_ip.into(),
                    public_ip.into(),
                    opts.clone(),
                    network.into(),
                )
                .await?,
            ),
        };
        let v6 = match ipv6 {
            None => None,
            Some(side) => Some(
                Vtep::start(
                    nl,
                    ext,
                    side.public.into(),
                    side.local.into(),
                    opts,
                    side.network.into(),
                )
                .await?,
            ),
        };
        Ok(VxlanBackend { v4, v6 })
    }

    fn vteps(&self) -> impl Iterator<Item = &Vtep> {
        self.v4.iter().chain(self.v6.as_ref())
    }

    fn vteps_mut(&mut self) -> impl Iterator<Item = &mut Vtep> {
        self.v4.iter_mut().chain(self.v6.as_mut())
    }

    /// The first VTEP: the IPv4 one, or in an IPv6-only network the IPv6 one.
    fn first(&self) -> &Vtep {
        self.vteps()
            .next()
            .expect("start_dual_stack is given at least one family")
    }

    /// The IPv4 VTEP, unless IPv6-only.
    pub fn v4(&self) -> Option<&Vtep> {
        self.v4.as_ref()
    }

    /// The IPv6 VTEP, when dual stack.
    pub fn v6(&self) -> Option<&Vtep> {
        self.v6.as_ref()
    }

    /// `flannel.<VNI>` (IPv6-only: `flannel-v6.<VNI>`).
    pub fn device_name(&self) -> String {
        self.first().device_name()
    }

    /// The first device's index (changes when the device had to be created again).
    pub fn device_index(&self) -> u32 {
        self.first().device_index()
    }

    /// The pod MTU (FLANNEL_MTU): what fits through every VTEP (dual stack: the IPv6 one's,
    /// 20 bytes less, so an IPv6 pod packet of the full MTU never meets "packet too big").
    pub fn mtu(&self) -> u32 {
        self.vteps().map(Vtep::mtu).min().unwrap_or(0)
    }

    /// The first device's MAC.
    pub fn vtep_mac(&self) -> [u8; 6] {
        self.first().vtep_mac
    }

    /// The lease's BackendData: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}` (IPv6-only: none).
    pub fn backend_data(&self) -> serde_json::Value {
        self.v4.as_ref().map_or(serde_json::Value::Null, Vtep::backend_data)
    }

    /// The lease's BackendV6Data (dual stack): the IPv6 device's VNI and MAC.
    pub fn backend_v6_data(&self) -> serde_json::Value {
        self.v6.as_ref().map_or(serde_json::Value::Null, Vtep::backend_data)
    }

    /// Records this node's lease on every VTEP (see [`Vtep::set_lease`]).
    pub async fn set_lease(&mut self, own: SubnetKey) -> Result<(), VxlanError> {
        for vtep in self.vteps_mut() {
            vtep.set_lease(own).await?;
        }
        Ok(())
    }

    /// Re-ensures every device; whether one had to be created again.
    pub async fn ensure_device(&mut self) -> Result<bool, VxlanError> {
        let mut recreated = false;
        for vtep in self.vteps_mut() {
            recreated |= vtep.ensure_device().await?;
        }
        Ok(recreated)
    }

    /// A full reconcile of every VTEP (see [`Vtep::reconcile`]); each is attempted even if the
    /// other fails.
    pub async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, VxlanError> {
        let mut results = Vec::new();
        for vtep in self.vteps_mut() {
            results.push(vtep.reconcile(leases).await);
        }
        merge_reports(results)
    }

    /// The delta of `changes` on every VTEP.
    pub async fn apply_changes(&mut self, changes: &[LeaseChange]) -> Result<Report, VxlanError> {
        let mut results = Vec::new();
        for vtep in self.vteps_mut() {
            results.push(vtep.apply_changes(changes).await);
        }
        merge_reports(results)
    }

    /// Repairs from one kernel notification, on the VTEP it concerns.
    pub async fn repair(&mut self, event: &KernelEvent) -> Result<Report, VxlanError> {
        let mut results = Vec::new();
        for vtep in self.vteps_mut() {
            results.push(vtep.repair(event).await);
        }
        merge_reports(results)
    }

    /// Whether `event` calls for a full reconcile (see [`Vtep::device_changed`]).
    pub fn device_changed(&self, event: &KernelEvent) -> bool {
        self.vteps().any(|v| v.device_changed(event))
    }
}

impl Vtep {
    /// Creates or adopts the device of `network`'s family (keeping an existing device's MAC and
    /// every entry on it), sets its MTU and brings it up.
    async fn start(
        nl: Netlink,
        ext: ExternalInterface,
        public_ip: IpAddr,
        local: IpAddr,
        opts: VxlanOptions,
        network: IpNet,
    ) -> Result<Self, VxlanError> {
        let ipv6 = network.addr().is_ipv6();
        let mtu = device_mtu_of(&opts, &ext, ipv6)?;
        let spec = vxlan_spec(&opts, &ext, local, mtu, None);
        let device = nl.ensure_vxlan(&spec).await?;
        let vtep_mac = device.mac.ok_or_else(|| VxlanError::NoMac {
            device: spec.name.clone(),
        })?;
        let mut backend = Vtep {
            nl,
            ext,
            public_ip,
            local,
            opts,
            own: None,
            network: network.trunc(),
            device,
            vtep_mac,
            installed: BTreeMap::new(),
            by_mac: HashMap::new(),
            ext_nets: Vec::new(),
            nexthops: false,
        };
        backend.nexthops = nexthops_usable(&backend.nl, "vxlan").await;
        backend.ensure_device().await?;
        tracing::info!(
            device = %backend.device_name(),
            vtep_mac = %format_mac(&backend.vtep_mac),
            mtu = backend.mtu(),
            "vxlan device ready"
        );
        Ok(backend)
    }

    fn ipv6(&self) -> bool {
        self.network.addr().is_ipv6()
    }

    /// `flannel.<VNI>`, or `flannel-v6.<VNI>` for the IPv6 VTEP.
    pub fn device_name(&self) -> String {
        device_name_of(self.opts.vni, self.ipv6())
    }

    /// The device's index (changes when the device had to be created again).
    pub fn device_index(&self) -> u32 {
        self.device.index
    }

    /// The device MTU: Backend.MTU (or the interface's) minus 50 (70 over IPv6).
    pub fn mtu(&self) -> u32 {
        device_mtu_of(&self.opts, &self.ext, self.ipv6()).unwrap_or(0)
    }

    pub fn vtep_mac(&self) -> [u8; 6] {
        self.vtep_mac
    }

    /// The lease's BackendData: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`.
    pub fn backend_data(&self) -> serde_json::Value {
        serde_json::json!({"VNI": self.opts.vni, "VtepMAC": format_mac(&self.vtep_mac)})
    }

    /// Records this node's lease and gives the device the subnet's network address /32
    /// (10.5.72.0/24 -> 10.5.72.0/32; the IPv6 VTEP its IPv6 subnet's /128), removing any other
    /// address. Call again if the lease's subnet changes.
    pub async fn set_lease(&mut self, own: SubnetKey) -> Result<(), VxlanError> {
        self.own = Some(own);
        self.ensure_device().await?;
        Ok(())
    }

    /// Makes sure the device exists with our settings and MAC, has the MTU, holds our address
    /// (once [`VxlanBackend::set_lease`] was called) and is up. Returns whether it had to be
    /// created again. Entries on an existing device are left as they are.
    pub async fn ensure_device(&mut self) -> Result<bool, VxlanError> {
        let mtu = device_mtu_of(&self.opts, &self.ext, self.ipv6())?;
        let spec = vxlan_spec(&self.opts, &self.ext, self.local, mtu, Some(self.vtep_mac));
        let link = self.nl.ensure_vxlan(&spec).await?;
        let recreated = link.index != self.device.index;
        if recreated {
            tracing::warn!(device = %spec.name, "vxlan device was missing or changed; created it again");
        }
        if link.mac != Some(self.vtep_mac) {
            // The lease advertises this MAC: put it back rather than advertise a new one.
            tracing::warn!(device = %spec.name, "device MAC was changed; restoring {}", format_mac(&self.vtep_mac));
            self.nl.set_mac(link.index, self.vtep_mac).await?;
        }
        if let Some(own) = self.own_subnet() {
            let addr = IpNet::new(own.network(), own.max_prefix_len()).expect("a host prefix is valid");
            self.nl.ensure_addr(link.index, addr).await?;
        }
        if !link.up {
            self.nl.set_link_up(link.index).await?;
        }
        self.device = link;
        Ok(recreated)
    }

    /// Our lease's subnet of this VTEP's family.
    fn own_subnet(&self) -> Option<IpNet> {
        crate::leases::subnet_of_family(self.own.as_ref()?, self.ipv6())
    }

    /// The subnet of this VTEP's family of a lease key.
    fn subnet_of(&self, key: &SubnetKey) -> Option<IpNet> {
        crate::leases::subnet_of_family(key, self.ipv6())
    }

    fn family(&self) -> AddrFamily {
        if self.ipv6() {
            AddrFamily::Ipv6
        } else {
            AddrFamily::Ipv4
        }
    }

    fn side(&self) -> crate::leases::Side {
        crate::leases::Side {
            own: self.own_subnet(),
            network: self.network,
            public_ip: self.public_ip,
        }
    }

    fn topology(&self, own: IpNet, ext_nets: Vec<IpNet>) -> Topology {
        Topology {
            network: self.network,
            own_subnet: own,
            public_ip: self.public_ip,
            vxlan_index: self.device.index,
            ext_index: self.ext.index,
            ext_nets,
            direct_routing: self.opts.direct_routing,
            nexthops: self.nexthops,
        }
    }

    /// Brings the kernel in line with `leases`, the full current lease set (our own included).
    /// Re-ensures the device first, then adds what is missing, corrects what is wrong and
    /// removes what no lease asks for. Every change is attempted even if one fails.
    pub async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, VxlanError> {
        let own_key = self.own.ok_or(VxlanError::NoLease)?;
        let own = self.own_subnet().ok_or(VxlanError::NoLease)?;
        let mut report = Report {
            device_recreated: self.ensure_device().await?,
            ..Report::default()
        };
        let family = self.family();
        let ext_nets = if self.opts.direct_routing {
            self.nl
                .list_link_addrs(self.ext.index, Some(family))
                .await?
                .into_iter()
                .filter(|n| n.addr().is_ipv6() == self.ipv6())
                .map(|n| n.trunc())
                .collect()
        } else {
            Vec::new()
        };
        let topo = self.topology(own, ext_nets.clone());
        self.ext_nets = ext_nets;

        let (peers, skipped) = peers_from_leases(leases, &own_key, &topo);
        report.skipped_leases += crate::leases::log_skipped("vxlan", &skipped, self.side());
        report.peers = peers.len();
        let entries = peers_entries(&peers, &topo);
        let desired = desired_state(entries.values());

        let index = self.device.index;
        let actual = ActualState {
            neighbours: self.nl.list_neighbours(index, Some(family)).await?,
            fdb: self.nl.list_fdb(index).await?,
            routes: self.nl.list_routes(Some(family)).await?,
            nexthops: if self.nexthops {
                self.nl.list_nexthops(Some(family)).await?
            } else {
                Vec::new()
            },
        };
        let phases = plan_phases(&desired, &actual, &topo);
        self.set_installed(entries);
        let applied = self.run(phases).await;
        (report.added, report.replaced, report.removed) = (applied.added, applied.replaced, applied.removed);
        if report.changed() {
            tracing::info!(
                device = %self.device_name(),
                added = report.added,
                replaced = report.replaced,
                removed = report.removed,
                recreated = report.device_recreated,
                "vxlan state reconciled"
            );
        }
        applied.result().map_err(VxlanError::Apply)?;
        Ok(report)
    }

    /// Applies the changes of `changes` alone, against what weft installed for those peers:
    /// a few netlink requests per changed lease, whatever the size of the cluster.
    pub async fn apply_changes(&mut self, changes: &[LeaseChange]) -> Result<Report, VxlanError> {
        let own_key = self.own.ok_or(VxlanError::NoLease)?;
        let own = self.own_subnet().ok_or(VxlanError::NoLease)?;
        let topo = self.topology(own, self.ext_nets.clone());
        let mut phases = Phases::default();
        let mut report = Report::default();
        for change in changes {
            // A lease with no subnet of this family has nothing on this VTEP.
            let Some(subnet) = self.subnet_of(&change.subnet) else {
                continue;
            };
            let new = match change.lease.as_ref().map(|l| peer_of(l, &own_key, &topo)) {
                Some(Ok(peer)) => Some(peer_entries(&peer, &topo)),
                Some(Err(LeaseSkip::Own)) | None => None,
                Some(Err(skip)) => {
                    report.skipped_leases += crate::leases::log_skipped("vxlan", &[(change.subnet, skip)], self.side());
                    None
                }
            };
            let old = self.installed.get(&subnet).copied();
            plan_peer(old.as_ref(), new.as_ref(), &mut phases);
            self.forget(subnet);
            if let Some(new) = new {
                self.remember(subnet, new);
            }
        }
        keep_shared(&mut phases, &self.installed);
        report.peers = self.installed.len();
        let applied = self.run(phases).await;
        (report.added, report.replaced, report.removed) = (applied.added, applied.replaced, applied.removed);
        applied.result().map_err(VxlanError::Apply)?;
        Ok(report)
    }

    /// Repairs what someone else changed, from one kernel notification: an entry weft installed
    /// that was deleted or altered is put back; a deleted device is created again with every
    /// entry. Notifications of weft's own changes match the cache and cost nothing.
    pub async fn repair(&mut self, event: &KernelEvent) -> Result<Report, VxlanError> {
        let mut phases = Phases::default();
        self.plan_l2_repair(event, &mut phases);
        self.plan_route_repair(event, &mut phases);
        if phases.is_empty() {
            return Ok(Report::default());
        }
        let applied = self.run(phases).await;
        let report = Report {
            added: applied.added,
            replaced: applied.replaced,
            removed: applied.removed,
            peers: self.installed.len(),
            ..Report::default()
        };
        if report.changed() {
            tracing::info!(device = %self.device_name(), ?event, "repaired an entry changed behind weft's back");
        }
        applied.result().map_err(VxlanError::Apply)?;
        Ok(report)
    }

    /// [`Vtep::repair`]'s part for neighbours and FDB entries on the device.
    fn plan_l2_repair(&self, event: &KernelEvent, phases: &mut Phases) {
        let index = self.device.index;
        match event {
            KernelEvent::NeighbourGone { index: i, neighbour } if *i == index => {
                if let Some(mac) = self.installed_neighbour(neighbour.ip) {
                    let ip = neighbour.ip;
                    phases.sets.push(Action::SetNeighbour {
                        ip,
                        mac,
                        change: Change::Add,
                    });
                }
            }
            KernelEvent::NeighbourChanged { index: i, neighbour } if *i == index => {
                if let Some(mac) = self.installed_neighbour(neighbour.ip) {
                    if neighbour.mac != Some(mac) || !neighbour.is_permanent() {
                        let ip = neighbour.ip;
                        phases.sets.push(Action::SetNeighbour {
                            ip,
                            mac,
                            change: Change::Replace,
                        });
                    }
                }
            }
            KernelEvent::FdbGone { index: i, entry } if *i == index => {
                let ours = self.by_mac.get(&entry.mac).and_then(|s| self.installed.get(s)?.fdb);
                if let Some((mac, dst)) = ours.filter(|(_, dst)| entry.dst == Some(*dst)) {
                    phases.sets.push(Action::SetFdb {
                        mac,
                        dst,
                        change: Change::Add,
                    });
                }
            }
            _ => {}
        }
    }

    /// [`Vtep::repair`]'s part for routes and their nexthops.
    fn plan_route_repair(&self, event: &KernelEvent, phases: &mut Phases) {
        match event {
            KernelEvent::RouteGone(route) | KernelEvent::RouteAdded(route) => {
                let gone = matches!(event, KernelEvent::RouteGone(_));
                if let Some(ours) = self.installed.get(&route.dst) {
                    let (spec, nexthop) = (ours.route, ours.nexthop);
                    let same = route_matches(route, &spec, nexthop);
                    if gone && same {
                        phases.route_sets.push(Action::SetRoute {
                            spec,
                            change: Change::Add,
                            nexthop,
                        });
                    } else if !gone && !same && at_default_metric(route) {
                        phases.route_sets.push(Action::SetRoute {
                            spec,
                            change: Change::Replace,
                            nexthop,
                        });
                    }
                }
            }
            // A deleted nexthop took its route along (IPv4 says nothing of the route).
            // One of an older device (deleted with it) is not ours any more: the device's own
            // notification brings the full reconcile.
            KernelEvent::NexthopGone(nh) => {
                if let Some(entries) = self.installed_nexthop(nh.id) {
                    if let Some(spec) = entries.nexthop_spec().filter(|s| nh.spec() == Some(*s)) {
                        phases.sets.push(Action::SetNexthop {
                            spec,
                            change: Change::Add,
                        });
                        phases.route_sets.push(Action::SetRoute {
                            spec: entries.route,
                            change: Change::Add,
                            nexthop: entries.nexthop,
                        });
                    }
                }
            }
            KernelEvent::NexthopChanged(nh) => {
                if let Some(spec) = self.installed_nexthop(nh.id).and_then(|e| e.nexthop_spec()) {
                    if nh.spec() != Some(spec) {
                        phases.sets.push(Action::SetNexthop {
                            spec,
                            change: Change::Replace,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether `event` says the device is gone, was replaced or altered, or notifications were
    /// lost: what only a full reconcile repairs.
    pub fn device_changed(&self, event: &KernelEvent) -> bool {
        let name = self.device_name();
        match event {
            KernelEvent::Overrun => true,
            KernelEvent::LinkGone(link) => link.index == self.device.index || link.name == name,
            KernelEvent::LinkChanged(link) if link.index == self.device.index => {
                !link.up || link.mac != Some(self.vtep_mac)
            }
            KernelEvent::LinkChanged(link) => link.name == name,
            _ => false,
        }
    }

    /// The installed peer whose route points at nexthop `id`.
    fn installed_nexthop(&self, id: u32) -> Option<&PeerEntries> {
        let own = self.own_subnet()?;
        if !is_weft_nexthop(id) {
            return None;
        }
        let subnet = subnet_of_nexthop(self.network, own.prefix_len(), id)?;
        self.installed.get(&subnet).filter(|e| e.nexthop == Some(id))
    }

    fn installed_neighbour(&self, ip: IpAddr) -> Option<[u8; 6]> {
        let own = self.own_subnet()?;
        if ip.is_ipv6() != self.ipv6() {
            return None;
        }
        let subnet = IpNet::new(ip, own.prefix_len()).ok()?.trunc();
        self.installed
            .get(&subnet)?
            .neighbour
            .filter(|(i, _)| *i == ip)
            .map(|(_, mac)| mac)
    }

    fn set_installed(&mut self, entries: BTreeMap<IpNet, PeerEntries>) {
        self.by_mac = entries
            .iter()
            .filter_map(|(subnet, e)| Some((e.fdb?.0, *subnet)))
            .collect();
        self.installed = entries;
    }

    fn remember(&mut self, subnet: IpNet, entries: PeerEntries) {
        if let Some((mac, _)) = entries.fdb {
            self.by_mac.insert(mac, subnet);
        }
        self.installed.insert(subnet, entries);
    }

    fn forget(&mut self, subnet: IpNet) {
        if let Some(old) = self.installed.remove(&subnet) {
            if let Some((mac, _)) = old.fdb {
                if self.by_mac.get(&mac) == Some(&subnet) {
                    self.by_mac.remove(&mac);
                }
            }
        }
    }

    /// Runs the phases in order; the actions of one phase are sent together, in netlink
    /// batches with several in flight, rather than one round trip each.
    async fn run(&self, phases: Phases) -> Applied {
        let mut applied = Applied::default();
        for phase in phases.into_phases() {
            for action in &phase {
                tracing::debug!(device = %self.device_name(), "{action}");
            }
            let failed = |action: &Action, e: &NetlinkError| tracing::warn!(device = %self.device_name(), "{action} failed: {e}");
            run_batched(
                &self.nl,
                phase,
                |a, b| self.batch(a, b),
                Action::effect,
                failed,
                &mut applied,
            )
            .await;
        }
        applied
    }

    /// Puts one action's change into a batch.
    fn batch(&self, action: &Action, batch: &mut Batch) {
        let index = self.device.index;
        match action {
            Action::DeleteRoute {
                spec,
                metric,
                nexthop: Some(id),
            } => batch.delete_route_via_nexthop(spec.dst, *id, *metric),
            Action::DeleteRoute { spec, metric, .. } => batch.delete_route_at_metric(spec, *metric),
            Action::SetRoute {
                spec,
                nexthop: Some(id),
                ..
            } => batch.replace_route_via_nexthop(spec.dst, *id),
            Action::SetRoute {
                spec, nexthop: None, ..
            } => batch.replace_route(spec),
            Action::SetNexthop { spec, .. } => batch.replace_nexthop(spec),
            Action::DeleteNexthop { id, .. } => batch.delete_nexthop(*id),
            Action::SetNeighbour { ip, mac, .. } => batch.replace_neighbour(index, *ip, *mac),
            Action::SetFdb { mac, dst, .. } => batch.replace_fdb(index, *mac, *dst),
            Action::DeleteNeighbour { ip } => batch.delete_neighbour(index, *ip),
            Action::DeleteFdb { mac, dst } => batch.delete_fdb(index, *mac, *dst),
        }
    }
}

#[async_trait::async_trait]
impl Backend for VxlanBackend {
    fn name(&self) -> &'static str {
        "vxlan"
    }

    fn backend_data(&self) -> serde_json::Value {
        VxlanBackend::backend_data(self)
    }

    fn backend_v6_data(&self) -> serde_json::Value {
        VxlanBackend::backend_v6_data(self)
    }

    fn mtu(&self) -> u32 {
        VxlanBackend::mtu(self)
    }

    async fn set_lease(&mut self, own: &Lease) -> Result<(), BackendError> {
        VxlanBackend::set_lease(self, own.subnet)
            .await
            .map_err(BackendError::new)
    }

    async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, BackendError> {
        VxlanBackend::reconcile(self, leases).await.map_err(BackendError::new)
    }

    async fn apply(&mut self, changes: &[LeaseChange], _all: &LeaseSet) -> Result<Report, BackendError> {
        self.apply_changes(changes).await.map_err(BackendError::new)
    }

    /// The device gone, recreated by someone else or altered, a repair that found no device,
    /// or lost notifications: everything is compared again. Anything else is repaired alone.
    async fn kernel_changed(&mut self, event: &KernelEvent, all: &LeaseSet) -> Result<Report, BackendError> {
        if self.device_changed(event) {
            return VxlanBackend::reconcile(self, &to_leases(all))
                .await
                .map_err(BackendError::new);
        }
        match self.repair(event).await {
            Err(VxlanError::Apply(failure)) if failure.first.errno() == Some(libc::ENODEV) => {
                VxlanBackend::reconcile(self, &to_leases(all))
                    .await
                    .map_err(BackendError::new)
            }
            other => other.map_err(BackendError::new),
        }
    }
}

/// `flannel.<VNI>`.
pub fn device_name(vni: u32) -> String {
    device_name_of(vni, false)
}

/// `flannel.<VNI>`, or flannel's `flannel-v6.<VNI>` for the IPv6 VTEP.
pub fn device_name_of(vni: u32, ipv6: bool) -> String {
    if ipv6 {
        format!("flannel-v6.{vni}")
    } else {
        format!("flannel.{vni}")
    }
}

/// The IPv4 VTEP's MTU for these options on this interface.
pub fn device_mtu(opts: &VxlanOptions, ext: &ExternalInterface) -> Result<u32, VxlanError> {
    device_mtu_of(opts, ext, false)
}

/// The VTEP's MTU: the underlay's minus the VXLAN overhead of the family (IPv6 carries 20 more
/// bytes of outer header, and an IPv6 device needs 1280 at least).
pub fn device_mtu_of(opts: &VxlanOptions, ext: &ExternalInterface, ipv6: bool) -> Result<u32, VxlanError> {
    let underlay = opts.mtu.unwrap_or(ext.mtu);
    let (overhead, least) = if ipv6 {
        (VXLAN_V6_OVERHEAD, 1280)
    } else {
        (VXLAN_OVERHEAD, 68)
    };
    match underlay.checked_sub(overhead) {
        Some(mtu) if mtu >= least => Ok(mtu),
        _ => Err(VxlanError::MtuTooSmall {
            mtu: underlay,
            overhead,
        }),
    }
}

fn vxlan_spec(
    opts: &VxlanOptions,
    ext: &ExternalInterface,
    local: IpAddr,
    mtu: u32,
    mac: Option<[u8; 6]>,
) -> VxlanSpec {
    VxlanSpec {
        name: device_name_of(opts.vni, local.is_ipv6()),
        vni: opts.vni,
        port: opts.port,
        local,
        dev_index: ext.index,
        learning: opts.learning,
        gbp: opts.gbp,
        mtu,
        mac,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> VxlanOptions {
        VxlanOptions::default()
    }

    fn ext(mtu: u32) -> ExternalInterface {
        ExternalInterface {
            name: "eth0".into(),
            index: 2,
            ip: Ipv4Addr::new(198, 51, 100, 1).into(),
            mtu,
        }
    }

    #[test]
    fn mtu_is_underlay_minus_50() {
        assert_eq!(device_mtu(&opts(), &ext(1500)).unwrap(), 1450);
        let o = VxlanOptions {
            mtu: Some(9000),
            ..opts()
        };
        assert_eq!(device_mtu(&o, &ext(1500)).unwrap(), 8950);
        assert!(matches!(
            device_mtu(&opts(), &ext(100)),
            Err(VxlanError::MtuTooSmall { mtu: 100, .. })
        ));
        assert_eq!(
            device_mtu_of(&opts(), &ext(1500), true).unwrap(),
            1430,
            "IPv6 outer header"
        );
        assert!(device_mtu_of(&opts(), &ext(1340), true).is_err(), "below IPv6's 1280");
    }

    #[test]
    fn the_ipv6_vtep_is_flannels_flannel_v6() {
        let local: IpAddr = "2001:db8::1".parse().unwrap();
        let s = vxlan_spec(&opts(), &ext(1500), local, 1430, None);
        assert_eq!((s.name.as_str(), s.local), ("flannel-v6.1", local));
    }

    #[test]
    fn spec_follows_flannel() {
        let s = vxlan_spec(&opts(), &ext(1500), Ipv4Addr::new(203, 0, 113, 9).into(), 1450, None);
        assert_eq!(s.name, "flannel.1");
        assert_eq!(
            (s.vni, s.port, s.dev_index, s.learning, s.gbp),
            (1, 8472, 2, false, false)
        );
        assert_eq!(s.local, Ipv4Addr::new(203, 0, 113, 9), "local is the public IP");
    }

    #[test]
    fn backend_data_keys_in_flannel_order() {
        let v = serde_json::json!({"VNI": 1, "VtepMAC": format_mac(&[0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44])});
        assert_eq!(v.to_string(), r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#);
    }
}
