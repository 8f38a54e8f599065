//! The fixture every datapath root test stands on (and weft-trace's, which includes this file):
//! two "nodes" (network namespaces) joined by a veth `veth0` (198.51.100.1/24 and .2/24), each
//! with a pod address on a bridge (`pod0`, or `cni0`), optionally a pod namespace plugged into
//! node a's bridge; all removed on drop even when the test fails.
#![allow(dead_code)]

use std::fs::File;
use std::process::Command;
use std::thread;

use nix::sched::{setns, CloneFlags};

/// True when running as root; also turns on logs (RUST_LOG, default debug for weft's crates).
pub fn is_root() -> bool {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("weft_datapath=debug,weft_kernel=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    nix::unistd::geteuid().is_root()
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
