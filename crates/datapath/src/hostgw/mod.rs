//! The host-gw backend (flannel's `host-gw` type): no device, no encapsulation; per remote lease
//! one route `subnet via PublicIP dev <ext>`, kept in shape by reconcile. It needs every node on
//! one L2 segment, so it refuses to start when the public IP is not the interface's (NAT).
//!
//! It owns, in the main table, the routes into the cluster network through the external
//! interface via a gateway. It never touches the route to our own subnet, connected routes,
//! routes outside the cluster network or through other devices (except to replace one whose
//! destination a lease now claims), and it never flushes: a restart adopts what is there.
//!
//! Dual stack adds the same per remote lease's IPv6 side (`subnet via PublicIPv6 dev <ext>`):
//! each family is one [`FamilyRoutes`], and the backend runs every step on each.

pub mod plan;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_core::{Lease, SubnetKey};
use weft_kernel::iface::ExternalInterface;
use weft_kernel::monitor::KernelEvent;
use weft_kernel::netlink::{AddrFamily, Batch, Netlink, NetlinkError, RouteSpec};

use self::plan::{
    desired_routes, peer_of, peers_from_leases, phase_of, plan_route, plan_with_nexthops, route_of, Action, Change,
    LeaseSkip, Topology,
};
use crate::apply::{run_batched, Applied, ApplyFailure};
use crate::backend::{merge_reports, to_leases, Backend, BackendError, LeaseChange, LeaseSet, Report};
use crate::peer_routes::{at_default_metric, nexthop_of, nexthops_usable, route_matches, subnet_of_nexthop};

#[derive(Debug, thiserror::Error)]
pub enum HostGwError {
    #[error("host-gw backend: {0}")]
    Netlink(#[from] NetlinkError),
    #[error(
        "host-gw backend: public IP {public_ip} is not an address of interface {iface} (it has {have}); \
         host-gw needs the nodes to reach each other directly on one L2 segment, without NAT: \
         drop --public-ip, choose the interface that holds it with --iface, or use the vxlan backend"
    )]
    PublicIpNotOnInterface {
        public_ip: IpAddr,
        iface: String,
        have: String,
    },
    #[error("host-gw backend: no lease yet; call set_lease with this node's subnet before reconcile")]
    NoLease,
    #[error("host-gw backend: {} of {} route changes failed; first: {}", .0.failed, .0.attempted, .0.first)]
    Apply(ApplyFailure),
}

/// The host-gw backend of one node: the IPv4 routes, the IPv6 ones, or both (dual stack).
#[derive(Debug)]
pub struct HostGwBackend {
    v4: Option<FamilyRoutes>,
    v6: Option<FamilyRoutes>,
}

/// The routes of one address family.
#[derive(Debug)]
pub struct FamilyRoutes {
    nl: Netlink,
    ext: ExternalInterface,
    /// Our public address of this family.
    public_ip: IpAddr,
    /// The cluster network of this family.
    network: IpNet,
    own: Option<SubnetKey>,
    /// The routes weft installed, by peer subnet: what lease changes and kernel notifications
    /// are compared with. Set by every full reconcile, updated by every delta.
    installed: BTreeMap<IpNet, RouteSpec>,
    /// Routes point at per-peer nexthop objects: the kernel has them (probed at start).
    nexthops: bool,
}

impl HostGwBackend {
    /// Checks that `public_ip` is an address of `ext` (host-gw cannot work across NAT). Creates
    /// nothing. Then call [`HostGwBackend::set_lease`].
    pub async fn start(
        nl: Netlink,
        ext: ExternalInterface,
        public_ip: Ipv4Addr,
        network: Ipv4Net,
    ) -> Result<Self, HostGwError> {
        Self::start_dual_stack(nl, ext, Some((public_ip, network)), None).await
    }

    /// [`HostGwBackend::start`] for each family given: `ipv4` (PublicIP, Network), `ipv6`
    /// (PublicIPv6, IPv6Network; PublicIPv6 must be an address of the interface as well).
    pub async fn start_dual_stack(
        nl: Netlink,
        ext: ExternalInterface,
        ipv4: Option<(Ipv4Addr, Ipv4Net)>,
        ipv6: Option<(Ipv6Net, Ipv6Addr)>,
    ) -> Result<Self, HostGwError> {
        let v4 = match ipv4 {
            None => None,
            Some((public_ip, network)) => {
                Some(FamilyRoutes::start(nl.clone(), ext.clone(), public_ip.into(), network.into()).await?)
            }
        };
        let v6 = match ipv6 {
            None => None,
            Some((network, public)) => Some(FamilyRoutes::start(nl, ext, public.into(), network.into()).await?),
        };
        Ok(HostGwBackend { v4, v6 })
    }

    fn families_mut(&mut self) -> impl Iterator<Item = &mut FamilyRoutes> {
        self.v4.iter_mut().chain(self.v6.as_mut())
    }

    /// The overlay MTU: the interface's (no encapsulation). Also FLANNEL_MTU.
    pub fn mtu(&self) -> u32 {
        self.v4
            .iter()
            .chain(self.v6.as_ref())
            .map(|f| f.ext.mtu)
            .min()
            .unwrap_or(0)
    }

    /// The lease's BackendData: none for host-gw.
    pub fn backend_data(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Records this node's lease (its route is cni0's business, never ours).
    pub fn set_lease(&mut self, own: SubnetKey) {
        for family in self.families_mut() {
            family.own = Some(own);
        }
    }

    /// The delta of `changes`, per family.
    pub async fn apply_changes(&mut self, changes: &[LeaseChange]) -> Result<Report, HostGwError> {
        let mut results = Vec::new();
        for family in self.families_mut() {
            results.push(family.apply_changes(changes).await);
        }
        merge_reports(results)
    }

    /// Repairs from one kernel notification, in the family it concerns.
    pub async fn repair(&mut self, event: &KernelEvent) -> Result<Report, HostGwError> {
        let mut results = Vec::new();
        for family in self.families_mut() {
            results.push(family.repair(event).await);
        }
        merge_reports(results)
    }

    /// A full reconcile per family; each is attempted even if the other fails.
    pub async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, HostGwError> {
        let mut results = Vec::new();
        for family in self.families_mut() {
            results.push(family.reconcile(leases).await);
        }
        merge_reports(results)
    }
}

impl FamilyRoutes {
    async fn start(
        nl: Netlink,
        ext: ExternalInterface,
        public_ip: IpAddr,
        network: IpNet,
    ) -> Result<Self, HostGwError> {
        let family = if public_ip.is_ipv6() {
            AddrFamily::Ipv6
        } else {
            AddrFamily::Ipv4
        };
        let addrs = nl.list_link_addrs(ext.index, Some(family)).await?;
        if !addrs.iter().any(|a| a.addr() == public_ip) {
            let have = if addrs.is_empty() {
                format!("no {} address", if public_ip.is_ipv6() { "IPv6" } else { "IPv4" })
            } else {
                addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            };
            return Err(HostGwError::PublicIpNotOnInterface {
                public_ip,
                iface: ext.name.clone(),
                have,
            });
        }
        tracing::info!(iface = %ext.name, %public_ip, mtu = ext.mtu, "host-gw backend ready");
        let nexthops = nexthops_usable(&nl, "host-gw").await;
        Ok(FamilyRoutes {
            nl,
            ext,
            public_ip,
            network: network.trunc(),
            own: None,
            installed: BTreeMap::new(),
            nexthops,
        })
    }

    fn ipv6(&self) -> bool {
        self.network.addr().is_ipv6()
    }

    /// The subnet of this family of a lease key.
    fn subnet_of(&self, key: &SubnetKey) -> Option<IpNet> {
        crate::leases::subnet_of_family(key, self.ipv6()).map(|n| n.trunc())
    }

    fn side(&self) -> crate::leases::Side {
        crate::leases::Side {
            own: self.own.as_ref().and_then(|o| self.subnet_of(o)),
            network: self.network,
            public_ip: self.public_ip,
        }
    }

    fn topology(&self, own: IpNet) -> Topology {
        Topology {
            network: self.network,
            own_subnet: own,
            public_ip: self.public_ip,
            ext_index: self.ext.index,
            nexthops: self.nexthops,
        }
    }

    /// Applies the changes of `changes` alone, against the routes weft installed for them: one
    /// netlink request per changed lease, whatever the size of the cluster.
    pub async fn apply_changes(&mut self, changes: &[LeaseChange]) -> Result<Report, HostGwError> {
        let own = self.own.ok_or(HostGwError::NoLease)?;
        let own_subnet = self.subnet_of(&own).ok_or(HostGwError::NoLease)?;
        let topo = self.topology(own_subnet);
        let mut report = Report::default();
        let mut actions = Vec::new();
        for change in changes {
            // A lease with no subnet of this family has no route of it.
            let Some(subnet) = self.subnet_of(&change.subnet) else {
                continue;
            };
            let new = match change.lease.as_ref().map(|l| peer_of(l, &own, &topo)) {
                Some(Ok(peer)) => Some(route_of(&peer, &topo)),
                Some(Err(LeaseSkip::Own)) | None => None,
                Some(Err(skip)) => {
                    report.skipped_leases +=
                        crate::leases::log_skipped("host-gw", &[(change.subnet, skip)], self.side());
                    None
                }
            };
            let old = match new {
                Some(route) => self.installed.insert(subnet, route),
                None => self.installed.remove(&subnet),
            };
            actions.extend(plan_route(old, new, &topo));
        }
        report.peers = self.installed.len();
        let applied = self.run(actions).await;
        (report.added, report.replaced, report.removed) = (applied.added, applied.replaced, applied.removed);
        applied.result().map_err(HostGwError::Apply)?;
        Ok(report)
    }

    /// Puts back a route weft installed that someone deleted or replaced, from one kernel
    /// notification. Notifications of weft's own changes match the cache and cost nothing.
    pub async fn repair(&mut self, event: &KernelEvent) -> Result<Report, HostGwError> {
        let Some(own) = self.own.as_ref().and_then(|o| self.subnet_of(o)) else {
            return Ok(Report::default());
        };
        let topo = self.topology(own);
        let mut actions = Vec::new();
        match event {
            KernelEvent::RouteGone(route) | KernelEvent::RouteAdded(route) => {
                let Some(spec) = self.installed.get(&route.dst).copied() else {
                    return Ok(Report::default());
                };
                let nexthop = topo.nexthop_for(spec.dst);
                let same = route_matches(route, &spec, nexthop);
                match event {
                    KernelEvent::RouteGone(_) if same => actions.push(Action::SetRoute {
                        spec,
                        change: Change::Add,
                        nexthop,
                    }),
                    KernelEvent::RouteAdded(_) if !same && at_default_metric(route) => actions.push(Action::SetRoute {
                        spec,
                        change: Change::Replace,
                        nexthop,
                    }),
                    _ => {}
                }
            }
            // A deleted nexthop took its route along (IPv4 says nothing of the route).
            KernelEvent::NexthopGone(nh) | KernelEvent::NexthopChanged(nh) => {
                let subnet = subnet_of_nexthop(self.network, own.prefix_len(), nh.id);
                let Some(spec) = subnet.and_then(|s| self.installed.get(&s).copied()) else {
                    return Ok(Report::default());
                };
                let Some(want) = topo.nexthop_for(spec.dst).and_then(|id| nexthop_of(&spec, id)) else {
                    return Ok(Report::default());
                };
                if matches!(event, KernelEvent::NexthopGone(_)) {
                    if nh.spec() != Some(want) {
                        // Not the one weft installed (e.g. of a link that went away since).
                        return Ok(Report::default());
                    }
                    actions.push(Action::SetNexthop {
                        spec: want,
                        change: Change::Add,
                    });
                    actions.push(Action::SetRoute {
                        spec,
                        change: Change::Add,
                        nexthop: Some(want.id),
                    });
                } else if nh.spec() != Some(want) {
                    actions.push(Action::SetNexthop {
                        spec: want,
                        change: Change::Replace,
                    });
                }
            }
            _ => {}
        }
        if actions.is_empty() {
            return Ok(Report::default());
        }
        let applied = self.run(actions).await;
        let report = Report {
            added: applied.added,
            replaced: applied.replaced,
            peers: self.installed.len(),
            ..Report::default()
        };
        if report.changed() {
            tracing::info!(iface = %self.ext.name, ?event, "repaired a route changed behind weft's back");
        }
        applied.result().map_err(HostGwError::Apply)?;
        Ok(report)
    }

    /// Runs the actions phase by phase ([`phase_of`]: a route is only sent once its nexthop
    /// exists, and the two go on different sockets); the actions of one phase are independent
    /// and sent in netlink batches, several in flight.
    async fn run(&self, actions: Vec<Action>) -> Applied {
        let mut phases: [Vec<Action>; 4] = Default::default();
        for action in actions {
            tracing::debug!(iface = %self.ext.name, "{action}");
            phases[phase_of(&action)].push(action);
        }
        let mut applied = Applied::default();
        for phase in phases {
            let failed =
                |action: &Action, e: &NetlinkError| tracing::warn!(iface = %self.ext.name, "{action} failed: {e}");
            run_batched(&self.nl, phase, batch, Action::effect, failed, &mut applied).await;
        }
        applied
    }

    /// Brings the main table in line with `leases`, the full current lease set (our own
    /// included): adds missing routes, corrects wrong ones, removes those no lease asks for.
    /// Every change is attempted even if one fails.
    pub async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, HostGwError> {
        let own = self.own.ok_or(HostGwError::NoLease)?;
        let own_subnet = self.subnet_of(&own).ok_or(HostGwError::NoLease)?;
        let topo = self.topology(own_subnet);
        let mut report = Report::default();
        let (peers, skipped) = peers_from_leases(leases, &own, &topo);
        report.skipped_leases += crate::leases::log_skipped("host-gw", &skipped, self.side());
        report.peers = peers.len();
        let desired = desired_routes(&peers, &topo);
        let family = if self.ipv6() {
            AddrFamily::Ipv6
        } else {
            AddrFamily::Ipv4
        };
        let actual = self.nl.list_routes(Some(family)).await?;
        let nexthops = if self.nexthops {
            self.nl.list_nexthops(Some(family)).await?
        } else {
            Vec::new()
        };
        let actions = plan_with_nexthops(&desired, &actual, &nexthops, &topo);
        self.installed = desired;
        let applied = self.run(actions).await;
        (report.added, report.replaced, report.removed) = (applied.added, applied.replaced, applied.removed);
        if report.changed() {
            tracing::info!(
                iface = %self.ext.name,
                added = report.added,
                replaced = report.replaced,
                removed = report.removed,
                "host-gw routes reconciled"
            );
        }
        applied.result().map_err(HostGwError::Apply)?;
        Ok(report)
    }
}

/// Puts one action's change into a batch.
fn batch(action: &Action, batch: &mut Batch) {
    match action {
        Action::SetRoute {
            spec,
            nexthop: Some(id),
            ..
        } => batch.replace_route_via_nexthop(spec.dst, *id),
        Action::SetRoute {
            spec, nexthop: None, ..
        } => batch.replace_route(spec),
        Action::DeleteRoute {
            spec,
            metric,
            nexthop: Some(id),
        } => batch.delete_route_via_nexthop(spec.dst, *id, *metric),
        Action::DeleteRoute { spec, metric, .. } => batch.delete_route_at_metric(spec, *metric),
        Action::SetNexthop { spec, .. } => batch.replace_nexthop(spec),
        Action::DeleteNexthop { id, .. } => batch.delete_nexthop(*id),
    }
}

#[async_trait::async_trait]
impl Backend for HostGwBackend {
    fn name(&self) -> &'static str {
        "host-gw"
    }

    fn backend_data(&self) -> serde_json::Value {
        HostGwBackend::backend_data(self)
    }

    fn mtu(&self) -> u32 {
        HostGwBackend::mtu(self)
    }

    async fn set_lease(&mut self, own: &Lease) -> Result<(), BackendError> {
        HostGwBackend::set_lease(self, own.subnet);
        Ok(())
    }

    async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, BackendError> {
        HostGwBackend::reconcile(self, leases).await.map_err(BackendError::new)
    }

    async fn apply(&mut self, changes: &[LeaseChange], _all: &LeaseSet) -> Result<Report, BackendError> {
        self.apply_changes(changes).await.map_err(BackendError::new)
    }

    async fn kernel_changed(&mut self, event: &KernelEvent, all: &LeaseSet) -> Result<Report, BackendError> {
        if let KernelEvent::Overrun = event {
            return HostGwBackend::reconcile(self, &to_leases(all))
                .await
                .map_err(BackendError::new);
        }
        self.repair(event).await.map_err(BackendError::new)
    }
}
