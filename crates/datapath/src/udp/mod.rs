//! The udp backend (flannel's `udp` type): the kernel routes the cluster network into the TUN
//! device `flannel0`; worker threads read each packet, find the node whose subnet holds the
//! destination and send the packet, unchanged but for its TTL, as one UDP datagram to that
//! node's public IP on the backend's port (8285); datagrams from peers go the other way.
//!
//! It owns `flannel0` (persistent: a restart attaches to the same device, so its address and
//! route stay and traffic resumes as soon as the workers run), the device's address, the one
//! route of the cluster network through it, and its UDP port. It never touches other routes
//! or devices.
//!
//! [`packet`], [`peers`], [`offload`] and `receive` decide, with no I/O; `worker` is the I/O
//! shell; `counters` holds what the workers count and renders it for /metrics.

pub(crate) mod batch;
mod counters;
pub mod drop;
pub mod offload;
pub mod packet;
pub mod peers;
mod placement;
mod receive;
pub(crate) mod socket;
mod worker;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ipnet::{IpNet, Ipv4Net};
use weft_core::config::UdpOptions;
use weft_core::peer_file::{self, PeerEntry};
use weft_core::{Lease, SubnetKey};
use weft_kernel::iface::ExternalInterface;
use weft_kernel::netlink::{AddrFamily, Netlink, NetlinkError, RouteSpec};
use weft_kernel::tun::{open_tun, TunError, TunOptions};

pub use self::counters::{UdpCounters, UdpMetrics};
pub use self::drop::DropReason;
use self::peers::{peers_from_leases, PeerTable};
use self::worker::{Shared, Worker};
use crate::backend::{to_leases, Backend, BackendError, LeaseSet, MetricsRenderer, Report};
use weft_kernel::monitor::KernelEvent;

/// The device name flannel uses.
pub const DEVICE: &str = "flannel0";
/// Outer IPv4 (20) + UDP (8): the inner packet is the whole payload.
pub const UDP_OVERHEAD: u32 = 28;

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("udp backend: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("udp backend: {0}")]
    Tun(#[from] TunError),
    #[error(
        "udp backend: cannot bind UDP port {ip}:{port}: {source}; is another flanneld or weftd running on this node?"
    )]
    Bind {
        ip: Ipv4Addr,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("udp backend: cannot start worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(
        "udp backend: the underlay MTU {mtu} leaves no room for the 28-byte UDP encapsulation; fix the interface MTU"
    )]
    MtuTooSmall { mtu: u32 },
    #[error("udp backend: device {DEVICE} disappeared right after it was opened; is something deleting it?")]
    DeviceGone,
    #[error("udp backend: no lease yet; call set_lease with this node's subnet before reconcile")]
    NoLease,
}

/// How the I/O shell runs; the defaults suit a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpTuning {
    /// Worker threads, each with one TUN queue and one UDP socket.
    pub workers: usize,
    /// TUN offloads (TSO in, GRO out) and UDP GSO/GRO. Off: one packet per read/write.
    pub offload: bool,
    /// With one worker per CPU: worker N takes CPU N's packets and is pinned to CPU N while
    /// traffic is light (see `placement`). Off: queues and sockets chosen by flow hash.
    pub cpu_affinity: bool,
}

impl Default for UdpTuning {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        UdpTuning {
            workers: cpus.clamp(1, 8),
            offload: true,
            cpu_affinity: true,
        }
    }
}

/// What one reconcile changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// flannel0 was missing and was created again (workers restarted on it).
    pub device_recreated: bool,
    /// The address, MTU, link state or network route had to be corrected.
    pub corrected: usize,
    /// Remote leases left out (other backend, outside the network, ...); ours is not counted.
    pub skipped_leases: usize,
    /// Remote subnets in the peer table.
    pub peers: usize,
    /// The peer table differs from the previous one.
    pub peers_changed: bool,
}

impl ReconcileReport {
    pub fn changed(&self) -> bool {
        self.device_recreated || self.corrected > 0 || self.peers_changed
    }
}

/// The udp backend of one node.
pub struct UdpBackend {
    nl: Netlink,
    ext: ExternalInterface,
    public_ip: Ipv4Addr,
    opts: UdpOptions,
    tuning: UdpTuning,
    network: Ipv4Net,
    own: Option<SubnetKey>,
    index: u32,
    shared: Arc<Shared>,
    /// The stop flag of the running generation of workers.
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for UdpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpBackend")
            .field("device", &DEVICE)
            .field("index", &self.index)
            .field("port", &self.opts.port)
            .field("workers", &self.workers.len())
            .field("own", &self.own)
            .finish()
    }
}

impl UdpBackend {
    /// Creates or adopts the persistent TUN device `flannel0` (MTU = interface MTU - 28, up),
    /// binds the UDP port on the interface's address and starts the workers. The workers
    /// leave packets queued until the first [`UdpBackend::reconcile`] fills the peer table (for
    /// at most 10 s), so a restart answers no packet with "net unreachable".
    pub async fn start(
        nl: Netlink,
        ext: ExternalInterface,
        public_ip: Ipv4Addr,
        opts: UdpOptions,
        network: Ipv4Net,
    ) -> Result<Self, UdpError> {
        Self::start_tuned(nl, ext, public_ip, opts, network, UdpTuning::default()).await
    }

    /// [`UdpBackend::start`] with explicit tuning (benchmarks, tests).
    pub async fn start_tuned(
        nl: Netlink,
        ext: ExternalInterface,
        public_ip: Ipv4Addr,
        opts: UdpOptions,
        network: Ipv4Net,
        tuning: UdpTuning,
    ) -> Result<Self, UdpError> {
        device_mtu(&ext)?;
        let mut backend = UdpBackend {
            nl,
            ext,
            public_ip,
            opts,
            tuning,
            network: network.trunc(),
            own: None,
            index: 0,
            shared: Arc::new(Shared::new(PeerTable::new(Some(network.trunc()), None, &[]))),
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
        };
        backend.start_workers()?;
        backend.ensure_device().await?;
        tracing::info!(
            device = DEVICE,
            mtu = backend.mtu(),
            port = backend.opts.port,
            workers = backend.workers.len(),
            "udp datapath running"
        );
        Ok(backend)
    }

    /// Opens the TUN queues (creating the device if needed) and the sockets, and starts one
    /// worker per queue. Stops any workers already running first.
    fn start_workers(&mut self) -> Result<(), UdpError> {
        self.stop_workers();
        let n = self.tuning.workers.max(1);
        let queues = open_tun(
            DEVICE,
            &TunOptions {
                queues: n,
                vnet_hdr: self.tuning.offload,
                // flannel0 carries IPv4 only.
                ipv6_tso: false,
            },
        )?;
        // udp runs only in IPv4 networks, whose external interface is chosen by an IPv4 address.
        let bind_ip = self.ext.ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            let sock = socket::bind_udp(bind_ip.into(), self.opts.port, false).map_err(|source| UdpError::Bind {
                ip: bind_ip,
                port: self.opts.port,
                source,
            })?;
            sockets.push(sock);
        }
        // One worker per CPU, CPUs numbered 0..n: steer by CPU so worker N gets CPU N's packets.
        let wanted = self.tuning.cpu_affinity && placement::cpus_in_order() == Some(n);
        let own_cpus = wanted
            && match weft_kernel::tun::steer_by_cpu(&queues[0], true).and_then(|()| socket::steer_by_cpu(&sockets[0])) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("udp backend: cannot steer packets by CPU ({e}); workers take them by flow hash");
                    false
                }
            };
        if !own_cpus {
            // The device keeps its steering across restarts: back to flow hash (best effort).
            let _ = weft_kernel::tun::steer_by_cpu(&queues[0], false);
        }
        self.stop = Arc::new(AtomicBool::new(false));
        for (id, (tun, sock)) in queues.into_iter().zip(sockets).enumerate() {
            let mut worker = Worker::new(tun, sock, self.opts.port, self.shared.clone(), self.stop.clone())
                .map_err(UdpError::Thread)?;
            worker.cpu = own_cpus.then_some((id, n));
            let handle = worker.spawn(id).map_err(UdpError::Thread)?;
            self.workers.push(handle);
        }
        Ok(())
    }

    fn stop_workers(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }

    /// `flannel0`.
    pub fn device_name(&self) -> &'static str {
        DEVICE
    }

    /// The device's index (changes when the device had to be created again).
    pub fn device_index(&self) -> u32 {
        self.index
    }

    /// The overlay MTU: the interface's MTU minus 28. Also FLANNEL_MTU.
    pub fn mtu(&self) -> u32 {
        device_mtu(&self.ext).unwrap_or(0)
    }

    /// udp leases carry no BackendData (and no BackendType).
    pub fn backend_data(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The peer table the workers use now: every remote subnet and the public IP it goes to.
    pub fn peer_table(&self) -> Vec<peers::Peer> {
        self.shared.table.load().peers().to_vec()
    }

    /// Packet counters summed over the workers.
    pub fn counters(&self) -> UdpCounters {
        self.shared.counters.snapshot()
    }

    /// A live view of the counters for /metrics, valid for the backend's whole life (the
    /// workers of a recreated device count into the same counters).
    pub fn metrics(&self) -> UdpMetrics {
        UdpMetrics(self.shared.counters.clone())
    }

    /// Number of running worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Records this node's lease: flannel0 gets the subnet's network address /32 (10.5.72.0/24
    /// -> 10.5.72.0/32) and the route of the whole network; datagrams for our subnet are
    /// admitted from now on.
    pub async fn set_lease(&mut self, own: SubnetKey) -> Result<(), UdpError> {
        self.own = Some(own);
        let current = self.shared.table.load_full();
        self.shared
            .table
            .store(Arc::new(PeerTable::new(Some(self.network), own.ipv4, current.peers())));
        self.ensure_device().await?;
        Ok(())
    }

    /// Makes sure flannel0 exists with our MTU, address (once the lease is known) and the
    /// network route, and is up. Recreates it (restarting the workers) if it was deleted.
    /// Returns (recreated, corrections).
    async fn ensure_device(&mut self) -> Result<(bool, usize), UdpError> {
        let mut recreated = false;
        let link = match self.nl.link_by_name(DEVICE).await? {
            Some(link) if self.index == 0 || link.index == self.index => link,
            _ => {
                tracing::warn!(device = DEVICE, "device was missing or replaced; opening it again");
                self.start_workers()?;
                recreated = true;
                self.nl.link_by_name(DEVICE).await?.ok_or(UdpError::DeviceGone)?
            }
        };
        if self.index != 0 && link.index != self.index {
            recreated = true;
        }
        self.index = link.index;
        let mut corrected = 0;
        let mtu = device_mtu(&self.ext)?;
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
            // The route needs the device up and addressed; flannel adds it after both.
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

    /// Brings flannel0 and the peer table in line with `leases`, the full current lease set
    /// (our own included): re-ensures the device, its address and the network route, then
    /// swaps in a peer table of every other node's lease.
    pub async fn reconcile(&mut self, leases: &[Lease]) -> Result<ReconcileReport, UdpError> {
        let own = self.own.ok_or(UdpError::NoLease)?;
        let (device_recreated, corrected) = self.ensure_device().await?;
        let (peers, skipped) = peers_from_leases(leases, Some(&own), self.network, self.public_ip);
        let mut report = ReconcileReport {
            device_recreated,
            corrected,
            peers: peers.len(),
            ..ReconcileReport::default()
        };
        let node = crate::leases::Node {
            own: Some(&own),
            network: self.network,
            public_ip: self.public_ip,
        };
        report.skipped_leases += crate::leases::log_skipped("udp", &skipped, node);
        let current = self.shared.table.load();
        if current.peers() != peers.as_slice() || current.own() != own.ipv4.map(|n| n.trunc()) {
            report.peers_changed = true;
            self.shared
                .table
                .store(Arc::new(PeerTable::new(Some(self.network), own.ipv4, &peers)));
        }
        self.shared.loaded.store(true, Ordering::Release);
        if report.changed() {
            tracing::info!(
                device = DEVICE,
                peers = report.peers,
                corrected = report.corrected,
                recreated = report.device_recreated,
                "udp state reconciled"
            );
        }
        Ok(report)
    }

    /// Stops the workers and closes the sockets; flannel0 stays (persistent) with its address
    /// and route, for the next start to adopt.
    pub fn stop(&mut self) {
        self.stop_workers();
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

#[async_trait::async_trait]
impl Backend for UdpBackend {
    fn name(&self) -> &'static str {
        "udp"
    }

    fn lease_backend_type(&self) -> &'static str {
        // flannel's udp leases carry no BackendType.
        ""
    }

    fn backend_data(&self) -> serde_json::Value {
        UdpBackend::backend_data(self)
    }

    fn mtu(&self) -> u32 {
        UdpBackend::mtu(self)
    }

    async fn set_lease(&mut self, own: &Lease) -> Result<(), BackendError> {
        UdpBackend::set_lease(self, own.subnet).await.map_err(BackendError::new)
    }

    async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, BackendError> {
        let r = UdpBackend::reconcile(self, leases).await.map_err(BackendError::new)?;
        Ok(Report {
            device_recreated: r.device_recreated,
            replaced: r.corrected,
            skipped_leases: r.skipped_leases,
            peers: r.peers,
            ..Report::default()
        })
    }

    /// flannel0, its address or its network route gone: the reconcile puts them back (it is a
    /// handful of requests; the peer table is in user space).
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
        let metrics = UdpBackend::metrics(self);
        Some(Box::new(move |out: &mut String| metrics.render(out)))
    }

    fn peer_table(&self) -> Option<String> {
        let peers: Vec<PeerEntry> = UdpBackend::peer_table(self)
            .iter()
            .map(|p| PeerEntry {
                subnet: p.subnet,
                public_ip: p.public_ip,
            })
            .collect();
        Some(peer_file::render(&peers))
    }
}

/// The overlay MTU on this interface: its MTU minus 28.
pub fn device_mtu(ext: &ExternalInterface) -> Result<u32, UdpError> {
    match ext.mtu.checked_sub(UDP_OVERHEAD) {
        Some(mtu) if mtu >= 68 => Ok(mtu),
        _ => Err(UdpError::MtuTooSmall { mtu: ext.mtu }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_is_underlay_minus_28() {
        let ext = |mtu| ExternalInterface {
            name: "eth0".into(),
            index: 2,
            ip: Ipv4Addr::new(198, 51, 100, 1).into(),
            mtu,
        };
        assert_eq!(device_mtu(&ext(1500)).unwrap(), 1472);
        assert!(matches!(device_mtu(&ext(90)), Err(UdpError::MtuTooSmall { mtu: 90 })));
    }
}
