//! One node's life: interface, etcd, config, lease, subnet.env, backend, reconcile loop.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use weft_control::etcd::{EtcdOptions, EtcdSubnetManager};
use weft_core::masq::FirewallPlan;
use weft_core::peer_file::{self, PeerEntry};
use weft_core::{BackendKind, Lease, LeaseAttrs, NetworkConfig, SubnetEnv};
use weft_datapath::hostgw::HostGwBackend;
use weft_datapath::udp::UdpBackend;
use weft_datapath::vxlan::VxlanBackend;
use weft_kernel::firewall::{firewall_driver, FirewallKind};
use weft_kernel::iface::{select_external_interface, IfaceSelection};
use weft_kernel::netlink::Netlink;

use crate::flags::Flags;
use crate::http::{self, Endpoints, HealthCheck, MetricsPage};
use crate::metrics::{BackendMetrics, Metrics};
use crate::subnet_file;
use std::sync::atomic::Ordering;

pub async fn run(flags: Flags) -> anyhow::Result<()> {
    let nl = Netlink::new().context("opening the netlink socket")?;
    let selection = IfaceSelection {
        ifaces: flags.iface.clone(),
        iface_regex: flags.iface_regex.clone(),
        can_reach: flags.iface_can_reach,
    };
    let ext = select_external_interface(&nl, &selection)
        .await
        .context("choosing the external interface")?;
    let public_ip: Ipv4Addr = flags.public_ip.unwrap_or(ext.ip);
    tracing::info!(iface = %ext.name, ip = %ext.ip, %public_ip, mtu = ext.mtu, "using the external interface");

    let etcd = EtcdSubnetManager::connect_with_retry(EtcdOptions {
        renew_margin: Duration::from_secs(flags.subnet_lease_renew_margin * 60),
        // Often enough that /healthz notices a silent etcd within a second or two of the grace.
        check_every: (Duration::from_secs(flags.healthz_etcd_grace) / 4)
            .clamp(Duration::from_millis(500), Duration::from_secs(10)),
        ..flags.etcd.options()
    })
    .await
    .context("connecting to etcd")?;
    let etcd = Arc::new(etcd);
    let cfg = etcd.wait_for_config().await;
    tracing::info!(network = %cfg.network, subnet_len = cfg.subnet_len, backend = cfg.backend.name(), "network config");

    let network = cfg.network;
    let datapath = match cfg.backend {
        BackendKind::Vxlan => Datapath::Vxlan(
            VxlanBackend::start(nl, ext, public_ip, cfg.vxlan.clone(), network)
                .await
                .with_context(|| format!("setting up the vxlan device flannel.{}", cfg.vxlan.vni))?,
        ),
        BackendKind::HostGw => Datapath::HostGw(
            HostGwBackend::start(nl, ext, public_ip, network)
                .await
                .context("setting up the host-gw backend")?,
        ),
        BackendKind::Udp => Datapath::Udp(
            UdpBackend::start(nl, ext, public_ip, cfg.udp.clone(), network)
                .await
                .context("setting up the udp backend (flannel0)")?,
        ),
    };
    let attrs = LeaseAttrs::new(public_ip, cfg.backend.lease_backend_type(), datapath.backend_data());
    Node { flags, cfg, etcd }.run(datapath, attrs).await
}

/// The backend that owns the kernel datapath.
enum Datapath {
    Vxlan(VxlanBackend),
    HostGw(HostGwBackend),
    Udp(UdpBackend),
}

impl Datapath {
    fn mtu(&self) -> u32 {
        match self {
            Datapath::Vxlan(b) => b.mtu(),
            Datapath::HostGw(b) => b.mtu(),
            Datapath::Udp(b) => b.mtu(),
        }
    }

    fn backend_data(&self) -> serde_json::Value {
        match self {
            Datapath::Vxlan(b) => b.backend_data(),
            Datapath::HostGw(b) => b.backend_data(),
            Datapath::Udp(b) => b.backend_data(),
        }
    }

    async fn set_lease(&mut self, lease: &Lease) -> anyhow::Result<()> {
        match self {
            Datapath::Vxlan(b) => b.set_lease(lease.subnet).await.context("addressing flannel.<VNI>")?,
            Datapath::HostGw(b) => b.set_lease(lease.subnet),
            Datapath::Udp(b) => b.set_lease(lease.subnet).await.context("addressing flannel0")?,
        }
        Ok(())
    }

    /// The udp peer table as weft trace reads it; None for kernel backends.
    fn peer_file_text(&self) -> Option<String> {
        let Datapath::Udp(b) = self else { return None };
        let peers: Vec<PeerEntry> = b
            .peer_table()
            .iter()
            .map(|p| PeerEntry {
                subnet: p.subnet,
                public_ip: p.public_ip,
            })
            .collect();
        Some(peer_file::render(&peers))
    }

    /// The backend's own /metrics lines (udp packet counters), rendered live at every scrape.
    fn metrics(&self) -> Option<BackendMetrics> {
        let Datapath::Udp(b) = self else { return None };
        let live = b.metrics();
        Some(Box::new(move |out: &mut String| live.render(out)))
    }

    /// Makes the kernel match the leases; returns how many entries it had to correct.
    async fn reconcile(&mut self, leases: &[Lease]) -> anyhow::Result<usize> {
        match self {
            Datapath::Vxlan(b) => {
                let report = b.reconcile(leases).await?;
                if report.changed() {
                    tracing::info!(?report, "vxlan: kernel state corrected");
                }
                Ok(report.added + report.replaced + report.removed + usize::from(report.device_recreated))
            }
            Datapath::HostGw(b) => {
                let report = b.reconcile(leases).await?;
                if report.changed() {
                    tracing::info!(?report, "host-gw: kernel state corrected");
                }
                Ok(report.added + report.replaced + report.removed)
            }
            Datapath::Udp(b) => {
                let report = b.reconcile(leases).await?;
                if report.device_recreated || report.corrected > 0 {
                    tracing::info!(?report, "udp: kernel state corrected");
                }
                Ok(report.corrected + usize::from(report.device_recreated))
            }
        }
    }
}

struct Node {
    flags: Flags,
    cfg: NetworkConfig,
    etcd: Arc<EtcdSubnetManager>,
}

impl Node {
    async fn run(self, mut datapath: Datapath, attrs: LeaseAttrs) -> anyhow::Result<()> {
        let Node { flags, cfg, etcd } = self;
        let previous = subnet_file::previous_subnet(&flags.subnet_file);
        let lease = etcd
            .acquire_lease(&cfg, attrs, previous)
            .await
            .context("leasing a subnet")?;
        tracing::info!(subnet = %lease.subnet, public_ip = %lease.attrs.public_ip, "holding lease");
        datapath.set_lease(&lease).await?;

        let env = SubnetEnv {
            network: cfg.network,
            subnet: ipnet::Ipv4Net::new(lease.subnet.gateway(), lease.subnet.ipv4.prefix_len())?,
            mtu: datapath.mtu(),
            ipmasq: flags.ip_masq,
            ipv6_network: None,
            ipv6_subnet: None,
        };
        subnet_file::write_atomically(&flags.subnet_file, &env)
            .with_context(|| format!("writing {}", flags.subnet_file.display()))?;
        tracing::info!(file = %flags.subnet_file.display(), subnet = %env.subnet, mtu = env.mtu, "wrote subnet file");

        let watcher = etcd.spawn_lease_watcher(&cfg);
        let keeper = etcd.spawn_lease_keeper(cfg.clone(), lease.clone(), Some(watcher.snapshots.clone()));
        let _config_watch = etcd.spawn_config_watcher(cfg.clone());

        let metrics = Arc::new(Metrics {
            backend: cfg.backend.name(),
            watch_restarts: watcher.restarts.clone(),
            lease_renewals: keeper.renewals.clone(),
            lease_refusals: watcher.refusals.clone(),
            backend_metrics: datapath.metrics(),
            ..Default::default()
        });
        metrics.lease_held.store(1, Ordering::Relaxed);
        spawn_firewall(&flags, &cfg, &lease, metrics.clone());
        let health: HealthCheck = {
            let health = keeper.health.clone();
            let last_contact = keeper.last_contact.clone();
            let grace = Duration::from_secs(flags.healthz_etcd_grace);
            Arc::new(move || health.borrow().check_with_grace(*last_contact.borrow(), grace))
        };
        let page: MetricsPage = {
            let metrics = metrics.clone();
            let health = health.clone();
            Arc::new(move || {
                metrics.lease_held.store(u64::from(health().is_ok()), Ordering::Relaxed);
                metrics.render()
            })
        };
        let mut listeners = Vec::new();
        if flags.healthz_port != 0 {
            let addr = SocketAddr::from((flags.healthz_ip, flags.healthz_port));
            listeners.push((
                addr,
                Endpoints {
                    health: Some(health.clone()),
                    metrics: Some(page.clone()),
                },
            ));
        }
        if flags.metrics_port != 0 && flags.metrics_port != flags.healthz_port {
            let addr = SocketAddr::from((flags.healthz_ip, flags.metrics_port));
            listeners.push((
                addr,
                Endpoints {
                    health: None,
                    metrics: Some(page.clone()),
                },
            ));
        }
        for (addr, endpoints) in listeners {
            tokio::spawn(async move {
                if let Err(e) = http::serve(addr, endpoints).await {
                    tracing::error!(%addr, "http server stopped: {e}");
                }
            });
        }

        let mut snapshots = watcher.snapshots.clone();
        let mut lease_rx = keeper.lease.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(flags.reconcile_interval.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut published_peers = String::new();
        loop {
            tokio::select! {
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                changed = lease_rx.changed() => {
                    if changed.is_err() { bail!("the lease keeper stopped"); }
                    let now = lease_rx.borrow_and_update().clone();
                    if now.subnet != lease.subnet {
                        bail!("our subnet changed from {} to {} (the old lease was taken by another node); pods are numbered from the old subnet, so weftd stops: restart it to use the new one", lease.subnet, now.subnet);
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { bail!("the lease watcher stopped"); }
                }
                _ = tick.tick() => {}
            }
            let snapshot = snapshots.borrow_and_update().clone();
            // Until the first full listing we do not know which entries are stale: touch nothing.
            if !snapshot.synced && snapshot.revision == 0 {
                continue;
            }
            metrics.leases.store(snapshot.leases.len() as u64, Ordering::Relaxed);
            metrics.set_refused(&snapshot.refused);
            metrics.reconcile_runs.fetch_add(1, Ordering::Relaxed);
            match datapath.reconcile(&snapshot.to_leases()).await {
                Ok(corrections) => {
                    metrics
                        .reconcile_corrections
                        .fetch_add(corrections as u64, Ordering::Relaxed);
                    if let Some(text) = datapath.peer_file_text().filter(|t| *t != published_peers) {
                        let path = peer_file::peer_file_for(&flags.subnet_file);
                        match subnet_file::write_text_atomically(&path, &text) {
                            Ok(()) => published_peers = text,
                            Err(e) => tracing::warn!(file = %path.display(), "cannot publish the udp peer table: {e}"),
                        }
                    }
                }
                Err(e) => {
                    metrics.reconcile_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("reconcile failed, retrying at the next event or tick: {e:#}");
                }
            }
        }
        tracing::info!("stopping; the datapath stays in place and the lease is kept for the next start");
        Ok(())
    }
}

/// Keeps the masquerade/forward rules as the flags say, checked every `--iptables-resync` seconds.
fn spawn_firewall(flags: &Flags, cfg: &NetworkConfig, lease: &Lease, metrics: Arc<Metrics>) {
    let kind = FirewallKind::from_config(cfg);
    let plan = FirewallPlan {
        network: cfg.network.into(),
        pod: lease.subnet.ipv4.into(),
        masq: flags.ip_masq,
        forward: flags.iptables_forward_rules,
    };
    let every = Duration::from_secs(flags.iptables_resync.max(1));
    let spawned = std::thread::Builder::new().name("firewall".into()).spawn(move || {
        let other = kind.other();
        if let Err(e) = firewall_driver(other, plan.family(), None).remove() {
            tracing::debug!("clearing {other:?} leftovers: {e}");
        }
        let firewall = firewall_driver(kind, plan.family(), None);
        let mut first = true;
        loop {
            metrics.firewall_checks.fetch_add(1, Ordering::Relaxed);
            match firewall.ensure(&plan) {
                Ok(changes) if changes.any() && !first => {
                    metrics.firewall_corrections.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(?changes, "{kind:?}: masquerade/forward rules corrected")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{kind:?}: cannot apply masquerade/forward rules: {e}"),
            }
            first = false;
            std::thread::sleep(every);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the firewall thread: {e}");
    }
}
