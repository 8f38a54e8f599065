//! The seam between the daemon and a datapath: the [`Backend`] trait every backend implements,
//! and the types they share (lease sets and changes, reports, errors). Which backend runs is
//! [`crate::factory`]'s business; the daemon never names a backend.

use async_trait::async_trait;
use imbl::ordmap::DiffItem;

use weft_core::{Lease, LeaseAttrs, SubnetKey};
use weft_kernel::monitor::KernelEvent;

/// What one reconcile changed in the kernel, the same for every backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The backend's device was missing or incompatible and was created again.
    pub device_recreated: bool,
    pub added: usize,
    pub replaced: usize,
    pub removed: usize,
    /// Remote leases left out (one naming our own public IP, ...); our own lease is not counted.
    pub skipped_leases: usize,
    /// Remote subnets the backend reaches.
    pub peers: usize,
}

impl Report {
    pub fn changed(&self) -> bool {
        self.device_recreated || self.corrections() > 0
    }

    /// Kernel entries added, replaced or removed, and the device if it was created again.
    pub fn corrections(&self) -> usize {
        self.added + self.replaced + self.removed + usize::from(self.device_recreated)
    }
}

/// The reports of a backend's parts (its address families) as one; the first error when one part
/// failed. Peers and skipped leases are per part, so the larger count is the backend's.
pub fn merge_reports<E>(results: Vec<Result<Report, E>>) -> Result<Report, E> {
    let mut total = Report::default();
    for result in results {
        let r = result?;
        total.device_recreated |= r.device_recreated;
        total.added += r.added;
        total.replaced += r.replaced;
        total.removed += r.removed;
        total.skipped_leases = total.skipped_leases.max(r.skipped_leases);
        total.peers = total.peers.max(r.peers);
    }
    Ok(total)
}

/// A backend's error, with the backend's own message (which names the backend and what to do).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BackendError(Box<dyn std::error::Error + Send + Sync>);

impl BackendError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError(Box::new(e))
    }
}

/// The admitted leases, by subnet, as the lease watcher gives them (a persistent map: two sets
/// are compared by what changed between them, not entry by entry).
pub type LeaseSet = imbl::OrdMap<SubnetKey, LeaseAttrs>;

/// One lease that was added or changed (`lease` is its new value) or removed (`lease` None).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseChange {
    pub subnet: SubnetKey,
    pub lease: Option<Lease>,
}

/// The leases that differ between `old` and `new`, in subnet order.
pub fn lease_changes(old: &LeaseSet, new: &LeaseSet) -> Vec<LeaseChange> {
    old.diff(new)
        .map(|d| match d {
            DiffItem::Remove(subnet, _) => LeaseChange {
                subnet: *subnet,
                lease: None,
            },
            DiffItem::Add(subnet, attrs)
            | DiffItem::Update {
                new: (subnet, attrs), ..
            } => LeaseChange {
                subnet: *subnet,
                lease: Some(Lease {
                    subnet: *subnet,
                    attrs: attrs.clone(),
                }),
            },
        })
        .collect()
}

/// The set as a list of leases.
pub fn to_leases(set: &LeaseSet) -> Vec<Lease> {
    set.iter()
        .map(|(subnet, attrs)| Lease {
            subnet: *subnet,
            attrs: attrs.clone(),
        })
        .collect()
}

/// Renders a backend's own metrics (Prometheus exposition text) at scrape time.
pub type MetricsRenderer = Box<dyn Fn(&mut String) + Send + Sync>;

/// A datapath: turns the set of leases into kernel state and keeps it there.
#[async_trait]
pub trait Backend: Send {
    /// flannel's name of the backend type, e.g. `vxlan`.
    fn name(&self) -> &'static str;

    /// The lease's BackendType, as flannel writes it (udp leave it empty).
    fn lease_backend_type(&self) -> &'static str {
        self.name()
    }

    /// The lease's BackendData (e.g. vxlan's VNI and VtepMAC); null when it has none.
    fn backend_data(&self) -> serde_json::Value;

    /// The lease's BackendV6Data for dual stack (vxlan: the IPv6 VTEP's MAC); null when none.
    fn backend_v6_data(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The pod MTU (FLANNEL_MTU).
    fn mtu(&self) -> u32;

    /// Takes this node's lease: addresses the backend's device from it. Called again if the
    /// lease's subnet changes.
    async fn set_lease(&mut self, own: &Lease) -> Result<(), BackendError>;

    /// Makes the kernel match `leases`, the full admitted lease set (our own included): adds what
    /// is missing, corrects what is wrong, removes what no lease asks for. Every change is
    /// attempted even if one fails.
    async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, BackendError>;

    /// Applies the leases that changed (`all` is the whole admitted set after the change). A
    /// backend that keeps a cache of what it installed touches only those leases' entries;
    /// the default reconciles everything.
    async fn apply(&mut self, changes: &[LeaseChange], all: &LeaseSet) -> Result<Report, BackendError> {
        let _ = changes;
        self.reconcile(&to_leases(all)).await
    }

    /// Reacts to a change in the kernel's tables (someone deleted a route, a neighbour, the
    /// device): puts back what is the backend's. The default ignores it (the periodic
    /// reconcile repairs it).
    async fn kernel_changed(&mut self, event: &KernelEvent, all: &LeaseSet) -> Result<Report, BackendError> {
        let _ = (event, all);
        Ok(Report::default())
    }

    /// The backend's own metrics, rendered live at each scrape; None when it has none.
    fn metrics(&self) -> Option<MetricsRenderer> {
        None
    }

    /// The peer table `weft trace` reads (published beside subnet.env), for backends that keep
    /// one in user space; None for kernel backends.
    fn peer_table(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reports_of_two_address_families_add_up() {
        let v4 = Report {
            added: 3,
            removed: 1,
            peers: 2,
            ..Report::default()
        };
        let v6 = Report {
            device_recreated: true,
            added: 2,
            replaced: 1,
            peers: 1,
            skipped_leases: 1,
            ..Report::default()
        };
        let both = merge_reports::<()>(vec![Ok(v4), Ok(v6)]).unwrap();
        assert_eq!(
            both,
            Report {
                device_recreated: true,
                added: 5,
                replaced: 1,
                removed: 1,
                skipped_leases: 1,
                peers: 2,
            }
        );
        assert_eq!(
            merge_reports(vec![Ok(Report::default()), Err("v6 failed")]),
            Err("v6 failed")
        );
    }

    fn attrs(ip: &str) -> LeaseAttrs {
        LeaseAttrs::new(ip.parse().unwrap(), "vxlan", serde_json::json!({"VNI": 1}))
    }

    fn key(s: &str) -> SubnetKey {
        SubnetKey::v4(s.parse().unwrap())
    }

    #[test]
    fn changes_name_what_was_added_changed_and_removed_and_nothing_else() {
        let old: LeaseSet = [
            (key("10.5.1.0/24"), attrs("198.51.100.1")),
            (key("10.5.2.0/24"), attrs("198.51.100.2")),
            (key("10.5.3.0/24"), attrs("198.51.100.3")),
        ]
        .into_iter()
        .collect();
        let mut new = old.clone();
        new.remove(&key("10.5.1.0/24"));
        new.insert(key("10.5.2.0/24"), attrs("198.51.100.22"));
        new.insert(key("10.5.4.0/24"), attrs("198.51.100.4"));
        let changes = lease_changes(&old, &new);
        let summary: Vec<(String, Option<String>)> = changes
            .iter()
            .map(|c| {
                (
                    c.subnet.to_key(),
                    c.lease.as_ref().map(|l| l.attrs.public_ip.to_string()),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("10.5.1.0-24".into(), None),
                ("10.5.2.0-24".into(), Some("198.51.100.22".into())),
                ("10.5.4.0-24".into(), Some("198.51.100.4".into())),
            ]
        );
        assert!(lease_changes(&new, &new).is_empty());
    }
}
