//! `SubnetManager`: what the daemon asks of wherever the network config and the leases live.
//! etcd ([`crate::etcd::EtcdSubnetManager`]) in production, the in-memory store
//! ([`crate::memory::MemoryStore`]) in unit tests; a Kubernetes manager would be one more
//! implementation. The daemon is generic over it and never names one.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_core::SubnetKey;
use weft_core::{Lease, LeaseAttrs, NetworkConfig};

use crate::error::ControlError;
use crate::manager::{LeaseKeeper, LeaseSnapshot, LeaseWatcher};

pub trait SubnetManager: Send + Sync + 'static {
    /// Waits until a valid network config is stored, saying now and then what it waits for.
    fn wait_for_config(&self) -> impl Future<Output = NetworkConfig> + Send;

    /// Leases a subnet for a node with `attrs`, as flannel does: ours again if a lease names our
    /// PublicIP, else `previous` if it is free, else a free one.
    fn acquire_lease(
        &self,
        cfg: &NetworkConfig,
        attrs: LeaseAttrs,
        previous: Option<SubnetKey>,
    ) -> impl Future<Output = Result<Lease, ControlError>> + Send;

    /// Follows every record under the subnets directory; each snapshot says which are admitted.
    fn watch_leases(self: &Arc<Self>, cfg: &NetworkConfig) -> LeaseWatcher;

    /// Keeps `lease` alive and heals it when someone else deletes or rewrites it. `snapshots`
    /// (from [`SubnetManager::watch_leases`]) make a deleted key noticed at once.
    fn keep_lease(
        self: &Arc<Self>,
        cfg: NetworkConfig,
        lease: Lease,
        snapshots: Option<watch::Receiver<Arc<LeaseSnapshot>>>,
    ) -> LeaseKeeper;

    /// Says, whenever the stored config changes, what that means for the running network.
    fn watch_config(self: &Arc<Self>, running: NetworkConfig) -> JoinHandle<()>;
}
