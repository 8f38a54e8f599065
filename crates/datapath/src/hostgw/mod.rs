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

use self::plan::{desired_routes, peers_from_leases, plan, Action, Change, Topology};

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
    #[error("host-gw backend: {failed} of {attempted} route changes failed; first: {first}")]
    Apply {
        failed: usize,
        attempted: usize,
        first: NetlinkError,
        errors: Vec<NetlinkError>,
    },
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

        let attempted = actions.len();
        let mut errors = Vec::new();
        for action in actions {
            tracing::debug!(iface = %self.ext.name, "{action}");
            let result = match &action {
                Action::SetRoute { spec, .. } => self.nl.replace_route_v4(spec).await,
                Action::DeleteRoute { spec, metric } => self.nl.delete_route_v4_at_metric(spec, *metric).await,
            };
            match result {
                Ok(()) => match action {
                    Action::SetRoute {
                        change: Change::Add, ..
                    } => report.added += 1,
                    Action::SetRoute {
                        change: Change::Replace,
                        ..
                    } => report.replaced += 1,
                    Action::DeleteRoute { .. } => report.removed += 1,
                },
                Err(e) => {
                    tracing::warn!(iface = %self.ext.name, "{action} failed: {e}");
                    errors.push(e);
                }
            }
        }
        if report.changed() {
            tracing::info!(
                iface = %self.ext.name,
                added = report.added,
                replaced = report.replaced,
                removed = report.removed,
                "host-gw routes reconciled"
            );
        }
        if !errors.is_empty() {
            let first = errors.remove(0);
            return Err(HostGwError::Apply {
                failed: errors.len() + 1,
                attempted,
                first,
                errors,
            });
        }
        Ok(report)
    }
}
