//! The wireguard backend (flannel's `wireguard` type) in user space, for kernels without the
//! WireGuard module: the kernel routes the cluster network into the TUN device `flannel-wg`
//! (and, for IPv6 in flannel's default Mode separate, `flannel-wg-v6`); worker threads encrypt
//! each packet for the peer whose lease holds its destination and send it as a WireGuard message
//! to that node's PublicIP on ListenPort (51820), or [PublicIPv6] on ListenPortV6 (51821);
//! messages from peers go the other way. On the wire it is WireGuard: a kernel flannel node,
//! wireguard-go or any other WireGuard peer configured from the leases talks to it.
//!
//! The protocol (Noise IK handshake, cookies, transport encryption, replay window, timers'
//! state machine) is boringtun's I/O-free `noise` module; nothing here is cryptography. This
//! module owns the private key file and lays out the devices as flannel's Mode asks
//! ([`weft_core::wireguard::WireguardOptions::devices`]); each device ([`device`]) owns its TUN,
//! addresses, route, UDP port and userspace API socket. One key serves every device, as
//! flannel's devices read the same key file.

mod counters;
mod device;
pub mod key;
pub mod peers;
pub mod uapi;
mod worker;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use weft_core::wireguard::{format_key, Key, WireguardLeaseData, WireguardOptions, DEVICE_V4};
use weft_core::{Lease, NetworkConfig};
use weft_kernel::iface::ExternalInterface;
use weft_kernel::monitor::KernelEvent;
use weft_kernel::netlink::{Netlink, NetlinkError};
use weft_kernel::tun::TunError;

use self::counters::Counters;
pub use self::counters::WgDrop;
use self::device::{DeviceParts, WgDevice};
pub use self::key::KeyFileError;
use self::peers::Identity;
use crate::backend::{merge_reports, to_leases, Backend, BackendError, LeaseSet, MetricsRenderer, Report};
use crate::leases::Side;

/// The device name flannel uses for IPv4 (and for both families outside Mode separate).
pub const DEVICE: &str = DEVICE_V4;
/// The smallest MTU a link carrying IPv6 may have (RFC 8200).
const IPV6_MIN_MTU: u32 = 1280;
/// Handshake messages per second a device takes before it asks for cookies (each initiation
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
    #[error("wireguard backend: cannot bind UDP port {port} of {device} (ListenPort, or ListenPortV6 for flannel-wg-v6): {source}; is another flanneld or weftd running on this node?")]
    Bind {
        device: &'static str,
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
    #[error("wireguard backend: the device MTU {mtu} is below IPv6's minimum 1280, so the IPv6 device could not carry IPv6; raise the interface MTU or Backend.MTU to at least 1360")]
    MtuTooSmallForIpv6 { mtu: u32 },
    #[error("wireguard backend: device {device} disappeared right after it was opened; is something deleting it?")]
    DeviceGone { device: &'static str },
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

/// The wireguard backend of one node: its devices and their shared key.
pub struct WireguardBackend {
    ext: ExternalInterface,
    opts: WireguardOptions,
    public_key: Key,
    /// Whether the lease carries BackendData (IPv4) and BackendV6Data (IPv6).
    ipv4: bool,
    ipv6: bool,
    devices: Vec<WgDevice>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for WireguardBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let devices: Vec<&str> = self.devices.iter().map(|d| d.plan.name).collect();
        f.debug_struct("WireguardBackend")
            .field("devices", &devices)
            .field("public_key", &format_key(&self.public_key))
            .field("mode", &self.opts.mode)
            .finish()
    }
}

/// This node's underlay: its public IPv4 address when the network enables IPv4, its public
/// IPv6 address when it enables IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl WireguardBackend {
    /// Reads or creates the private key and starts the devices the config's Mode and families
    /// ask for (see [`WgDevice::start`]).
    pub async fn start(
        nl: Netlink,
        ext: ExternalInterface,
        underlay: Underlay,
        config: NetworkConfig,
    ) -> Result<Self, BackendError> {
        Self::start_tuned(nl, ext, underlay, config, WireguardTuning::default())
            .await
            .map_err(BackendError::new)
    }

    /// [`WireguardBackend::start`] with explicit tuning (tests).
    pub async fn start_tuned(
        nl: Netlink,
        ext: ExternalInterface,
        underlay: Underlay,
        config: NetworkConfig,
        tuning: WireguardTuning,
    ) -> Result<Self, WireguardError> {
        let opts = config.wireguard.clone();
        let mtu = device_mtu(&opts, &ext)?;
        let (private, generated) = key::load_or_generate(&tuning.key_file)?;
        let secret = StaticSecret::from(private);
        let public = PublicKey::from(&secret);
        tracing::info!(
            key_file = %tuning.key_file.display(),
            public_key = %format_key(public.as_bytes()),
            "wireguard private key {}",
            if generated { "generated" } else { "read" }
        );
        let side = |network: Option<ipnet::IpNet>, ip: Option<std::net::IpAddr>| {
            network.zip(ip).map(|(network, public_ip)| Side {
                own: None,
                network,
                public_ip,
            })
        };
        let v4 = side(config.network().map(Into::into), underlay.ipv4.map(Into::into));
        let v6 = side(config.ipv6_network().map(Into::into), underlay.ipv6.map(Into::into));
        if v6.is_some() && mtu < IPV6_MIN_MTU {
            return Err(WireguardError::MtuTooSmallForIpv6 { mtu });
        }
        let counters = Arc::new(Counters::default());
        let mut devices = Vec::new();
        for plan in opts.devices(v4.is_some(), v6.is_some()) {
            let parts = DeviceParts {
                nl: nl.clone(),
                mtu,
                tuning: tuning.clone(),
                v4,
                v6,
                identity: Identity {
                    rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
                    secret: secret.clone(),
                    public,
                    psk: opts.psk,
                    keepalive: opts.persistent_keepalive,
                },
                counters: counters.clone(),
                // A random start, so a restarted node's indices differ from its last run's.
                next_index: random_u32() & 0x00ff_ffff,
            };
            devices.push(WgDevice::start(plan, parts).await?);
        }
        Ok(WireguardBackend {
            ext,
            opts,
            public_key: *public.as_bytes(),
            ipv4: v4.is_some(),
            ipv6: v6.is_some(),
            devices,
            counters,
        })
    }

    /// This node's public key (the lease's BackendData.PublicKey, and BackendV6Data's).
    pub fn public_key(&self) -> Key {
        self.public_key
    }

    /// The overlay MTU (FLANNEL_MTU).
    pub fn mtu(&self) -> u32 {
        device_mtu(&self.opts, &self.ext).unwrap_or(0)
    }

    /// The peers of every device now (with its name).
    pub fn peers(&self) -> Vec<(&'static str, peers::PeerSpec)> {
        let per_device = self
            .devices
            .iter()
            .map(|d| d.peers().into_iter().map(|p| (d.plan.name, p)));
        per_device.flatten().collect()
    }

    /// Drops counted under `why` so far, on every device.
    pub fn dropped(&self, why: WgDrop) -> u64 {
        self.counters.dropped(why)
    }

    /// Handshakes completed so far, on every device.
    pub fn handshakes(&self) -> u64 {
        self.counters.handshakes()
    }

    /// Stops the threads and closes the sockets; the devices stay with their addresses and
    /// routes.
    pub fn stop(&mut self) {
        for device in &mut self.devices {
            device.stop_threads();
        }
    }
}

#[async_trait::async_trait]
impl Backend for WireguardBackend {
    fn name(&self) -> &'static str {
        "wireguard"
    }

    /// `{"PublicKey":...}` when the network enables IPv4, as flannel's newSubnetAttrs.
    fn backend_data(&self) -> serde_json::Value {
        match self.ipv4 {
            true => WireguardLeaseData::to_json(&self.public_key),
            false => serde_json::Value::Null,
        }
    }

    /// The same `{"PublicKey":...}` when the network enables IPv6.
    fn backend_v6_data(&self) -> serde_json::Value {
        match self.ipv6 {
            true => WireguardLeaseData::to_json(&self.public_key),
            false => serde_json::Value::Null,
        }
    }

    fn mtu(&self) -> u32 {
        WireguardBackend::mtu(self)
    }

    async fn set_lease(&mut self, own: &Lease) -> Result<(), BackendError> {
        for device in &mut self.devices {
            device.set_lease(own.subnet).await.map_err(BackendError::new)?;
        }
        Ok(())
    }

    async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, BackendError> {
        let mut reports = Vec::new();
        for device in &mut self.devices {
            reports.push(device.reconcile(leases).await);
        }
        merge_reports(reports).map_err(BackendError::new)
    }

    /// A device, its address or its route gone: the reconcile puts them back.
    async fn kernel_changed(&mut self, event: &KernelEvent, all: &LeaseSet) -> Result<Report, BackendError> {
        let ours = |device: u32| match event {
            KernelEvent::LinkGone(link) => link.index == device,
            KernelEvent::LinkChanged(link) => link.index == device && !link.up,
            KernelEvent::RouteGone(route) => route.oif == Some(device),
            KernelEvent::Overrun => true,
            _ => false,
        };
        if !self.devices.iter().any(|d| ours(d.index())) {
            return Ok(Report::default());
        }
        Backend::reconcile(self, &to_leases(all)).await
    }

    fn metrics(&self) -> Option<MetricsRenderer> {
        let counters = self.counters.clone();
        let tables: Vec<_> = self.devices.iter().map(|d| d.shared.clone()).collect();
        Some(Box::new(move |out: &mut String| {
            let peers = tables.iter().map(|s| s.table.load().peers().len()).sum();
            counters.render(peers, out)
        }))
    }

    /// The IPv4 peers reached over IPv4 (the table `weft trace` reads for udp-style hops).
    fn peer_table(&self) -> Option<String> {
        let peers: Vec<weft_core::peer_file::PeerEntry> = self
            .peers()
            .iter()
            .filter_map(|(_, p)| match (p.subnets.ipv4, p.endpoint.ip()) {
                (Some(subnet), std::net::IpAddr::V4(public_ip)) => {
                    Some(weft_core::peer_file::PeerEntry { subnet, public_ip })
                }
                _ => None,
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
