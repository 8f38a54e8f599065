//! One WireGuard device of the backend (`flannel-wg`, or Mode separate's `flannel-wg-v6`): the
//! persistent TUN device (a restart adopts it) with its lease address and scope-link route per
//! family it carries, its UDP sockets on its ListenPort (IPv4, IPv6, or IPv6 taking IPv4 peers
//! as mapped addresses in Mode auto), its userspace API socket, its workers and its peer table.
//! It never touches other routes or devices.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use weft_core::wireguard::{DevicePlan, EndpointFamily};
use weft_core::{Lease, SubnetKey};
use weft_kernel::netlink::{AddrFamily, LinkInfo, Netlink, RouteSpec};
use weft_kernel::tun::{open_tun, TunOptions};

use super::counters::Counters;
use super::peers::{peers_from_leases, DeviceNode, Identity, PeerSpec, PeerTable, Skip};
use super::worker::{self, Shared, Worker};
use super::{uapi, WireguardError, WireguardTuning};
use crate::backend::Report;
use crate::leases::{log_skipped, subnet_of_family, Side};

/// One device and the threads that serve it.
pub(crate) struct WgDevice {
    nl: Netlink,
    pub plan: DevicePlan,
    mtu: u32,
    tuning: WireguardTuning,
    /// Per family the device carries: our network and public address (and our subnet once the
    /// lease is known).
    v4: Option<Side>,
    v6: Option<Side>,
    own: Option<SubnetKey>,
    index: u32,
    pub shared: Arc<Shared>,
    next_index: u32,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// A socket on ListenPort for the handshakes a reconcile starts.
    kick_sock: Option<OwnedFd>,
}

/// What a device is built from, besides its plan.
pub(crate) struct DeviceParts {
    pub nl: Netlink,
    pub mtu: u32,
    pub tuning: WireguardTuning,
    pub v4: Option<Side>,
    pub v6: Option<Side>,
    pub identity: Identity,
    pub counters: Arc<Counters>,
    pub next_index: u32,
}

impl WgDevice {
    /// Creates or adopts the device (MTU, up), binds its port, serves its userspace API and
    /// starts its workers. Messages are dropped until [`WgDevice::reconcile`] fills the table.
    pub async fn start(plan: DevicePlan, parts: DeviceParts) -> Result<Self, WireguardError> {
        // Which family the sockets are: that of the endpoints the Mode reaches.
        let ipv6_socket = match plan.endpoints {
            EndpointFamily::Ipv4 => false,
            EndpointFamily::Ipv6 => true,
            EndpointFamily::Auto => parts.v6.is_some(),
        };
        let mut device = WgDevice {
            nl: parts.nl,
            plan,
            mtu: parts.mtu,
            tuning: parts.tuning,
            v4: parts.v4.filter(|_| plan.ipv4),
            v6: parts.v6.filter(|_| plan.ipv6),
            own: None,
            index: 0,
            shared: Arc::new(Shared {
                table: ArcSwap::from_pointee(PeerTable::default()),
                counters: parts.counters,
                identity: parts.identity,
                ipv6_socket,
            }),
            next_index: parts.next_index,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            kick_sock: None,
        };
        device.start_threads()?;
        device.ensure_device().await?;
        tracing::info!(
            device = plan.name,
            mtu = device.mtu,
            port = plan.listen_port,
            ipv4 = plan.ipv4,
            ipv6 = plan.ipv6,
            workers = device.tuning.workers,
            "wireguard datapath running (user space)"
        );
        Ok(device)
    }

    /// The sockets of one worker each (SO_REUSEPORT on ListenPort); IPv6 ones take IPv4 peers
    /// only in Mode auto with both families.
    fn bind_sockets(&self, n: usize) -> Result<Vec<OwnedFd>, WireguardError> {
        let port = self.plan.listen_port;
        let (ip, v6_only) = match self.shared.ipv6_socket {
            true => (
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                self.v4.is_none() || self.plan.endpoints == EndpointFamily::Ipv6,
            ),
            false => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), false),
        };
        (0..n)
            .map(|_| {
                crate::udp::socket::bind_udp(ip, port, v6_only).map_err(|source| WireguardError::Bind {
                    device: self.plan.name,
                    port,
                    source,
                })
            })
            .collect()
    }

    fn start_threads(&mut self) -> Result<(), WireguardError> {
        self.stop_threads();
        let n = self.tuning.workers.max(1);
        let options = TunOptions {
            queues: n,
            vnet_hdr: self.tuning.offload,
            // The workers split IPv6 super-segments as they do IPv4 ones.
            ipv6_tso: true,
        };
        let queues = open_tun(self.plan.name, &options)?;
        let sockets = self.bind_sockets(n)?;
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
        let (name, port) = (self.plan.name, self.plan.listen_port);
        let uapi = uapi::serve(&dir, name, self.shared.clone(), port, self.stop.clone()).map_err(|source| {
            WireguardError::Uapi {
                path: uapi::socket_path(&dir, name),
                source,
            }
        })?;
        self.threads.push(uapi);
        Ok(())
    }

    pub fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }

    /// The device's index (changes when the device had to be created again).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The peers in the table now.
    pub fn peers(&self) -> Vec<PeerSpec> {
        self.shared.table.load().specs()
    }

    /// Records this node's lease: the device gets each carried family's subnet address.
    pub async fn set_lease(&mut self, own: SubnetKey) -> Result<(), WireguardError> {
        self.own = Some(own);
        for side in [&mut self.v4, &mut self.v6].into_iter().flatten() {
            side.own = subnet_of_family(&own, side.network.addr().is_ipv6());
        }
        self.ensure_device().await?;
        Ok(())
    }

    /// Makes sure the device exists with our MTU, is up, and (once the lease is known) has its
    /// address and network route per family; reopens it (restarting the threads) if it was
    /// deleted. Returns (recreated, corrections).
    async fn ensure_device(&mut self) -> Result<(bool, usize), WireguardError> {
        let name = self.plan.name;
        let link = match self.nl.link_by_name(name).await? {
            Some(link) if self.index == 0 || link.index == self.index => link,
            _ => {
                tracing::warn!(device = name, "device was missing or replaced; opening it again");
                self.start_threads()?;
                self.nl
                    .link_by_name(name)
                    .await?
                    .ok_or(WireguardError::DeviceGone { device: name })?
            }
        };
        let recreated = self.index != 0 && link.index != self.index;
        self.index = link.index;
        let mut corrected = self.ensure_link(&link).await?;
        for side in [self.v4, self.v6].into_iter().flatten() {
            corrected += self.ensure_family(link.index, side).await?;
        }
        Ok((recreated, corrected))
    }

    async fn ensure_link(&self, link: &LinkInfo) -> Result<usize, WireguardError> {
        let mut corrected = 0;
        if link.mtu != self.mtu {
            self.nl.set_mtu(link.index, self.mtu).await?;
            corrected += 1;
        }
        if !link.up {
            self.nl.set_link_up(link.index).await?;
            corrected += 1;
        }
        Ok(corrected)
    }

    /// One family's address (the subnet's network address, /32 or /128, as flannel) and the
    /// scope-link route of the whole network through the device.
    async fn ensure_family(&self, index: u32, side: Side) -> Result<usize, WireguardError> {
        let Some(own) = side.own else {
            return Ok(0);
        };
        let host_len = if own.addr().is_ipv6() { 128 } else { 32 };
        let addr = IpNet::new(own.network(), host_len).expect("a host prefix is valid");
        let family = AddrFamily::of(&addr);
        let mut corrected = 0;
        let addrs = self.nl.list_link_addrs(index, Some(family)).await?;
        let global: Vec<&IpNet> = addrs.iter().filter(|a| !is_link_local(a)).collect();
        if global != [&addr] {
            if addr.addr().is_ipv6() && !addrs.contains(&addr) {
                // Usable at once: no duplicate address detection on a point-to-point device.
                self.nl.add_addr_nodad(index, addr).await?;
            }
            self.nl.ensure_addr(index, addr).await?;
            corrected += 1;
        }
        // Scope link (no gateway), added after the device is up and addressed, as flannel.
        let want = RouteSpec {
            dst: side.network.trunc(),
            gateway: None,
            oif: index,
            onlink: false,
        };
        let routes = self.nl.list_routes(Some(family)).await?;
        let present = routes
            .iter()
            .any(|r| r.dst == want.dst && r.oif == Some(index) && r.gateway.is_none());
        if !present {
            self.nl.replace_route(&want).await?;
            corrected += 1;
        }
        Ok(corrected)
    }

    /// Brings the device and its peer table in line with `leases` (our own included): one peer
    /// per remote wireguard lease; a peer whose key is unchanged keeps its sessions, a changed
    /// key replaces the peer, a lease that went removes it.
    pub async fn reconcile(&mut self, leases: &[Lease]) -> Result<Report, WireguardError> {
        let own = self.own.ok_or(WireguardError::NoLease)?;
        let (device_recreated, corrected) = self.ensure_device().await?;
        let node = DeviceNode {
            plan: self.plan,
            own: Some(&own),
            v4: self.v4,
            v6: self.v6,
        };
        let (specs, skipped) = peers_from_leases(leases, node);
        let mut report = Report {
            device_recreated,
            replaced: corrected,
            skipped_leases: self.log_skipped(skipped),
            peers: specs.len(),
            ..Report::default()
        };
        let current = self.shared.table.load_full();
        let old = current.specs();
        if old != specs {
            count_changes(&old, &specs, &mut report);
            let table = Arc::new(PeerTable::build(
                &specs,
                &current,
                &self.shared.identity,
                &mut self.next_index,
            ));
            self.shared.table.store(table.clone());
            self.greet_new_peers(&current, &table);
        }
        if report.changed() {
            tracing::info!(
                device = self.plan.name,
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

    /// Logs the skipped leases; returns how many count (all but our own and those with no side
    /// of the device's families).
    fn log_skipped(&self, skipped: Vec<(SubnetKey, Skip)>) -> usize {
        let mut lease_skips = Vec::new();
        let mut bad = 0;
        for (subnet, why) in skipped {
            match why {
                Skip::Lease(why) => lease_skips.push((subnet, why)),
                Skip::BadBackendData(why) => {
                    tracing::warn!(device = self.plan.name, lease = %subnet, "lease BackendData {why}; no peer for it");
                    bad += 1;
                }
                Skip::NoEndpoint => tracing::debug!(
                    device = self.plan.name,
                    lease = %subnet,
                    "lease has no public address of the family Mode {:?} reaches peers over",
                    self.plan.endpoints
                ),
            }
        }
        let side = self.v4.or(self.v6).expect("a device carries a family");
        log_skipped("wireguard", &lease_skips, side) + bad
    }

    /// Starts a handshake with each peer new in `table`, so a restarted node does not wait for
    /// the other side's timers.
    fn greet_new_peers(&self, old: &PeerTable, table: &PeerTable) {
        let Some(sock) = &self.kick_sock else {
            return;
        };
        for peer in table.peers() {
            if old.by_key(&peer.spec.public_key).is_none() {
                worker::initiate(sock.as_raw_fd(), &self.shared, peer);
            }
        }
    }
}

impl Drop for WgDevice {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Counts the peers `new` adds, replaces (same subnets, other key or endpoint) and removes
/// against `old`.
fn count_changes(old: &[PeerSpec], new: &[PeerSpec], report: &mut Report) {
    for spec in new {
        match old.iter().find(|o| o.subnets == spec.subnets) {
            None => report.added += 1,
            Some(o) if o != spec => report.replaced += 1,
            Some(_) => {}
        }
    }
    report.removed += old
        .iter()
        .filter(|o| !new.iter().any(|s| s.subnets == o.subnets))
        .count();
}

fn is_link_local(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80)
}
