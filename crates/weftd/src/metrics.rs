//! weftd's counters and their Prometheus text rendering. Counters are plain atomics bumped by the
//! loops that own the work; the page is rendered on scrape.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use weft_core::Refusal;
use weft_datapath::backend::MetricsRenderer;

#[derive(Default)]
pub struct Metrics {
    pub backend: &'static str,
    pub leases: AtomicU64,
    pub reconcile_runs: AtomicU64,
    pub reconcile_errors: AtomicU64,
    /// Kernel entries added, replaced or removed because the kernel differed from the leases.
    pub reconcile_corrections: AtomicU64,
    pub firewall_checks: AtomicU64,
    pub firewall_corrections: AtomicU64,
    /// Shared with the lease watcher and keeper.
    pub watch_restarts: Arc<AtomicU64>,
    pub lease_renewals: Arc<AtomicU64>,
    pub lease_held: AtomicU64,
    /// Records under the subnets directory refused now, by [`Refusal::LABELS`].
    pub leases_refused: [AtomicU64; Refusal::LABELS.len()],
    /// Shared with the lease watcher: records that became refused.
    pub lease_refusals: Arc<AtomicU64>,
    /// Appends the backend's own lines (udp packet counters) to the page, read live on every
    /// scrape.
    pub backend_metrics: Option<MetricsRenderer>,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, labels: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}"
    );
}

impl Metrics {
    /// Sets the refused-records gauges from the watcher's latest snapshot.
    pub fn set_refused<'a>(&self, refused: impl IntoIterator<Item = &'a Refusal>) {
        let mut counts = [0u64; Refusal::LABELS.len()];
        for reason in refused {
            if let Some(i) = Refusal::LABELS.iter().position(|l| *l == reason.label()) {
                counts[i] += 1;
            }
        }
        for (gauge, n) in self.leases_refused.iter().zip(counts) {
            gauge.store(n, Ordering::Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let b = format!("{{backend=\"{}\"}}", self.backend);
        let mut out = String::new();
        metric(
            &mut out,
            "weft_leases",
            "gauge",
            "Leases in the cluster, ours included.",
            "",
            get(&self.leases),
        );
        out.push_str(
            "# HELP weft_leases_refused Records under the subnets directory not acted on now, by reason.\n# TYPE weft_leases_refused gauge\n",
        );
        for (label, n) in Refusal::LABELS.iter().zip(&self.leases_refused) {
            let _ = writeln!(out, "weft_leases_refused{{reason=\"{label}\"}} {}", get(n));
        }
        metric(
            &mut out,
            "weft_lease_refusals_total",
            "counter",
            "Times a record under the subnets directory became refused (each is logged once).",
            "",
            get(&self.lease_refusals),
        );
        metric(
            &mut out,
            "weft_lease_held",
            "gauge",
            "1 while this node holds its subnet lease.",
            "",
            get(&self.lease_held),
        );
        metric(
            &mut out,
            "weft_lease_renewals_total",
            "counter",
            "Renewals of this node's lease.",
            "",
            get(&self.lease_renewals),
        );
        metric(
            &mut out,
            "weft_etcd_watch_restarts_total",
            "counter",
            "Times the lease watch was re-established with a full listing.",
            "",
            get(&self.watch_restarts),
        );
        metric(
            &mut out,
            "weft_reconcile_runs_total",
            "counter",
            "Reconciles of the kernel state with the leases.",
            &b,
            get(&self.reconcile_runs),
        );
        metric(
            &mut out,
            "weft_reconcile_errors_total",
            "counter",
            "Reconciles that failed (retried at the next event or tick).",
            &b,
            get(&self.reconcile_errors),
        );
        metric(
            &mut out,
            "weft_reconcile_corrections_total",
            "counter",
            "Kernel entries added, replaced or removed because the kernel differed from the leases.",
            &b,
            get(&self.reconcile_corrections),
        );
        metric(
            &mut out,
            "weft_firewall_checks_total",
            "counter",
            "Checks of the masquerade/forward rules.",
            "",
            get(&self.firewall_checks),
        );
        metric(
            &mut out,
            "weft_firewall_corrections_total",
            "counter",
            "Checks that found the rules different and rewrote them.",
            "",
            get(&self.firewall_corrections),
        );
        if let Some(render) = &self.backend_metrics {
            render(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics {
            backend: "vxlan",
            ..Default::default()
        };
        m.reconcile_runs.store(3, Ordering::Relaxed);
        m.leases.store(2, Ordering::Relaxed);
        let page = m.render();
        assert!(
            page.contains("# TYPE weft_reconcile_runs_total counter\nweft_reconcile_runs_total{backend=\"vxlan\"} 3\n"),
            "{page}"
        );
        assert!(page.contains("\nweft_leases 2\n"), "{page}");
        m.set_refused(&[Refusal::Nested]);
        let page = m.render();
        assert!(
            page.contains("\nweft_leases_refused{reason=\"nested_key\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("\nweft_leases_refused{reason=\"conflict\"} 0\n"),
            "{page}"
        );
    }
}

#[cfg(test)]
mod backend_tests {
    use super::*;

    #[test]
    fn the_backend_lines_are_read_at_each_scrape() {
        let packets = Arc::new(AtomicU64::new(1));
        let live = packets.clone();
        let m = Metrics {
            backend: "udp",
            backend_metrics: Some(Box::new(move |out: &mut String| {
                let _ = writeln!(out, "weft_udp_rx_packets_total {}", live.load(Ordering::Relaxed));
            })),
            ..Default::default()
        };
        assert!(m.render().ends_with("\nweft_udp_rx_packets_total 1\n"));
        packets.store(7, Ordering::Relaxed);
        assert!(
            m.render().ends_with("\nweft_udp_rx_packets_total 7\n"),
            "no reconcile needed"
        );
    }
}
