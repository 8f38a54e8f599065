//! The udp backend's counters: what one worker counts during a batch ([`Tally`]), the atomics
//! the workers add their batches to ([`Counters`]), a copy of them ([`UdpCounters`]) and their
//! Prometheus text, rendered from the atomics whenever /metrics is scraped ([`UdpMetrics`]).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::drop::DropReason;

/// Packet and byte counts since the backend started, errors, and drops by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Packets read from flannel0 and sent to peers.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets from peers written into flannel0 (a coalesced super-segment counts each of
    /// its segments).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// ICMP net-unreachable replies for destinations no lease covers.
    pub icmp_unreachable: u64,
    /// Packets the kernel refused to send to a peer.
    pub send_errors: u64,
    /// Failed reads from flannel0 (the device deleted under the workers).
    pub tun_read_errors: u64,
    /// Writes into flannel0 the kernel refused.
    pub tun_write_errors: u64,
    /// Dropped packets, indexed by [`DropReason::index`].
    pub dropped: [u64; DropReason::ALL.len()],
}

/// One counter of the page: name, help, and how to read it from a snapshot.
type Line = (&'static str, &'static str, fn(&UdpCounters) -> u64);

const LINES: [Line; 8] = [
    (
        "weft_udp_tx_packets_total",
        "Packets read from flannel0 and sent to peers.",
        |c| c.tx_packets,
    ),
    (
        "weft_udp_tx_bytes_total",
        "Bytes read from flannel0 and sent to peers.",
        |c| c.tx_bytes,
    ),
    (
        "weft_udp_rx_packets_total",
        "Packets from peers written into flannel0.",
        |c| c.rx_packets,
    ),
    (
        "weft_udp_rx_bytes_total",
        "Bytes from peers written into flannel0.",
        |c| c.rx_bytes,
    ),
    (
        "weft_udp_icmp_unreachable_total",
        "ICMP net-unreachable replies for destinations no lease covers.",
        |c| c.icmp_unreachable,
    ),
    (
        "weft_udp_send_errors_total",
        "Packets for peers the kernel refused to send.",
        |c| c.send_errors,
    ),
    ("weft_udp_tun_read_errors_total", "Failed reads from flannel0.", |c| {
        c.tun_read_errors
    }),
    (
        "weft_udp_tun_write_errors_total",
        "Writes into flannel0 the kernel refused.",
        |c| c.tun_write_errors,
    ),
];

impl UdpCounters {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Appends the counters to `out` in Prometheus text format (`weft_udp_*`).
    pub fn render_metrics(&self, out: &mut String) {
        for (name, help, get) in LINES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", get(self));
        }
        out.push_str("# HELP weft_udp_dropped_total Packets dropped, by reason.\n");
        out.push_str("# TYPE weft_udp_dropped_total counter\n");
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "weft_udp_dropped_total{{reason=\"{}\"}} {}",
                reason.name(),
                self.dropped(reason)
            );
        }
    }
}

/// A live view of a udp backend's counters, for /metrics: cheap to clone, readable from any
/// thread, current to the last batch each worker finished.
#[derive(Debug, Clone)]
pub struct UdpMetrics(pub(crate) Arc<Counters>);

impl UdpMetrics {
    pub fn snapshot(&self) -> UdpCounters {
        self.0.snapshot()
    }

    /// Appends the current counters to `out` in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.snapshot().render_metrics(out);
    }
}

/// The counters, summed over the workers (each adds its batch's counts once per batch).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    icmp_unreachable: AtomicU64,
    send_errors: AtomicU64,
    tun_read_errors: AtomicU64,
    tun_write_errors: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl Counters {
    pub fn snapshot(&self) -> UdpCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UdpCounters {
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            icmp_unreachable: get(&self.icmp_unreachable),
            send_errors: get(&self.send_errors),
            tun_read_errors: get(&self.tun_read_errors),
            tun_write_errors: get(&self.tun_write_errors),
            dropped: std::array::from_fn(|i| get(&self.dropped[i])),
        }
    }
}

/// A batch's counts, added to the shared counters when the batch is done.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub icmp_unreachable: u64,
    pub send_errors: u64,
    pub tun_read_errors: u64,
    pub tun_write_errors: u64,
    pub dropped: [u64; DropReason::ALL.len()],
}

impl Tally {
    pub fn flush(&mut self, c: &Counters) {
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&c.tx_packets, self.tx_packets);
        add(&c.tx_bytes, self.tx_bytes);
        add(&c.rx_packets, self.rx_packets);
        add(&c.rx_bytes, self.rx_bytes);
        add(&c.icmp_unreachable, self.icmp_unreachable);
        add(&c.send_errors, self.send_errors);
        add(&c.tun_read_errors, self.tun_read_errors);
        add(&c.tun_write_errors, self.tun_write_errors);
        for (c, v) in c.dropped.iter().zip(self.dropped) {
            add(c, v);
        }
        *self = Tally::default();
    }

    /// Packets moved or dropped in this batch.
    pub fn packets(&self) -> u64 {
        self.tx_packets + self.rx_packets + self.dropped.iter().sum::<u64>()
    }

    pub fn drop(&mut self, reason: DropReason) {
        self.dropped[reason.index()] += 1;
    }

    #[cfg(test)]
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_what_the_workers_added_without_waiting_for_anything_else() {
        let counters = Arc::new(Counters::default());
        let metrics = UdpMetrics(counters.clone());
        let mut tally = Tally {
            rx_packets: 5,
            send_errors: 2,
            tun_write_errors: 3,
            ..Tally::default()
        };
        tally.drop(DropReason::BadTcpChecksum);
        tally.flush(&counters);
        assert_eq!(tally, Tally::default(), "a flushed tally starts again from zero");
        let mut page = String::new();
        metrics.render(&mut page);
        for line in [
            "# TYPE weft_udp_send_errors_total counter\nweft_udp_send_errors_total 2\n",
            "# TYPE weft_udp_tun_write_errors_total counter\nweft_udp_tun_write_errors_total 3\n",
            "\nweft_udp_rx_packets_total 5\n",
            "\nweft_udp_dropped_total{reason=\"bad_tcp_checksum\"} 1\n",
            "\nweft_udp_dropped_total{reason=\"too_short\"} 0\n",
        ] {
            assert!(page.contains(line), "{line:?} missing from:\n{page}");
        }
        // Each metric has one HELP and one TYPE line.
        assert_eq!(page.matches("# TYPE weft_udp_dropped_total").count(), 1);
        assert_eq!(page.matches("# HELP ").count(), LINES.len() + 1);
    }
}
