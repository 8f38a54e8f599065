//! The wireguard peer table of one device: one peer per remote lease (its public key, its
//! endpoint, its subnets of the families the device carries as allowed IPs), looked up by inner
//! destination (sending), by session index (receiving) and by public key (a handshake
//! initiation). The workers load it from an `ArcSwap` once per batch; a reconcile builds a new
//! one and swaps it in. A peer whose key is unchanged keeps its protocol state (sessions,
//! timers, counters) across tables.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use weft_core::wireguard::{DevicePlan, Key, WireguardLeaseData};
use weft_core::{Lease, SubnetKey};

use crate::leases::{check_side, LeaseSkip, Side};

/// What one remote lease asks of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSpec {
    /// The lease's subnets of the families the device carries (its allowed IPs).
    pub subnets: SubnetKey,
    pub public_key: Key,
    pub endpoint: SocketAddr,
}

impl PeerSpec {
    /// The allowed IPs, IPv4 first.
    pub fn allowed_ips(&self) -> impl Iterator<Item = IpNet> {
        let v4 = self.subnets.ipv4.map(IpNet::V4);
        v4.into_iter().chain(self.subnets.ipv6.map(IpNet::V6))
    }

    /// Whether an inner packet from `src` may come from this peer.
    pub fn allows(&self, src: IpAddr) -> bool {
        self.allowed_ips().any(|net| net.contains(&src))
    }
}

/// Why a lease yields no peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    Lease(LeaseSkip),
    /// BackendData (BackendV6Data for the IPv6 side) has no valid PublicKey (admission refuses
    /// these; kept as a second guard).
    BadBackendData(String),
    /// The lease has no public address of the family the device reaches peers over (Mode
    /// ipv4 or ipv6).
    NoEndpoint,
}

/// One device as the lease checks see this node: its plan, our lease, and per family it
/// carries our network and public address ([`Side`]).
#[derive(Debug, Clone, Copy)]
pub struct DeviceNode<'a> {
    pub plan: DevicePlan,
    pub own: Option<&'a SubnetKey>,
    pub v4: Option<Side>,
    pub v6: Option<Side>,
}

/// The peers `leases` ask of the device `node`, in subnet order, and the leases skipped with
/// why. A peer is reached on the lease's `Port` (newer flannel) or else on the device's own
/// ListenPort (flannel v0.20.0 uses its own port for every peer).
pub fn peers_from_leases(leases: &[Lease], node: DeviceNode<'_>) -> (Vec<PeerSpec>, Vec<(SubnetKey, Skip)>) {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    for lease in leases {
        match lease_peer(lease, &node) {
            Ok(spec) => peers.push(spec),
            Err(why) => skipped.push((lease.subnet, why)),
        }
    }
    peers.sort_by_key(|p| p.subnets);
    (peers, skipped)
}

/// The peer one lease asks for: its subnets of the families that pass the lease checks, the key
/// of the last of them (flannel reads IPv6's BackendV6Data after IPv4's BackendData), and the
/// endpoint the device's Mode picks.
fn lease_peer(lease: &Lease, node: &DeviceNode<'_>) -> Result<PeerSpec, Skip> {
    let mut subnets = SubnetKey { ipv4: None, ipv6: None };
    let mut data = None;
    let mut why_not = LeaseSkip::NoSideOfFamily;
    for side in [node.v4, node.v6].into_iter().flatten() {
        match check_side(lease, side, |kind| kind == "wireguard") {
            None if side.network.addr().is_ipv6() => {
                subnets.ipv6 = lease.subnet.ipv6.map(|n| n.trunc());
                data = Some(&lease.attrs.backend_v6_data);
            }
            None => {
                subnets.ipv4 = lease.subnet.ipv4.map(|n| n.trunc());
                data = Some(&lease.attrs.backend_data);
            }
            Some(LeaseSkip::NoSideOfFamily) => {}
            Some(LeaseSkip::Own) => return Err(Skip::Lease(LeaseSkip::Own)),
            Some(why) => why_not = why,
        }
    }
    let data = data.ok_or(Skip::Lease(why_not))?;
    let data = WireguardLeaseData::parse(data).map_err(Skip::BadBackendData)?;
    let local_v4 = node.v4.and_then(|s| match s.public_ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    });
    let local_v6 = node.v6.and_then(|s| match s.public_ip {
        IpAddr::V6(ip) => Some(ip),
        IpAddr::V4(_) => None,
    });
    let remote_v4 = lease.subnet.ipv4.map(|_| lease.attrs.public_ip);
    let ip = node
        .plan
        .endpoint(remote_v4, lease.attrs.public_ipv6, local_v4, local_v6)
        .ok_or(Skip::NoEndpoint)?;
    Ok(PeerSpec {
        subnets,
        public_key: data.public_key,
        endpoint: SocketAddr::new(ip, data.port.unwrap_or(node.plan.listen_port)),
    })
}

/// A peer's protocol state and counters, kept while its key stays.
pub(crate) struct PeerState {
    pub public_key: Key,
    /// Our session index prefix for this peer (boringtun puts it in the top 24 bits).
    pub index: u32,
    pub tunn: Mutex<Tunn>,
    /// Wire bytes sent to and received from this peer (what `wg show` calls transfer).
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Completed handshakes, and when the last one completed (unix time in ns; 0 = never).
    pub handshakes: AtomicU64,
    pub last_handshake_ns: AtomicU64,
}

impl std::fmt::Debug for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerState")
            .field("public_key", &weft_core::wireguard::format_key(&self.public_key))
            .field("index", &self.index)
            .finish()
    }
}

impl PeerState {
    /// Records a completed handshake; returns true when it was a rekey (not the first).
    pub fn handshake_done(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.last_handshake_ns.store(now, Ordering::Relaxed);
        self.handshakes.fetch_add(1, Ordering::Relaxed) > 0
    }
}

/// One entry of the table.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub spec: PeerSpec,
    pub state: Arc<PeerState>,
}

/// What every peer's protocol state is built from.
pub(crate) struct Identity {
    pub secret: StaticSecret,
    pub public: PublicKey,
    pub psk: Option<Key>,
    pub keepalive: u16,
    pub rate_limiter: Arc<RateLimiter>,
}

/// The table the workers read.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    peers: Vec<Peer>,
    /// Every allowed IP and its peer, by network address (IPv4 before IPv6).
    routes: Vec<(IpNet, usize)>,
    by_index: HashMap<u32, usize>,
    by_key: HashMap<Key, usize>,
}

impl PeerTable {
    /// A table of `specs` (subnet order), keeping the state of every peer of `old` whose public
    /// key is unchanged; a new key gets fresh state under a fresh index from `next_index`.
    pub fn build(specs: &[PeerSpec], old: &PeerTable, id: &Identity, next_index: &mut u32) -> PeerTable {
        let mut table = PeerTable::default();
        for spec in specs {
            // Two leases with one key: the first (by subnet) gets it.
            if table.by_key.contains_key(&spec.public_key) {
                continue;
            }
            let state = match old.by_key(&spec.public_key) {
                Some(p) => p.state.clone(),
                None => Arc::new(PeerState::new(spec.public_key, id, next_index)),
            };
            let i = table.peers.len();
            table.by_index.insert(state.index, i);
            table.by_key.insert(spec.public_key, i);
            table.routes.extend(spec.allowed_ips().map(|net| (net, i)));
            table.peers.push(Peer { spec: *spec, state });
        }
        table.routes.sort_by_key(|(net, _)| net.network());
        table
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn specs(&self) -> Vec<PeerSpec> {
        self.peers.iter().map(|p| p.spec).collect()
    }

    /// The peer whose allowed IPs hold `dst`.
    pub fn by_destination(&self, dst: IpAddr) -> Option<&Peer> {
        let at = self.routes.partition_point(|(net, _)| net.network() <= dst);
        let (net, i) = self.routes.get(at.checked_sub(1)?)?;
        net.contains(&dst).then(|| &self.peers[*i])
    }

    /// The peer a message with our `receiver_idx` belongs to.
    pub fn by_receiver(&self, receiver_idx: u32) -> Option<&Peer> {
        self.by_index.get(&(receiver_idx >> 8)).map(|&i| &self.peers[i])
    }

    pub fn by_key(&self, key: &Key) -> Option<&Peer> {
        self.by_key.get(key).map(|&i| &self.peers[i])
    }
}

impl PeerState {
    /// Fresh protocol state for `public_key` under the next free index.
    fn new(public_key: Key, id: &Identity, next_index: &mut u32) -> PeerState {
        // 24 bits of index: boringtun shifts it left by 8 for the session ring.
        *next_index = (*next_index + 1) & 0x00ff_ffff;
        let index = *next_index;
        PeerState {
            public_key,
            index,
            tunn: Mutex::new(Tunn::new(
                id.secret.clone(),
                PublicKey::from(public_key),
                id.psk,
                (id.keepalive > 0).then_some(id.keepalive),
                index,
                Some(id.rate_limiter.clone()),
            )),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            last_handshake_ns: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::wireguard::{format_key, EndpointFamily};

    fn key(n: u8) -> Key {
        *PublicKey::from(&StaticSecret::from([n; 32])).as_bytes()
    }

    fn data(n: u8) -> serde_json::Value {
        serde_json::json!({"PublicKey": format_key(&key(n))})
    }

    fn lease(subnet: &str, ip: &str, data: serde_json::Value) -> Lease {
        Lease::v4(subnet.parse().unwrap(), ip.parse().unwrap(), "wireguard", data)
    }

    /// A dual-stack lease of node `n`: 10.5.n.0/24 & fc00:0:0:n::/64, 10.0.0.n & 2001:db8::n,
    /// with key `k` in both BackendData and BackendV6Data.
    fn dual(n: u8, k: u8) -> Lease {
        let mut l = lease(&format!("10.5.{n}.0/24"), &format!("10.0.0.{n}"), data(k));
        l.subnet.ipv6 = Some(format!("fc00:0:0:{n}::/64").parse().unwrap());
        l.attrs.public_ipv6 = Some(format!("2001:db8::{n}").parse().unwrap());
        l.attrs.backend_v6_data = data(k);
        l
    }

    fn side(network: &str, public_ip: &str) -> Side {
        Side {
            own: None,
            network: network.parse().unwrap(),
            public_ip: public_ip.parse().unwrap(),
        }
    }

    fn plan(ipv4: bool, ipv6: bool, endpoints: EndpointFamily, listen_port: u16) -> DevicePlan {
        DevicePlan {
            name: "flannel-wg",
            listen_port,
            ipv4,
            ipv6,
            endpoints,
        }
    }

    fn identity() -> Identity {
        let secret = StaticSecret::from([9u8; 32]);
        let public = PublicKey::from(&secret);
        Identity {
            rate_limiter: Arc::new(RateLimiter::new(&public, 100)),
            secret,
            public,
            psk: None,
            keepalive: 0,
        }
    }

    #[test]
    fn one_peer_per_remote_lease_at_its_port_or_ours() {
        let own = SubnetKey::v4("10.5.1.0/24".parse().unwrap());
        let leases = [
            lease("10.5.1.0/24", "198.51.100.1", data(1)),
            lease(
                "10.5.3.0/24",
                "198.51.100.3",
                serde_json::json!({"PublicKey": format_key(&key(3)), "Port": 51999}),
            ),
            lease("10.5.2.0/24", "198.51.100.2", data(2)),
            lease("10.5.4.0/24", "198.51.100.4", serde_json::json!({"PublicKey": "bad"})),
            Lease::v4(
                "10.5.5.0/24".parse().unwrap(),
                "198.51.100.5".parse().unwrap(),
                "vxlan",
                serde_json::Value::Null,
            ),
        ];
        let node = DeviceNode {
            plan: plan(true, false, EndpointFamily::Ipv4, 51820),
            own: Some(&own),
            v4: Some(side("10.5.0.0/16", "198.51.100.1")),
            v6: None,
        };
        let (peers, skipped) = peers_from_leases(&leases, node);
        let v4 = |s: &str| SubnetKey::v4(s.parse().unwrap());
        assert_eq!(
            peers,
            vec![
                PeerSpec {
                    subnets: v4("10.5.2.0/24"),
                    public_key: key(2),
                    endpoint: "198.51.100.2:51820".parse().unwrap()
                },
                PeerSpec {
                    subnets: v4("10.5.3.0/24"),
                    public_key: key(3),
                    endpoint: "198.51.100.3:51999".parse().unwrap()
                },
            ]
        );
        assert_eq!(skipped.len(), 3);
        assert!(matches!(skipped[2].1, Skip::Lease(LeaseSkip::OtherBackend(_))));
        assert!(matches!(skipped[1].1, Skip::BadBackendData(_)));
    }

    #[test]
    fn each_mode_gives_the_ipv6_side_its_device_and_endpoint() {
        let mut own = dual(1, 1).subnet;
        own.ipv6 = Some("fc00:0:0:1::/64".parse().unwrap());
        let mut v6_only = dual(4, 4);
        v6_only.subnet.ipv4 = None;
        let leases = [dual(1, 1), dual(2, 2), v6_only];
        let v4 = side("10.5.0.0/16", "10.0.0.1");
        let v6 = side("fc00::/48", "2001:db8::1");
        let node = |plan, v4, v6| DeviceNode {
            plan,
            own: Some(&own),
            v4,
            v6,
        };
        // Separate: flannel-wg-v6 carries the IPv6 subnets, reached at [PublicIPv6]:51821.
        let (peers, _) = peers_from_leases(
            &leases,
            node(plan(false, true, EndpointFamily::Ipv6, 51821), None, Some(v6)),
        );
        let got: Vec<_> = peers
            .iter()
            .map(|p| (p.allowed_ips().collect::<Vec<_>>(), p.endpoint))
            .collect();
        assert_eq!(
            got,
            [
                (
                    vec!["fc00:0:0:2::/64".parse().unwrap()],
                    "[2001:db8::2]:51821".parse().unwrap()
                ),
                (
                    vec!["fc00:0:0:4::/64".parse().unwrap()],
                    "[2001:db8::4]:51821".parse().unwrap()
                ),
            ]
        );
        // One device (auto): both subnets on one peer; a private PublicIP gives way to IPv6.
        let (peers, _) = peers_from_leases(
            &leases,
            node(plan(true, true, EndpointFamily::Auto, 51820), Some(v4), Some(v6)),
        );
        let got: Vec<_> = peers.iter().map(|p| (p.allowed_ips().count(), p.endpoint)).collect();
        assert_eq!(
            got,
            [
                (1, "[2001:db8::4]:51820".parse().unwrap()),
                (2, "[2001:db8::2]:51820".parse().unwrap())
            ]
        );
        // Mode ipv4: an IPv6-only lease has no PublicIP to reach.
        let (peers, skipped) = peers_from_leases(
            &leases,
            node(plan(true, true, EndpointFamily::Ipv4, 51820), Some(v4), Some(v6)),
        );
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].endpoint, "10.0.0.2:51820".parse().unwrap());
        assert!(skipped.iter().any(|(_, why)| *why == Skip::NoEndpoint));
    }

    #[test]
    fn lookups_and_state_kept_while_the_key_stays() {
        let id = identity();
        let spec = |s: &str, s6: Option<&str>, k: u8| PeerSpec {
            subnets: SubnetKey {
                ipv4: Some(s.parse().unwrap()),
                ipv6: s6.map(|s| s.parse().unwrap()),
            },
            public_key: key(k),
            endpoint: "198.51.100.9:51820".parse().unwrap(),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut next = 0;
        let t1 = PeerTable::build(
            &[
                spec("10.5.2.0/24", Some("fc00:0:0:2::/64"), 2),
                spec("10.5.3.0/24", None, 3),
            ],
            &PeerTable::default(),
            &id,
            &mut next,
        );
        assert_eq!(t1.by_destination(ip("10.5.3.7")).unwrap().spec.public_key, key(3));
        assert_eq!(t1.by_destination(ip("fc00:0:0:2::5")).unwrap().spec.public_key, key(2));
        assert!(t1.by_destination(ip("fc00:0:0:3::5")).is_none());
        assert!(t1.by_destination(ip("10.5.4.1")).is_none());
        assert!(t1.by_destination(ip("10.5.1.1")).is_none());
        let p2 = t1.by_key(&key(2)).unwrap();
        assert!(p2.spec.allows(ip("fc00:0:0:2::9")) && !p2.spec.allows(ip("fc00:0:0:3::9")));
        assert_eq!(
            t1.by_receiver((p2.state.index << 8) | 3).unwrap().spec.public_key,
            key(2)
        );

        // Node 3 changes its key: a new peer (fresh state); node 2 keeps its state.
        let t2 = PeerTable::build(
            &[spec("10.5.2.0/24", None, 2), spec("10.5.3.0/24", None, 4)],
            &t1,
            &id,
            &mut next,
        );
        assert!(Arc::ptr_eq(
            &t1.by_key(&key(2)).unwrap().state,
            &t2.by_key(&key(2)).unwrap().state
        ));
        assert!(t2.by_key(&key(3)).is_none());
        let old3 = t1.by_key(&key(3)).unwrap().state.index;
        let new3 = t2.by_key(&key(4)).unwrap().state.index;
        assert_ne!(old3, new3);
        assert!(t2.by_receiver(old3 << 8).is_none(), "the old key's sessions are gone");
    }
}
