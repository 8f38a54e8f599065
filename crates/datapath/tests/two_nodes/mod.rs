//! The fixture every datapath root test stands on (and weft-trace's, which includes this file):
//! two "nodes" (network namespaces) joined by a veth `veth0` (198.51.100.1/24 and .2/24), each
//! with a pod address on a bridge (`pod0`, or `cni0`), optionally a pod namespace plugged into
//! node a's bridge; all removed on drop even when the test fails.
#![allow(dead_code)]

use std::fs::File;
use std::process::Command;
use std::thread;

use nix::sched::{setns, CloneFlags};

/// Turns on logs (RUST_LOG, default debug for weft's crates), then fails the test, with what to
/// do, unless it runs as root: a root test never passes silently.
pub fn require_root() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("weft_datapath=debug,weft_kernel=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it creates network namespaces): run it as root, as `make test` and CI do"
    );
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run command");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:06x}", (nanos ^ (std::process::id() << 8)) & 0xff_ffff)
}

/// Nodes `<prefix>-<tag>-a` (198.51.100.1, pod 10.<octet>.1.1/24) and `-b` (.2, 10.<octet>.2.1/24).
pub struct TwoNodes {
    pub a: String,
    pub b: String,
    /// `<prefix>-<tag>-p` once [`TwoNodes::add_pod_on_a`] made it.
    pub pod: Option<String>,
    octet: u8,
    bridge: &'static str,
}

impl TwoNodes {
    pub fn new(prefix: &str, octet: u8) -> Self {
        Self::build(prefix, octet, "pod0", false)
    }

    /// Like a flannel node: the pod bridge is `cni0` and the node forwards between it and the underlay.
    pub fn forwarding_via_cni0(prefix: &str, octet: u8) -> Self {
        Self::build(prefix, octet, "cni0", true)
    }

    fn build(prefix: &str, octet: u8, bridge: &'static str, forward: bool) -> Self {
        let tag = unique_tag();
        let t = TwoNodes {
            a: format!("{prefix}-{tag}-a"),
            b: format!("{prefix}-{tag}-b"),
            pod: None,
            octet,
            bridge,
        };
        run(&["ip", "netns", "add", &t.a]);
        run(&["ip", "netns", "add", &t.b]);
        run(&[
            "ip", "-n", &t.a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", &t.b,
        ]);
        for (ns, underlay, pod) in [(&t.a, "198.51.100.1/24", 1), (&t.b, "198.51.100.2/24", 2)] {
            setup_node(ns, underlay, &format!("10.{octet}.{pod}.1/24"), bridge);
            if forward {
                run(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            }
        }
        t
    }

    /// Sets the MTU of both nodes' pod bridges.
    pub fn set_bridge_mtu(&self, mtu: u32) {
        let mtu = mtu.to_string();
        for ns in [&self.a, &self.b] {
            run(&["ip", "-n", ns, "link", "set", self.bridge, "mtu", &mtu]);
        }
    }

    /// A pod namespace whose `eth0` (10.<octet>.1.2/24, default route via node a's bridge
    /// address) is paired with `vpod` on node a's bridge, as the bridge CNI plugin does.
    /// Returns the pod's namespace.
    pub fn add_pod_on_a(&mut self, mtu: u32) -> String {
        let pod = format!("{}-p", self.a.strip_suffix("-a").expect("node a's name ends in -a"));
        run(&["ip", "netns", "add", &pod]);
        self.pod = Some(pod.clone());
        let mtu = mtu.to_string();
        run(&["ip", "-n", &pod, "link", "set", "lo", "up"]);
        run(&[
            "ip", "-n", &self.a, "link", "add", "vpod", "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
            &mtu, "netns", &pod,
        ]);
        run(&["ip", "-n", &self.a, "link", "set", "vpod", "master", self.bridge, "up"]);
        let (addr, gateway) = (format!("10.{}.1.2/24", self.octet), format!("10.{}.1.1", self.octet));
        run(&["ip", "-n", &pod, "addr", "add", &addr, "dev", "eth0"]);
        run(&["ip", "-n", &pod, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &pod, "route", "add", "default", "via", &gateway]);
        pod
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        for name in [Some(&self.a), Some(&self.b), self.pod.as_ref()].into_iter().flatten() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn setup_node(ns: &str, underlay: &str, pod: &str, bridge: &str) {
    run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    run(&["ip", "-n", ns, "addr", "add", underlay, "dev", "veth0"]);
    run(&["ip", "-n", ns, "link", "set", "veth0", "up"]);
    run(&["ip", "-n", ns, "link", "add", bridge, "type", "bridge"]);
    run(&["ip", "-n", ns, "addr", "add", pod, "dev", bridge]);
    run(&["ip", "-n", ns, "link", "set", bridge, "up"]);
}

/// Runs `f` on a thread that has entered namespace `ns`, as weftd runs inside its own.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// How a backend thread says it started: Ok with what the test needs of it, or the start
/// error's message.
pub type Ready<R> = std::sync::mpsc::Sender<Result<R, String>>;

/// A backend running on its own thread inside a namespace, as weftd runs inside its own, and
/// served messages of type `M`. Dropping it closes the channel and joins the thread.
pub struct BackendThread<M> {
    tx: Option<tokio::sync::mpsc::UnboundedSender<M>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl<M: Send + 'static> BackendThread<M> {
    /// Enters `ns` on a new thread with a current-thread runtime, selects `veth0` as the
    /// external interface and runs `body`, which sends on its `Ready` once the backend is up
    /// (or failed) and then answers messages until the channel closes. Returns what `body`
    /// sent, or its error.
    pub fn spawn<R, F, Fut>(ns: &str, body: F) -> Result<(Self, R), String>
    where
        R: Send + 'static,
        F: FnOnce(
                weft_kernel::netlink::Netlink,
                weft_kernel::iface::ExternalInterface,
                tokio::sync::mpsc::UnboundedReceiver<M>,
                Ready<R>,
            ) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = in_netns(ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let nl = weft_kernel::netlink::Netlink::new().expect("netlink socket");
                let sel = weft_kernel::iface::IfaceSelection {
                    ifaces: vec!["veth0".into()],
                    ..Default::default()
                };
                let ext = weft_kernel::iface::select_external_interface(&nl, &sel)
                    .await
                    .expect("external interface");
                body(nl, ext, rx, ready_tx).await
            })
        });
        let ready = ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("backend thread answers");
        let me = BackendThread {
            tx: Some(tx),
            thread: Some(thread),
        };
        ready.map(|r| (me, r))
    }

    /// Sends the message `make` builds around a reply channel and waits for the reply.
    pub fn ask<T>(&self, make: impl FnOnce(std::sync::mpsc::Sender<T>) -> M) -> T {
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        let sent = self.tx.as_ref().map(|tx| tx.send(make(reply_tx)).is_ok());
        assert_eq!(sent, Some(true), "backend thread is running");
        reply_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("backend thread answers")
    }
}

impl<M> Drop for BackendThread<M> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends UDP datagrams from address `src` in `ns_a` to address `dst` in `ns_b`, which echoes
/// them back; true once a round trip succeeds within `within`. Like a ping, but with no tool
/// to install.
pub fn udp_round_trip(ns_a: &str, src: &str, ns_b: &str, dst: &str, within: std::time::Duration) -> bool {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    let (src, dst): (Ipv4Addr, Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let deadline = Instant::now() + within;
    let (port_tx, port_rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let echo_done = done.clone();
    let echo = in_netns(ns_b, move || {
        let sock = UdpSocket::bind((dst, 0)).expect("bind echo socket");
        port_tx.send(sock.local_addr().unwrap().port()).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = [0u8; 64];
        while !echo_done.load(Ordering::Relaxed) && Instant::now() < deadline + Duration::from_millis(500) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    let port = port_rx.recv().unwrap();
    let client = in_netns(ns_a, move || {
        let sock = UdpSocket::bind((src, 0)).expect("bind client socket");
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 64];
        loop {
            let _ = sock.send_to(b"weft", (dst, port));
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if &buf[..n] == b"weft" && from.ip() == dst {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    });
    let ok = client.join().unwrap();
    done.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    ok
}
