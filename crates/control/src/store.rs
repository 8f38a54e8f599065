//! `SubnetStore`: the few key-value operations the lease life cycle needs, implemented by etcd
//! ([`crate::etcd::EtcdSubnetManager`]) and by the in-memory fake ([`crate::memory::MemoryStore`]),
//! so allocation, conflicts and re-acquisition are tested without a server.

use std::future::Future;
use std::time::Duration;

use crate::error::ControlError;

/// One key as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key: String,
    pub value: Vec<u8>,
    /// The store lease the key is bound to (0: none).
    pub lease_id: i64,
    pub mod_revision: i64,
    /// The revision the key was created at: the older lease wins a conflict.
    pub create_revision: i64,
}

pub trait SubnetStore: Send + Sync + 'static {
    /// The key prefix, e.g. `/coreos.com/network` (no trailing slash).
    fn prefix(&self) -> &str;

    fn get(&self, key: &str) -> impl Future<Output = Result<Option<StoredKey>, ControlError>> + Send;

    /// Every key under `prefix`, and the store revision the listing was taken at.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<(Vec<StoredKey>, i64), ControlError>> + Send;

    /// Creates `key` bound to a new lease of `ttl`, only if the key does not exist.
    /// `Ok(false)`: someone else holds the key.
    fn create_if_absent(
        &self,
        key: &str,
        value: String,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, ControlError>> + Send;

    /// Rewrites `current.key` with `value`, bound to a live lease of `ttl` (the key's own lease kept
    /// alive when it still exists, else a new one), only if the key was not modified since
    /// `current` was read. `Ok(false)`: it was.
    fn replace(
        &self,
        current: &StoredKey,
        value: String,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, ControlError>> + Send;

    /// Renews a lease. `Ok(None)`: the lease no longer exists.
    fn keep_alive(&self, lease_id: i64) -> impl Future<Output = Result<Option<Duration>, ControlError>> + Send;

    /// `Ok(false)`: there was no such key.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, ControlError>> + Send;
}

/// `<prefix>/subnets/`
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{prefix}/subnets/")
}

/// `<prefix>/config`
pub fn config_key(prefix: &str) -> String {
    format!("{prefix}/config")
}
