//! What the wireguard workers count, and its Prometheus rendering. Each worker tallies a batch
//! in plain integers and adds them to the shared atomics once per batch.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet or datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgDrop {
    /// Not a WireGuard message (wrong type or size): garbage at the port.
    Malformed,
    /// A handshake message whose MAC1 is not for our public key.
    BadMac,
    /// A handshake initiation from a key no lease names.
    UnknownKey,
    /// A response, cookie or data message for a session index we never handed out.
    UnknownIndex,
    /// Decryption failed (wrong key, wrong PSK, tampering).
    AuthFailed,
    /// A replayed or too old counter.
    Replay,
    /// Data for a session that is gone (expired, peer restarted): the peer will handshake again.
    NoSession,
    /// Any other handshake message the protocol rejects (stale timestamp, unexpected).
    HandshakeFailed,
    /// Under load: a handshake without a valid cookie (a cookie reply was sent instead).
    UnderLoad,
    /// A decrypted packet whose inner source is outside the peer's allowed IPs.
    SpoofedSource,
    /// A packet from a device whose destination no lease covers.
    NoPeer,
    /// A packet from the device that is neither IPv4 nor IPv6 (or too short to be one).
    NotIp,
}

impl WgDrop {
    pub const ALL: [WgDrop; 12] = [
        WgDrop::Malformed,
        WgDrop::BadMac,
        WgDrop::UnknownKey,
        WgDrop::UnknownIndex,
        WgDrop::AuthFailed,
        WgDrop::Replay,
        WgDrop::NoSession,
        WgDrop::HandshakeFailed,
        WgDrop::UnderLoad,
        WgDrop::SpoofedSource,
        WgDrop::NoPeer,
        WgDrop::NotIp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WgDrop::Malformed => "malformed",
            WgDrop::BadMac => "bad_mac",
            WgDrop::UnknownKey => "unknown_key",
            WgDrop::UnknownIndex => "unknown_index",
            WgDrop::AuthFailed => "auth_failed",
            WgDrop::Replay => "replay",
            WgDrop::NoSession => "no_session",
            WgDrop::HandshakeFailed => "handshake_failed",
            WgDrop::UnderLoad => "under_load",
            WgDrop::SpoofedSource => "spoofed_source",
            WgDrop::NoPeer => "no_peer",
            WgDrop::NotIp => "not_ip",
        }
    }
}

/// The shared counters.
#[derive(Debug, Default)]
pub struct Counters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    handshakes: AtomicU64,
    rekeys: AtomicU64,
    cookies_sent: AtomicU64,
    send_errors: AtomicU64,
    tun_write_errors: AtomicU64,
    dropped: [AtomicU64; 12],
}

/// A worker's counts since its last flush.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Inner packets sent to peers, and the wire bytes they took.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Inner packets written into the devices, and the wire bytes they came in.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub handshakes: u64,
    pub rekeys: u64,
    pub cookies_sent: u64,
    pub send_errors: u64,
    pub tun_write_errors: u64,
    pub dropped: [u64; 12],
}

impl Tally {
    pub fn drop(&mut self, why: WgDrop) {
        self.dropped[why as usize] += 1;
    }

    pub fn flush(&mut self, c: &Counters) {
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v != 0 {
                a.fetch_add(std::mem::take(v), Ordering::Relaxed);
            }
        };
        add(&c.tx_packets, &mut self.tx_packets);
        add(&c.tx_bytes, &mut self.tx_bytes);
        add(&c.rx_packets, &mut self.rx_packets);
        add(&c.rx_bytes, &mut self.rx_bytes);
        add(&c.handshakes, &mut self.handshakes);
        add(&c.rekeys, &mut self.rekeys);
        add(&c.cookies_sent, &mut self.cookies_sent);
        add(&c.send_errors, &mut self.send_errors);
        add(&c.tun_write_errors, &mut self.tun_write_errors);
        for (a, v) in c.dropped.iter().zip(self.dropped.iter_mut()) {
            add(a, v);
        }
    }
}

impl Counters {
    pub fn dropped(&self, why: WgDrop) -> u64 {
        self.dropped[why as usize].load(Ordering::Relaxed)
    }

    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Prometheus exposition text; `peers` is the size of the current peer table.
    pub fn render(&self, peers: usize, out: &mut String) {
        use std::fmt::Write;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "weft_wireguard_tx_packets_total",
            "wireguard: inner packets encrypted and sent to peers",
            get(&self.tx_packets),
        );
        counter(
            "weft_wireguard_tx_bytes_total",
            "wireguard: wire bytes sent to peers (data messages)",
            get(&self.tx_bytes),
        );
        counter(
            "weft_wireguard_rx_packets_total",
            "wireguard: inner packets decrypted and written into flannel-wg (or flannel-wg-v6)",
            get(&self.rx_packets),
        );
        counter(
            "weft_wireguard_rx_bytes_total",
            "wireguard: wire bytes of the data messages decrypted",
            get(&self.rx_bytes),
        );
        counter(
            "weft_wireguard_handshakes_total",
            "wireguard: handshakes completed (as initiator or responder)",
            get(&self.handshakes),
        );
        counter(
            "weft_wireguard_rekeys_total",
            "wireguard: handshakes that replaced a peer's earlier session",
            get(&self.rekeys),
        );
        counter(
            "weft_wireguard_cookie_replies_total",
            "wireguard: cookie replies sent to handshakes under load",
            get(&self.cookies_sent),
        );
        counter(
            "weft_wireguard_send_errors_total",
            "wireguard: datagrams the kernel refused to send",
            get(&self.send_errors),
        );
        counter(
            "weft_wireguard_tun_write_errors_total",
            "wireguard: packets flannel-wg (or flannel-wg-v6) refused",
            get(&self.tun_write_errors),
        );
        let _ = writeln!(
            out,
            "# HELP weft_wireguard_dropped_total wireguard: datagrams and packets dropped, by reason\n# TYPE weft_wireguard_dropped_total counter"
        );
        for why in WgDrop::ALL {
            let _ = writeln!(
                out,
                "weft_wireguard_dropped_total{{reason=\"{}\"}} {}",
                why.label(),
                self.dropped(why)
            );
        }
        let _ = writeln!(
            out,
            "# HELP weft_wireguard_peers wireguard: peers in the table\n# TYPE weft_wireguard_peers gauge\nweft_wireguard_peers {peers}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_line() {
        let c = Counters::default();
        let mut t = Tally::default();
        for (i, why) in WgDrop::ALL.iter().enumerate() {
            assert_eq!(*why as usize, i);
            t.drop(*why);
        }
        t.drop(WgDrop::Malformed);
        t.flush(&c);
        assert_eq!(c.dropped(WgDrop::Malformed), 2);
        let mut page = String::new();
        c.render(3, &mut page);
        assert!(
            page.contains("weft_wireguard_dropped_total{reason=\"malformed\"} 2\n"),
            "{page}"
        );
        assert!(page.contains("weft_wireguard_dropped_total{reason=\"spoofed_source\"} 1\n"));
        assert!(page.contains("weft_wireguard_peers 3\n"));
    }
}
