//! What runs beside the reconcile loop once the node holds its lease: the masquerade and forward
//! rules, and the /healthz and /metrics endpoints.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use weft_core::masq::FirewallPlan;
use weft_core::{Lease, NetworkConfig};
use weft_kernel::firewall::{firewall_driver, FirewallKind};

use crate::flags::Flags;
use crate::http::HealthCheck;
use crate::http::{self, Endpoints, MetricsPage};
use crate::metrics::Metrics;

/// What the node's services (firewall rules, /healthz and /metrics) are started from, once the
/// lease is held.
pub struct Held<'a> {
    pub flags: &'a Flags,
    pub cfg: &'a NetworkConfig,
    pub lease: &'a Lease,
    pub metrics: Arc<Metrics>,
    pub health: HealthCheck,
}

/// Starts the firewall thread and the HTTP endpoints the flags ask for.
pub fn start(held: Held<'_>) {
    let Held {
        flags,
        cfg,
        lease,
        metrics,
        health,
    } = held;
    spawn_firewall(flags, cfg, lease, metrics.clone());
    let page: MetricsPage = {
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
}

/// Keeps the masquerade/forward rules as the flags say, checked every `--iptables-resync` seconds:
/// one plan per address family (IPv6 too when dual stack: ip6tables chains, or the nftables table
/// `ip6 flannel-ipv6`), each with its own driver, in one thread.
fn spawn_firewall(flags: &Flags, cfg: &NetworkConfig, lease: &Lease, metrics: Arc<Metrics>) {
    let kind = FirewallKind::from_config(cfg);
    let v4 = cfg.network().zip(lease.subnet.ipv4).map(|(n, p)| (n.into(), p.into()));
    let v6 = cfg
        .ipv6_network()
        .zip(lease.subnet.ipv6)
        .map(|(n, p)| (n.into(), p.into()));
    let plans: Vec<FirewallPlan> = v4
        .into_iter()
        .chain(v6)
        .map(|(network, pod)| FirewallPlan {
            network,
            pod,
            masq: flags.ip_masq,
            forward: flags.iptables_forward_rules,
        })
        .collect();
    let every = Duration::from_secs(flags.iptables_resync.max(1));
    let spawned = std::thread::Builder::new().name("firewall".into()).spawn(move || {
        let other = kind.other();
        let drivers: Vec<_> = plans
            .into_iter()
            .map(|plan| {
                if let Err(e) = firewall_driver(other, plan.family(), None).remove() {
                    tracing::debug!("clearing {other:?} {:?} leftovers: {e}", plan.family());
                }
                (firewall_driver(kind, plan.family(), None), plan)
            })
            .collect();
        let mut first = true;
        loop {
            metrics.firewall_checks.fetch_add(1, Ordering::Relaxed);
            for (firewall, plan) in &drivers {
                let family = plan.family();
                match firewall.ensure(plan) {
                    Ok(changes) if changes.any() && !first => {
                        metrics.firewall_corrections.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(?changes, "{kind:?} {family:?}: masquerade/forward rules corrected")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{kind:?} {family:?}: cannot apply masquerade/forward rules: {e}"),
                }
            }
            first = false;
            std::thread::sleep(every);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the firewall thread: {e}");
    }
}
