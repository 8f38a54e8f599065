//! The host-gw backend (flannel's `host-gw` type): no device, no encapsulation; per remote lease
//! one route `subnet via PublicIP dev <ext>`, kept in shape by reconcile. It needs every node on
//! one L2 segment, so it refuses to start when the public IP is not the interface's (NAT).
//!
//! It owns, in the main table, the routes into the cluster network through the external
//! interface via a gateway. It never touches the route to our own subnet, connected routes,
//! routes outside the cluster network or through other devices (except to replace one whose
//! destination a lease now claims), and it never flushes: a restart adopts what is there.

pub mod plan;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_core::{Lease, SubnetKey};
use weft_kernel::iface::ExternalInterface;
use weft_kernel::netlink::{Netlink, NetlinkError};

use self::plan::{desired_routes, peers_from_leases, plan, Action, Topology};
use crate::apply::{Applied, ApplyFailure, Effect};

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
        public_ip: Ipv4Addr,
        iface: String,
        have: String,
    },
    #[error("host-gw backend: no lease yet; call set_lease with this node's subnet before reconcile")]
    NoLease,
    #[error("host-gw backend: {} of {} route changes failed; first: {}", .0.failed, .0.attempted, .0.first)]
    Apply(ApplyFailure),
}

/// What one reconcile changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub replaced: usize,
    pub removed: usize,
    /// Remote leases left out (other backend, outside the network, ...); our own is not counted.
    pub skipped_leases: usize,
    /// Remote subnets routed.
    pub peers: usize,
}

impl ReconcileReport {
    pub fn changed(&self) -> bool {
        self.added + self.replaced + self.removed > 0
    }
}

/// The host-gw backend of one node.
#[derive(Debug)]
pub struct HostGwBackend {
    nl: Netlink,
    ext: ExternalInterface,
    public_ip: Ipv4Addr,
    network: Ipv4Net,
    own: Option<SubnetKey>,
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
        let addrs = nl.list_addrs_v4(ext.index).await?;
        if !addrs.iter().any(|a| a.addr() == public_ip) {
            let have = if addrs.is_empty() {
                "no IPv4 address".to_string()
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
        Ok(HostGwBackend {
            nl,
            ext,
            public_ip,
            network: network.trunc(),
            own: None,
        })
    }

    /// The overlay MTU: the interface's (no encapsulation). Also FLANNEL_MTU.
    pub fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    /// The lease's BackendData: none for host-gw.
    pub fn backend_data(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Records this node's lease (its route is cni0's business, never ours).
    pub fn set_lease(&mut self, own: SubnetKey) {
        self.own = Some(own);
    }

    /// Brings the main table in line with `leases`, the full current lease set (our own
    /// included): adds missing routes, corrects wrong ones, removes those no lease asks for.
    /// Every change is attempted even if one fails.
    pub async fn reconcile(&mut self, leases: &[Lease]) -> Result<ReconcileReport, HostGwError> {
        let own = self.own.ok_or(HostGwError::NoLease)?;
        let topo = Topology {
            network: self.network,
            own_subnet: own.ipv4.trunc(),
            public_ip: self.public_ip,
            ext_index: self.ext.index,
        };
        let mut report = ReconcileReport::default();
        let (peers, skipped) = peers_from_leases(leases, &own, &topo);
        let node = crate::leases::Node {
            own: Some(&own),
            network: self.network,
            public_ip: self.public_ip,
        };
        report.skipped_leases += crate::leases::log_skipped("host-gw", &skipped, node);
        report.peers = peers.len();
        let desired = desired_routes(&peers, &topo);
        let actual = self.nl.list_routes_v4().await?;
        let actions = plan(&desired, &actual, &topo);

        let mut applied = Applied::default();
        for action in actions {
            tracing::debug!(iface = %self.ext.name, "{action}");
            let (result, effect) = match &action {
                Action::SetRoute { spec, change } => (self.nl.replace_route_v4(spec).await, Effect::Set(*change)),
                Action::DeleteRoute { spec, metric } => {
                    (self.nl.delete_route_v4_at_metric(spec, *metric).await, Effect::Removed)
                }
            };
            applied.record(
                effect,
                result,
                |e| tracing::warn!(iface = %self.ext.name, "{action} failed: {e}"),
            );
        }
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
