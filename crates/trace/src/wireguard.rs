//! The wireguard backend's hop in `weft trace`: the peer weftd's `flannel-wg` (or, for IPv6 in
//! Mode separate, `flannel-wg-v6`) has for the destination — its public key, endpoint and allowed
//! IPs checked against the lease, and its latest handshake — read live from that device's
//! WireGuard userspace API socket (what `wg show` reads).
//! Unlike the rest of the walk this step reads the device itself: the table lives in weftd.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use weft_core::wireguard::{format_key, WireguardLeaseData};
use weft_core::Lease;

use crate::facts::Facts;
use crate::report::{Cause, Step};

use weft_core::wireguard::{DEVICE_V4, DEVICE_V6};

/// flannel's device names.
pub const DEVICES: [&str; 2] = [DEVICE_V4, DEVICE_V6];

/// Whether `name` is one of weft's (and flannel's) wireguard devices.
pub fn is_device(name: &str) -> bool {
    DEVICES.contains(&name)
}

/// Where weftd serves device `name`'s userspace API.
pub fn socket_path(name: &str) -> String {
    format!("/var/run/wireguard/{name}.sock")
}

/// One peer of a `get=1` answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UapiPeer {
    /// Base64, as `wg` shows it.
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed: Vec<IpNet>,
    /// Unix seconds of the latest handshake; 0 = none.
    pub last_handshake: u64,
}

/// The peers of a `get=1` answer (WireGuard's cross-platform userspace API).
pub fn parse_get(text: &str) -> Vec<UapiPeer> {
    let mut peers: Vec<UapiPeer> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "public_key" {
            peers.push(UapiPeer {
                public_key: hex_key(value)
                    .map(|k| format_key(&k))
                    .unwrap_or_else(|| value.to_string()),
                ..UapiPeer::default()
            });
            continue;
        }
        let Some(peer) = peers.last_mut() else { continue };
        match key {
            "endpoint" => peer.endpoint = value.parse().ok(),
            "allowed_ip" => peer.allowed.extend(value.parse::<IpNet>().ok()),
            "last_handshake_time_sec" => peer.last_handshake = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    peers
}

fn hex_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// Asks the device for its state (`get=1`).
fn read_uapi(path: &str) -> Result<String, String> {
    let mut conn = UnixStream::connect(path).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"get=1\n\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    for line in BufReader::new(conn).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.is_empty() {
            break;
        }
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text)
}

/// The peer step for a destination routed into wireguard device `device`.
pub(crate) fn peer_hop(f: &Facts, device: &str, lease: Option<&Lease>, steps: &mut Vec<Step>) {
    let socket = socket_path(device);
    let text = match read_uapi(&socket) {
        Ok(t) => t,
        Err(why) => {
            steps.push(Step::info(
                "peer",
                format!("cannot read {device} through {socket} ({why}); is weftd running with the wireguard backend?"),
            ));
            return;
        }
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    steps.push(check_peer(&parse_get(&text), device, f.dst, lease, now));
}

/// What is wrong with `peer` for the lease `l`, whatever the Mode: its key must be the one the
/// lease publishes for `dst`'s family (BackendV6Data for IPv6), its endpoint one of the lease's
/// public addresses, and its allowed IPs the lease's subnet of `dst`'s family, plus at most its
/// other one (a single device carries both).
fn mismatches(peer: &UapiPeer, dst: IpAddr, l: &Lease) -> Vec<String> {
    let data = match dst {
        IpAddr::V6(_) => &l.attrs.backend_v6_data,
        IpAddr::V4(_) => &l.attrs.backend_data,
    };
    let want_key = WireguardLeaseData::parse(data)
        .map(|d| format_key(&d.public_key))
        .unwrap_or_default();
    let mut wrong = Vec::new();
    if peer.public_key != want_key {
        wrong.push(format!("its key is not the lease's PublicKey {want_key}"));
    }
    let publics: Vec<IpAddr> = l
        .subnet
        .ipv4
        .map(|_| IpAddr::V4(l.attrs.public_ip))
        .into_iter()
        .chain(l.attrs.public_ipv6.map(IpAddr::V6))
        .collect();
    if !peer.endpoint.is_some_and(|e| publics.contains(&e.ip())) {
        let publics: Vec<String> = publics.iter().map(|ip| ip.to_string()).collect();
        wrong.push(format!(
            "its endpoint is not the lease's public address ({})",
            publics.join(" or ")
        ));
    }
    let subnets: Vec<IpNet> = l
        .subnet
        .ipv4
        .map(|n| IpNet::V4(n.trunc()))
        .into_iter()
        .chain(l.subnet.ipv6.map(|n| IpNet::V6(n.trunc())))
        .collect();
    let holds_dst = peer.allowed.iter().any(|n| n.contains(&dst) && subnets.contains(n));
    if !holds_dst || !peer.allowed.iter().all(|n| subnets.contains(n)) {
        wrong.push(format!("its allowed IPs are not the lease's subnet {}", l.subnet));
    }
    wrong
}

/// Checks the device's peer for `dst` against its lease.
fn check_peer(peers: &[UapiPeer], device: &str, dst: IpAddr, lease: Option<&Lease>, now: u64) -> Step {
    let Some(peer) = peers.iter().find(|p| p.allowed.iter().any(|n| n.contains(&dst))) else {
        return Step::broken(
            "peer",
            Cause::UdpPeerMissing,
            format!(
                "{device} has no peer whose allowed IPs hold {dst}: the packet is dropped (no_peer). weftd adds the peer \
                 once the lease is admitted; check `weft leases`"
            ),
        );
    };
    let endpoint = peer.endpoint.map(|e| e.to_string()).unwrap_or_else(|| "(none)".into());
    let allowed: Vec<String> = peer.allowed.iter().map(|n| n.to_string()).collect();
    let entry = format!(
        "peer {} endpoint {endpoint} allowed ips {}",
        peer.public_key,
        allowed.join(",")
    );
    if let Some(l) = lease {
        let wrong = mismatches(peer, dst, l);
        if !wrong.is_empty() {
            return Step::broken(
                "peer",
                Cause::UdpPeerMismatch,
                format!(
                    "{device}'s peer for {dst} does not match the lease: {}. weftd swaps its table on the next lease \
                     event or reconcile",
                    wrong.join("; ")
                ),
            )
            .with_entry(entry);
        }
    }
    let handshake = match peer.last_handshake {
        0 => "no handshake yet: the first packet starts one".to_string(),
        t => format!("latest handshake {} s ago", now.saturating_sub(t)),
    };
    Step::ok(
        "peer",
        entry,
        format!(
            "weftd encrypts the packet for this peer (WireGuard, port {}); {handshake}",
            { peer.endpoint.map_or(0, |e| e.port()) }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Status;

    const GET: &str = "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a
listen_port=51820
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
endpoint=198.51.100.2:51820
last_handshake_time_sec=1000
last_handshake_time_nsec=0
tx_bytes=1
rx_bytes=2
allowed_ip=10.5.2.0/24
errno=0
";

    fn lease(key: &str, ip: &str) -> Lease {
        Lease::v4(
            "10.5.2.0/24".parse().unwrap(),
            ip.parse().unwrap(),
            "wireguard",
            serde_json::json!({ "PublicKey": key }),
        )
    }

    #[test]
    fn the_peer_is_checked_against_its_lease() {
        let peers = parse_get(GET);
        assert_eq!(peers.len(), 1);
        let key = peers[0].public_key.clone();
        assert_eq!(key, "uFmW/sycfx/G0lcqdu2hHVm80gvo5UOxXOS9hajnWjM=");
        let dst: IpAddr = "10.5.2.7".parse().unwrap();
        let ok = check_peer(&peers, DEVICE_V4, dst, Some(&lease(&key, "198.51.100.2")), 1010);
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        assert!(ok.message.contains("10 s ago"), "{ok:?}");
        let moved = check_peer(&peers, DEVICE_V4, dst, Some(&lease(&key, "198.51.100.9")), 1010);
        assert_eq!(moved.cause, Some(Cause::UdpPeerMismatch));
        let other = check_peer(&peers, DEVICE_V4, "10.5.3.1".parse().unwrap(), None, 1010);
        assert_eq!(other.cause, Some(Cause::UdpPeerMissing));
    }

    #[test]
    fn an_ipv6_peer_is_checked_against_the_leases_ipv6_side() {
        let key = "uFmW/sycfx/G0lcqdu2hHVm80gvo5UOxXOS9hajnWjM=";
        let mut l = lease(key, "198.51.100.2");
        l.subnet.ipv6 = Some("fc00:0:0:2::/64".parse().unwrap());
        l.attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        l.attrs.backend_v6_data = serde_json::json!({ "PublicKey": key });
        let get = |endpoint: &str, allowed: &[&str]| {
            let allowed: String = allowed.iter().map(|a| format!("allowed_ip={a}\n")).collect();
            GET.replace("endpoint=198.51.100.2:51820", &format!("endpoint={endpoint}"))
                .replace("allowed_ip=10.5.2.0/24\n", &allowed)
        };
        let dst: IpAddr = "fc00:0:0:2::5".parse().unwrap();
        // Mode separate: flannel-wg-v6's peer; a single device's peer with both subnets.
        for (endpoint, allowed) in [
            ("[2001:db8::2]:51821", &["fc00:0:0:2::/64"][..]),
            ("[2001:db8::2]:51820", &["10.5.2.0/24", "fc00:0:0:2::/64"][..]),
        ] {
            let step = check_peer(&parse_get(&get(endpoint, allowed)), DEVICE_V6, dst, Some(&l), 1010);
            assert_eq!(step.status, Status::Ok, "{step:?}");
        }
        l.attrs.backend_v6_data = serde_json::Value::Null;
        let step = check_peer(
            &parse_get(&get("[2001:db8::2]:51821", &["fc00:0:0:2::/64"])),
            DEVICE_V6,
            dst,
            Some(&l),
            1010,
        );
        assert_eq!(step.cause, Some(Cause::UdpPeerMismatch), "{step:?}");
    }
}
