//! The subnet manager on etcd v3, with flannel's keys and values: connecting (plain, TLS, or
//! username/password), the network config, leases (through [`crate::manager`]), and the watchers
//! that keep the lease set and the config current. It owns every etcd call weft makes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    Txn, TxnOp, WatchOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_core::{Lease, LeaseAttrs, NetworkConfig, SubnetKey};

use crate::error::ControlError;
use crate::manager::{
    self, judge_config, lease_key, parse_config, parse_leases, Backoff, KeeperOptions, LeaseBook, LeaseKeeper,
    LeaseSnapshot, LeaseWatcher, RefusalLog, DEFAULT_LEASE_TTL, DEFAULT_RENEW_MARGIN,
};
use crate::store::{config_key, subnets_prefix, StoredKey, SubnetStore};
use crate::subnet_manager::SubnetManager;

pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
pub const DEFAULT_ENDPOINTS: &[&str] = &["http://127.0.0.1:4001", "http://127.0.0.1:2379"];
/// The lease watcher lists everything again this often, whatever the watch says.
const RESYNC_EVERY: Duration = Duration::from_secs(600);
/// Least time between two reconnections to the live endpoints.
const RESELECT_EVERY: Duration = Duration::from_secs(2);
/// How often `wait_for_config` repeats that it is still waiting.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// How to reach etcd, as flanneld's `--etcd-*` flags say.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://` or `https://` URLs; an element may also hold several, comma-separated.
    pub endpoints: Vec<String>,
    /// Key prefix, default `/coreos.com/network`.
    pub prefix: String,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TTL of the subnet lease (24 h, as flannel; shorter in tests).
    pub lease_ttl: Duration,
    /// Renew at the latest this long before the lease expires (`--subnet-lease-renew-margin`).
    pub renew_margin: Duration,
    /// TCP/TLS connect timeout per endpoint.
    pub dial_timeout: Duration,
    /// Timeout of each unary request (get, put, txn, grant...).
    pub request_timeout: Duration,
    /// Check at least this often that our lease exists and etcd answers (at most 10 s).
    pub check_every: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: DEFAULT_ENDPOINTS.iter().map(|s| s.to_string()).collect(),
            prefix: DEFAULT_PREFIX.to_string(),
            cafile: None,
            certfile: None,
            keyfile: None,
            username: None,
            password: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            renew_margin: DEFAULT_RENEW_MARGIN,
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            check_every: Duration::from_secs(10),
        }
    }
}

pub struct EtcdSubnetManager {
    /// Connected to the endpoints that answered at the last (re)connection.
    client: RwLock<Client>,
    connect_opts: ConnectOptions,
    opts: EtcdOptions,
    /// Every configured endpoint.
    endpoints: Vec<String>,
    prefix: String,
    last_reselect: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for EtcdSubnetManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSubnetManager")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn read_pem(path: &Path, what: &'static str, flag: &'static str) -> Result<Vec<u8>, ControlError> {
    std::fs::read(path).map_err(|cause| ControlError::TlsFile {
        what,
        flag,
        path: path.display().to_string(),
        cause,
    })
}

/// gRPC codes etcd uses to refuse credentials: InvalidArgument (bad password),
/// PermissionDenied, Unauthenticated.
fn is_refusal(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if matches!(s.code() as i32, 3 | 7 | 16))
}

/// Connects to one endpoint and reads `probe_key` through it.
async fn probe(endpoint: &str, co: &ConnectOptions, probe_key: &str, deadline: Duration) -> Result<Client, ProbeError> {
    let attempt = async {
        let client = Client::connect([endpoint], Some(co.clone())).await?;
        client
            .kv_client()
            .get(probe_key, Some(GetOptions::new().with_keys_only()))
            .await?;
        Ok::<_, etcd_client::Error>(client)
    };
    match tokio::time::timeout(deadline, attempt).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) if is_refusal(&e) => Err(ProbeError::Refused(e.to_string())),
        Ok(Err(e)) => Err(ProbeError::Unreachable(e.to_string())),
        Err(_) => Err(ProbeError::Unreachable(format!("no answer within {deadline:?}"))),
    }
}

enum ProbeError {
    Unreachable(String),
    Refused(String),
}

/// Probes every endpoint and connects to those that answer. A balanced channel over a dead
/// endpoint would send it a share of the requests (flannel's default list starts with :4001,
/// usually closed), so dead ones are left out.
async fn connect_live(
    endpoints: &[String],
    co: &ConnectOptions,
    probe_key: &str,
    deadline: Duration,
) -> Result<(Client, Vec<String>), ControlError> {
    let joined = endpoints.join(",");
    let results = futures::future::join_all(endpoints.iter().map(|e| probe(e, co, probe_key, deadline))).await;
    let mut live = Vec::new();
    let mut failures = Vec::new();
    for (endpoint, result) in endpoints.iter().zip(results) {
        match result {
            Ok(client) => live.push((endpoint.clone(), client)),
            Err(ProbeError::Refused(e)) => {
                return Err(ControlError::BadOptions(format!(
                    "etcd at {endpoint} refused our credentials: {e}; check --etcd-username/--etcd-password"
                )))
            }
            Err(ProbeError::Unreachable(e)) => failures.push((endpoint, e)),
        }
    }
    match live.len() {
        0 => {
            let cause = if failures.len() == 1 {
                failures.remove(0).1
            } else {
                failures
                    .iter()
                    .map(|(e, why)| format!("{e}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            Err(ControlError::Unreachable {
                endpoints: joined,
                cause,
            })
        }
        1 => {
            let (endpoint, client) = live.remove(0);
            Ok((client, vec![endpoint]))
        }
        _ => {
            let names: Vec<String> = live.into_iter().map(|(e, _)| e).collect();
            let client = Client::connect(&names, Some(co.clone()))
                .await
                .map_err(|e| ControlError::Unreachable {
                    endpoints: joined,
                    cause: e.to_string(),
                })?;
            Ok((client, names))
        }
    }
}

impl EtcdSubnetManager {
    /// Connects and checks that etcd answers (a read of `<prefix>/config`).
    pub async fn connect(opts: EtcdOptions) -> Result<Self, ControlError> {
        let endpoints: Vec<String> = opts
            .endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ControlError::BadOptions(
                "no endpoints: set --etcd-endpoints, e.g. http://127.0.0.1:2379".into(),
            ));
        }
        for e in &endpoints {
            if !e.starts_with("http://") && !e.starts_with("https://") {
                return Err(ControlError::BadOptions(format!(
                    "endpoint {e:?} must start with http:// or https://"
                )));
            }
        }
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') {
            return Err(ControlError::BadOptions(format!(
                "prefix {:?} must start with '/', e.g. {DEFAULT_PREFIX}",
                opts.prefix
            )));
        }
        let joined = endpoints.join(",");
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.dial_timeout)
            // Detects a dead connection under a long-lived watch.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(user) = &opts.username {
            co = co.with_user(user.clone(), opts.password.clone().unwrap_or_default());
        }
        let https = endpoints.iter().filter(|e| e.starts_with("https://")).count();
        if https > 0 {
            if https != endpoints.len() {
                return Err(ControlError::BadOptions(format!(
                    "endpoints {joined} mix http:// and https://: use one scheme"
                )));
            }
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.cafile {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca, "CA file", "cafile")?));
            }
            match (&opts.certfile, &opts.keyfile) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_pem(cert, "certificate file", "certfile")?,
                        read_pem(key, "key file", "keyfile")?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(ControlError::BadOptions(
                        "--etcd-certfile and --etcd-keyfile must be given together".into(),
                    ))
                }
            }
            co = co.with_tls(tls);
        } else if opts.cafile.is_some() || opts.certfile.is_some() {
            tracing::warn!(endpoints = %joined, "--etcd-cafile/--etcd-certfile are ignored: the endpoints are http://");
        }

        let deadline = opts.dial_timeout + opts.request_timeout;
        let (client, live) = connect_live(&endpoints, &co, &config_key(&prefix), deadline).await?;
        tracing::info!(endpoints = %live.join(","), prefix = %prefix, "connected to etcd");
        Ok(EtcdSubnetManager {
            client: RwLock::new(client),
            connect_opts: co,
            opts,
            endpoints,
            prefix,
            last_reselect: Mutex::new(None),
        })
    }

    /// [`Self::connect`], retried with a warning each attempt (backoff up to 5 s) while etcd
    /// cannot be reached. Options that can never work are returned as errors at once.
    pub async fn connect_with_retry(opts: EtcdOptions) -> Result<Self, ControlError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 1u32;
        loop {
            match Self::connect(opts.clone()).await {
                Ok(m) => return Ok(m),
                Err(e @ ControlError::Unreachable { .. }) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(attempt, "{e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn options(&self) -> &EtcdOptions {
        &self.opts
    }

    /// The underlying client (for tools and tests).
    pub fn client(&self) -> Client {
        self.client.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After a failed request with several endpoints: connect again to those that answer now, so
    /// a dead member stops taking requests. At most once per [`RESELECT_EVERY`].
    async fn reselect(&self) {
        if self.endpoints.len() < 2 {
            return;
        }
        {
            let mut last = self.last_reselect.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < RESELECT_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let deadline = self.opts.dial_timeout + self.opts.request_timeout;
        match connect_live(&self.endpoints, &self.connect_opts, &self.config_key(), deadline).await {
            Ok((client, live)) => {
                tracing::info!(endpoints = %live.join(","), "reconnected to the etcd endpoints that answer");
                *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
            }
            Err(e) => tracing::debug!("reconnecting to etcd: {e}"),
        }
    }

    pub fn config_key(&self) -> String {
        config_key(&self.prefix)
    }

    async fn call<T>(
        &self,
        op: &'static str,
        key: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ControlError> {
        let result = tokio::time::timeout(self.opts.request_timeout, fut).await;
        if !matches!(result, Ok(Ok(_))) {
            self.reselect().await;
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ControlError::etcd(op, key, e)),
            Err(_) => Err(ControlError::etcd(
                op,
                key,
                format!(
                    "no answer within {:?} from {}",
                    self.opts.request_timeout,
                    self.endpoints.join(",")
                ),
            )),
        }
    }

    /// The config at `<prefix>/config`: `Ok(None)` when the key is missing,
    /// `Err(InvalidConfig)` when it does not parse.
    pub async fn get_config(&self) -> Result<Option<NetworkConfig>, ControlError> {
        let key = self.config_key();
        match SubnetStore::get(self, &key).await? {
            None => Ok(None),
            Some(s) => parse_config(&key, &s.value).map(Some),
        }
    }

    /// Waits until `<prefix>/config` holds a valid config, saying every ~10 s what it waits for.
    pub async fn wait_for_config(&self) -> NetworkConfig {
        let key = self.config_key();
        let mut last_said: Option<(Instant, String)> = None;
        loop {
            let problem = match self.get_config().await {
                Ok(Some(cfg)) => return cfg,
                Ok(None) => format!(
                    "waiting for the network config at {key} (write it with etcdctl put {key} '{{\"Network\":\"10.5.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}')"
                ),
                Err(e) => e.to_string(),
            };
            let repeat = match &last_said {
                Some((at, said)) => *said != problem || at.elapsed() >= WAITING_LOG_EVERY,
                None => true,
            };
            if repeat {
                if problem.starts_with("waiting") {
                    tracing::info!("{problem}");
                } else {
                    tracing::error!("{problem}; waiting for a valid config");
                }
                last_said = Some((Instant::now(), problem));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Validates and writes `<prefix>/config`.
    pub async fn put_config(&self, json: &str) -> Result<NetworkConfig, ControlError> {
        let key = self.config_key();
        let cfg = parse_config(&key, json.as_bytes())?;
        let mut kv = self.client().kv_client();
        self.call("put", &key, kv.put(key.clone(), json, None)).await?;
        Ok(cfg)
    }

    /// Every lease under `<prefix>/subnets/` (malformed ones skipped with a warning).
    pub async fn list_leases(&self) -> Result<Vec<Lease>, ControlError> {
        let (stored, _) = self.list(&subnets_prefix(&self.prefix)).await?;
        Ok(parse_leases(&self.prefix, &stored))
    }

    /// Deletes a subnet's lease key. `Ok(false)`: there was none.
    pub async fn delete_lease(&self, subnet: &SubnetKey) -> Result<bool, ControlError> {
        SubnetStore::delete(self, &lease_key(&self.prefix, subnet)).await
    }

    /// Leases a subnet (see [`manager::acquire_lease`]) with the configured TTL.
    pub async fn acquire_lease(
        &self,
        cfg: &NetworkConfig,
        attrs: LeaseAttrs,
        previous: Option<SubnetKey>,
    ) -> Result<Lease, ControlError> {
        manager::acquire_lease(self, cfg, &attrs, previous, self.opts.lease_ttl).await
    }

    pub fn keeper_options(&self) -> KeeperOptions {
        let mut opts = KeeperOptions::new(self.opts.lease_ttl, self.opts.renew_margin);
        opts.check_every = opts.check_every.min(self.opts.check_every);
        opts
    }

    /// Keeps `lease` alive in the background (see [`manager::spawn_lease_keeper`]). Pass the lease
    /// watcher's snapshots so a deleted key is re-created at once.
    pub fn spawn_lease_keeper(
        self: &Arc<Self>,
        cfg: NetworkConfig,
        lease: Lease,
        snapshots: Option<watch::Receiver<Arc<LeaseSnapshot>>>,
    ) -> LeaseKeeper {
        manager::spawn_lease_keeper(self.clone(), cfg, lease, self.keeper_options(), snapshots)
    }

    /// Follows `<prefix>/subnets/`: a full listing, then a watch from the next revision; any
    /// error or compaction means a new full listing (counted in `restarts`). Each snapshot says
    /// which records `cfg` admits as leases.
    pub fn spawn_lease_watcher(self: &Arc<Self>, cfg: &NetworkConfig) -> LeaseWatcher {
        let (tx, snapshots) = watch::channel(Arc::new(LeaseSnapshot::default()));
        let restarts = Arc::new(AtomicU64::new(0));
        let me = self.clone();
        let counter = restarts.clone();
        let cfg = cfg.clone();
        let mut refusal_log = RefusalLog::default();
        let refusals = refusal_log.total.clone();
        let task = tokio::spawn(async move {
            let dir = subnets_prefix(&me.prefix);
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            loop {
                let Some(err) = me.follow_leases(&cfg, &tx, &mut refusal_log, &mut backoff).await else {
                    tracing::debug!(key = %dir, "periodic full listing of the leases");
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tx.send_modify(|s| Arc::make_mut(s).synced = false);
                let delay = backoff.next_delay();
                tracing::warn!(key = %dir, "lease watch stopped: {err}; listing all leases again in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        });
        LeaseWatcher {
            snapshots,
            restarts,
            refusals,
            task,
        }
    }

    /// One listing and the watch that follows it, for at most [`RESYNC_EVERY`]; returns why it
    /// stopped (`None`: time for the periodic full listing).
    async fn follow_leases(
        &self,
        cfg: &NetworkConfig,
        tx: &watch::Sender<Arc<LeaseSnapshot>>,
        refusal_log: &mut RefusalLog,
        backoff: &mut Backoff,
    ) -> Option<ControlError> {
        let dir = subnets_prefix(&self.prefix);
        let (stored, revision) = match self.list(&dir).await {
            Ok(l) => l,
            Err(e) => return Some(e),
        };
        let resync_at = tokio::time::Instant::now() + RESYNC_EVERY;
        let mut book = LeaseBook::from_listing(cfg, &dir, &stored, revision);
        refusal_log.update(book.snapshot());
        tx.send_replace(Arc::new(book.snapshot().clone()));
        let mut watcher = self.client().watch_client();
        // From the listing's own revision, not the next: a compaction at exactly revision+1 would
        // drop a deletion there without cancelling a watch that starts at it. Events at `revision`
        // itself are already in the listing, and applying them again changes nothing.
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision)
            .with_progress_notify();
        let mut stream = match self.call("watch", &dir, watcher.watch(dir.clone(), Some(opts))).await {
            Ok(s) => s,
            Err(e) => return Some(e),
        };
        loop {
            let resp = match tokio::time::timeout_at(resync_at, stream.message()).await {
                Err(_) => return None,
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => return Some(ControlError::etcd("watch", &dir, "the server ended the watch stream")),
                Ok(Err(e)) => return Some(ControlError::etcd("watch", &dir, e)),
            };
            if resp.canceled() {
                let why = if resp.compact_revision() > 0 {
                    format!(
                        "revision {revision} was compacted (oldest kept: {})",
                        resp.compact_revision()
                    )
                } else {
                    format!("watch canceled by the server: {}", resp.cancel_reason())
                };
                return Some(ControlError::etcd("watch", &dir, why));
            }
            if resp.created() {
                backoff.reset();
            }
            if let Some(h) = resp.header() {
                let snap = book.snapshot_mut();
                snap.revision = snap.revision.max(h.revision());
            }
            if resp.events().is_empty() {
                continue;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let Some(name) = key.strip_prefix(&dir) else { continue };
                match ev.event_type() {
                    EventType::Delete => book.remove(name),
                    EventType::Put => book.put(name, kv.value(), kv.create_revision()),
                }
            }
            refusal_log.update(book.snapshot());
            tx.send_replace(Arc::new(book.snapshot().clone()));
        }
    }

    /// Re-reads `<prefix>/config` whenever it changes and says what that means for the running
    /// network: an invalid value is reported (naming the key) and ignored; a valid, different one
    /// needs a restart to apply.
    pub fn spawn_config_watcher(self: &Arc<Self>, running: NetworkConfig) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let key = me.config_key();
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            let mut judged_revision = 0i64;
            loop {
                let err = me.follow_config(&running, &mut judged_revision, &mut backoff).await;
                let delay = backoff.next_delay();
                tracing::warn!(key = %key, "config watch stopped: {err}; watching again in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        })
    }

    async fn follow_config(&self, running: &NetworkConfig, judged: &mut i64, backoff: &mut Backoff) -> ControlError {
        let key = self.config_key();
        let mut kv = self.client().kv_client();
        let resp = match self.call("get", &key, kv.get(key.clone(), None)).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        match resp.kvs().first() {
            Some(kv) if kv.mod_revision() > *judged => {
                // The first read is the config weftd started with: said only when it differs.
                let first = *judged == 0;
                *judged = kv.mod_revision();
                if !(first && parse_config(&key, kv.value()).is_ok_and(|cfg| cfg == *running)) {
                    judge_config(&key, running, Some(kv.value()));
                }
            }
            None if *judged > 0 => {
                *judged = revision;
                judge_config(&key, running, None);
            }
            _ => {}
        }
        let mut watcher = self.client().watch_client();
        // From `revision` itself, as the lease watcher does; events already judged are skipped.
        let opts = WatchOptions::new().with_start_revision(revision);
        let mut stream = match self.call("watch", &key, watcher.watch(key.clone(), Some(opts))).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return ControlError::etcd("watch", &key, "the server ended the watch stream"),
                Err(e) => return ControlError::etcd("watch", &key, e),
            };
            if resp.canceled() {
                return ControlError::etcd("watch", &key, format!("watch canceled: {}", resp.cancel_reason()));
            }
            if resp.created() {
                backoff.reset();
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                if kv.mod_revision() <= *judged {
                    continue;
                }
                *judged = kv.mod_revision();
                match ev.event_type() {
                    EventType::Put => judge_config(&key, running, Some(kv.value())),
                    EventType::Delete => judge_config(&key, running, None),
                }
            }
        }
    }
}

fn secs(ttl: Duration) -> i64 {
    ttl.as_secs().max(1) as i64
}

impl SubnetStore for EtcdSubnetManager {
    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn get(&self, key: &str) -> Result<Option<StoredKey>, ControlError> {
        let mut kv = self.client().kv_client();
        let resp = self.call("get", key, kv.get(key, None)).await?;
        Ok(resp.kvs().first().map(|kv| StoredKey {
            key: key.to_string(),
            value: kv.value().to_vec(),
            lease_id: kv.lease(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<StoredKey>, i64), ControlError> {
        let mut kv = self.client().kv_client();
        let resp = self
            .call("list", prefix, kv.get(prefix, Some(GetOptions::new().with_prefix())))
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let found = resp
            .kvs()
            .iter()
            .map(|kv| StoredKey {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                lease_id: kv.lease(),
                mod_revision: kv.mod_revision(),
                create_revision: kv.create_revision(),
            })
            .collect();
        Ok((found, revision))
    }

    async fn create_if_absent(&self, key: &str, value: String, ttl: Duration) -> Result<bool, ControlError> {
        let mut lease = self.client().lease_client();
        let grant = self.call("lease grant", key, lease.grant(secs(ttl), None)).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(grant.id())))]);
        let mut kv = self.client().kv_client();
        let resp = self.call("create", key, kv.txn(txn)).await?;
        if !resp.succeeded() {
            // Nothing is bound to it; don't leave it to expire on its own.
            let _ = self.call("lease revoke", key, lease.revoke(grant.id())).await;
        }
        Ok(resp.succeeded())
    }

    async fn replace(&self, current: &StoredKey, value: String, ttl: Duration) -> Result<bool, ControlError> {
        let key = current.key.as_str();
        let mut lease = self.client().lease_client();
        let existing = if current.lease_id != 0 {
            self.keep_alive(current.lease_id).await?.map(|_| current.lease_id)
        } else {
            None
        };
        let lease_id = match existing {
            Some(id) => id,
            None => self.call("lease grant", key, lease.grant(secs(ttl), None)).await?.id(),
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, current.mod_revision)])
            .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease_id)))]);
        let mut kv = self.client().kv_client();
        let resp = self.call("update", key, kv.txn(txn)).await?;
        if !resp.succeeded() && existing.is_none() {
            let _ = self.call("lease revoke", key, lease.revoke(lease_id)).await;
        }
        Ok(resp.succeeded())
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<Option<Duration>, ControlError> {
        let what = format!("lease {lease_id:x}");
        let mut lease = self.client().lease_client();
        let renew = async {
            let (mut keeper, mut stream) = lease.keep_alive(lease_id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        let resp = self.call("keep-alive", &what, renew).await?;
        Ok(resp
            .filter(|r| r.ttl() > 0)
            .map(|r| Duration::from_secs(r.ttl() as u64)))
    }

    async fn delete(&self, key: &str) -> Result<bool, ControlError> {
        let mut kv = self.client().kv_client();
        let resp = self.call("delete", key, kv.delete(key, None)).await?;
        Ok(resp.deleted() > 0)
    }
}

impl SubnetManager for EtcdSubnetManager {
    async fn wait_for_config(&self) -> NetworkConfig {
        EtcdSubnetManager::wait_for_config(self).await
    }

    async fn acquire_lease(
        &self,
        cfg: &NetworkConfig,
        attrs: LeaseAttrs,
        previous: Option<SubnetKey>,
    ) -> Result<Lease, ControlError> {
        EtcdSubnetManager::acquire_lease(self, cfg, attrs, previous).await
    }

    fn watch_leases(self: &Arc<Self>, cfg: &NetworkConfig) -> LeaseWatcher {
        self.spawn_lease_watcher(cfg)
    }

    fn keep_lease(
        self: &Arc<Self>,
        cfg: NetworkConfig,
        lease: Lease,
        snapshots: Option<watch::Receiver<Arc<LeaseSnapshot>>>,
    ) -> LeaseKeeper {
        self.spawn_lease_keeper(cfg, lease, snapshots)
    }

    fn watch_config(self: &Arc<Self>, running: NetworkConfig) -> JoinHandle<()> {
        self.spawn_config_watcher(running)
    }
}
