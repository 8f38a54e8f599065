//! `weft lab bench-control`: what weft's control plane costs as the cluster grows. For each
//! lease count N, a fresh one-host vxlan lab: N leases of fake peers are written into the lab's
//! etcd while weftd is stopped; weftd is started and timed until every route, neighbour and FDB
//! entry is in the host's kernel; then single lease events, idle CPU, RSS, and the healing of
//! entries (and of the device) deleted by hand. Kernel-side times come from rtnetlink
//! notifications read by a thread inside the host's namespace, not from polling.
//!
//! It owns its lab (torn down after each size, also on error) and watches weftd only from the
//! outside: /proc, the kernel's tables and etcd.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{Client, Txn, TxnOp, WatchOptions};
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use weft_core::{BackendKind, LeaseAttrs, SubnetKey};
use weft_kernel::monitor::{self, KernelEvent};
use weft_kernel::netlink::{AddrFamily, Netlink, NetlinkError};

use super::error::{LabError, Result};
use super::netns::{in_netns, with_netlink};
use super::{process, EtcdAccess, Lab, LabSpec, WeftdBinary, SUBNETS_PREFIX};

/// The cluster network: room for 65,000 /24 leases.
const NETWORK: &str = "10.0.0.0/8";
/// The vxlan device of the default VNI.
const DEVICE: &str = "flannel.1";
/// etcd's default --max-txn-ops.
const PUTS_PER_TXN: usize = 128;
/// How long one lease event or one heal may take before it counts as missed: longer than the
/// default reconcile interval (10 s), so an event weft only catches at its safety net is still
/// measured rather than lost.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// A pause between events, so one event's neighbour and FDB work is done before the next.
const EVENT_GAP: Duration = Duration::from_millis(30);
/// Time for weftd to finish what an earlier step started before a figure is read.
const SETTLE: Duration = Duration::from_secs(2);
/// While waiting for convergence, the kernel's tables are read back (a dump) once
/// notifications have been quiet this long: a lost notification cannot stall the wait, and the
/// dumps do not compete with weftd while it is programming.
const QUIET: Duration = Duration::from_millis(300);
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
/// weftd's default --reconcile-interval.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
/// How often a wait checks that weftd still runs.
const ALIVE_EVERY: Duration = Duration::from_millis(500);
/// At most this many queued notifications are dropped before an action is timed.
const DRAIN_MAX: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct ControlBenchOptions {
    /// The lab's name (one lab at a time, torn down after each size).
    pub name: String,
    /// The lease counts, one lab each.
    pub leases: Vec<usize>,
    /// Lease events after convergence, half adds and half deletes, each timed.
    pub events: usize,
    /// Hand deletions of each kind (neighbour, FDB entry, route).
    pub heal_runs: usize,
    /// How long weftd's idle CPU is sampled after the events (reported per 10 s). Several
    /// reconcile intervals: a window of one interval holds one periodic full reconcile or two.
    pub idle: Duration,
    pub weftd: WeftdBinary,
    /// Extra weftd arguments; none by default, so weftd runs with its default reconcile interval.
    pub weftd_args: Vec<String>,
}

impl Default for ControlBenchOptions {
    fn default() -> Self {
        ControlBenchOptions {
            name: "bench-control".into(),
            leases: vec![500, 5_000, 20_000],
            events: 100,
            heal_runs: 10,
            idle: Duration::from_secs(30),
            weftd: WeftdBinary::Find,
            weftd_args: Vec::new(),
        }
    }
}

impl ControlBenchOptions {
    fn validate(&self) -> Result<()> {
        let most = self.leases.iter().max().copied().unwrap_or(0) + self.events;
        if self.leases.is_empty() || self.leases.contains(&0) {
            return Err(LabError::BadSpec(
                "--leases needs one or more counts of at least 1".into(),
            ));
        }
        if most > FakePeers::MAX {
            return Err(LabError::BadSpec(format!(
                "--leases plus --events is {most}; the benchmark's network holds at most {} fake peers",
                FakePeers::MAX
            )));
        }
        if self.events < 2 || self.heal_runs == 0 || self.idle.is_zero() {
            return Err(LabError::BadSpec(
                "bench-control needs --events of at least 2, --heal-runs and --idle-seconds of at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The times of one kind of operation, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latencies {
    pub median_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    /// Operations whose effect never showed within the timeout.
    pub missed: usize,
    pub samples_ms: Vec<f64>,
}

impl Latencies {
    pub fn new(samples_ms: Vec<f64>, missed: usize) -> Self {
        Latencies {
            median_ms: percentile(&samples_ms, 50.0),
            p90_ms: percentile(&samples_ms, 90.0),
            missed,
            samples_ms,
        }
    }
}

/// One lease count's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ControlBenchRow {
    pub leases: usize,
    /// From starting weftd to the last of the N routes, neighbours and FDB entries in the kernel.
    pub converge_ms: f64,
    /// weftd's utime+stime from its start to just after convergence.
    pub converge_cpu_ms: f64,
    /// False when notifications were lost and the end was found by reading the tables back
    /// (the time is then the last entry notification seen: a lower bound).
    pub converge_exact: bool,
    /// From etcd's watch event of a lease put (delete) to the route's notification: weft's
    /// share. The bench watches the subnets prefix itself and hears of a change when weftd does.
    pub add: Latencies,
    pub delete: Latencies,
    /// The same from the moment the request was sent: etcd's commit (a WAL fsync) included.
    pub add_from_request: Latencies,
    pub delete_from_request: Latencies,
    /// etcd's round trip for those puts, for scale.
    pub etcd_put_ms: Option<f64>,
    /// weftd's utime+stime (/proc/<pid>/stat) over the idle window, scaled to 10 s.
    pub idle_cpu_ms: f64,
    /// The same from the threads' schedstat (nanoseconds; threads that exited are not counted).
    pub idle_cpu_schedstat_ms: Option<f64>,
    /// utime+stime over the idle window (one reconcile interval) between convergence and the
    /// events, per 10 s.
    pub idle_cpu_converged_ms: f64,
    /// VmRSS after convergence, and after the lease events (each after an idle window).
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
    /// VmHWM at the end of the events: the peak, convergence included.
    pub rss_peak_mb: f64,
    /// From a hand deletion returning to the entry's notification that it is back.
    pub heal_neighbour: Latencies,
    pub heal_fdb: Latencies,
    pub heal_route: Latencies,
    /// From deleting the device to it existing again with all N routes, neighbours and FDB
    /// entries; None when that did not happen within the timeout.
    pub device_ms: Option<f64>,
    pub device_exact: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlBenchReport {
    /// The extra weftd arguments ("" = defaults, reconcile every 10 s).
    pub weftd_args: Vec<String>,
    pub events: usize,
    pub heal_runs: usize,
    pub idle_seconds: f64,
    /// /proc/loadavg when the run started and ended: a busy machine disturbs the figures.
    pub load_before: String,
    pub load_after: String,
    pub rows: Vec<ControlBenchRow>,
}

/// Runs every size in turn; `progress` gets a line per step (for stderr).
pub fn run(options: &ControlBenchOptions, progress: &mut dyn FnMut(&str)) -> Result<ControlBenchReport> {
    options.validate()?;
    let load_before = loadavg();
    let mut rows = Vec::new();
    for &n in &options.leases {
        rows.push(run_size(options, n, progress)?);
    }
    Ok(ControlBenchReport {
        weftd_args: options.weftd_args.clone(),
        events: options.events,
        heal_runs: options.heal_runs,
        idle_seconds: options.idle.as_secs_f64(),
        load_before,
        load_after: loadavg(),
        rows,
    })
}

fn run_size(options: &ControlBenchOptions, n: usize, progress: &mut dyn FnMut(&str)) -> Result<ControlBenchRow> {
    let _ = Lab::down_by_name(&options.name);
    let mut spec = LabSpec::new(&options.name, 1, BackendKind::Vxlan);
    spec.network = NETWORK.parse().expect("a valid CIDR");
    spec.weftd = options.weftd.clone();
    spec.weftd_args = options.weftd_args.clone();
    // Dropped at the end of this function, on error too: that tears the lab down.
    let mut lab = Lab::up(spec)?;
    let host_ns = lab.host_ns(1)?.to_string();
    let own = lab
        .subnet_env(1)?
        .subnet
        .ok_or_else(|| LabError::Other("subnet.env of host 1 has no FLANNEL_SUBNET".into()))?
        .trunc();
    lab.stop_node(1)?;
    let peers = FakePeers::new(own);
    let expected = Expected::new(&peers, n);
    let etcd = EtcdSession::open(lab.etcd())?;
    let records: Vec<(String, String)> = (0..n).map(|i| peers.record(i)).collect();
    etcd.put_all(records)?;
    progress(&format!("{n} leases: {n} fake peers written to etcd; starting weftd"));

    let mut row = ControlBenchRow {
        leases: n,
        ..ControlBenchRow::default()
    };
    let watcher = KernelWatcher::start(&host_ns)?;
    let started = Instant::now();
    lab.start_node(1)?;
    let pid = lab
        .weftd_pid(1)
        .ok_or_else(|| LabError::Other("weftd on host 1 did not start".into()))?;
    let weftd = Weftd { pid, lab: &lab };
    let done = wait_all_in_kernel(&watcher, &host_ns, &expected, started, converge_timeout(n), &weftd)?;
    (row.converge_ms, row.converge_exact) = (ms(done.at.duration_since(started)), done.exact);
    row.converge_cpu_ms = cpu_ms(pid)?;
    progress(&format!("{n} leases: converged in {}", fmt_value(row.converge_ms, "s")));

    // Both RSS readings follow an idle window, which holds a periodic full reconcile (every 10 s
    // by default): its transient allocations then count on both sides, and only what the
    // events themselves keep shows as growth.
    std::thread::sleep(SETTLE);
    row.idle_cpu_converged_ms = idle_cpu(pid, options.idle.min(RECONCILE_INTERVAL))?.0;
    row.rss_before_mb = rss_mb(pid)?;
    let index = device_index(&host_ns)?;
    let events = lease_events(&etcd, &watcher, &peers, n, options.events / 2, index, &weftd)?;
    (row.add, row.delete) = (events.add, events.delete);
    (row.add_from_request, row.delete_from_request) = (events.add_from_request, events.delete_from_request);
    row.etcd_put_ms = events.etcd_put_ms;
    progress(&format!(
        "{n} leases: add median {}, delete median {}",
        fmt_ms(row.add.median_ms),
        fmt_ms(row.delete.median_ms)
    ));

    std::thread::sleep(SETTLE);
    (row.idle_cpu_ms, row.idle_cpu_schedstat_ms) = idle_cpu(pid, options.idle)?;
    row.rss_after_mb = rss_mb(pid)?;
    row.rss_peak_mb = rss_peak_mb(pid)?;
    progress(&format!("{n} leases: idle CPU {:.1} ms per 10 s", row.idle_cpu_ms));

    let heal = Heal {
        ns: &host_ns,
        watcher: &watcher,
        index,
        weftd: &weftd,
    };
    (row.heal_neighbour, row.heal_fdb, row.heal_route) = heal.measure(&peers, n, options.heal_runs)?;

    let device = device_recreated(&watcher, &host_ns, &expected, index, n, &weftd)?;
    (row.device_ms, row.device_exact) = (device.map(|(ms, _)| ms), device.is_some_and(|(_, exact)| exact));
    progress(&format!(
        "{n} leases: heal medians neighbour {} / FDB {} / route {}, device {}",
        fmt_ms(row.heal_neighbour.median_ms),
        fmt_ms(row.heal_fdb.median_ms),
        fmt_ms(row.heal_route.median_ms),
        fmt_ms(row.device_ms)
    ));
    drop(watcher);
    drop(etcd);
    lab.down()?;
    Ok(row)
}

/// Deletes the VXLAN device and times weftd's putting it back with every entry: (ms, exact), or
/// None when it did not within the converge timeout.
fn device_recreated(
    watcher: &KernelWatcher,
    host_ns: &str,
    expected: &Expected,
    index: u32,
    n: usize,
    weftd: &Weftd,
) -> Result<Option<(f64, bool)>> {
    watcher.drain();
    let deleted = with_netlink(host_ns, move |nl| async move {
        nl.delete_link(index).await?;
        Ok(Instant::now())
    })?;
    match wait_all_in_kernel(watcher, host_ns, expected, deleted, converge_timeout(n), weftd) {
        Ok(done) => Ok(Some((ms(done.at.saturating_duration_since(deleted)), done.exact))),
        Err(LabError::Timeout { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn converge_timeout(n: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(5 * n as u64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- the fake cluster ----

/// The peers written into etcd: lease i has its own /24, PublicIP and VtepMAC (admission
/// refuses duplicates). PublicIPs come from 198.18.0.0/15, which RFC 2544 reserves for
/// benchmarking: nothing answers there, and no packet is ever sent to them (nothing routes into
/// the fake subnets).
#[derive(Debug, Clone, Copy)]
pub struct FakePeers {
    own: Ipv4Net,
}

/// One fake peer's lease and the kernel entries weft should make for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePeer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

impl FakePeers {
    /// /24s from 10.1.0.0 up to 10.255.254.0 (flannel's SubnetMax), one skipped for our own.
    pub const MAX: usize = 0xFF_FE - 0x01_00;
    const FIRST_SUBNET: u32 = u32::from_be_bytes([10, 1, 0, 0]);
    const FIRST_IP: u32 = u32::from_be_bytes([198, 18, 0, 1]);

    /// Peers around `own`, this node's subnet, which no peer may take.
    pub fn new(own: Ipv4Net) -> Self {
        FakePeers { own: own.trunc() }
    }

    pub fn peer(&self, i: usize) -> FakePeer {
        let mut start = Self::FIRST_SUBNET + (i as u32) * 256;
        let own = u32::from(self.own.network());
        if own >= Self::FIRST_SUBNET && start >= own {
            start += 256;
        }
        let i = i as u32;
        FakePeer {
            subnet: Ipv4Net::new(Ipv4Addr::from(start), 24).expect("/24 is a valid prefix"),
            public_ip: Ipv4Addr::from(Self::FIRST_IP + i),
            // Locally administered, unicast.
            vtep_mac: [0x0e, 0xbe, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        }
    }

    /// Lease i as flannel writes it: key and JSON value.
    pub fn record(&self, i: usize) -> (String, String) {
        let peer = self.peer(i);
        let data = serde_json::json!({"VNI": 1, "VtepMAC": weft_core::mac::format_mac(&peer.vtep_mac)});
        let attrs = LeaseAttrs::new(peer.public_ip, "vxlan", data);
        let key = format!("{SUBNETS_PREFIX}{}", SubnetKey::v4(peer.subnet).to_key());
        (key, attrs.to_json())
    }
}

/// The kernel entries N peers need, to recognise them in notifications and dumps.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    routes: HashSet<IpNet>,
    neighbours: HashSet<IpAddr>,
    macs: HashSet<[u8; 6]>,
}

impl Expected {
    pub fn new(peers: &FakePeers, n: usize) -> Self {
        let mut expected = Expected::default();
        for peer in (0..n).map(|i| peers.peer(i)) {
            expected.routes.insert(peer.subnet.into());
            expected.neighbours.insert(peer.subnet.network().into());
            expected.macs.insert(peer.vtep_mac);
        }
        expected
    }

    fn len(&self) -> usize {
        self.routes.len()
    }
}

/// How many of the expected entries the kernel holds on the device (routes, neighbours, FDB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub routes: usize,
    pub neighbours: usize,
    pub fdb: usize,
}

/// Follows notifications: which expected entries are on the device now. A device created again
/// under the same name (new index) starts the count afresh: the kernel drops the old device's
/// routes without a notification.
#[derive(Debug)]
pub struct Tracker<'a> {
    expected: &'a Expected,
    index: u32,
    routes: HashSet<IpNet>,
    neighbours: HashSet<IpAddr>,
    fdb: HashSet<[u8; 6]>,
}

impl<'a> Tracker<'a> {
    pub fn new(expected: &'a Expected, index: u32) -> Self {
        Tracker {
            expected,
            index,
            routes: HashSet::new(),
            neighbours: HashSet::new(),
            fdb: HashSet::new(),
        }
    }

    /// Takes one notification; returns whether it changed what is counted.
    pub fn observe(&mut self, event: &KernelEvent) -> bool {
        let here = |i: &u32| *i == self.index;
        match event {
            KernelEvent::LinkChanged(link) if link.name == DEVICE && link.index != self.index => {
                *self = Tracker::new(self.expected, link.index);
                true
            }
            KernelEvent::RouteAdded(r) if r.oif == Some(self.index) && self.expected.routes.contains(&r.dst) => {
                self.routes.insert(r.dst)
            }
            KernelEvent::RouteGone(r) if r.oif == Some(self.index) => self.routes.remove(&r.dst),
            KernelEvent::NeighbourChanged { index, neighbour }
                if here(index) && self.expected.neighbours.contains(&neighbour.ip) =>
            {
                if neighbour.is_permanent() {
                    self.neighbours.insert(neighbour.ip)
                } else {
                    self.neighbours.remove(&neighbour.ip)
                }
            }
            KernelEvent::NeighbourGone { index, neighbour } if here(index) => self.neighbours.remove(&neighbour.ip),
            KernelEvent::FdbChanged { index, entry }
                if here(index) && entry.dst.is_some() && self.expected.macs.contains(&entry.mac) =>
            {
                self.fdb.insert(entry.mac)
            }
            KernelEvent::FdbGone { index, entry } if here(index) => self.fdb.remove(&entry.mac),
            _ => false,
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            routes: self.routes.len(),
            neighbours: self.neighbours.len(),
            fdb: self.fdb.len(),
        }
    }

    pub fn complete(&self) -> bool {
        is_complete(self.counts(), self.expected.len())
    }
}

fn is_complete(c: Counts, n: usize) -> bool {
    c.routes == n && c.neighbours == n && c.fdb == n
}

// ---- the kernel side: notifications and table reads in the host's namespace ----

/// Something the host's notification thread saw.
enum Seen {
    Event(Instant, KernelEvent),
    Ended(String),
}

/// A thread inside the host's namespace subscribed to link, route and neighbour notifications,
/// passing each on with the time it was read.
struct KernelWatcher {
    rx: Receiver<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KernelWatcher {
    fn start(ns: &str) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
        let stop = Arc::new(AtomicBool::new(false));
        let ns_owned = ns.to_string();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let ready_on_error = ready_tx.clone();
            let result = in_netns(&ns_owned, move || {
                watch(&tx, &ready_tx, &stopping);
                Ok(())
            });
            if let Err(e) = result {
                let _ = ready_on_error.send(Err(e.to_string()));
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(KernelWatcher {
                rx,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(LabError::Other(format!(
                "subscribing to kernel notifications in {ns}: {e}"
            ))),
            Err(_) => Err(LabError::Timeout {
                what: format!("the kernel notification subscription in {ns}"),
                seconds: 10,
                detail: String::new(),
            }),
        }
    }

    /// Forgets what arrived so far (before an action whose effect is to be timed).
    fn drain(&self) {
        self.rx.try_iter().take(DRAIN_MAX).for_each(drop);
    }

    /// The next notification before `deadline`; None when the deadline passed.
    fn next(&self, deadline: Instant) -> Result<Option<(Instant, KernelEvent)>> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait) {
            Ok(Seen::Event(at, event)) => Ok(Some((at, event))),
            Ok(Seen::Ended(why)) => Err(LabError::Other(format!("kernel notifications stopped: {why}"))),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(LabError::Other("the kernel notification thread ended".into())),
        }
    }

    /// The time of the first notification `matches` accepts before `deadline` (checking every
    /// half second that weftd still runs).
    fn wait_for(
        &self,
        deadline: Instant,
        weftd: &Weftd,
        mut matches: impl FnMut(&KernelEvent) -> bool,
    ) -> Result<Option<Instant>> {
        let mut checked = Instant::now();
        while Instant::now() < deadline {
            if let Some((at, event)) = self.next(deadline.min(Instant::now() + ALIVE_EVERY))? {
                if matches(&event) {
                    return Ok(Some(at));
                }
            }
            if checked.elapsed() >= ALIVE_EVERY {
                weftd.check_alive()?;
                checked = Instant::now();
            }
        }
        Ok(None)
    }
}

impl Drop for KernelWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The notification thread's body (inside the host's namespace).
fn watch(tx: &Sender<Seen>, ready: &Sender<std::result::Result<(), String>>, stop: &AtomicBool) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("building a tokio runtime: {e}")));
            return;
        }
    };
    runtime.block_on(async {
        let mut events = match monitor::subscribe() {
            Ok(rx) => rx,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
                Ok(Some(event)) => {
                    if tx.send(Seen::Event(Instant::now(), event)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Seen::Ended("the netlink socket failed".into()));
                    return;
                }
                Err(_) => {}
            }
        }
    });
}

fn device_index(ns: &str) -> Result<u32> {
    let link = with_netlink(ns, |nl| async move { nl.link_by_name(DEVICE).await })?;
    link.map(|l| l.index)
        .ok_or_else(|| LabError::Other(format!("{DEVICE} does not exist in {ns}")))
}

/// Reads the tables back: how many expected entries are on the device now.
fn count_in_kernel(ns: &str, expected: &Expected) -> Result<Counts> {
    let expected = expected.clone();
    with_netlink(ns, move |nl| async move {
        let Some(link) = nl.link_by_name(DEVICE).await? else {
            return Ok(Counts::default());
        };
        let routes = nl.list_routes(Some(AddrFamily::Ipv4)).await?;
        let neighbours = nl.list_neighbours(link.index, Some(AddrFamily::Ipv4)).await?;
        let fdb = nl.list_fdb(link.index).await?;
        Ok(Counts {
            routes: routes
                .iter()
                .filter(|r| r.oif == Some(link.index) && expected.routes.contains(&r.dst))
                .count(),
            neighbours: neighbours
                .iter()
                .filter(|n| n.is_permanent() && expected.neighbours.contains(&n.ip))
                .count(),
            fdb: fdb
                .iter()
                .filter(|e| e.dst.is_some() && expected.macs.contains(&e.mac))
                .count(),
        })
    })
}

/// When every expected entry was in the kernel.
struct AllIn {
    at: Instant,
    /// From the notification that completed the set (false: found by a table read after
    /// notifications were lost; `at` is then the last entry notification seen).
    exact: bool,
}

/// Waits until the device holds every expected entry: counted from notifications, confirmed
/// by reading the tables back.
fn wait_all_in_kernel(
    watcher: &KernelWatcher,
    ns: &str,
    expected: &Expected,
    since: Instant,
    within: Duration,
    weftd: &Weftd,
) -> Result<AllIn> {
    let deadline = since + within;
    let index = device_index(ns).unwrap_or(0);
    let mut tracker = Tracker::new(expected, index);
    let mut last_entry = since;
    // The last relevant notification or table read: the tables are read once this is QUIET old.
    let mut looked = since;
    // A table read is costly (N entries): at most one per QUIET, also to confirm the count.
    let mut read: Option<Instant> = None;
    let n = expected.len();
    loop {
        if let Some((at, event)) = watcher.next(deadline.min(Instant::now() + QUIET))? {
            if tracker.observe(&event) {
                (last_entry, looked) = (at, at);
                if tracker.complete() && read.is_none_or(|r| r.elapsed() >= QUIET) {
                    read = Some(Instant::now());
                    if is_complete(count_in_kernel(ns, expected)?, n) {
                        return Ok(AllIn { at, exact: true });
                    }
                }
            }
            if Instant::now() < deadline && looked.elapsed() < QUIET {
                continue;
            }
        }
        weftd.check_alive()?;
        let counts = count_in_kernel(ns, expected)?;
        (looked, read) = (Instant::now(), Some(Instant::now()));
        if is_complete(counts, n) {
            // The notifications' count agreeing means the last of them completed the set.
            return Ok(AllIn {
                at: last_entry,
                exact: tracker.complete(),
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("{n} routes, neighbours and FDB entries on {DEVICE} in {ns}"),
                seconds: within.as_secs(),
                detail: format!(
                    " (the kernel holds {counts:?}; notifications counted {:?})",
                    tracker.counts()
                ),
            });
        }
    }
}

/// One deletion by hand and the time until weft put the entry back.
struct Heal<'a> {
    ns: &'a str,
    watcher: &'a KernelWatcher,
    index: u32,
    weftd: &'a Weftd<'a>,
}

impl Heal<'_> {
    /// `runs` rounds of deleting one peer's neighbour, FDB entry and route by hand (a different
    /// peer each round), timed until weftd puts each back: (neighbour, FDB, route).
    fn measure(&self, peers: &FakePeers, n: usize, runs: usize) -> Result<(Latencies, Latencies, Latencies)> {
        let mut samples: [(Vec<f64>, usize); 3] = Default::default();
        for run in 0..runs {
            let peer = peers.peer(run % n);
            for (kind, (times, missed)) in samples.iter_mut().enumerate() {
                let healed = match kind {
                    0 => self.neighbour(&peer)?,
                    1 => self.fdb(&peer)?,
                    _ => self.route(&peer)?,
                };
                match healed {
                    Some(t) => times.push(t),
                    None => *missed += 1,
                }
                std::thread::sleep(EVENT_GAP);
            }
        }
        let [neigh, fdb, route] = samples;
        Ok((
            Latencies::new(neigh.0, neigh.1),
            Latencies::new(fdb.0, fdb.1),
            Latencies::new(route.0, route.1),
        ))
    }

    /// Runs `delete`, then waits for the notification that the entry went (`gone`) and then
    /// for the one that it is back (`back`). Milliseconds from the delete's reply, or None.
    fn time<F, Fut>(
        &self,
        delete: F,
        gone: impl Fn(&KernelEvent) -> bool,
        back: impl Fn(&KernelEvent) -> bool,
    ) -> Result<Option<f64>>
    where
        F: FnOnce(Netlink) -> Fut + Send,
        Fut: Future<Output = std::result::Result<(), NetlinkError>>,
    {
        self.watcher.drain();
        let deleted = with_netlink(self.ns, move |nl| async move {
            delete(nl).await?;
            Ok(Instant::now())
        })?;
        let mut went = false;
        let healed = self.watcher.wait_for(deleted + EVENT_TIMEOUT, self.weftd, |event| {
            if went && back(event) {
                return true;
            }
            went |= gone(event);
            false
        })?;
        Ok(healed.map(|at| ms(at.saturating_duration_since(deleted))))
    }

    fn neighbour(&self, peer: &FakePeer) -> Result<Option<f64>> {
        let (index, ip, mac) = (self.index, IpAddr::from(peer.subnet.network()), peer.vtep_mac);
        self.time(
            move |nl| async move { nl.delete_neighbour(index, ip).await },
            // `ip neigh del` first reports the entry as FAILED, then deleted.
            move |e| match e {
                KernelEvent::NeighbourGone { index: i, neighbour } => *i == index && neighbour.ip == ip,
                KernelEvent::NeighbourChanged { index: i, neighbour } => {
                    *i == index && neighbour.ip == ip && !neighbour.is_permanent()
                }
                _ => false,
            },
            move |e| {
                matches!(e, KernelEvent::NeighbourChanged { index: i, neighbour }
                    if *i == index && neighbour.ip == ip && neighbour.is_permanent() && neighbour.mac == Some(mac))
            },
        )
    }

    fn fdb(&self, peer: &FakePeer) -> Result<Option<f64>> {
        let (index, mac, dst) = (self.index, peer.vtep_mac, IpAddr::from(peer.public_ip));
        self.time(
            move |nl| async move { nl.delete_fdb(index, mac, dst).await },
            move |e| matches!(e, KernelEvent::FdbGone { index: i, entry } if *i == index && entry.mac == mac),
            move |e| {
                matches!(e, KernelEvent::FdbChanged { index: i, entry }
                    if *i == index && entry.mac == mac && entry.dst == Some(dst))
            },
        )
    }

    fn route(&self, peer: &FakePeer) -> Result<Option<f64>> {
        let (dst, index) = (IpNet::from(peer.subnet), self.index);
        // As `ip route del <subnet>`: whatever the route points at (a nexthop or a gateway).
        self.time(
            move |nl| async move { nl.delete_route_to(dst).await },
            move |e| matches!(e, KernelEvent::RouteGone(r) if r.dst == dst),
            move |e| matches!(e, KernelEvent::RouteAdded(r) if r.dst == dst && r.oif == Some(index)),
        )
    }
}

// ---- lease events through etcd ----

/// What the lease events measured.
struct EventFigures {
    add: Latencies,
    delete: Latencies,
    add_from_request: Latencies,
    delete_from_request: Latencies,
    etcd_put_ms: Option<f64>,
}

/// One lease event's times in milliseconds: from etcd's watch event, from the request.
type EventTimes = (Vec<f64>, Vec<f64>, usize);

/// `count` leases added one at a time (each waited for), each deleted again.
fn lease_events(
    etcd: &EtcdSession,
    watcher: &KernelWatcher,
    peers: &FakePeers,
    n: usize,
    count: usize,
    index: u32,
    weftd: &Weftd,
) -> Result<EventFigures> {
    let (mut adds, mut deletes): (EventTimes, EventTimes) = Default::default();
    let mut puts = Vec::new();
    for i in n..n + count {
        let (key, value) = peers.record(i);
        let dst = IpNet::from(peers.peer(i).subnet);
        let added = |e: &KernelEvent| matches!(e, KernelEvent::RouteAdded(r) if r.dst == dst && r.oif == Some(index));
        let put = time_event(
            etcd,
            watcher,
            weftd,
            &key,
            |etcd| etcd.put(&key, &value),
            added,
            &mut adds,
        )?;
        puts.push(ms(put.replied.duration_since(put.sent)));
        std::thread::sleep(EVENT_GAP);
        let gone = |e: &KernelEvent| matches!(e, KernelEvent::RouteGone(r) if r.dst == dst);
        time_event(etcd, watcher, weftd, &key, |etcd| etcd.delete(&key), gone, &mut deletes)?;
        std::thread::sleep(EVENT_GAP);
    }
    Ok(EventFigures {
        add: Latencies::new(adds.0, adds.2),
        delete: Latencies::new(deletes.0, deletes.2),
        add_from_request: Latencies::new(adds.1, adds.2),
        delete_from_request: Latencies::new(deletes.1, deletes.2),
        etcd_put_ms: percentile(&puts, 50.0),
    })
}

/// Writes to etcd, then waits for etcd's watch event of `key` and for the route notification
/// `seen` accepts; records the times from each into `times` (or counts a miss).
fn time_event(
    etcd: &EtcdSession,
    watcher: &KernelWatcher,
    weftd: &Weftd,
    key: &str,
    write: impl FnOnce(&EtcdSession) -> Result<Timed>,
    seen: impl FnMut(&KernelEvent) -> bool,
    times: &mut EventTimes,
) -> Result<Timed> {
    watcher.drain();
    etcd.drain_watched();
    let request = write(etcd)?;
    let deadline = request.replied + EVENT_TIMEOUT;
    // Our own watch hears of the change when weftd's does: the moment the lease event exists.
    let watched = etcd.watched(key, deadline).unwrap_or(request.replied);
    match watcher.wait_for(deadline, weftd, seen)? {
        Some(at) => {
            times.0.push(ms(at.saturating_duration_since(watched)));
            times.1.push(ms(at.saturating_duration_since(request.sent)));
        }
        None => times.2 += 1,
    }
    Ok(request)
}

/// When a request left and when etcd's reply arrived.
struct Timed {
    sent: Instant,
    replied: Instant,
}

enum EtcdRequest {
    Put(Vec<(String, String)>, Sender<Result<Timed>>),
    Delete(String, Sender<Result<Timed>>),
}

/// One etcd connection kept open on a thread inside the switch namespace, so a timed request
/// pays no connection or TLS setup.
struct EtcdSession {
    tx: Option<tokio::sync::mpsc::UnboundedSender<EtcdRequest>>,
    /// Keys under the subnets prefix as etcd's watch reported them changed, with the time.
    watched: Receiver<(Instant, String)>,
    thread: Option<JoinHandle<()>>,
}

impl EtcdSession {
    fn open(access: &EtcdAccess) -> Result<Self> {
        let options = access.connect_options()?;
        let (ns, endpoint) = (access.ns.clone(), access.endpoint.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<EtcdRequest>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (watch_tx, watched) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let ready_on_error = ready_tx.clone();
            let result = in_netns(&ns.clone(), move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| LabError::Other(format!("building a tokio runtime: {e}")))?;
                runtime.block_on(async move {
                    let mut client = match Client::connect([endpoint.as_str()], Some(options)).await {
                        Ok(c) => c,
                        Err(source) => {
                            let what = format!("connect to {endpoint}");
                            let _ = ready_tx.send(Err(LabError::Etcd { what, source }));
                            return;
                        }
                    };
                    let options = WatchOptions::new().with_prefix();
                    let mut stream = match client.watch(SUBNETS_PREFIX, Some(options)).await {
                        Ok(stream) => stream,
                        Err(source) => {
                            let what = format!("watch {SUBNETS_PREFIX}");
                            let _ = ready_tx.send(Err(LabError::Etcd { what, source }));
                            return;
                        }
                    };
                    // Its own task, so a watch event is timed when it arrives, not when a
                    // request in progress is done.
                    tokio::spawn(async move {
                        while let Ok(Some(response)) = stream.message().await {
                            let at = Instant::now();
                            for kv in response.events().iter().filter_map(|e| e.kv()) {
                                let key = String::from_utf8_lossy(kv.key()).into_owned();
                                if watch_tx.send((at, key)).is_err() {
                                    return;
                                }
                            }
                        }
                    });
                    let _ = ready_tx.send(Ok(()));
                    while let Some(request) = rx.recv().await {
                        serve(&mut client, request).await;
                    }
                });
                Ok(())
            });
            if let Err(e) = result {
                let _ = ready_on_error.send(Err(e));
            }
        });
        let session = EtcdSession {
            tx: Some(tx),
            watched,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(ETCD_TIMEOUT) {
            Ok(Ok(())) => Ok(session),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LabError::Timeout {
                what: format!("a connection to etcd at {}", access.endpoint),
                seconds: ETCD_TIMEOUT.as_secs(),
                detail: String::new(),
            }),
        }
    }

    fn request(&self, what: &str, make: impl FnOnce(Sender<Result<Timed>>) -> EtcdRequest) -> Result<Timed> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(make(reply_tx)).is_ok());
        if !sent {
            return Err(LabError::Other(format!("etcd {what}: the etcd session has ended")));
        }
        reply_rx.recv_timeout(ETCD_TIMEOUT).unwrap_or_else(|_| {
            Err(LabError::Timeout {
                what: format!("etcd {what}"),
                seconds: ETCD_TIMEOUT.as_secs(),
                detail: String::new(),
            })
        })
    }

    fn put(&self, key: &str, value: &str) -> Result<Timed> {
        let pair = vec![(key.to_string(), value.to_string())];
        self.request(&format!("put {key}"), |reply| EtcdRequest::Put(pair, reply))
    }

    /// Writes every record, in transactions of [`PUTS_PER_TXN`] puts.
    fn put_all(&self, records: Vec<(String, String)>) -> Result<()> {
        let total = records.len();
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let chunk: Vec<_> = records.by_ref().take(PUTS_PER_TXN).collect();
            self.request(
                &format!("transaction of {} of {total} lease puts", chunk.len()),
                |reply| EtcdRequest::Put(chunk, reply),
            )?;
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<Timed> {
        let key_owned = key.to_string();
        self.request(&format!("delete {key}"), |reply| EtcdRequest::Delete(key_owned, reply))
    }

    fn drain_watched(&self) {
        self.watched.try_iter().take(DRAIN_MAX).for_each(drop);
    }

    /// When the watch reported `key` changed, waiting until `deadline` at most.
    fn watched(&self, key: &str, deadline: Instant) -> Option<Instant> {
        while Instant::now() < deadline {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.watched.recv_timeout(wait) {
                Ok((at, k)) if k == key => return Some(at),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for EtcdSession {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(client: &mut Client, request: EtcdRequest) {
    let sent = Instant::now();
    let (result, reply, what) = match request {
        EtcdRequest::Put(mut pairs, reply) if pairs.len() == 1 => {
            let (key, value) = pairs.pop().expect("one pair");
            let what = format!("put {key}");
            (client.put(key, value, None).await.map(drop), reply, what)
        }
        EtcdRequest::Put(pairs, reply) => {
            let what = format!("transaction of {} puts", pairs.len());
            let ops: Vec<TxnOp> = pairs.into_iter().map(|(k, v)| TxnOp::put(k, v, None)).collect();
            (client.txn(Txn::new().and_then(ops)).await.map(drop), reply, what)
        }
        EtcdRequest::Delete(key, reply) => {
            let what = format!("delete {key}");
            (client.delete(key, None).await.map(drop), reply, what)
        }
    };
    let replied = Instant::now();
    let _ = reply.send(
        result
            .map(|()| Timed { sent, replied })
            .map_err(|source| LabError::Etcd { what, source }),
    );
}

// ---- weftd from /proc ----

/// The benchmarked weftd, watched through /proc.
struct Weftd<'a> {
    pid: u32,
    lab: &'a Lab,
}

impl Weftd<'_> {
    fn check_alive(&self) -> Result<()> {
        if process::alive(self.pid) {
            return Ok(());
        }
        let log = &self.lab.host(1)?.weftd_log;
        Err(LabError::Exited {
            what: format!("weftd (pid {})", self.pid),
            detail: format!("; tail of {}:\n{}", log.display(), process::log_tail(log, 20)),
        })
    }
}

/// VmRSS in MB (10^6 bytes).
fn rss_mb(pid: u32) -> Result<f64> {
    status_kb(pid, "VmRSS:").map(|kb| kb * 1024.0 / 1e6)
}

/// A "<field> <n> kB" line of /proc/<pid>/status.
fn status_kb(pid: u32, field: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| LabError::io("reading", &path, e))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .ok_or_else(|| LabError::Parse {
            what: path,
            detail: format!("no {field} line"),
        })
}

/// VmHWM (the peak RSS) in MB.
fn rss_peak_mb(pid: u32) -> Result<f64> {
    status_kb(pid, "VmHWM:").map(|kb| kb * 1024.0 / 1e6)
}

/// utime + stime in milliseconds (/proc/<pid>/stat, clock ticks).
fn cpu_ms(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| LabError::io("reading", &path, e))?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (field(11), field(12)) {
        (Some(utime), Some(stime)) => Ok((utime + stime) * 1e3 / ticks),
        _ => Err(LabError::Parse {
            what: path,
            detail: "no utime and stime fields".into(),
        }),
    }
}

/// CPU time of the live threads in milliseconds, from each thread's schedstat (nanoseconds).
fn schedstat_ms(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total_ns = 0u64;
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        total_ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total_ns as f64 / 1e6)
}

/// weftd's CPU over `window` with nothing changing, scaled to 10 s: (stat, schedstat).
fn idle_cpu(pid: u32, window: Duration) -> Result<(f64, Option<f64>)> {
    let (stat0, sched0, t0) = (cpu_ms(pid)?, schedstat_ms(pid), Instant::now());
    std::thread::sleep(window);
    let (stat1, sched1) = (cpu_ms(pid)?, schedstat_ms(pid));
    let per_10s = 10.0 / t0.elapsed().as_secs_f64();
    let sched = match (sched0, sched1) {
        (Some(a), Some(b)) if b >= a => Some((b - a) * per_10s),
        _ => None,
    };
    Ok(((stat1 - stat0) * per_10s, sched))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The nearest-rank percentile `p` (0-100) of `values`.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if p == 50.0 && sorted.len().is_multiple_of(2) {
        let n = sorted.len();
        return Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0);
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

// ---- the table ----

/// The issue's targets (one-host lab, real etcd, 5,000 leases; convergence also at 20,000).
pub mod targets {
    pub const EVENT_MS: f64 = 5.0;
    pub const CONVERGE_5000_MS: f64 = 600.0;
    pub const CONVERGE_20000_MS: f64 = 2_500.0;
    pub const RSS_MB: f64 = 35.0;
    pub const IDLE_CPU_MS: f64 = 10.0;
    pub const HEAL_MS: f64 = 100.0;
    pub const DEVICE_MS: f64 = 1_000.0;
    /// The size most targets are stated for.
    pub const AT: usize = 5_000;
}

impl ControlBenchRow {
    /// The figures of this row that miss a target, as "what: figure > target". Targets hold at
    /// 5,000 leases; event latency also at 500 (it should not depend on the cluster size);
    /// convergence also at 20,000.
    pub fn misses(&self) -> Vec<String> {
        use targets::*;
        let mut out = Vec::new();
        let mut check = |what: &str, value: Option<f64>, limit: f64, unit: &str| match value {
            Some(v) if v > limit => out.push(format!("{what} {} > {}", fmt_value(v, unit), fmt_value(limit, unit))),
            None => out.push(format!("{what}: no measurement")),
            _ => {}
        };
        let n = self.leases;
        match n {
            AT => check("converge", Some(self.converge_ms), CONVERGE_5000_MS, "s"),
            20_000 => check("converge", Some(self.converge_ms), CONVERGE_20000_MS, "s"),
            _ => {}
        }
        if n == AT || n == 500 {
            check("add median", self.add.median_ms, EVENT_MS, "ms");
            check("delete median", self.delete.median_ms, EVENT_MS, "ms");
        }
        if n == AT {
            check("RSS after events", Some(self.rss_after_mb), RSS_MB, "MB");
            check("idle CPU per 10 s", Some(self.idle_cpu_ms), IDLE_CPU_MS, "ms");
            check("heal neighbour median", self.heal_neighbour.median_ms, HEAL_MS, "ms");
            check("heal FDB median", self.heal_fdb.median_ms, HEAL_MS, "ms");
            check("heal route median", self.heal_route.median_ms, HEAL_MS, "ms");
            check("device recreated", self.device_ms, DEVICE_MS, "s");
        }
        out
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "s" => format!("{:.2} s", v / 1e3),
        "MB" => format!("{v:.1} MB"),
        _ if v < 10.0 => format!("{v:.2} ms"),
        _ => format!("{v:.1} ms"),
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| fmt_value(v, "ms")).unwrap_or_else(|| "-".into())
}

/// A latency cell: the median, with the misses counted when there were any.
fn fmt_latency(l: &Latencies, p90: bool) -> String {
    let value = fmt_ms(if p90 { l.p90_ms } else { l.median_ms });
    if l.missed > 0 {
        format!("{value} ({} missed)", l.missed)
    } else {
        value
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl ControlBenchRow {
    /// The row's cells in the table's column order (`~`: notifications were lost).
    fn cells(&self) -> [String; 13] {
        let converge = format!(
            "{}{}",
            if self.converge_exact { "" } else { "~" },
            fmt_value(self.converge_ms, "s")
        );
        let device = self
            .device_ms
            .map(|v| format!("{}{}", if self.device_exact { "" } else { "~" }, fmt_value(v, "s")))
            .unwrap_or_else(|| "not within the timeout".into());
        [
            thousands(self.leases),
            converge,
            fmt_latency(&self.add, false),
            fmt_latency(&self.add, true),
            fmt_latency(&self.delete, false),
            fmt_latency(&self.delete, true),
            match self.idle_cpu_schedstat_ms {
                Some(precise) => format!("{:.0} ms ({precise:.1} ms)", self.idle_cpu_ms),
                None => format!("{:.0} ms", self.idle_cpu_ms),
            },
            fmt_value(self.rss_before_mb, "MB"),
            fmt_value(self.rss_after_mb, "MB"),
            fmt_latency(&self.heal_neighbour, false),
            fmt_latency(&self.heal_fdb, false),
            fmt_latency(&self.heal_route, false),
            device,
        ]
    }
}

impl fmt::Display for ControlBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let interval = if self.weftd_args.is_empty() {
            "default reconcile interval (10 s)".to_string()
        } else {
            format!("weftd {}", self.weftd_args.join(" "))
        };
        writeln!(
            f,
            "weft control plane: one-host vxlan lab, real etcd, N leases written before weftd starts; {interval}"
        )?;
        writeln!(
            f,
            "add/delete: {} leases added then deleted one at a time, from etcd's watch event (the bench watches too) \
             to the route's notification; heal: median of {} hand deletions each, from the delete's return to the \
             entry's notification; idle CPU: utime+stime (10 ms ticks; in brackets the threads' schedstat, in ns) \
             over {:.0} s after the events, per 10 s; RSS: VmRSS (MB = 10^6 bytes) after an idle window before \
             and after the events",
            self.events / 2,
            self.heal_runs,
            self.idle_seconds
        )?;
        writeln!(
            f,
            "load average: {} at start, {} at end (2 CPUs)",
            self.load_before, self.load_after
        )?;
        writeln!(f)?;
        let header = [
            "leases",
            "converge",
            "add p50",
            "add p90",
            "delete p50",
            "delete p90",
            "idle CPU / 10 s (schedstat)",
            "RSS converged",
            "RSS after events",
            "heal neighbour",
            "heal FDB",
            "heal route",
            "device recreated",
        ];
        writeln!(f, "| {} |", header.join(" | "))?;
        writeln!(f, "|{}", "---|".repeat(header.len()))?;
        for row in &self.rows {
            writeln!(f, "| {} |", row.cells().join(" | "))?;
        }
        writeln!(
            f,
            "| target | <= 0.6 s (5,000), <= 2.5 s (20,000) | <= 5 ms | | <= 5 ms | | <= 10 ms | | <= 35 MB (5,000) | <= 100 ms | <= 100 ms | <= 100 ms | <= 1 s |"
        )?;
        writeln!(f)?;
        let extra: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                format!(
                    "{}: weftd CPU until converged {}; from the request sent (etcd's commit included) add p50 {}, \
                     delete p50 {}; etcd put round trip p50 {}; idle CPU before the events {:.0} ms; peak RSS {}",
                    thousands(r.leases),
                    fmt_value(r.converge_cpu_ms, "s"),
                    fmt_ms(r.add_from_request.median_ms),
                    fmt_ms(r.delete_from_request.median_ms),
                    fmt_ms(r.etcd_put_ms),
                    r.idle_cpu_converged_ms,
                    fmt_value(r.rss_peak_mb, "MB")
                )
            })
            .collect();
        for line in extra {
            writeln!(f, "{line}")?;
        }
        if self
            .rows
            .iter()
            .any(|r| !r.converge_exact || (!r.device_exact && r.device_ms.is_some()))
        {
            writeln!(
                f,
                "~: notifications were lost; the time is the last entry notification seen, confirmed by reading the tables"
            )?;
        }
        let misses: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                r.misses()
                    .into_iter()
                    .map(move |m| format!("{} leases: {m}", thousands(r.leases)))
            })
            .collect();
        if misses.is_empty() {
            writeln!(f, "every figure with a target meets it")?;
        } else {
            writeln!(f, "misses the target: {}", misses.join("; "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_kernel::netlink::{FdbEntry, LinkInfo, Neighbour, RouteInfo, RouteType};

    fn own() -> Ipv4Net {
        "10.1.3.0/24".parse().unwrap()
    }

    #[test]
    fn fake_peers_are_distinct_admissible_and_skip_our_subnet() {
        let peers = FakePeers::new(own());
        let all: Vec<FakePeer> = (0..20_100).map(|i| peers.peer(i)).collect();
        let network: Ipv4Net = NETWORK.parse().unwrap();
        let benchmarking: Ipv4Net = "198.18.0.0/15".parse().unwrap();
        assert!(all.iter().all(|p| p.subnet != own() && network.contains(&p.subnet)));
        assert!(all.iter().all(|p| benchmarking.contains(&p.public_ip)));
        assert_eq!(all.iter().map(|p| p.subnet).collect::<HashSet<_>>().len(), all.len());
        assert_eq!(all.iter().map(|p| p.public_ip).collect::<HashSet<_>>().len(), all.len());
        assert_eq!(all.iter().map(|p| p.vtep_mac).collect::<HashSet<_>>().len(), all.len());
        assert_eq!(peers.peer(2).subnet, "10.1.2.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(peers.peer(3).subnet, "10.1.4.0/24".parse::<Ipv4Net>().unwrap());
        let last = FakePeers::new(own()).peer(FakePeers::MAX - 1).subnet;
        assert!(last.network() <= Ipv4Addr::new(10, 255, 254, 0), "{last}");
    }

    #[test]
    fn fake_leases_pass_admission() {
        let peers = FakePeers::new(own());
        let cfg = weft_core::NetworkConfig::parse(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#).unwrap();
        let records: Vec<_> = (0..300)
            .map(|i| {
                let (key, value) = peers.record(i);
                let name = key.strip_prefix(SUBNETS_PREFIX).unwrap().to_string();
                weft_core::admission::LeaseRecord::parse(&name, value.as_bytes(), i as i64 + 1)
            })
            .collect();
        let admitted = weft_core::admission::admit(&cfg, &records);
        assert!(admitted.refused.is_empty(), "{:?}", admitted.refused.first());
        assert_eq!(admitted.leases.len(), 300);
        let (key, value) = peers.record(0);
        assert_eq!(key, "/coreos.com/network/subnets/10.1.0.0-24");
        assert_eq!(
            value,
            r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:be:00:00:00:00"}}"#
        );
    }

    fn link(index: u32) -> LinkInfo {
        LinkInfo {
            index,
            name: DEVICE.into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
            up: true,
            kind: Some("vxlan".into()),
            master: None,
            vxlan: None,
        }
    }

    fn entries(peer: &FakePeer, index: u32) -> Vec<KernelEvent> {
        vec![
            KernelEvent::NeighbourChanged {
                index,
                neighbour: Neighbour {
                    ip: peer.subnet.network().into(),
                    mac: Some(peer.vtep_mac),
                    state: 0x80,
                },
            },
            KernelEvent::FdbChanged {
                index,
                entry: FdbEntry {
                    mac: peer.vtep_mac,
                    dst: Some(peer.public_ip.into()),
                    state: 0x80,
                    is_self: true,
                },
            },
            KernelEvent::RouteAdded(RouteInfo {
                dst: peer.subnet.into(),
                gateway: Some(peer.subnet.network().into()),
                oif: Some(index),
                onlink: true,
                nexthop_id: Some(0x7700_0002),
                protocol: 3,
                scope: 0,
                priority: 0,
                pref_src: None,
                table: 254,
                kind: RouteType::Unicast,
            }),
        ]
    }

    #[test]
    fn tracker_counts_entries_and_starts_again_on_a_new_device() {
        let peers = FakePeers::new(own());
        let expected = Expected::new(&peers, 2);
        let mut tracker = Tracker::new(&expected, 7);
        for event in entries(&peers.peer(0), 7) {
            assert!(tracker.observe(&event));
        }
        // An entry on another device, and a peer that is not expected, count for nothing.
        assert!(!tracker.observe(&entries(&peers.peer(1), 8)[2]));
        assert!(!tracker.observe(&entries(&peers.peer(5), 7)[2]));
        assert!(!tracker.complete());
        for event in entries(&peers.peer(1), 7) {
            tracker.observe(&event);
        }
        assert!(tracker.complete());
        let failed = KernelEvent::NeighbourChanged {
            index: 7,
            neighbour: Neighbour {
                ip: peers.peer(1).subnet.network().into(),
                mac: None,
                state: 0x20,
            },
        };
        assert!(tracker.observe(&failed));
        assert_eq!(tracker.counts().neighbours, 1);
        // The device is created again: its routes went with the old one, unannounced.
        assert!(tracker.observe(&KernelEvent::LinkChanged(link(9))));
        assert_eq!(tracker.counts(), Counts::default());
        assert!(
            !tracker.observe(&KernelEvent::LinkChanged(link(9))),
            "the same device again"
        );
        for event in (0..2).flat_map(|i| entries(&peers.peer(i), 9)) {
            tracker.observe(&event);
        }
        assert!(tracker.complete());
    }

    #[test]
    fn percentiles_are_nearest_rank_with_an_even_median() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.5));
        assert_eq!(percentile(&v, 90.0), Some(18.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[4.0], 90.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    fn row(leases: usize, converge_ms: f64, add_ms: f64) -> ControlBenchRow {
        let lat = |v: f64| Latencies::new(vec![v; 5], 0);
        ControlBenchRow {
            leases,
            converge_ms,
            converge_exact: true,
            add: lat(add_ms),
            delete: Latencies::new(vec![2.0, 3.0], 1),
            etcd_put_ms: Some(1.5),
            idle_cpu_ms: 20.0,
            idle_cpu_schedstat_ms: Some(18.2),
            rss_before_mb: 20.0,
            rss_after_mb: 21.0,
            heal_neighbour: lat(1.0),
            heal_fdb: lat(1.2),
            heal_route: lat(0.9),
            device_ms: Some(400.0),
            device_exact: true,
            ..ControlBenchRow::default()
        }
    }

    #[test]
    fn the_table_has_a_row_per_size_the_targets_and_the_misses() {
        let report = ControlBenchReport {
            weftd_args: Vec::new(),
            events: 100,
            heal_runs: 10,
            idle_seconds: 10.0,
            load_before: "0.10 0.20 0.30".into(),
            load_after: "0.40 0.50 0.60".into(),
            rows: vec![row(500, 90.0, 1.0), row(5_000, 700.0, 1.5), row(20_000, 2_000.0, 9.0)],
        };
        let text = report.to_string();
        let table: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(table.len(), 6, "{text}");
        let columns = table[0].matches('|').count();
        assert!(table.iter().all(|l| l.matches('|').count() == columns), "{text}");
        assert!(table[2].starts_with("| 500 | 0.09 s | 1.00 ms |"), "{text}");
        assert!(table[3].contains("| 5,000 | 0.70 s |"), "{text}");
        assert!(table[3].contains("2.50 ms (1 missed)"), "{text}");
        assert!(table[5].starts_with("| target |"), "{text}");
        assert!(text.contains("default reconcile interval (10 s)"), "{text}");
        // 5,000: convergence and idle CPU miss; 20,000: events are not held to the target there.
        assert!(text.contains("5,000 leases: converge 0.70 s > 0.60 s"), "{text}");
        assert!(
            text.contains("5,000 leases: idle CPU per 10 s 20.0 ms > 10.0 ms"),
            "{text}"
        );
        assert!(!text.contains("20,000 leases: add"), "{text}");
        assert!(!text.contains("20,000 leases: converge"), "{text}");
    }

    /// The whole command on a small cluster: a real lab, etcd, weftd and kernel (root).
    #[test]
    fn a_small_run_measures_plausible_figures() {
        let options =
            ControlBenchOptions {
                name: format!("bc{}", std::process::id() % 100_000),
                leases: vec![50],
                events: 6,
                heal_runs: 3,
                idle: Duration::from_secs(1),
                weftd: WeftdBinary::At(super::super::find_weftd().expect(
                    "weftd binary not found next to the test binary: run `cargo build --workspace --bins` first",
                )),
                weftd_args: Vec::new(),
            };
        let started = Instant::now();
        let report = run(&options, &mut |_| {}).expect("bench-control runs");
        assert!(Lab::list().iter().all(|l| *l != options.name), "the lab is torn down");
        let row = &report.rows[0];
        assert_eq!(row.leases, 50);
        assert!(row.converge_ms > 0.0 && row.converge_ms < 30_000.0, "{row:?}");
        for l in [
            &row.add,
            &row.delete,
            &row.heal_neighbour,
            &row.heal_fdb,
            &row.heal_route,
        ] {
            assert_eq!(l.missed, 0, "{row:?}");
            assert!(l.median_ms.is_some_and(|m| (0.0..5_000.0).contains(&m)), "{row:?}");
        }
        assert_eq!(row.add.samples_ms.len(), 3);
        assert!(row.device_ms.is_some_and(|d| d < 15_000.0), "{row:?}");
        assert!(row.rss_before_mb > 1.0 && row.rss_after_mb < 500.0, "{row:?}");
        assert!(row.idle_cpu_ms >= 0.0, "{row:?}");
        assert!(report.to_string().contains("| 50 |"), "{report}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "took {:?}",
            started.elapsed()
        );
    }
}
