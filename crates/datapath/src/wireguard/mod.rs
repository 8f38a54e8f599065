//! The wireguard backend (flannel's `wireguard` type) in user space, for kernels without the
//! WireGuard module: the kernel routes the cluster network into the TUN device `flannel-wg`;
//! worker threads encrypt each packet for the peer whose lease holds its destination and send
//! it as a WireGuard message to that node's PublicIP on ListenPort (51820); messages from peers
//! go the other way. On the wire it is WireGuard: a kernel flannel node, wireguard-go or any
//! other WireGuard peer configured from the leases talks to it.
//!
//! The protocol (Noise IK handshake, cookies, transport encryption, replay window, timers'
//! state machine) is boringtun's I/O-free `noise` module; nothing here is cryptography. This
//! module owns `flannel-wg` (persistent, so a restart adopts it), its /32 address, the one
//! scope-link route of the network through it, the UDP port, the private key file and the
//! userspace API socket. It never touches other routes or devices.

mod counters;
pub mod key;
pub mod peers;
pub mod uapi;
mod worker;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::{IpNet, Ipv4Net};
use weft_core::wireguard::{format_key, Key, WireguardLeaseData, WireguardOptions};
use weft_core::{Lease, NetworkConfig, SubnetKey};
use weft_kernel::iface::ExternalInterface;
use weft_kernel::monitor::KernelEvent;
use weft_kernel::netlink::{AddrFamily, Netlink, NetlinkError, RouteSpec};
use weft_kernel::tun::{open_tun, TunError, TunOptions};

use self::counters::Counters;
pub use self::counters::WgDrop;
pub use self::key::KeyFileError;
use self::peers::{peers_from_leases, Identity, PeerTable, Skip};
use self::worker::{Shared, Worker};
use crate::backend::{to_leases, Backend, BackendError, LeaseSet, MetricsRenderer, Report};

/// The device name flannel uses (IPv4).
pub const DEVICE: &str = "flannel-wg";
/// Handshake messages per second the device takes before it asks for cookies (each initiation
/// passes the limiter twice: once before the peer lookup, once in boringtun).
const HANDSHAKE_RATE_LIMIT: u64 = 200;

#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    #[error("wireguard backend: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("wireguard backend: {0}")]
    Tun(#[from] TunError),
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("wireguard backend: cannot bind UDP port {port} (ListenPort): {source}; is another flanneld or weftd running on this node?")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("wireguard backend: cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("wireguard backend: cannot serve the userspace API socket {path}: {source}")]
    Uapi {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wireguard backend: the underlay MTU {mtu} leaves no room for WireGuard's 80 bytes; fix the interface MTU or set Backend.MTU")]
    MtuTooSmall { mtu: u32 },
    #[error("wireguard backend: device {DEVICE} disappeared right after it was opened; is something deleting it?")]
    DeviceGone,
    #[error("wireguard backend: no lease yet; call set_lease with this node's subnet before reconcile")]
    NoLease,
    #[error("wireguard backend: {0}")]
    Config(#[from] weft_core::ConfigError),
}

/// How the backend runs; the defaults suit a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardTuning {
    /// Worker threads, each with one flannel-wg queue and one UDP socket.
    pub workers: usize,
    /// TUN offloads (TSO in, GRO out) and UDP GSO/GRO. Off: one packet per read/write.
    pub offload: bool,
    /// Key file; default `$WIREGUARD_KEY_FILE`, else `/run/flannel/wgkey`.
    pub key_file: PathBuf,
    /// Directory of the userspace API socket; default `/var/run/wireguard`.
    pub socket_dir: PathBuf,
}

impl Default for WireguardTuning {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        WireguardTuning {
            workers: cpus.clamp(1, 8),
            offload: true,
            key_file: key::key_file_path(),
            socket_dir: PathBuf::from(uapi::DEFAULT_SOCKET_DIR),
        }
    }
}

/// The wireguard backend of one node.
pub struct WireguardBackend {
    nl: Netlink,
    ext: ExternalInterface,
    public_ip: Ipv4Addr,
    opts: WireguardOptions,
    tuning: WireguardTuning,
    network: Ipv4Net,
    own: Option<SubnetKey>,
    index: u32,
    public_key: Key,
    shared: Arc<Shared>,
    next_index: u32,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// A socket on ListenPort for the handshakes a reconcile starts.
    kick_sock: Option<std::os::fd::OwnedFd>,
}

impl std::fmt::Debug for WireguardBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireguardBackend")
            .field("device", &DEVICE)
            .field("public_key", &format_key(&self.public_key))
            .field("port", &self.opts.listen_port)
            .field("own", &self.own)
            .finish()
    }
}

impl WireguardBackend {
    /// Reads or creates the private key, creates or adopts `flannel-wg` (MTU: the interface's
    /// minus 80 unless `MTU` is set; up), binds ListenPort, serves the userspace API and starts
    /// the workers. Messages are dropped until [`WireguardBackend::reconcile`] fills the table.
    pub async fn start(
        nl: Netlink,
        ext: ExternalInterface,
        public_ip: Ipv4Addr,
        config: NetworkConfig,
    ) -> Result<Self, BackendError> {
        Self::start_tuned(nl, ext, public_ip, config, WireguardTuning::default())
            .await
            .map_err(BackendError::new)
    }

    /// [`WireguardBackend::start`] with explicit tuning (tests).
    pub async fn start_tuned(
        nl: Netlink,
        ext: ExternalInterface,
        public_ip: Ipv4Addr,
        config: NetworkConfig,
        tuning: WireguardTuning,
    ) -> Result<Self, WireguardError> {
        let opts = config.wireguard.clone();
        let network = config.ipv4_pool()?.network.trunc();
        device_mtu(&opts, &ext)?;
        let (private, generated) = key::load_or_generate(&tuning.key_file)?;
        let secret = StaticSecret::from(private);
        let public = PublicKey::from(&secret);
        tracing::info!(
            key_file = %tuning.key_file.display(),
            public_key = %format_key(public.as_bytes()),
            "wireguard private key {}",
            if generated { "generated" } else { "read" }
        );
        let identity = Identity {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
            psk: opts.psk,
            keepalive: opts.persistent_keepalive,
        };
        let mut backend = WireguardBackend {
            nl,
            ext,
            public_ip,
            tuning,
            network,
            own: None,
            index: 0,
            public_key: *public.as_bytes(),
            shared: Arc::new(Shared {
                table: ArcSwap::from_pointee(PeerTable::default()),
                counters: Counters::default(),
                identity,
            }),
            // A random start, so a restarted node's indices differ from its last run's.
            next_index: random_u32() & 0x00ff_ffff,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            kick_sock: None,
            opts,
        };
        backend.start_threads()?;
        backend.ensure_device().await?;
        tracing::info!(
            device = DEVICE,
            mtu = backend.mtu(),
            port = backend.opts.listen_port,
            workers = backend.tuning.workers,
            "wireguard datapath running (user space)"
        );
        Ok(backend)
    }

    fn start_threads(&mut self) -> Result<(), WireguardError> {
        self.stop_threads();
        let n = self.tuning.workers.max(1);
        let queues = open_tun(
            DEVICE,
            &TunOptions {
                queues: n,
                vnet_hdr: self.tuning.offload,
            },
        )?;
        let port = self.opts.listen_port;
        let bind = || {
            crate::udp::socket::bind_udp(Ipv4Addr::UNSPECIFIED, port)
                .map_err(|source| WireguardError::Bind { port, source })
        };
        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            sockets.push(bind()?);
        }
        self.stop = Arc::new(AtomicBool::new(false));
        let timer_sock = sockets[0].try_clone().map_err(WireguardError::Thread)?;
        self.kick_sock = Some(sockets[0].try_clone().map_err(WireguardError::Thread)?);
        for (id, (tun, sock)) in queues.into_iter().zip(sockets).enumerate() {
            let worker = Worker::new(tun, sock, self.shared.clone(), self.stop.clone());
            self.threads.push(worker.spawn(id).map_err(WireguardError::Thread)?);
        }
        self.threads.push(
            worker::spawn_timers(timer_sock, self.shared.clone(), self.stop.clone()).map_err(WireguardError::Thread)?,
        );
        let dir = self.tuning.socket_dir.clone();
        let uapi = uapi::serve(&dir, DEVICE, self.shared.clone(), port, self.stop.clone()).map_err(|source| {
            WireguardError::Uapi {
                path: uapi::socket_path(&dir, DEVICE),
                source,
            }
        })?;
        self.threads.push(uapi);
        Ok(())
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }

    /// This node's public key (the lease's BackendData.PublicKey).
    pub fn public_key(&self) -> Key {
        self.public_key
    }

    /// The device's index (changes when the device had to be created again).
    pub fn device_index(&self) -> u32 {
        self.index
    }

    /// The overlay MTU (FLANNEL_MTU).
    pub fn mtu(&self) -> u32 {
        device_mtu(&self.opts, &self.ext).unwrap_or(0)
    }

    /// The peers in the table now.
    pub fn peers(&self) -> Vec<peers::PeerSpec> {
        self.shared.table.load().specs()
    }

    /// Drops counted under `why` so far.
    pub fn dropped(&self, why: WgDrop) -> u64 {
        self.shared.counters.dropped(why)
    }

    /// Handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.shared.counters.handshakes()
    }

    /// Records this node's lease: flannel-wg gets the subnet's network address /32 and the
    /// scope-link route of the whole network.
    pub async fn set_lease(&mut self, own: SubnetKey) -> Result<(), WireguardError> {
        self.own = Some(own);
        self.ensure_device().await?;
        Ok(())
    }

    /// Makes sure flannel-wg exists with our MTU, address (once the lease is known) and the
    /// network route, and is up; reopens it (restarting the threads) if it was deleted.
    /// Returns (recreated, corrections).
    async fn ensure_device(&mut self) -> Result<(bool, usize), WireguardError> {
        let mut recreated = false;
        let link = match self.nl.link_by_name(DEVICE).await? {
            Some(link) if self.index == 0 || link.index == self.index => link,
            _ => {
                tracing::warn!(device = DEVICE, "device was missing or replaced; opening it again");
                self.start_threads()?;
                recreated = true;
                self.nl.link_by_name(DEVICE).await?.ok_or(WireguardError::DeviceGone)?
            }
        };
        if self.index != 0 && link.index != self.index {
            recreated = true;
        }
        self.index = link.index;
        let mut corrected = 0;
        let mtu = device_mtu(&self.opts, &self.ext)?;
        if link.mtu != mtu {
            self.nl.set_mtu(link.index, mtu).await?;
            corrected += 1;
        }
        if !link.up {
            self.nl.set_link_up(link.index).await?;
            corrected += 1;
        }
        if let Some(own) = self.own.and_then(|o| o.ipv4) {
            let addr = IpNet::V4(Ipv4Net::new(own.network(), 32).expect("/32 is a valid prefix"));
            let addrs = self.nl.list_link_addrs(link.index, Some(AddrFamily::Ipv4)).await?;
            if addrs != [addr] {
                self.nl.ensure_addr(link.index, addr).await?;
                corrected += 1;
            }
            // Scope link (no gateway), added after the device is up and addressed, as flannel.
            let want = RouteSpec {
                dst: self.network.into(),
                gateway: None,
                oif: link.index,
                onlink: false,
            };
            let routes = self.nl.list_routes(Some(AddrFamily::Ipv4)).await?;
            let present = routes
                .iter()
                .any(|r| r.dst == want.dst && r.oif == Some(link.index) && r.gateway.is_none());
            if !present {
                self.nl.replace_route(&want).await?;
                corrected += 1;
            }
        }
        Ok((recreated, corrected))
    }

    /// Brings flannel-wg and the peer table in line with `leases` (our own included): one peer
    /// per remote wireguard lease; a peer whose key is unchanged keeps its sessions, a changed
    /// key replaces the peer, a lease that went removes it.
    pub async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, WireguardError> {
        let own = self.own.ok_or(WireguardError::NoLease)?;
        let (device_recreated, corrected) = self.ensure_device().await?;
        let (specs, skipped) =
            peers_from_leases(leases, Some(&own), self.network, self.public_ip, self.opts.listen_port);
        let node = crate::leases::Node {
            own: Some(&own),
            network: self.network,
            public_ip: self.public_ip,
        };
        let mut lease_skips = Vec::new();
        let mut bad = 0;
        for (subnet, why) in skipped {
            match why {
                Skip::Lease(why) => lease_skips.push((subnet, why)),
                Skip::BadBackendData(why) => {
                    tracing::warn!(lease = %subnet, "lease BackendData {why}; no peer for it");
                    bad += 1;
                }
            }
        }
        let skipped_leases = crate::leases::log_skipped("wireguard", &lease_skips, node) + bad;
        let current = self.shared.table.load_full();
        let mut report = Report {
            device_recreated,
            replaced: corrected,
            skipped_leases,
            peers: specs.len(),
            ..Report::default()
        };
        let old = current.specs();
        if old != specs {
            for spec in &specs {
                match old.iter().find(|o| o.subnet == spec.subnet) {
                    None => report.added += 1,
                    Some(o) if o != spec => report.replaced += 1,
                    Some(_) => {}
                }
            }
            report.removed += old
                .iter()
                .filter(|o| !specs.iter().any(|s| s.subnet == o.subnet))
                .count();
            let table = Arc::new(PeerTable::build(
                &specs,
                &current,
                &self.shared.identity,
                &mut self.next_index,
            ));
            self.shared.table.store(table.clone());
            if let Some(sock) = &self.kick_sock {
                for peer in table.peers() {
                    if current.by_key(&peer.spec.public_key).is_none() {
                        worker::initiate(std::os::fd::AsRawFd::as_raw_fd(sock), peer);
                    }
                }
            }
        }
        if report.changed() {
            tracing::info!(
                device = DEVICE,
                peers = report.peers,
                added = report.added,
                replaced = report.replaced,
                removed = report.removed,
                recreated = report.device_recreated,
                "wireguard state reconciled"
            );
        }
        Ok(report)
    }

    /// Stops the threads and closes the sockets; flannel-wg stays with its address and route.
    pub fn stop(&mut self) {
        self.stop_threads();
    }
}

impl Drop for WireguardBackend {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

#[async_trait::async_trait]
impl Backend for WireguardBackend {
    fn name(&self) -> &'static str {
        "wireguard"
    }

    fn backend_data(&self) -> serde_json::Value {
        WireguardLeaseData::to_json(&self.public_key)
    }

    fn mtu(&self) -> u32 {
        WireguardBackend::mtu(self)
    }

    async fn set_lease(&mut self, own: &Lease) -> Result<(), BackendError> {
        WireguardBackend::set_lease(self, own.subnet)
            .await
            .map_err(BackendError::new)
    }

    async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, BackendError> {
        WireguardBackend::reconcile(self, leases)
            .await
            .map_err(BackendError::new)
    }

    /// flannel-wg, its address or its route gone: the reconcile puts them back.
    async fn kernel_changed(&mut self, event: &KernelEvent, all: &LeaseSet) -> Result<Report, BackendError> {
        let device = self.device_index();
        let ours = match event {
            KernelEvent::LinkGone(link) => link.index == device,
            KernelEvent::LinkChanged(link) => link.index == device && !link.up,
            KernelEvent::RouteGone(route) => route.oif == Some(device),
            KernelEvent::Overrun => true,
            _ => false,
        };
        if !ours {
            return Ok(Report::default());
        }
        Backend::reconcile(self, &to_leases(all)).await
    }

    fn metrics(&self) -> Option<MetricsRenderer> {
        let shared = self.shared.clone();
        Some(Box::new(move |out: &mut String| {
            let peers = shared.table.load().peers().len();
            shared.counters.render(peers, out)
        }))
    }

    fn peer_table(&self) -> Option<String> {
        let peers: Vec<weft_core::peer_file::PeerEntry> = self
            .peers()
            .iter()
            .map(|p| weft_core::peer_file::PeerEntry {
                subnet: p.subnet,
                public_ip: *p.endpoint.ip(),
            })
            .collect();
        Some(weft_core::peer_file::render(&peers))
    }
}

/// The device MTU: `MTU` (else the interface's) minus 80, as flannel.
pub fn device_mtu(opts: &WireguardOptions, ext: &ExternalInterface) -> Result<u32, WireguardError> {
    match opts.device_mtu(ext.mtu) {
        mtu if mtu >= 68 => Ok(mtu),
        _ => Err(WireguardError::MtuTooSmall {
            mtu: opts.mtu.unwrap_or(ext.mtu),
        }),
    }
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: the pointer and length describe `b`.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u32::from_ne_bytes(b)
}
