//! Root tests of the masquerade/forward rules against the real iptables and nft binaries. Each
//! test works in its own network namespace `wtf-<unique>` (removed on drop, also on failure); the
//! `Firewall` reaches it through `ip netns exec`, except in the test of the `setns()` path.
//!
//! Run: `cargo test -p weft-kernel --test firewall` as root.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use weft_core::masq::{forward_rules, masq_rules, nft_table};
use weft_kernel::firewall::{Changes, Firewall, FirewallError, FirewallPlan, Mode};

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "wtf-{:x}-{}-{:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos & 0xffff
        );
        let status = Command::new("ip").args(["netns", "add", &name]).status().unwrap();
        assert!(status.success(), "ip netns add {name} failed");
        Netns(name)
    }

    /// Runs a command inside the namespace and returns its stdout; panics on failure.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn firewall(&self, mode: Mode) -> Firewall {
        Firewall::new(mode).in_netns(&self.0)
    }

    /// The lines of `iptables-save -t <table>` that mention weft's chains, in order.
    fn weft_lines(&self, table: &str) -> Vec<String> {
        self.run(&["iptables-save", "-t", table])
            .lines()
            .filter(|l| l.contains("FLANNEL-"))
            .map(str::to_string)
            .collect()
    }

    fn nft_table(&self) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "list", "table", "ip", "flannel-ipv4"])
            .output()
            .unwrap();
        out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn is_root() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root");
    }
    root
}

fn plan(pod: &str) -> FirewallPlan {
    FirewallPlan {
        network: "10.5.0.0/16".parse().unwrap(),
        pod: pod.parse().unwrap(),
        masq: true,
        forward: true,
    }
}

fn expected_nat(plan: &FirewallPlan) -> Vec<String> {
    let mut lines = vec![
        ":FLANNEL-POSTRTG - [0:0]".to_string(),
        "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG".to_string(),
    ];
    lines.extend(masq_rules(plan.network, plan.pod));
    lines
}

fn expected_filter(plan: &FirewallPlan) -> Vec<String> {
    let mut lines = vec![
        ":FLANNEL-FWD - [0:0]".to_string(),
        "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD".to_string(),
    ];
    lines.extend(forward_rules(plan.network));
    lines
}

const BOTH: Changes = Changes {
    masq: true,
    forward: true,
};

#[test]
fn iptables_rules_appear_in_flannels_order_with_comments() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let p = plan("10.5.72.0/24");
    assert_eq!(ns.firewall(Mode::Iptables).ensure(&p).unwrap(), BOTH);

    let nat = ns.weft_lines("nat");
    assert_eq!(nat, expected_nat(&p));
    // spelled out once, so a change in rendering cannot hide behind the shared helper
    assert_eq!(
        nat[2..],
        [
            "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN",
            "-A FLANNEL-POSTRTG -s 10.5.72.0/24 -d 10.5.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN",
            "-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
            "-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
            "-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
            "-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
        ]
    );
    assert_eq!(ns.weft_lines("filter"), expected_filter(&p));
}

#[test]
fn iptables_ensure_twice_changes_nothing_the_second_time() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let fw = ns.firewall(Mode::Iptables);
    let p = plan("10.5.72.0/24");
    assert!(fw.ensure(&p).unwrap().any());
    assert_eq!(fw.ensure(&p).unwrap(), Changes::default());
    // a fresh Firewall (a restarted daemon) sees the same: nothing to do
    assert_eq!(ns.firewall(Mode::Iptables).ensure(&p).unwrap(), Changes::default());
    assert_eq!(ns.weft_lines("nat"), expected_nat(&p));
}

#[test]
fn iptables_hand_edits_are_corrected() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let fw = ns.firewall(Mode::Iptables);
    let p = plan("10.5.72.0/24");
    fw.ensure(&p).unwrap();
    // a foreign rule in POSTROUTING must survive every correction
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-I",
        "POSTROUTING",
        "-s",
        "192.0.2.0/24",
        "-j",
        "RETURN",
    ]);

    ns.run(&["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3"]);
    assert_eq!(
        fw.ensure(&p).unwrap(),
        Changes {
            masq: true,
            forward: false
        }
    );
    assert_eq!(ns.weft_lines("nat"), expected_nat(&p));

    ns.run(&["iptables", "-t", "filter", "-D", "FORWARD", "1"]);
    assert_eq!(
        fw.ensure(&p).unwrap(),
        Changes {
            masq: false,
            forward: true
        }
    );
    assert_eq!(ns.weft_lines("filter"), expected_filter(&p));

    // a second jump (a restarted flanneld appends one) is removed, the first one stays
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "FLANNEL-POSTRTG",
    ]);
    ns.run(&["iptables", "-t", "filter", "-A", "FLANNEL-FWD", "-j", "DROP"]);
    assert_eq!(fw.ensure(&p).unwrap(), BOTH);
    assert_eq!(ns.weft_lines("nat"), expected_nat(&p));
    assert_eq!(ns.weft_lines("filter"), expected_filter(&p));

    let nat = ns.run(&["iptables-save", "-t", "nat"]);
    assert!(
        nat.contains("-A POSTROUTING -s 192.0.2.0/24 -j RETURN"),
        "foreign rule lost:\n{nat}"
    );
}

#[test]
fn iptables_new_subnet_replaces_the_old_rules() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let fw = ns.firewall(Mode::Iptables);
    fw.ensure(&plan("10.5.72.0/24")).unwrap();
    let moved = plan("10.5.9.0/24");
    assert_eq!(
        fw.ensure(&moved).unwrap(),
        Changes {
            masq: true,
            forward: false
        }
    );
    let nat = ns.run(&["iptables-save", "-t", "nat"]);
    assert!(!nat.contains("10.5.72.0"), "old subnet still present:\n{nat}");
    assert_eq!(ns.weft_lines("nat"), expected_nat(&moved));

    let mut other_network = moved;
    other_network.network = "10.6.0.0/16".parse().unwrap();
    other_network.pod = "10.6.3.0/24".parse().unwrap();
    assert_eq!(fw.ensure(&other_network).unwrap(), BOTH);
    let all = ns.run(&["iptables-save"]);
    assert!(!all.contains("10.5."), "old network still present:\n{all}");
    assert_eq!(ns.weft_lines("nat"), expected_nat(&other_network));
    assert_eq!(ns.weft_lines("filter"), expected_filter(&other_network));
}

#[test]
fn iptables_switched_off_rule_sets_vanish() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let fw = ns.firewall(Mode::Iptables);
    let mut p = plan("10.5.72.0/24");
    fw.ensure(&p).unwrap();
    p.masq = false;
    assert_eq!(
        fw.ensure(&p).unwrap(),
        Changes {
            masq: true,
            forward: false
        }
    );
    assert_eq!(ns.weft_lines("nat"), Vec::<String>::new());
    assert_eq!(ns.weft_lines("filter"), expected_filter(&p));
    p.forward = false;
    assert_eq!(
        fw.ensure(&p).unwrap(),
        Changes {
            masq: false,
            forward: true
        }
    );
    assert_eq!(ns.weft_lines("filter"), Vec::<String>::new());
    assert_eq!(fw.ensure(&p).unwrap(), Changes::default());
}

#[test]
fn iptables_remove_cleans_up_only_weft() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let fw = ns.firewall(Mode::Iptables);
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "192.0.2.0/24",
        "-j",
        "RETURN",
    ]);
    fw.ensure(&plan("10.5.72.0/24")).unwrap();
    fw.remove().unwrap();
    assert_eq!(ns.weft_lines("nat"), Vec::<String>::new());
    assert_eq!(ns.weft_lines("filter"), Vec::<String>::new());
    assert!(ns
        .run(&["iptables-save", "-t", "nat"])
        .contains("-A POSTROUTING -s 192.0.2.0/24 -j RETURN"));
    // nothing left: still fine
    fw.remove().unwrap();
    // and the rules come back on the next ensure
    assert_eq!(fw.ensure(&plan("10.5.72.0/24")).unwrap(), BOTH);
}

#[test]
fn nftables_mode_builds_table_flannel_ipv4() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let fw = ns.firewall(Mode::Nftables);
    let p = plan("10.5.72.0/24");
    assert_eq!(fw.ensure(&p).unwrap(), BOTH);
    let listed = ns.nft_table().expect("table ip flannel-ipv4 exists");
    assert_eq!(listed, nft_table(&p).unwrap());
    assert!(listed.contains("type nat hook postrouting priority srcnat; policy accept;"));
    assert!(listed.contains("ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"));
    assert_eq!(fw.ensure(&p).unwrap(), Changes::default());
    assert_eq!(ns.firewall(Mode::Nftables).ensure(&p).unwrap(), Changes::default());
    // iptables mode left nothing behind
    assert_eq!(ns.weft_lines("nat"), Vec::<String>::new());
}

#[test]
fn nftables_hand_edits_and_new_subnets_are_corrected() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let fw = ns.firewall(Mode::Nftables);
    let p = plan("10.5.72.0/24");
    fw.ensure(&p).unwrap();

    ns.run(&["nft", "flush", "chain", "ip", "flannel-ipv4", "forward"]);
    assert_eq!(
        fw.ensure(&p).unwrap(),
        Changes {
            masq: false,
            forward: true
        }
    );
    assert_eq!(ns.nft_table().unwrap(), nft_table(&p).unwrap());

    ns.run(&["nft", "delete", "table", "ip", "flannel-ipv4"]);
    assert_eq!(fw.ensure(&p).unwrap(), BOTH);
    assert_eq!(ns.nft_table().unwrap(), nft_table(&p).unwrap());

    let moved = plan("10.5.9.0/24");
    assert_eq!(
        fw.ensure(&moved).unwrap(),
        Changes {
            masq: true,
            forward: false
        }
    );
    let listed = ns.nft_table().unwrap();
    assert!(!listed.contains("10.5.72.0"), "old subnet still present:\n{listed}");
    assert_eq!(listed, nft_table(&moved).unwrap());

    let mut forward_only = moved;
    forward_only.masq = false;
    assert_eq!(
        fw.ensure(&forward_only).unwrap(),
        Changes {
            masq: true,
            forward: false
        }
    );
    assert!(!ns.nft_table().unwrap().contains("postrtg"));
}

#[test]
fn nftables_remove_deletes_the_table() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let fw = ns.firewall(Mode::Nftables);
    fw.ensure(&plan("10.5.72.0/24")).unwrap();
    fw.remove().unwrap();
    assert_eq!(ns.nft_table(), None);
    fw.remove().unwrap();
    let mut forward_only = plan("10.5.72.0/24");
    forward_only.masq = false;
    assert_eq!(
        fw.ensure(&forward_only).unwrap(),
        Changes {
            masq: false,
            forward: true
        }
    );
    fw.remove().unwrap();
    assert_eq!(ns.nft_table(), None);
    let mut nothing = plan("10.5.72.0/24");
    (nothing.masq, nothing.forward) = (false, false);
    assert_eq!(fw.ensure(&nothing).unwrap(), Changes::default());
    assert_eq!(ns.nft_table(), None);
}

/// The `setns()` path: a Firewall without `in_netns`, used from a thread that entered the
/// namespace, acts on that namespace (child processes start in the spawning thread's namespace).
#[test]
fn a_thread_inside_the_namespace_needs_no_ip_netns_exec() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    let path = format!("/run/netns/{}", ns.0);
    let p = plan("10.5.72.0/24");
    let changes = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        // never touch the host's rules: make sure this thread really is inside
        let here = std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let there = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
        assert_eq!(here.unwrap(), there, "setns did not move the thread");
        Firewall::new(Mode::Iptables).ensure(&p)
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(changes, BOTH);
    assert_eq!(ns.weft_lines("nat"), expected_nat(&p));
}

#[test]
fn errors_name_the_command_and_its_complaint() {
    if !is_root() {
        return;
    }
    let err = Firewall::new(Mode::Iptables)
        .in_netns("wtf-does-not-exist")
        .ensure(&plan("10.5.72.0/24"))
        .unwrap_err();
    let FirewallError::Failed { command, stderr, .. } = &err else {
        panic!("unexpected error {err:?}");
    };
    assert_eq!(command, "ip netns exec wtf-does-not-exist iptables-save -t nat");
    assert!(stderr.contains("wtf-does-not-exist"), "{stderr}");
    assert!(err.to_string().contains("iptables-save -t nat"), "{err}");
}

/// pod (10.5.72.2) -- node (10.5.72.1 | 192.0.2.1) -- outside (192.0.2.2, no route back to the
/// pod network): the pod reaches the outside only when the node masquerades.
fn pod_reaches_outside(mode: Mode) {
    let (node, pod, outside) = (Netns::new(), Netns::new(), Netns::new());
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "-n", &node.0, "link", "add", "to-pod", "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
    ]);
    ip(&[
        "-n", &node.0, "link", "add", "to-out", "type", "veth", "peer", "name", "eth0", "netns", &outside.0,
    ]);
    for (ns, dev, addr) in [
        (&node, "to-pod", "10.5.72.1/24"),
        (&node, "to-out", "192.0.2.1/24"),
        (&pod, "eth0", "10.5.72.2/24"),
        (&outside, "eth0", "192.0.2.2/24"),
    ] {
        ip(&["-n", &ns.0, "addr", "add", addr, "dev", dev]);
        ip(&["-n", &ns.0, "link", "set", dev, "up"]);
    }
    ip(&["-n", &pod.0, "route", "add", "default", "via", "10.5.72.1"]);
    node.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let ping = || {
        Command::new("ip")
            .args(["netns", "exec", &pod.0, "ping", "-c", "1", "-W", "1", "192.0.2.2"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        !ping(),
        "the outside answered without masquerade: the test proves nothing"
    );
    node.firewall(mode).ensure(&plan("10.5.72.0/24")).unwrap();
    assert!(ping(), "no answer from the outside with masquerade on ({mode:?})");
}

#[test]
fn iptables_masquerade_lets_a_pod_reach_the_outside() {
    if is_root() {
        pod_reaches_outside(Mode::Iptables);
    }
}

#[test]
fn nftables_masquerade_lets_a_pod_reach_the_outside() {
    if is_root() {
        pod_reaches_outside(Mode::Nftables);
    }
}
