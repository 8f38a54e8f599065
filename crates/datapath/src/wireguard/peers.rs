//! The wireguard peer table: one peer per remote lease (its public key, its endpoint
//! PublicIP:port, its subnet as allowed IPs), looked up by inner destination (sending), by
//! session index (receiving) and by public key (a handshake initiation). The workers load it
//! from an `ArcSwap` once per batch; a reconcile builds a new one and swaps it in. A peer whose
//! key is unchanged keeps its protocol state (sessions, timers, counters) across tables.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::Ipv4Net;
use weft_core::wireguard::{Key, WireguardLeaseData};
use weft_core::{Lease, SubnetKey};

use crate::leases::{check, LeaseSkip, Node};

/// What one remote lease asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSpec {
    pub subnet: Ipv4Net,
    pub public_key: Key,
    pub endpoint: SocketAddrV4,
}

/// Why a lease yields no peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    Lease(LeaseSkip),
    /// BackendData has no valid PublicKey (admission refuses these; kept as a second guard).
    BadBackendData(String),
}

/// The peers `leases` ask for, in subnet order, and the leases skipped with why. A peer is
/// reached at its PublicIP on the lease's `Port` (newer flannel) or else on our own ListenPort
/// (flannel v0.20.0 uses its own port for every peer).
pub fn peers_from_leases(
    leases: &[Lease],
    own: Option<&SubnetKey>,
    network: Ipv4Net,
    public_ip: Ipv4Addr,
    listen_port: u16,
) -> (Vec<PeerSpec>, Vec<(SubnetKey, Skip)>) {
    let node = Node {
        own,
        network,
        public_ip,
    };
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    for lease in leases {
        // `check` passes only leases with an IPv4 side.
        let subnet = match (check(lease, node, |kind| kind == "wireguard"), lease.subnet.ipv4) {
            (None, Some(subnet)) => subnet,
            (why, _) => {
                skipped.push((lease.subnet, Skip::Lease(why.unwrap_or(LeaseSkip::NoSideOfFamily))));
                continue;
            }
        };
        match WireguardLeaseData::parse(&lease.attrs.backend_data) {
            Ok(data) => peers.push(PeerSpec {
                subnet: subnet.trunc(),
                public_key: data.public_key,
                endpoint: SocketAddrV4::new(lease.attrs.public_ip, data.port.unwrap_or(listen_port)),
            }),
            Err(why) => skipped.push((lease.subnet, Skip::BadBackendData(why))),
        }
    }
    peers.sort_by_key(|p| p.subnet);
    (peers, skipped)
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
    /// By subnet (ascending network address).
    peers: Vec<Peer>,
    by_index: HashMap<u32, usize>,
    by_key: HashMap<Key, usize>,
}

impl PeerTable {
    /// A table of `specs` (subnet order), keeping the state of every peer of `old` whose public
    /// key is unchanged; a new key gets fresh state under a fresh index from `next_index`.
    pub fn build(specs: &[PeerSpec], old: &PeerTable, id: &Identity, next_index: &mut u32) -> PeerTable {
        let mut table = PeerTable::default();
        for spec in specs {
            let state = match old.by_key(&spec.public_key) {
                Some(p) => p.state.clone(),
                None => {
                    // 24 bits of index: boringtun shifts it left by 8 for the session ring.
                    *next_index = (*next_index + 1) & 0x00ff_ffff;
                    let index = *next_index;
                    Arc::new(PeerState {
                        public_key: spec.public_key,
                        index,
                        tunn: Mutex::new(Tunn::new(
                            id.secret.clone(),
                            PublicKey::from(spec.public_key),
                            id.psk,
                            (id.keepalive > 0).then_some(id.keepalive),
                            index,
                            Some(id.rate_limiter.clone()),
                        )),
                        tx_bytes: AtomicU64::new(0),
                        rx_bytes: AtomicU64::new(0),
                        handshakes: AtomicU64::new(0),
                        last_handshake_ns: AtomicU64::new(0),
                    })
                }
            };
            // Two leases with one key: the first (by subnet) gets it.
            if table.by_key.contains_key(&spec.public_key) {
                continue;
            }
            let i = table.peers.len();
            table.by_index.insert(state.index, i);
            table.by_key.insert(spec.public_key, i);
            table.peers.push(Peer { spec: *spec, state });
        }
        table
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn specs(&self) -> Vec<PeerSpec> {
        self.peers.iter().map(|p| p.spec).collect()
    }

    /// The peer whose subnet holds `dst`.
    pub fn by_destination(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let at = self.peers.partition_point(|p| p.spec.subnet.network() <= dst);
        let p = self.peers.get(at.checked_sub(1)?)?;
        p.spec.subnet.contains(&dst).then_some(p)
    }

    /// The peer a message with our `receiver_idx` belongs to.
    pub fn by_receiver(&self, receiver_idx: u32) -> Option<&Peer> {
        self.by_index.get(&(receiver_idx >> 8)).map(|&i| &self.peers[i])
    }

    pub fn by_key(&self, key: &Key) -> Option<&Peer> {
        self.by_key.get(key).map(|&i| &self.peers[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::wireguard::format_key;

    fn key(n: u8) -> Key {
        *PublicKey::from(&StaticSecret::from([n; 32])).as_bytes()
    }

    fn lease(subnet: &str, ip: &str, data: serde_json::Value) -> Lease {
        Lease::v4(subnet.parse().unwrap(), ip.parse().unwrap(), "wireguard", data)
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
            lease(
                "10.5.1.0/24",
                "198.51.100.1",
                serde_json::json!({"PublicKey": format_key(&key(1))}),
            ),
            lease(
                "10.5.3.0/24",
                "198.51.100.3",
                serde_json::json!({"PublicKey": format_key(&key(3)), "Port": 51999}),
            ),
            lease(
                "10.5.2.0/24",
                "198.51.100.2",
                serde_json::json!({"PublicKey": format_key(&key(2))}),
            ),
            lease("10.5.4.0/24", "198.51.100.4", serde_json::json!({"PublicKey": "bad"})),
            Lease::v4(
                "10.5.5.0/24".parse().unwrap(),
                "198.51.100.5".parse().unwrap(),
                "vxlan",
                serde_json::Value::Null,
            ),
        ];
        let (peers, skipped) = peers_from_leases(
            &leases,
            Some(&own),
            "10.5.0.0/16".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
            51820,
        );
        assert_eq!(
            peers,
            vec![
                PeerSpec {
                    subnet: "10.5.2.0/24".parse().unwrap(),
                    public_key: key(2),
                    endpoint: "198.51.100.2:51820".parse().unwrap()
                },
                PeerSpec {
                    subnet: "10.5.3.0/24".parse().unwrap(),
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
    fn lookups_and_state_kept_while_the_key_stays() {
        let id = identity();
        let spec = |s: &str, k: u8| PeerSpec {
            subnet: s.parse().unwrap(),
            public_key: key(k),
            endpoint: "198.51.100.9:51820".parse().unwrap(),
        };
        let mut next = 0;
        let t1 = PeerTable::build(
            &[spec("10.5.2.0/24", 2), spec("10.5.3.0/24", 3)],
            &PeerTable::default(),
            &id,
            &mut next,
        );
        assert_eq!(
            t1.by_destination("10.5.3.7".parse().unwrap()).unwrap().spec.public_key,
            key(3)
        );
        assert!(t1.by_destination("10.5.4.1".parse().unwrap()).is_none());
        assert!(t1.by_destination("10.5.1.1".parse().unwrap()).is_none());
        let p2 = t1.by_key(&key(2)).unwrap();
        assert_eq!(
            t1.by_receiver((p2.state.index << 8) | 3).unwrap().spec.public_key,
            key(2)
        );

        // Node 3 changes its key: a new peer (fresh state); node 2 keeps its state.
        let t2 = PeerTable::build(&[spec("10.5.2.0/24", 2), spec("10.5.3.0/24", 4)], &t1, &id, &mut next);
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
