//! The lease life cycle on any [`SubnetStore`]: acquire a subnet as flannel does, keep its lease
//! alive, and heal it when someone else deletes it. Also the lease snapshot the backends reconcile
//! against. It decides what to write; the store does the I/O.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imbl::ordmap::DiffItem;
use imbl::OrdMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_core::{
    choose_subnet, Admitter, Allocation, Decisions, Lease, LeaseAttrs, LeaseRecord, NetworkConfig, Refusal, Refused,
    SubnetKey,
};

use crate::error::ControlError;
use crate::store::{subnets_prefix, StoredKey, SubnetStore};

/// flannel's lease time to live.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// flannel's `--subnet-lease-renew-margin` default (60 minutes).
pub const DEFAULT_RENEW_MARGIN: Duration = Duration::from_secs(3600);
/// How many times a lost create-if-absent race is retried with a fresh listing.
const ACQUIRE_ATTEMPTS: u32 = 5;

/// Every record under `<prefix>/subnets/`, always the full current set, and the leases among
/// them a node acts on (see [`weft_core::admission`]). The maps are persistent: a snapshot costs
/// little to copy, and two snapshots are compared by what changed between them, not entry by entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseSnapshot {
    /// Every record, by its key below the subnets directory (a nested or malformed key is its
    /// own record: deleting it touches no other).
    pub records: OrdMap<String, Arc<LeaseRecord>>,
    /// The admitted leases: what backends program.
    pub leases: OrdMap<SubnetKey, LeaseAttrs>,
    /// The records not acted on, and why, by key below the subnets directory.
    pub refused: OrdMap<String, Refusal>,
    /// The store revision this set reflects.
    pub revision: i64,
    /// False until the first full listing, and again while the watch is being re-established
    /// (the set is then the last known one).
    pub synced: bool,
}

impl LeaseSnapshot {
    /// The record stored for `subnet`, parsed, whether admitted or not.
    pub fn record_of(&self, subnet: &SubnetKey) -> Option<&Lease> {
        self.records.get(&subnet.to_key())?.parsed.as_ref().ok()
    }

    pub fn to_leases(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|(subnet, attrs)| Lease {
                subnet: *subnet,
                attrs: attrs.clone(),
            })
            .collect()
    }

    /// Every admitted lease but `own`: the peers a backend programs routes for.
    pub fn remote_leases(&self, own: &SubnetKey) -> Vec<Lease> {
        self.to_leases().into_iter().filter(|l| l.subnet != *own).collect()
    }

    /// The refused records, by name, with why.
    pub fn refusals(&self) -> impl Iterator<Item = Refused> + '_ {
        self.refused.iter().map(|(name, reason)| Refused {
            name: name.clone(),
            reason: reason.clone(),
        })
    }
}

/// The watcher's side of the snapshot: the records and the admission kept up to date one
/// record at a time, so a change costs what it touches.
#[derive(Debug, Clone)]
pub struct LeaseBook {
    admitter: Admitter,
    snap: LeaseSnapshot,
}

impl LeaseBook {
    pub fn new(cfg: &NetworkConfig) -> Self {
        LeaseBook {
            admitter: Admitter::new(cfg),
            snap: LeaseSnapshot::default(),
        }
    }

    /// The book of a full listing of the subnets directory `dir`.
    pub fn from_listing(cfg: &NetworkConfig, dir: &str, stored: &[StoredKey], revision: i64) -> Self {
        let records: Vec<Arc<LeaseRecord>> = stored
            .iter()
            .filter_map(|s| {
                let name = s.key.strip_prefix(dir)?;
                Some(Arc::new(LeaseRecord::parse(name, &s.value, s.create_revision)))
            })
            .collect();
        let snap_records = records.iter().map(|r| (r.name.clone(), r.clone())).collect();
        let admitter = Admitter::from_records(cfg, records);
        let admission = admitter.admission();
        LeaseBook {
            admitter,
            snap: LeaseSnapshot {
                records: snap_records,
                leases: admission.leases.into_iter().collect(),
                refused: admission.refused.into_iter().map(|r| (r.name, r.reason)).collect(),
                revision,
                synced: true,
            },
        }
    }

    /// A record was written.
    pub fn put(&mut self, name: &str, value: &[u8], created: i64) {
        let record = Arc::new(LeaseRecord::parse(name, value, created));
        self.snap.records.insert(name.to_string(), record.clone());
        let decisions = self.admitter.put(record);
        self.apply(decisions);
    }

    /// A record was deleted.
    pub fn remove(&mut self, name: &str) {
        self.snap.records.remove(name);
        let decisions = self.admitter.remove(name);
        self.apply(decisions);
    }

    fn apply(&mut self, decisions: Decisions) {
        for (subnet, attrs) in decisions.leases {
            match attrs {
                Some(attrs) => self.snap.leases.insert(subnet, attrs),
                None => self.snap.leases.remove(&subnet),
            };
        }
        for (name, reason) in decisions.refusals {
            match reason {
                Some(reason) => self.snap.refused.insert(name, reason),
                None => self.snap.refused.remove(&name),
            };
        }
    }

    pub fn snapshot(&self) -> &LeaseSnapshot {
        &self.snap
    }

    pub fn snapshot_mut(&mut self) -> &mut LeaseSnapshot {
        &mut self.snap
    }
}

/// A running lease watcher.
pub struct LeaseWatcher {
    /// The full current lease set (never events).
    pub snapshots: watch::Receiver<Arc<LeaseSnapshot>>,
    /// How many times the watch was re-established with a full listing (compaction, broken
    /// stream, etcd down).
    pub restarts: Arc<AtomicU64>,
    /// How many times a record became refused (each is logged once, with its key and reason).
    pub refusals: Arc<AtomicU64>,
    pub task: JoinHandle<()>,
}

/// Says each refusal once: a warning when a record is first refused (or refused for a new
/// reason), a note when it is admitted again, nothing while it stays as it was.
#[derive(Debug, Default)]
pub struct RefusalLog {
    current: OrdMap<String, Refusal>,
    /// Records that became refused, over the life of the log.
    pub total: Arc<AtomicU64>,
}

impl RefusalLog {
    pub fn update(&mut self, snap: &LeaseSnapshot) {
        for change in self.current.diff(&snap.refused) {
            match change {
                DiffItem::Add(name, reason)
                | DiffItem::Update {
                    new: (name, reason), ..
                } => {
                    let refused = Refused {
                        name: name.clone(),
                        reason: reason.clone(),
                    };
                    tracing::warn!(key = %name, reason = reason.label(), "{refused}; nothing is programmed for it");
                    self.total.fetch_add(1, Ordering::Relaxed);
                }
                DiffItem::Remove(name, _) if snap.records.contains_key(name) => {
                    tracing::info!(key = %name, "lease {name} is admitted now")
                }
                DiffItem::Remove(name, _) => tracing::info!(key = %name, "refused lease {name} was removed"),
            }
        }
        self.current = snap.refused.clone();
    }
}

/// Whether this node still holds its lease, for /healthz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseHealth {
    Held,
    /// The lease disappeared and could not be re-created yet.
    Lost {
        since: Instant,
        reason: String,
    },
    /// The store cannot be reached; the lease is believed held until its TTL runs out.
    EtcdUnreachable {
        since: Instant,
        error: String,
    },
}

impl LeaseHealth {
    /// `Ok(())` or the reason the node is unhealthy, as /healthz reports it.
    pub fn check(&self) -> Result<(), String> {
        match self {
            LeaseHealth::Held => Ok(()),
            LeaseHealth::Lost { since, reason } => Err(format!(
                "subnet lease lost {}s ago: {reason}",
                since.elapsed().as_secs()
            )),
            LeaseHealth::EtcdUnreachable { since, error } => {
                Err(format!("etcd unreachable for {}s: {error}", since.elapsed().as_secs()))
            }
        }
    }

    /// As /healthz judges it: unhealthy when the lease is lost, or when etcd last answered
    /// `grace` or longer ago (counted from that answer, not from the first failed request, and
    /// whether or not a request is still waiting for an answer).
    pub fn check_with_grace(&self, last_contact: Instant, grace: Duration) -> Result<(), String> {
        if let LeaseHealth::Lost { .. } = self {
            return self.check();
        }
        let silent = last_contact.elapsed();
        if silent < grace {
            return Ok(());
        }
        let why = match self {
            LeaseHealth::EtcdUnreachable { error, .. } => error.as_str(),
            _ => "no answer yet",
        };
        Err(format!("etcd unreachable for {}s: {why}", silent.as_secs()))
    }
}

/// Exponential backoff from `start`, doubled per failure up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(start: Duration, max: Duration) -> Self {
        Backoff {
            start,
            next: start,
            max,
        }
    }

    /// The delay to wait now; the next one is doubled.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

/// The key of a subnet's lease.
pub fn lease_key(prefix: &str, subnet: &SubnetKey) -> String {
    format!("{}{}", subnets_prefix(prefix), subnet.to_key())
}

/// Parses a listing of `<prefix>/subnets/`, skipping (with a warning naming the key) whatever is
/// not a flannel lease.
pub fn parse_leases(prefix: &str, stored: &[StoredKey]) -> Vec<Lease> {
    stored.iter().filter_map(|s| parse_lease(prefix, s)).collect()
}

pub(crate) fn parse_lease(prefix: &str, stored: &StoredKey) -> Option<Lease> {
    let dir = subnets_prefix(prefix);
    let name = stored.key.strip_prefix(&dir)?;
    if name.contains('/') {
        tracing::warn!(key = %stored.key, "skipping a key nested under the subnets directory: not a lease");
        return None;
    }
    let subnet = match SubnetKey::parse(name) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(key = %stored.key, "skipping a malformed lease key: {e}");
            return None;
        }
    };
    match LeaseAttrs::from_json(&stored.key, &stored.value) {
        Ok(attrs) => Some(Lease { subnet, attrs }),
        Err(e) => {
            tracing::warn!(key = %stored.key, "skipping a malformed lease value: {e}");
            None
        }
    }
}

/// The leases allocation must avoid: the valid ones, plus those whose key names a subnet but whose
/// value is malformed (still taken; create-if-absent would refuse them forever).
fn occupied_subnets(prefix: &str, stored: &[StoredKey]) -> Vec<Lease> {
    let dir = subnets_prefix(prefix);
    stored
        .iter()
        .filter_map(|s| {
            parse_lease(prefix, s).or_else(|| {
                let subnet = SubnetKey::parse(s.key.strip_prefix(&dir)?).ok()?;
                Some(Lease {
                    subnet,
                    attrs: LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, "", serde_json::Value::Null),
                })
            })
        })
        .collect()
}

/// Why every node refuses our lease `subnet` because an older lease holds one of its claims, if
/// it does (read from a fresh listing).
async fn conflict_of<S: SubnetStore>(
    store: &S,
    cfg: &NetworkConfig,
    subnet: &SubnetKey,
) -> Result<Option<Refusal>, ControlError> {
    let dir = subnets_prefix(store.prefix());
    let (stored, _) = store.list(&dir).await?;
    let records: Vec<LeaseRecord> = stored
        .iter()
        .filter_map(|s| {
            Some(LeaseRecord::parse(
                s.key.strip_prefix(&dir)?,
                &s.value,
                s.create_revision,
            ))
        })
        .collect();
    let name = subnet.to_key();
    Ok(weft_core::admit(cfg, &records)
        .refused
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.reason)
        .filter(|reason| matches!(reason, Refusal::Conflict { .. })))
}

/// Leases a subnet for `attrs.public_ip`, as flannel does: reuse a lease naming our PublicIP
/// (rewriting it with our current attributes), else the `previous` subnet if free, else a random
/// free one; created with create-if-absent, retried with a fresh listing when another node wins.
pub async fn acquire_lease<S: SubnetStore>(
    store: &S,
    cfg: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<SubnetKey>,
    ttl: Duration,
) -> Result<Lease, ControlError> {
    acquire_lease_with(store, cfg, attrs, previous, ttl, &mut |n| rand::random_range(0..n)).await
}

/// [`acquire_lease`] with the random pick given (tests pass a fixed one).
pub async fn acquire_lease_with<S: SubnetStore>(
    store: &S,
    cfg: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<SubnetKey>,
    ttl: Duration,
    pick: &mut (dyn FnMut(usize) -> usize + Send),
) -> Result<Lease, ControlError> {
    let prefix = store.prefix().to_string();
    let value = attrs.to_json();
    let from_subnet_env = previous;
    let mut previous = previous;
    for attempt in 1..=ACQUIRE_ATTEMPTS {
        let (stored, _) = store.list(&subnets_prefix(&prefix)).await?;
        let leases = occupied_subnets(&prefix, &stored);
        match choose_subnet(cfg, &leases, attrs, previous, pick)? {
            Allocation::Reuse(subnet) => {
                let key = lease_key(&prefix, &subnet);
                let Some(current) = stored.iter().find(|s| s.key == key) else {
                    continue;
                };
                if store.replace(current, value.clone(), ttl).await? {
                    if let Some(why) = conflict_of(store, cfg, &subnet).await? {
                        tracing::warn!(key = %key, "our lease is refused by every node ({why}); deleting it and choosing again");
                        store.delete(&key).await?;
                        previous = None;
                        continue;
                    }
                    tracing::info!(subnet = %subnet, key = %key, "reusing the lease that names our public IP");
                    return Ok(Lease {
                        subnet,
                        attrs: attrs.clone(),
                    });
                }
                tracing::info!(key = %key, attempt, "our lease changed while we renewed it; listing again");
            }
            Allocation::Stale(subnet) => {
                let key = lease_key(&prefix, &subnet);
                tracing::warn!(key = %key, "the lease naming our public IP does not fit the network config (SubnetLen, range or IPv6 changed); deleting it, as flannel does");
                store.delete(&key).await?;
            }
            Allocation::Fresh(subnet) => {
                let key = lease_key(&prefix, &subnet);
                if store.create_if_absent(&key, value.clone(), ttl).await? {
                    // Another node may have taken the same IPv6 subnet (or another claim of ours)
                    // at the same moment under a different key, which etcd cannot see; admission,
                    // which every node runs, does: the younger lease gives way.
                    if let Some(why) = conflict_of(store, cfg, &subnet).await? {
                        tracing::warn!(key = %key, attempt, "another node leased part of this at the same moment ({why}); deleting ours and choosing again");
                        store.delete(&key).await?;
                        previous = None;
                        continue;
                    }
                    tracing::info!(subnet = %subnet, key = %key, "leased a new subnet");
                    warn_if_moved(from_subnet_env, &subnet);
                    return Ok(Lease {
                        subnet,
                        attrs: attrs.clone(),
                    });
                }
                tracing::info!(key = %key, attempt, "another node leased this subnet first; listing again");
            }
        }
    }
    Err(ControlError::Contention {
        prefix,
        attempts: ACQUIRE_ATTEMPTS,
    })
}

/// Warns when the subnets of the previous subnet.env could not be taken back (another node holds
/// them now): pods numbered from them must be re-created.
fn warn_if_moved(previous: Option<SubnetKey>, leased: &SubnetKey) {
    let Some(previous) = previous else { return };
    let moved = |old: Option<String>, new: Option<String>| old.is_some() && new.is_some() && old != new;
    let v4 = moved(
        previous.ipv4.map(|n| n.trunc().to_string()),
        leased.ipv4.map(|n| n.to_string()),
    );
    let v6 = moved(
        previous.ipv6.map(|n| n.trunc().to_string()),
        leased.ipv6.map(|n| n.to_string()),
    );
    if v4 || v6 {
        tracing::warn!(
            previous = %previous,
            leased = %leased,
            "the subnet of the previous subnet.env is held by another node now (or no longer fits the config): \
             this node has a new subnet, so pods numbered from the old one must be re-created"
        );
    }
}

/// When to renew and check a held lease.
#[derive(Debug, Clone)]
pub struct KeeperOptions {
    /// The lease TTL used when the lease has to be re-created.
    pub ttl: Duration,
    /// Renew this often (keep-alive resets the TTL to its full length).
    pub renew_every: Duration,
    /// Check that our key still exists and is ours this often.
    pub check_every: Duration,
    /// Backoff cap while the store is unreachable.
    pub max_backoff: Duration,
}

impl KeeperOptions {
    /// Renews every TTL/3, and at the latest `renew_margin` before expiry.
    pub fn new(ttl: Duration, renew_margin: Duration) -> Self {
        let by_margin = ttl.saturating_sub(renew_margin);
        let mut renew_every = ttl / 3;
        if !by_margin.is_zero() {
            renew_every = renew_every.min(by_margin);
        }
        let renew_every = renew_every.max(Duration::from_secs(1));
        KeeperOptions {
            ttl,
            renew_every,
            check_every: renew_every.min(Duration::from_secs(10)),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl Default for KeeperOptions {
    fn default() -> Self {
        KeeperOptions::new(DEFAULT_LEASE_TTL, DEFAULT_RENEW_MARGIN)
    }
}

/// A running lease keeper: what it reports, and its task.
pub struct LeaseKeeper {
    /// Held / lost / store unreachable.
    pub health: watch::Receiver<LeaseHealth>,
    /// The lease currently held. It changes subnet only when ours was taken by another node and a
    /// new one had to be acquired: pods numbered from the old subnet are then wrong, so the daemon
    /// should stop.
    pub lease: watch::Receiver<Lease>,
    /// Successful renewals (keep-alives).
    pub renewals: Arc<AtomicU64>,
    /// When the store last answered the keeper.
    pub last_contact: watch::Receiver<Instant>,
    pub task: JoinHandle<()>,
}

/// Starts keeping `lease` alive. `snapshots` (from the lease watcher) make a deleted key noticed at
/// once; without them it is noticed at the next check.
pub fn spawn_lease_keeper<S: SubnetStore>(
    store: Arc<S>,
    cfg: NetworkConfig,
    lease: Lease,
    opts: KeeperOptions,
    snapshots: Option<watch::Receiver<Arc<LeaseSnapshot>>>,
) -> LeaseKeeper {
    let (health_tx, health) = watch::channel(LeaseHealth::Held);
    let (lease_tx, lease_rx) = watch::channel(lease.clone());
    let renewals = Arc::new(AtomicU64::new(0));
    let (contact_tx, last_contact) = watch::channel(Instant::now());
    let keeper = Keeper {
        contact_tx,
        store,
        cfg,
        attrs: lease.attrs.clone(),
        subnet: lease.subnet,
        opts,
        health_tx,
        lease_tx,
        renewals: renewals.clone(),
        next_renew: tokio::time::Instant::now(),
    };
    let task = tokio::spawn(keeper.run(snapshots));
    LeaseKeeper {
        health,
        lease: lease_rx,
        renewals,
        last_contact,
        task,
    }
}

struct Keeper<S> {
    store: Arc<S>,
    cfg: NetworkConfig,
    attrs: LeaseAttrs,
    subnet: SubnetKey,
    opts: KeeperOptions,
    health_tx: watch::Sender<LeaseHealth>,
    lease_tx: watch::Sender<Lease>,
    contact_tx: watch::Sender<Instant>,
    renewals: Arc<AtomicU64>,
    next_renew: tokio::time::Instant,
}

impl<S: SubnetStore> Keeper<S> {
    async fn run(mut self, mut snapshots: Option<watch::Receiver<Arc<LeaseSnapshot>>>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.opts.max_backoff);
        loop {
            let delay = match self.check().await {
                Ok(()) => {
                    backoff.reset();
                    self.contact_tx.send_replace(Instant::now());
                    self.health_tx.send_replace(LeaseHealth::Held);
                    self.opts.check_every
                }
                Err(Failure::Store(e)) => {
                    let error = e.to_string();
                    tracing::warn!(subnet = %self.subnet, "cannot renew the subnet lease: {error}");
                    self.health_tx.send_modify(|h| match h {
                        LeaseHealth::EtcdUnreachable { error: old, .. } => *old = error,
                        _ => {
                            *h = LeaseHealth::EtcdUnreachable {
                                since: Instant::now(),
                                error,
                            }
                        }
                    });
                    backoff.next_delay()
                }
                Err(Failure::Lost(reason)) => {
                    self.contact_tx.send_replace(Instant::now());
                    tracing::error!(subnet = %self.subnet, "subnet lease lost: {reason}");
                    self.health_tx.send_modify(|h| {
                        if !matches!(h, LeaseHealth::Lost { .. }) {
                            *h = LeaseHealth::Lost {
                                since: Instant::now(),
                                reason,
                            }
                        }
                    });
                    backoff.next_delay()
                }
            };
            let sleep = tokio::time::sleep(delay);
            match snapshots.as_mut() {
                Some(rx) => {
                    let own = self.subnet;
                    tokio::select! {
                        _ = sleep => {}
                        // Check at once when the watcher shows our lease gone or changed.
                        gone = own_lease_changed(rx, own, &self.attrs) => {
                            if gone.is_err() {
                                snapshots = None;
                            }
                        }
                    }
                }
                None => sleep.await,
            }
        }
    }

    /// The other node's public address when `theirs` (our key's value now) names another node:
    /// by PublicIP, as flannel tells nodes apart, or in an IPv6-only lease (whose PublicIP is
    /// flannel's 0.0.0.0 on every node) by PublicIPv6.
    fn another_node(&self, theirs: &LeaseAttrs) -> Option<std::net::IpAddr> {
        match self.subnet.ipv4 {
            Some(_) => (theirs.public_ip != self.attrs.public_ip).then_some(theirs.public_ip.into()),
            None => (theirs.public_ipv6 != self.attrs.public_ipv6)
                .then(|| theirs.public_ipv6.map_or(Ipv4Addr::UNSPECIFIED.into(), Into::into)),
        }
    }

    /// One round: our key must exist with our value, bound to a live lease renewed on schedule.
    async fn check(&mut self) -> Result<(), Failure> {
        let key = lease_key(self.store.prefix(), &self.subnet);
        let value = self.attrs.to_json();
        let current = self.store.get(&key).await?;
        match current {
            None => {
                tracing::warn!(key = %key, "lease {} was deleted by someone else; re-acquiring it", self.subnet.to_key());
                self.reacquire(&key, value).await
            }
            Some(cur) => {
                let theirs = LeaseAttrs::from_json(&key, &cur.value).ok();
                if let Some(other) = theirs.and_then(|a| self.another_node(&a)) {
                    tracing::error!(key = %key, "lease {} now names public IP {other}: another node took our subnet; acquiring a new one", self.subnet.to_key());
                    return self.acquire_new().await;
                }
                if cur.value != value.as_bytes() || cur.lease_id == 0 {
                    tracing::warn!(key = %key, "lease value was changed by someone else; writing ours back");
                    self.replace(&cur, value).await?;
                    return Ok(());
                }
                if tokio::time::Instant::now() >= self.next_renew {
                    match self.store.keep_alive(cur.lease_id).await? {
                        Some(_) => {
                            self.renewals.fetch_add(1, Ordering::Relaxed);
                            self.next_renew = tokio::time::Instant::now() + self.opts.renew_every;
                            tracing::debug!(key = %key, "renewed the subnet lease");
                        }
                        None => {
                            tracing::warn!(key = %key, "the lease of {} expired; re-creating it", self.subnet.to_key());
                            self.replace(&cur, value).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    async fn replace(&mut self, cur: &StoredKey, value: String) -> Result<(), Failure> {
        if self.store.replace(cur, value, self.opts.ttl).await? {
            self.renewed();
        }
        // If it changed meanwhile, the next round looks again.
        Ok(())
    }

    fn renewed(&mut self) {
        self.renewals.fetch_add(1, Ordering::Relaxed);
        self.next_renew = tokio::time::Instant::now() + self.opts.renew_every;
    }

    async fn reacquire(&mut self, key: &str, value: String) -> Result<(), Failure> {
        if self.store.create_if_absent(key, value, self.opts.ttl).await? {
            // Re-created, it is the youngest lease: while it was gone another node may have
            // taken one of its claims (the IPv6 subnet under another key, our PublicIP), and
            // then every node refuses it. Then it goes, and we lease anew.
            if let Some(why) = conflict_of(&*self.store, &self.cfg, &self.subnet).await? {
                tracing::warn!(key = %key, "our re-created lease is refused by every node ({why}); leasing anew");
                self.store.delete(key).await?;
                return self.acquire_new().await;
            }
            tracing::info!(key = %key, "re-created our lease");
            self.renewed();
            return Ok(());
        }
        // Someone created it between our read and our write; the next round sees whose it is.
        Ok(())
    }

    async fn acquire_new(&mut self) -> Result<(), Failure> {
        let old = self.subnet;
        match acquire_lease(&*self.store, &self.cfg, &self.attrs, None, self.opts.ttl).await {
            Ok(lease) => {
                tracing::error!(old = %old, new = %lease.subnet, "our subnet changed: pods numbered from the old subnet must be restarted");
                self.subnet = lease.subnet;
                self.renewed();
                self.lease_tx.send_replace(lease);
                Ok(())
            }
            Err(e @ (ControlError::Unreachable { .. } | ControlError::Etcd { .. })) => Err(Failure::Store(e)),
            Err(e) => Err(Failure::Lost(format!("subnet {old} was taken by another node and {e}"))),
        }
    }
}

/// Resolves when a new snapshot shows our lease missing or different.
async fn own_lease_changed(
    rx: &mut watch::Receiver<Arc<LeaseSnapshot>>,
    own: SubnetKey,
    attrs: &LeaseAttrs,
) -> Result<(), watch::error::RecvError> {
    loop {
        rx.changed().await?;
        let snap = rx.borrow_and_update();
        if snap.synced && snap.record_of(&own).map(|l| &l.attrs) != Some(attrs) {
            return Ok(());
        }
    }
}

enum Failure {
    Store(ControlError),
    Lost(String),
}

impl From<ControlError> for Failure {
    fn from(e: ControlError) -> Self {
        Failure::Store(e)
    }
}

pub(crate) fn parse_config(key: &str, value: &[u8]) -> Result<NetworkConfig, ControlError> {
    let text = String::from_utf8_lossy(value);
    NetworkConfig::parse(&text).map_err(|error| ControlError::InvalidConfig {
        key: key.to_string(),
        error,
    })
}

/// Logs what a new value of the config key means for the running network.
pub(crate) fn judge_config(key: &str, running: &NetworkConfig, value: Option<&[u8]>) {
    match value.map(|v| parse_config(key, v)) {
        None => {
            tracing::warn!(key = %key, "the network config was deleted; weftd keeps running with the config it started with")
        }
        Some(Err(e)) => tracing::error!("{e}; ignoring it, the running network is unchanged"),
        Some(Ok(cfg)) if cfg == *running => {
            tracing::info!(key = %key, "the network config was rewritten without change")
        }
        Some(Ok(cfg)) => tracing::warn!(
            key = %key,
            network = ?cfg.network(),
            ipv6_network = ?cfg.ipv6_network(),
            backend = cfg.backend.name(),
            "the network config changed; restart weftd to apply it (still running with Network {:?}, IPv6Network {:?})",
            running.network(),
            running.ipv6_network()
        ),
    }
}
