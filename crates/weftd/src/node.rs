//! One node's life: subnet manager, config, interface, backend, lease, subnet.env, and the loop
//! that keeps the kernel in line with the leases. The loop is generic over the subnet manager and
//! holds the backend as a trait object, so it runs in unit tests against the in-memory store.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;
use weft_control::etcd::{EtcdOptions, EtcdSubnetManager};
use weft_control::{LeaseKeeper, LeaseSnapshot, SubnetManager};
use weft_core::peer_file;
use weft_core::{Lease, LeaseAttrs, NetworkConfig, SubnetEnv};
use weft_datapath::backend::{self, lease_changes, to_leases, Backend, Report};
use weft_datapath::factory::{self, Ipv6Underlay, Setup};
use weft_kernel::iface::{dual_stack_addresses, interface_ipv6, select_external_interface_for, IfaceSelection};
use weft_kernel::monitor::{self, KernelEvent};
use weft_kernel::netlink::{AddrFamily, Netlink};

use crate::flags::Flags;
use crate::http::HealthCheck;
use crate::metrics::Metrics;
use crate::services::{self, Held};
use crate::subnet_file;

pub async fn run(flags: Flags) -> anyhow::Result<()> {
    let nl = Netlink::new().context("opening the netlink socket")?;
    // Like flanneld, the config comes first: its address families say how the external
    // interface is chosen (by IPv6 in an IPv6-only network, so the host needs no IPv4 address).
    let etcd = EtcdSubnetManager::connect_with_retry(EtcdOptions {
        renew_margin: Duration::from_secs(flags.subnet_lease_renew_margin * 60),
        // Often enough that /healthz notices a silent etcd within a second or two of the grace.
        check_every: (Duration::from_secs(flags.healthz_etcd_grace) / 4)
            .clamp(Duration::from_millis(500), Duration::from_secs(10)),
        ..flags.etcd.options()
    })
    .await
    .context("connecting to etcd")?;
    let manager = Arc::new(etcd);
    let cfg = manager.wait_for_config().await;
    tracing::info!(
        network = ?cfg.network(),
        ipv6_network = ?cfg.ipv6_network(),
        backend = cfg.backend.name(),
        "network config"
    );

    let selection = IfaceSelection {
        ifaces: flags.iface.clone(),
        iface_regex: flags.iface_regex.clone(),
        can_reach: flags.iface_can_reach,
    };
    let family = match cfg.ipv4 {
        Some(_) => AddrFamily::Ipv4,
        None => AddrFamily::Ipv6,
    };
    let ext = select_external_interface_for(&nl, &selection, family)
        .await
        .context("choosing the external interface")?;
    // An IPv6-only network has no PublicIP: the lease carries flannel's 0.0.0.0.
    let public_ip = match cfg.ipv4 {
        None => {
            if let Some(ip) = flags.public_ip {
                tracing::warn!(%ip, "--public-ip is ignored: the network config disables IPv4 (EnableIPv4 false)");
            }
            None
        }
        Some(_) => flags.public_ip.or(ext.ipv4()),
    };
    tracing::info!(iface = %ext.name, ip = %ext.ip, public_ip = ?public_ip, mtu = ext.mtu, "using the external interface");

    // Subscribed before the backend programs anything, so no change is missed.
    let ipv6 = match cfg.ipv6 {
        None => None,
        Some(_) => {
            let found = interface_ipv6(&nl, &ext)
                .await
                .context("reading the external interface's IPv6 addresses")?;
            let (local, public) = dual_stack_addresses(&ext, found, flags.public_ipv6)
                .context("EnableIPv6 is set in the network config")?;
            tracing::info!(iface = %ext.name, ip = %local, public_ipv6 = %public, "dual stack: using the interface's IPv6 address");
            Some(Ipv6Underlay { local, public })
        }
    };

    let kernel_events = match monitor::subscribe() {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!("cannot follow kernel changes ({e}); drift is repaired at the periodic reconcile only");
            None
        }
    };
    let backend = factory::start(Setup {
        nl,
        ext,
        public_ip,
        ipv6,
        config: cfg.clone(),
    })
    .await
    .with_context(|| format!("setting up the {} backend", cfg.backend.name()))?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    };
    let node = Node {
        flags,
        cfg,
        manager,
        public_ip,
        public_ipv6: ipv6.map(|v6| v6.public),
    };
    node.run(backend, kernel_events, services::start, stop).await?;
    tracing::info!("stopping; the datapath stays in place and the lease is kept for the next start");
    Ok(())
}

/// The subnet with its first address (flannel writes FLANNEL_SUBNET so: the bridge's).
fn first_address_v4(subnet: ipnet::Ipv4Net) -> ipnet::Ipv4Net {
    let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    ipnet::Ipv4Net::new(first, subnet.prefix_len()).expect("the prefix length came from a subnet")
}

/// The subnet with its first address (flannel writes FLANNEL_IPV6_SUBNET so: the bridge's).
fn first_address(subnet: ipnet::Ipv6Net) -> ipnet::Ipv6Net {
    let first = std::net::Ipv6Addr::from(u128::from(subnet.network()) + 1);
    ipnet::Ipv6Net::new(first, subnet.prefix_len()).expect("the prefix length came from a subnet")
}

/// One node: its flags, the network config and where the leases live.
pub struct Node<M> {
    pub flags: Flags,
    pub cfg: NetworkConfig,
    pub manager: Arc<M>,
    /// PublicIP of our lease; None when the config disables IPv4.
    pub public_ip: Option<Ipv4Addr>,
    /// PublicIPv6 of our lease when the config enables IPv6.
    pub public_ipv6: Option<Ipv6Addr>,
}

impl<M: SubnetManager> Node<M> {
    /// Leases a subnet, writes subnet.env, starts the services, then keeps the kernel in line
    /// with the leases (by delta on each lease event, by repair on each kernel notification, in
    /// full every `--reconcile-interval`) until `stop` resolves.
    pub async fn run(
        self,
        mut backend: Box<dyn Backend>,
        mut kernel_events: Option<UnboundedReceiver<KernelEvent>>,
        start_services: impl FnOnce(Held<'_>),
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Node {
            flags,
            cfg,
            manager,
            public_ip,
            public_ipv6,
        } = self;
        let attrs = lease_attrs(&cfg, backend.as_ref(), public_ip, public_ipv6);
        let previous = subnet_file::previous_subnet(&flags.subnet_file);
        let lease = manager
            .acquire_lease(&cfg, attrs, previous)
            .await
            .context("leasing a subnet")?;
        tracing::info!(subnet = %lease.subnet, public_ip = %lease.attrs.public_ip, "holding lease");
        backend
            .set_lease(&lease)
            .await
            .with_context(|| format!("setting up the {} backend for {}", backend.name(), lease.subnet))?;
        write_subnet_env(&flags, &cfg, &lease, backend.mtu())?;

        let watcher = manager.watch_leases(&cfg);
        let keeper = manager.keep_lease(cfg.clone(), lease.clone(), Some(watcher.snapshots.clone()));
        let _config_watch = manager.watch_config(cfg.clone());

        let metrics = Arc::new(Metrics {
            backend: backend.name(),
            watch_restarts: watcher.restarts.clone(),
            lease_renewals: keeper.renewals.clone(),
            lease_refusals: watcher.refusals.clone(),
            backend_metrics: backend.metrics(),
            ..Default::default()
        });
        metrics.lease_held.store(1, Ordering::Relaxed);
        start_services(Held {
            flags: &flags,
            cfg: &cfg,
            lease: &lease,
            metrics: metrics.clone(),
            health: health_check(&keeper, Duration::from_secs(flags.healthz_etcd_grace)),
        });

        let mut lp = Loop {
            backend,
            metrics,
            flags: &flags,
            current: Arc::new(LeaseSnapshot::default()),
            programmed: false,
            last_attempt: None,
            last_failure: None,
            published_peers: String::new(),
        };
        let mut snapshots = watcher.snapshots.clone();
        let mut lease_rx = keeper.lease.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(flags.reconcile_interval.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                changed = lease_rx.changed() => {
                    if changed.is_err() { bail!("the lease keeper stopped"); }
                    let now = lease_rx.borrow_and_update().clone();
                    if now.subnet != lease.subnet {
                        bail!("our subnet changed from {} to {} (the old lease was taken by another node); pods are numbered from the old subnet, so weftd stops: restart it to use the new one", lease.subnet, now.subnet);
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { bail!("the lease watcher stopped"); }
                    let snapshot = snapshots.borrow_and_update().clone();
                    lp.leases_changed(snapshot).await;
                }
                Some(event) = recv(&mut kernel_events) => lp.kernel_changed(&event).await,
                _ = tick.tick() => lp.reconcile().await,
            }
        }
        Ok(())
    }
}

/// What our lease carries: the public addresses of the families the config enables (an
/// IPv6-only lease has flannel's PublicIP 0.0.0.0) and the backend's data for each.
fn lease_attrs(
    cfg: &NetworkConfig,
    backend: &dyn Backend,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> LeaseAttrs {
    let mut attrs = LeaseAttrs::new(
        public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        backend.lease_backend_type(),
        backend.backend_data(),
    );
    if cfg.ipv6.is_some() {
        attrs.public_ipv6 = public_ipv6;
        attrs.backend_v6_data = backend.backend_v6_data();
    }
    attrs
}

/// Writes subnet.env for `lease` (flanneld's lines: each enabled family's network and first
/// address, the MTU, masquerade) and tells systemd weftd is ready.
fn write_subnet_env(flags: &Flags, cfg: &NetworkConfig, lease: &Lease, mtu: u32) -> anyhow::Result<()> {
    let env = SubnetEnv {
        network: cfg.network(),
        subnet: lease.subnet.ipv4.map(first_address_v4),
        mtu,
        ipmasq: flags.ip_masq,
        ipv6_network: cfg.ipv6_network(),
        ipv6_subnet: lease.subnet.ipv6.map(first_address),
    };
    subnet_file::write_atomically(&flags.subnet_file, &env)
        .with_context(|| format!("writing {}", flags.subnet_file.display()))?;
    tracing::info!(file = %flags.subnet_file.display(), subnet = %lease.subnet, mtu = env.mtu, "wrote subnet file");
    crate::notify::ready(&format!("subnet {} in {}", lease.subnet, flags.subnet_file.display()));
    Ok(())
}

/// The next kernel notification; pending forever when there is no subscription (or it ended).
async fn recv(events: &mut Option<UnboundedReceiver<KernelEvent>>) -> Option<KernelEvent> {
    match events {
        Some(rx) => match rx.recv().await {
            Some(event) => Some(event),
            None => {
                tracing::warn!("kernel notifications stopped; drift is repaired at the periodic reconcile only");
                *events = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Hands the heap's free pages back to the system: a full reconcile of a large cluster allocates
/// and frees tens of megabytes (table dumps, the lease list), which glibc otherwise keeps.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointer of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// /healthz: the lease is held and etcd answered within the grace.
fn health_check(keeper: &LeaseKeeper, grace: Duration) -> HealthCheck {
    let health = keeper.health.clone();
    let last_contact = keeper.last_contact.clone();
    Arc::new(move || health.borrow().check_with_grace(*last_contact.borrow(), grace))
}

/// The state of the reconcile loop.
struct Loop<'a> {
    backend: Box<dyn Backend>,
    metrics: Arc<Metrics>,
    flags: &'a Flags,
    /// The lease set the kernel was last brought in line with.
    current: Arc<LeaseSnapshot>,
    /// A full reconcile has run: the backend's cache of what it installed can be trusted.
    programmed: bool,
    /// When the last full reconcile started.
    last_attempt: Option<std::time::Instant>,
    /// The last failure said at warn level: the same one again is said at debug level only, so
    /// a failure that lasts (an entry the kernel refuses) does not fill the log at every tick.
    last_failure: Option<String>,
    published_peers: String,
}

impl Loop<'_> {
    /// A new lease snapshot: the first full listing is reconciled in full; after that only the
    /// leases that changed are applied.
    async fn leases_changed(&mut self, snapshot: Arc<LeaseSnapshot>) {
        // Until the first full listing we do not know which entries are stale: touch nothing.
        if !snapshot.synced && snapshot.revision == 0 {
            return;
        }
        self.metrics
            .leases
            .store(snapshot.leases.len() as u64, Ordering::Relaxed);
        self.metrics.set_refused(snapshot.refused.values());
        let previous = std::mem::replace(&mut self.current, snapshot);
        if !self.programmed {
            return self.reconcile().await;
        }
        let changes = lease_changes(&previous.leases, &self.current.leases);
        if changes.is_empty() {
            return;
        }
        let result = self.backend.apply(&changes, &self.current.leases).await;
        self.done("lease change", result);
    }

    async fn kernel_changed(&mut self, event: &KernelEvent) {
        if !self.programmed {
            // The cache cannot be trusted (a reconcile failed): compare everything instead, at
            // most once a second however many notifications arrive.
            if self
                .last_attempt
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
            {
                self.reconcile().await;
            }
            return;
        }
        let result = self.backend.kernel_changed(event, &self.current.leases).await;
        self.done("repair", result);
    }

    /// Compares everything with the kernel: the safety net under deltas and notifications.
    async fn reconcile(&mut self) {
        if !self.current.synced && self.current.revision == 0 {
            return;
        }
        self.metrics.reconcile_runs.fetch_add(1, Ordering::Relaxed);
        self.last_attempt = Some(std::time::Instant::now());
        let result = self.backend.reconcile(&to_leases(&self.current.leases)).await;
        if result.is_ok() {
            self.programmed = true;
        }
        self.done("reconcile", result);
        release_freed_memory();
    }

    fn done(&mut self, what: &str, result: Result<Report, backend::BackendError>) {
        match result {
            Ok(report) => {
                if report.changed() {
                    tracing::info!(?report, "{what}: kernel state corrected");
                }
                if self.last_failure.take().is_some() && self.programmed {
                    tracing::info!("{what} succeeded again: the kernel matches the leases");
                }
                self.metrics
                    .reconcile_corrections
                    .fetch_add(report.corrections() as u64, Ordering::Relaxed);
                self.publish_peers();
            }
            Err(e) => {
                self.metrics.reconcile_errors.fetch_add(1, Ordering::Relaxed);
                // The cache may now differ from the kernel: the next tick compares everything.
                self.programmed = false;
                let failure = format!("{e:#}");
                if self.last_failure.as_ref() == Some(&failure) {
                    tracing::debug!("{what} failed again, as before: {failure}");
                } else {
                    tracing::warn!("{what} failed, retrying at the next event or tick: {failure}");
                    self.last_failure = Some(failure);
                }
            }
        }
    }

    /// Publishes the backend's peer table beside subnet.env when it changed.
    fn publish_peers(&mut self) {
        let Some(text) = self.backend.peer_table().filter(|t| *t != self.published_peers) else {
            return;
        };
        let path = peer_file::peer_file_for(&self.flags.subnet_file);
        match subnet_file::write_text_atomically(&path, &text) {
            Ok(()) => self.published_peers = text,
            Err(e) => tracing::warn!(file = %path.display(), "cannot publish the peer table: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use weft_control::MemoryStore;
    use weft_core::{Lease, SubnetKey};
    use weft_datapath::backend::{BackendError, LeaseChange, LeaseSet};

    use super::*;
    use crate::flags::normalize_go_style;
    use clap::Parser;

    const PREFIX: &str = "/coreos.com/network";

    /// What the loop asked of the backend, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        SetLease(String),
        Reconcile(Vec<String>),
        Apply(Vec<(String, bool)>),
    }

    /// A backend that records calls and programs nothing.
    struct Recorder(Arc<Mutex<Vec<Call>>>);

    #[async_trait]
    impl Backend for Recorder {
        fn name(&self) -> &'static str {
            "vxlan"
        }
        fn backend_data(&self) -> serde_json::Value {
            serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:01"})
        }
        fn backend_v6_data(&self) -> serde_json::Value {
            serde_json::json!({"VNI": 1, "VtepMAC": "02:00:00:00:00:61"})
        }
        fn mtu(&self) -> u32 {
            1450
        }
        async fn set_lease(&mut self, own: &Lease) -> Result<(), BackendError> {
            self.0.lock().unwrap().push(Call::SetLease(own.subnet.to_key()));
            Ok(())
        }
        async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, BackendError> {
            let keys = leases.iter().map(|l| l.subnet.to_key()).collect();
            self.0.lock().unwrap().push(Call::Reconcile(keys));
            Ok(Report::default())
        }
        async fn apply(&mut self, changes: &[LeaseChange], _all: &LeaseSet) -> Result<Report, BackendError> {
            let keys = changes.iter().map(|c| (c.subnet.to_key(), c.lease.is_some())).collect();
            self.0.lock().unwrap().push(Call::Apply(keys));
            Ok(Report::default())
        }
    }

    fn peer(last: u8) -> String {
        format!(
            r#"{{"PublicIP":"198.51.100.{last}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:{last:02x}"}}}}"#
        )
    }

    async fn wait_for(calls: &Mutex<Vec<Call>>, want: &Call) {
        let found = tokio::time::timeout(Duration::from_secs(5), async {
            while !calls.lock().unwrap().contains(want) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "no {want:?} in {:?}", calls.lock().unwrap());
    }

    /// The whole node loop against the in-memory store: lease, subnet.env, a full reconcile
    /// first, then only what each lease event changed; refused records never reach the backend.
    #[tokio::test]
    async fn the_node_loop_leases_writes_subnet_env_and_applies_only_what_changed() {
        let dir = std::env::temp_dir().join(format!("weftd-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let subnet_file = dir.join("subnet.env");
        let args = vec![
            "weftd".to_string(),
            format!("--subnet-file={}", subnet_file.display()),
            "--reconcile-interval=3600".to_string(),
        ];
        let flags = Flags::try_parse_from(normalize_go_style(args)).unwrap();

        let store = Arc::new(MemoryStore::new(PREFIX));
        store.put(
            &format!("{PREFIX}/config"),
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.1.0","Backend":{"Type":"vxlan"}}"#,
        );
        store.put(&format!("{PREFIX}/subnets/10.5.2.0-24"), &peer(2));
        let cfg = store.wait_for_config().await;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let node = Node {
            flags,
            cfg,
            manager: store.clone(),
            public_ip: Some("198.51.100.1".parse().unwrap()),
            public_ipv6: None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let recorder = Box::new(Recorder(calls.clone()));
        let running = tokio::spawn(node.run(recorder, None, |_| {}, async {
            let _ = stop_rx.await;
        }));

        let reconcile = Call::Reconcile(vec!["10.5.1.0-24".into(), "10.5.2.0-24".into()]);
        wait_for(&calls, &reconcile).await;
        assert_eq!(calls.lock().unwrap()[0], Call::SetLease("10.5.1.0-24".into()));
        assert_eq!(
            store.value(&format!("{PREFIX}/subnets/10.5.1.0-24")).unwrap(),
            r#"{"PublicIP":"198.51.100.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#
        );
        assert_eq!(
            std::fs::read_to_string(&subnet_file).unwrap(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );

        // A new peer: applied alone.
        store.put(&format!("{PREFIX}/subnets/10.5.3.0-24"), &peer(3));
        wait_for(&calls, &Call::Apply(vec![("10.5.3.0-24".into(), true)])).await;
        // Refused records (nested under a peer's name, a VtepMAC another lease holds) change nothing.
        let before = calls.lock().unwrap().len();
        store.put(&format!("{PREFIX}/subnets/x/10.5.2.0-24"), &peer(9));
        store.put(
            &format!("{PREFIX}/subnets/10.5.9.0-24"),
            &peer(2).replace("198.51.100.2", "198.51.100.9"),
        );
        assert!(store.remove(&format!("{PREFIX}/subnets/x/10.5.2.0-24")));
        // A departed peer: its removal applied alone.
        assert!(store.remove(&format!("{PREFIX}/subnets/10.5.2.0-24")));
        // ... which frees the VtepMAC the refused record claimed: it is admitted now.
        wait_for(
            &calls,
            &Call::Apply(vec![("10.5.2.0-24".into(), false), ("10.5.9.0-24".into(), true)]),
        )
        .await;
        let after: Vec<Call> = calls.lock().unwrap()[before..].to_vec();
        assert_eq!(
            after,
            vec![Call::Apply(vec![
                ("10.5.2.0-24".into(), false),
                ("10.5.9.0-24".into(), true)
            ])],
            "nothing reached the backend for the refused records"
        );

        stop_tx.send(()).unwrap();
        running.await.unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Dual stack: the lease key names both subnets, the value carries PublicIPv6 and
    /// BackendV6Data in flannel's format, and subnet.env gains the IPv6 lines; a restart takes
    /// both subnets back.
    #[tokio::test]
    async fn a_dual_stack_node_leases_both_families_and_keeps_them_over_a_restart() {
        let dir = std::env::temp_dir().join(format!("weftd-node-dual-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let subnet_file = dir.join("subnet.env");
        let store = Arc::new(MemoryStore::new(PREFIX));
        store.put(
            &format!("{PREFIX}/config"),
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.9.0","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::","IPv6SubnetMax":"fc00:0:0:1::","Backend":{"Type":"vxlan"}}"#,
        );
        let mut key = String::new();
        for round in 0..2 {
            let args = vec![
                "weftd".to_string(),
                format!("--subnet-file={}", subnet_file.display()),
                "--reconcile-interval=3600".to_string(),
            ];
            let node = Node {
                flags: Flags::try_parse_from(normalize_go_style(args)).unwrap(),
                cfg: store.wait_for_config().await,
                manager: store.clone(),
                public_ip: Some("198.51.100.1".parse().unwrap()),
                public_ipv6: Some("2001:db8::1".parse().unwrap()),
            };
            let calls = Arc::new(Mutex::new(Vec::new()));
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let running = tokio::spawn(node.run(Box::new(Recorder(calls.clone())), None, |_| {}, async {
                let _ = stop_rx.await;
            }));
            // The first round picks at random among 10.5.1.0 .. 10.5.9.0; the restart takes it back.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let held = loop {
                if let Some(Call::SetLease(k)) = calls.lock().unwrap().first() {
                    break k.clone();
                }
                assert!(std::time::Instant::now() < deadline, "no lease taken");
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            if round == 0 {
                key = held;
            }
            assert_eq!(
                SubnetKey::parse(&key).unwrap().ipv6.unwrap().to_string(),
                "fc00:0:0:1::/64"
            );
            wait_for(&calls, &Call::Reconcile(vec![key.clone()])).await;
            assert_eq!(
                store.value(&format!("{PREFIX}/subnets/{key}")).unwrap(),
                r#"{"PublicIP":"198.51.100.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:61"}}"#,
                "round {round}"
            );
            let v4 = SubnetKey::parse(&key).unwrap().gateway().unwrap();
            assert_eq!(
                std::fs::read_to_string(&subnet_file).unwrap(),
                format!("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={v4}/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
            );
            stop_tx.send(()).unwrap();
            running.await.unwrap().unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
