//! An in-memory [`SubnetStore`] with etcd's semantics for what weft uses (revisions,
//! create-if-absent, leases with a TTL that delete their keys on expiry), for unit tests of the
//! lease life cycle. Time is tokio's, so tests can pause and advance it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weft_core::SubnetKey;
use weft_core::{Lease, LeaseAttrs, NetworkConfig};

use crate::error::ControlError;
use crate::manager::{
    self, judge_config, parse_config, KeeperOptions, LeaseBook, LeaseKeeper, LeaseSnapshot, LeaseWatcher, RefusalLog,
};
use crate::store::{config_key, subnets_prefix, StoredKey, SubnetStore};
use crate::subnet_manager::SubnetManager;

#[derive(Debug, Default)]
struct Inner {
    revision: i64,
    keys: BTreeMap<String, Entry>,
    leases: HashMap<i64, (Instant, Duration)>,
    next_lease: i64,
    /// Fault injection: the next N create_if_absent calls find the key taken by another node.
    steal_creates: u32,
    unreachable: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    lease_id: i64,
    mod_revision: i64,
    create_revision: i64,
}

/// The value another node writes when a test makes it win a race.
pub const THIEF_VALUE: &str = r#"{"PublicIP":"203.0.113.99","PublicIPv6":null}"#;

#[derive(Debug)]
pub struct MemoryStore {
    prefix: String,
    inner: Mutex<Inner>,
    /// The revision after every change, for the watchers.
    changes: watch::Sender<i64>,
    /// How leases are kept when the store is used as a [`SubnetManager`].
    pub keeper: KeeperOptions,
}

impl MemoryStore {
    pub fn new(prefix: &str) -> Self {
        MemoryStore {
            prefix: prefix.trim_end_matches('/').to_string(),
            inner: Mutex::new(Inner::default()),
            changes: watch::channel(0).0,
            keeper: KeeperOptions::default(),
        }
    }

    /// Writes a key without a lease, as `etcdctl put` would.
    pub fn put(&self, key: &str, value: &str) {
        let mut inner = self.lock();
        inner.write(key, value.as_bytes().to_vec(), 0);
        self.changes.send_replace(inner.revision);
    }

    /// Deletes a key behind the manager's back.
    pub fn remove(&self, key: &str) -> bool {
        let mut inner = self.lock();
        let removed = inner.remove(key);
        self.changes.send_replace(inner.revision);
        removed
    }

    pub fn value(&self, key: &str) -> Option<String> {
        let mut inner = self.lock();
        inner.expire();
        inner
            .keys
            .get(key)
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
    }

    /// The remaining TTL of the lease `key` is bound to.
    pub fn ttl_of(&self, key: &str) -> Option<Duration> {
        let mut inner = self.lock();
        inner.expire();
        let e = inner.keys.get(key)?;
        let (deadline, _) = inner.leases.get(&e.lease_id)?;
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// Makes the next `n` create-if-absent calls lose the race to another node.
    pub fn steal_next_creates(&self, n: u32) {
        self.lock().steal_creates = n;
    }

    /// While set, every call fails as if the server were down.
    pub fn set_unreachable(&self, down: bool) {
        self.lock().unreachable = down;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin(&self, op: &'static str, key: &str) -> Result<std::sync::MutexGuard<'_, Inner>, ControlError> {
        let mut inner = self.lock();
        if inner.unreachable {
            return Err(ControlError::etcd(
                op,
                key,
                "connection refused (memory store set unreachable)",
            ));
        }
        inner.expire();
        self.changes
            .send_if_modified(|r| std::mem::replace(r, inner.revision) != inner.revision);
        Ok(inner)
    }

    /// Tells the watchers about the change just made under `inner`.
    fn changed(&self, inner: &Inner) {
        self.changes.send_replace(inner.revision);
    }
}

impl Inner {
    fn expire(&mut self) {
        let now = Instant::now();
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (d, _))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.leases.remove(&id);
            let keys: Vec<String> = self
                .keys
                .iter()
                .filter(|(_, e)| e.lease_id == id)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.remove(&k);
            }
        }
    }

    fn write(&mut self, key: &str, value: Vec<u8>, lease_id: i64) {
        self.revision += 1;
        let mod_revision = self.revision;
        let create_revision = self.keys.get(key).map_or(mod_revision, |e| e.create_revision);
        self.keys.insert(
            key.to_string(),
            Entry {
                value,
                lease_id,
                mod_revision,
                create_revision,
            },
        );
    }

    fn remove(&mut self, key: &str) -> bool {
        if self.keys.remove(key).is_some() {
            self.revision += 1;
            true
        } else {
            false
        }
    }

    fn grant(&mut self, ttl: Duration) -> i64 {
        self.next_lease += 1;
        self.leases.insert(self.next_lease, (Instant::now() + ttl, ttl));
        self.next_lease
    }

    fn stored(key: &str, e: &Entry) -> StoredKey {
        StoredKey {
            key: key.to_string(),
            value: e.value.clone(),
            lease_id: e.lease_id,
            mod_revision: e.mod_revision,
            create_revision: e.create_revision,
        }
    }
}

impl SubnetStore for MemoryStore {
    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn get(&self, key: &str) -> Result<Option<StoredKey>, ControlError> {
        let inner = self.begin("get", key)?;
        Ok(inner.keys.get(key).map(|e| Inner::stored(key, e)))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<StoredKey>, i64), ControlError> {
        let inner = self.begin("list", prefix)?;
        let found = inner
            .keys
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| Inner::stored(k, e))
            .collect();
        Ok((found, inner.revision))
    }

    async fn create_if_absent(&self, key: &str, value: String, ttl: Duration) -> Result<bool, ControlError> {
        let mut inner = self.begin("create", key)?;
        if inner.steal_creates > 0 && !inner.keys.contains_key(key) {
            inner.steal_creates -= 1;
            let id = inner.grant(ttl);
            inner.write(key, THIEF_VALUE.as_bytes().to_vec(), id);
        }
        if inner.keys.contains_key(key) {
            return Ok(false);
        }
        let id = inner.grant(ttl);
        inner.write(key, value.into_bytes(), id);
        self.changed(&inner);
        Ok(true)
    }

    async fn replace(&self, current: &StoredKey, value: String, ttl: Duration) -> Result<bool, ControlError> {
        let mut inner = self.begin("replace", &current.key)?;
        match inner.keys.get(&current.key) {
            Some(e) if e.mod_revision == current.mod_revision => {}
            _ => return Ok(false),
        }
        let id = match inner.leases.get_mut(&current.lease_id) {
            Some((deadline, ttl)) => {
                *deadline = Instant::now() + *ttl;
                current.lease_id
            }
            None => inner.grant(ttl),
        };
        inner.write(&current.key, value.into_bytes(), id);
        self.changed(&inner);
        Ok(true)
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<Option<Duration>, ControlError> {
        let mut inner = self.begin("keep-alive", &format!("lease {lease_id:x}"))?;
        Ok(inner.leases.get_mut(&lease_id).map(|(deadline, ttl)| {
            *deadline = Instant::now() + *ttl;
            *ttl
        }))
    }

    async fn delete(&self, key: &str) -> Result<bool, ControlError> {
        let mut inner = self.begin("delete", key)?;
        let removed = inner.remove(key);
        self.changed(&inner);
        Ok(removed)
    }
}

impl SubnetManager for MemoryStore {
    async fn wait_for_config(&self) -> NetworkConfig {
        let key = config_key(&self.prefix);
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            match self.value(&key).map(|v| parse_config(&key, v.as_bytes())) {
                Some(Ok(cfg)) => return cfg,
                Some(Err(e)) => tracing::error!("{e}; waiting for a valid config"),
                None => tracing::info!("waiting for the network config at {key}"),
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    async fn acquire_lease(
        &self,
        cfg: &NetworkConfig,
        attrs: LeaseAttrs,
        previous: Option<SubnetKey>,
    ) -> Result<Lease, ControlError> {
        manager::acquire_lease(self, cfg, &attrs, previous, self.keeper.ttl).await
    }

    /// Lists the subnets directory again after every change (a fake: no deltas needed).
    fn watch_leases(self: &Arc<Self>, cfg: &NetworkConfig) -> LeaseWatcher {
        let (tx, snapshots) = watch::channel(Arc::new(LeaseSnapshot::default()));
        let me = self.clone();
        let cfg = cfg.clone();
        let mut refusal_log = RefusalLog::default();
        let refusals = refusal_log.total.clone();
        let mut changes = self.changes.subscribe();
        let task = tokio::spawn(async move {
            let dir = subnets_prefix(&me.prefix);
            loop {
                changes.borrow_and_update();
                if let Ok((stored, revision)) = me.list(&dir).await {
                    let book = LeaseBook::from_listing(&cfg, &dir, &stored, revision);
                    refusal_log.update(book.snapshot());
                    tx.send_replace(Arc::new(book.snapshot().clone()));
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        LeaseWatcher {
            snapshots,
            restarts: Arc::new(AtomicU64::new(0)),
            refusals,
            task,
        }
    }

    fn keep_lease(
        self: &Arc<Self>,
        cfg: NetworkConfig,
        lease: Lease,
        snapshots: Option<watch::Receiver<Arc<LeaseSnapshot>>>,
    ) -> LeaseKeeper {
        manager::spawn_lease_keeper(self.clone(), cfg, lease, self.keeper.clone(), snapshots)
    }

    fn watch_config(self: &Arc<Self>, running: NetworkConfig) -> JoinHandle<()> {
        let me = self.clone();
        let mut changes = self.changes.subscribe();
        tokio::spawn(async move {
            let key = config_key(&me.prefix);
            let mut last = me.value(&key);
            while changes.changed().await.is_ok() {
                let now = me.value(&key);
                if now != last {
                    judge_config(&key, &running, now.as_deref().map(str::as_bytes));
                    last = now;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use weft_core::{LeaseAttrs, NetworkConfig, SubnetKey};

    use super::*;
    use crate::manager::{acquire_lease_with, lease_key, parse_leases, spawn_lease_keeper, KeeperOptions, LeaseHealth};

    const PREFIX: &str = "/coreos.com/network";
    const TTL: Duration = Duration::from_secs(60);

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn attrs(last: u8) -> LeaseAttrs {
        LeaseAttrs::new(
            Ipv4Addr::new(198, 51, 100, last),
            "vxlan",
            serde_json::json!({"VNI": 1, "VtepMAC": format!("c6:d2:32:6f:8f:{last:02x}")}),
        )
    }

    fn subnet(s: &str) -> SubnetKey {
        SubnetKey::v4(s.parse().unwrap())
    }

    async fn acquire(
        store: &MemoryStore,
        c: &NetworkConfig,
        a: &LeaseAttrs,
        prev: Option<&str>,
    ) -> Result<weft_core::Lease, ControlError> {
        acquire_lease_with(
            store,
            c,
            a,
            prev.map(|p| SubnetKey::v4(p.parse().unwrap())),
            TTL,
            &mut |_| 0,
        )
        .await
    }

    #[tokio::test]
    async fn fresh_lease_is_stored_with_flannel_key_value_and_ttl() {
        let store = MemoryStore::new(PREFIX);
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let lease = acquire(&store, &c, &attrs(1), None).await.unwrap();
        assert_eq!(lease.subnet, subnet("10.5.1.0/24"));
        let key = "/coreos.com/network/subnets/10.5.1.0-24";
        assert_eq!(
            store.value(key).unwrap(),
            r#"{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:01"}}"#
        );
        assert!(store.ttl_of(key).unwrap() > Duration::from_secs(59));
    }

    #[tokio::test]
    async fn same_public_ip_reuses_and_rewrites_its_lease() {
        let store = MemoryStore::new(PREFIX);
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let first = acquire(&store, &c, &attrs(1), None).await.unwrap();
        let mut newer = attrs(1);
        newer.backend_data = serde_json::json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"});
        let again = acquire(&store, &c, &newer, Some("10.5.77.1/24")).await.unwrap();
        assert_eq!(
            again.subnet, first.subnet,
            "the lease naming our IP wins over subnet.env"
        );
        assert_eq!(store.value(&lease_key(PREFIX, &first.subnet)).unwrap(), newer.to_json());
        let (all, _) = store.list("/coreos.com/network/subnets/").await.unwrap();
        assert_eq!(all.len(), 1);
    }

    #[tokio::test]
    async fn switching_ipv6_on_replaces_our_ipv4_only_lease_with_a_dual_stack_one() {
        let store = MemoryStore::new(PREFIX);
        let v4 = cfg(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let first = acquire(&store, &v4, &attrs(1), None).await.unwrap();
        let dual =
            cfg(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#);
        let mut a = attrs(1);
        a.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        let prev = format!("{}", first.subnet.ipv4.unwrap());
        let again = acquire(&store, &dual, &a, Some(&prev)).await.unwrap();
        assert_eq!(again.subnet.ipv4, first.subnet.ipv4, "the IPv4 subnet is kept");
        assert_eq!(again.subnet.to_key(), "10.5.1.0-24&fc00:0:0:1::-64");
        let (all, _) = store.list("/coreos.com/network/subnets/").await.unwrap();
        let keys: Vec<&str> = all.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(
            keys,
            ["/coreos.com/network/subnets/10.5.1.0-24&fc00:0:0:1::-64"],
            "the IPv4-only lease is gone: it would claim our PublicIP against the new one"
        );
    }

    /// A store where another node slips in, just before our create, an older lease with another
    /// IPv4 subnet but the IPv6 subnet we are about to take: etcd's create-if-absent cannot see
    /// that (the keys differ).
    struct Racer {
        inner: MemoryStore,
        raced: std::sync::atomic::AtomicBool,
    }

    const RACER_KEY: &str = "/coreos.com/network/subnets/10.5.9.0-24&fc00:0:0:1::-64";

    impl SubnetStore for Racer {
        fn prefix(&self) -> &str {
            self.inner.prefix()
        }
        async fn get(&self, key: &str) -> Result<Option<StoredKey>, ControlError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<(Vec<StoredKey>, i64), ControlError> {
            self.inner.list(prefix).await
        }
        async fn create_if_absent(&self, key: &str, value: String, ttl: Duration) -> Result<bool, ControlError> {
            if !self.raced.swap(true, Ordering::SeqCst) {
                self.inner.put(
                    RACER_KEY,
                    r#"{"PublicIP":"198.51.100.9","PublicIPv6":"2001:db8::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:09"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:86:09"}}"#,
                );
            }
            self.inner.create_if_absent(key, value, ttl).await
        }
        async fn replace(&self, current: &StoredKey, value: String, ttl: Duration) -> Result<bool, ControlError> {
            self.inner.replace(current, value, ttl).await
        }
        async fn keep_alive(&self, lease_id: i64) -> Result<Option<Duration>, ControlError> {
            self.inner.keep_alive(lease_id).await
        }
        async fn delete(&self, key: &str) -> Result<bool, ControlError> {
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn a_lease_racing_an_older_one_for_the_same_ipv6_subnet_gives_way() {
        let store = Racer {
            inner: MemoryStore::new(PREFIX),
            raced: Default::default(),
        };
        let dual =
            cfg(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#);
        let mut a = attrs(1);
        a.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        a.backend_v6_data = serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:86:01"});
        let lease = acquire_lease_with(&store, &dual, &a, None, TTL, &mut |_| 0)
            .await
            .unwrap();
        assert_eq!(
            lease.subnet.to_key(),
            "10.5.1.0-24&fc00:0:0:2::-64",
            "the older racer keeps fc00:0:0:1::/64; we took the next free one"
        );
        let (all, _) = store.list("/coreos.com/network/subnets/").await.unwrap();
        let mut keys: Vec<&str> = all.iter().map(|k| k.key.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["/coreos.com/network/subnets/10.5.1.0-24&fc00:0:0:2::-64", RACER_KEY],
            "our conflicting first lease was deleted"
        );
    }

    #[tokio::test]
    async fn previous_subnet_is_taken_back_when_free() {
        let store = MemoryStore::new(PREFIX);
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let lease = acquire(&store, &c, &attrs(2), Some("10.5.42.1/24")).await.unwrap();
        assert_eq!(lease.subnet, subnet("10.5.42.0/24"));
    }

    #[tokio::test]
    async fn lost_races_are_retried_with_a_fresh_listing() {
        let store = MemoryStore::new(PREFIX);
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        store.steal_next_creates(2);
        let lease = acquire(&store, &c, &attrs(3), None).await.unwrap();
        // 10.5.1.0 and 10.5.2.0 went to the thief; we got the next free one.
        assert_eq!(lease.subnet, subnet("10.5.3.0/24"));
        assert_eq!(
            store.value("/coreos.com/network/subnets/10.5.1.0-24").unwrap(),
            THIEF_VALUE
        );

        store.steal_next_creates(100);
        let e = acquire(&store, &c, &attrs(4), None).await.unwrap_err();
        assert!(matches!(e, ControlError::Contention { attempts: 5, .. }), "{e}");
        assert!(e.to_string().contains("lost a race with other nodes"), "{e}");
    }

    #[tokio::test]
    async fn out_of_subnets_is_reported() {
        let store = MemoryStore::new(PREFIX);
        let c = cfg(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}"#);
        acquire(&store, &c, &attrs(1), None).await.unwrap();
        acquire(&store, &c, &attrs(2), None).await.unwrap();
        let e = acquire(&store, &c, &attrs(3), None).await.unwrap_err();
        assert!(e.to_string().starts_with("out of subnets: all 2 /24 subnets"), "{e}");
    }

    #[tokio::test]
    async fn malformed_leases_are_skipped_not_fatal() {
        let store = MemoryStore::new(PREFIX);
        store.put("/coreos.com/network/subnets/garbage", r#"{"PublicIP":"198.51.100.9"}"#);
        store.put("/coreos.com/network/subnets/10.5.1.0-24", "not json");
        store.put(
            "/coreos.com/network/subnets/10.5.2.0-24",
            r#"{"PublicIP":"198.51.100.9"}"#,
        );
        let (all, _) = store.list("/coreos.com/network/subnets/").await.unwrap();
        let leases = parse_leases(PREFIX, &all);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].subnet, subnet("10.5.2.0/24"));
        // A malformed record does not count as taken: allocation still works around the rest.
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let got = acquire(&store, &c, &attrs(1), None).await.unwrap();
        assert_eq!(
            got.subnet,
            subnet("10.5.3.0/24"),
            "a key with a bad value still holds its subnet"
        );
    }

    #[tokio::test]
    async fn lease_expires_without_renewal() {
        tokio::time::pause();
        let store = MemoryStore::new(PREFIX);
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let lease = acquire(&store, &c, &attrs(1), None).await.unwrap();
        tokio::time::advance(TTL + Duration::from_secs(1)).await;
        assert_eq!(store.value(&lease_key(PREFIX, &lease.subnet)), None);
    }

    fn keeper_opts() -> KeeperOptions {
        KeeperOptions {
            ttl: TTL,
            renew_every: Duration::from_secs(20),
            check_every: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn keeper_renews_before_expiry() {
        tokio::time::pause();
        let store = Arc::new(MemoryStore::new(PREFIX));
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let lease = acquire(&store, &c, &attrs(1), None).await.unwrap();
        let key = lease_key(PREFIX, &lease.subnet);
        let k = spawn_lease_keeper(store.clone(), c, lease, keeper_opts(), None);
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        // 300 s with a 60 s TTL: only renewals kept it.
        assert!(store.value(&key).is_some());
        assert!(k.renewals.load(Ordering::Relaxed) >= 10);
        assert_eq!(*k.health.borrow(), LeaseHealth::Held);
        k.task.abort();
    }

    #[tokio::test]
    async fn keeper_recreates_a_deleted_lease_with_the_same_subnet() {
        tokio::time::pause();
        let store = Arc::new(MemoryStore::new(PREFIX));
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let a = attrs(1);
        let lease = acquire(&store, &c, &a, None).await.unwrap();
        let key = lease_key(PREFIX, &lease.subnet);
        let k = spawn_lease_keeper(store.clone(), c, lease.clone(), keeper_opts(), None);
        settle().await;
        assert!(store.remove(&key));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(store.value(&key).unwrap(), a.to_json());
        assert_eq!(k.lease.borrow().subnet, lease.subnet, "same subnet");
        k.task.abort();
    }

    #[tokio::test]
    async fn keeper_moves_to_a_new_subnet_when_ours_was_taken() {
        tokio::time::pause();
        let store = Arc::new(MemoryStore::new(PREFIX));
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let lease = acquire(&store, &c, &attrs(1), None).await.unwrap();
        let key = lease_key(PREFIX, &lease.subnet);
        let mut k = spawn_lease_keeper(store.clone(), c, lease.clone(), keeper_opts(), None);
        settle().await;
        store.remove(&key);
        store.put(&key, THIEF_VALUE);
        tokio::time::timeout(Duration::from_secs(10), k.lease.changed())
            .await
            .unwrap()
            .unwrap();
        let moved = k.lease.borrow().clone();
        assert_ne!(moved.subnet, lease.subnet);
        assert_eq!(
            store.value(&lease_key(PREFIX, &moved.subnet)).unwrap(),
            attrs(1).to_json()
        );
        assert_eq!(
            store.value(&key).unwrap(),
            THIEF_VALUE,
            "the other node's lease is left alone"
        );
        k.task.abort();
    }

    /// In an IPv6-only network every lease's PublicIP is 0.0.0.0: a node that writes its own
    /// PublicIPv6 into our key has taken our subnet, and the keeper moves as it does for IPv4.
    #[tokio::test]
    async fn keeper_tells_ipv6_only_nodes_apart_by_public_ipv6() {
        tokio::time::pause();
        let store = Arc::new(MemoryStore::new(PREFIX));
        let c = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#);
        let mut a = LeaseAttrs::new(std::net::Ipv4Addr::UNSPECIFIED, "host-gw", serde_json::Value::Null);
        a.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        let lease = acquire(&store, &c, &a, None).await.unwrap();
        assert_eq!(lease.subnet.to_key(), "0.0.0.0-0&fc00:0:0:1::-64");
        let key = lease_key(PREFIX, &lease.subnet);
        let mut k = spawn_lease_keeper(store.clone(), c, lease.clone(), keeper_opts(), None);
        settle().await;
        let thief = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::3","BackendType":"host-gw"}"#;
        store.put(&key, thief);
        tokio::time::timeout(Duration::from_secs(10), k.lease.changed())
            .await
            .unwrap()
            .unwrap();
        let moved = k.lease.borrow().clone();
        assert_ne!(moved.subnet, lease.subnet);
        assert_eq!(
            store.value(&key).unwrap(),
            thief,
            "the other node's lease is left alone"
        );
        k.task.abort();
    }

    /// Our dual-stack lease vanished; meanwhile another node took its IPv6 subnet under another
    /// key. Re-created, ours would be refused by every node: the keeper leases anew instead.
    #[tokio::test]
    async fn keeper_leases_anew_when_its_recreated_lease_would_conflict() {
        tokio::time::pause();
        let store = Arc::new(MemoryStore::new(PREFIX));
        let c =
            cfg(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#);
        let mut a = attrs(1);
        a.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        a.backend_v6_data = serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:86:01"});
        let lease = acquire(&store, &c, &a, None).await.unwrap();
        assert_eq!(lease.subnet.to_key(), "10.5.1.0-24&fc00:0:0:1::-64");
        let key = lease_key(PREFIX, &lease.subnet);
        let mut k = spawn_lease_keeper(store.clone(), c, lease.clone(), keeper_opts(), None);
        settle().await;
        assert!(store.remove(&key));
        store.put(
            RACER_KEY,
            r#"{"PublicIP":"198.51.100.9","PublicIPv6":"2001:db8::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:09"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:86:09"}}"#,
        );
        tokio::time::timeout(Duration::from_secs(10), k.lease.changed())
            .await
            .unwrap()
            .unwrap();
        let moved = k.lease.borrow().clone();
        assert_ne!(moved.subnet.ipv6, lease.subnet.ipv6, "a free IPv6 subnet now");
        assert!(
            store.value(&key).is_none(),
            "the conflicting re-creation was taken back"
        );
        assert!(store.value(RACER_KEY).is_some(), "the other node's lease is left alone");
        assert_eq!(store.value(&lease_key(PREFIX, &moved.subnet)).unwrap(), a.to_json());
        k.task.abort();
    }

    #[tokio::test]
    async fn keeper_reports_an_unreachable_store_and_recovers() {
        tokio::time::pause();
        let store = Arc::new(MemoryStore::new(PREFIX));
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let lease = acquire(&store, &c, &attrs(1), None).await.unwrap();
        let k = spawn_lease_keeper(store.clone(), c, lease, keeper_opts(), None);
        settle().await;
        store.set_unreachable(true);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let h = k.health.borrow().clone();
        assert!(matches!(h, LeaseHealth::EtcdUnreachable { .. }), "{h:?}");
        assert!(h.check().unwrap_err().contains("etcd unreachable"));
        store.set_unreachable(false);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(*k.health.borrow(), LeaseHealth::Held);
        k.task.abort();
    }
}
