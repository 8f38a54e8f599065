//! Root tests of the masquerade/forward rules against the real iptables and nft binaries. Each
//! test works in its own network namespace `wtf-<unique>` (removed on drop, also on failure); the
//! driver reaches it through `ip netns exec`, except in the test of the `setns()` path.
//!
//! Run: `cargo test -p weft-kernel --test firewall` as root.

mod common;

use std::process::Command;

use common::{require_root, Netns};

use weft_core::masq::{forward_rules, masq_rules};
use weft_kernel::firewall::{
    firewall_driver, AddrFamily, Changes, FirewallDriver, FirewallError, FirewallKind, FirewallPlan, Installed,
    InstalledChain,
};

impl Netns {
    fn new() -> Netns {
        Netns::named("wtf")
    }

    /// Runs a command inside the namespace with `input` on its stdin; panics on failure.
    fn run_with_input(&self, args: &[&str], input: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn firewall(&self, kind: FirewallKind) -> Box<dyn FirewallDriver> {
        firewall_driver(kind, AddrFamily::Ipv4, Some(&self.0))
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
        self.nft_list("ip", "flannel-ipv4")
    }

    /// `nft list table <family> <name>` (text, as a user reads it), None when it is missing.
    fn nft_list(&self, family: &str, name: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "list", "table", family, name])
            .output()
            .unwrap();
        out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
    }
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

/// `nft list table ip flannel-ipv4` as nft prints the plan's table, spelled out here rather
/// than rendered by weft so a change in what weft builds cannot hide behind a shared helper.
/// (Table and chain comments, which flannel's text sets, cannot be set through nft's JSON input
/// on nft 1.0.6, so weft's table has none.)
fn expected_nft(plan: &FirewallPlan) -> String {
    let (net, pod) = (plan.network.trunc(), plan.pod.trunc());
    let mut chains = Vec::new();
    if plan.masq {
        chains.push(format!(
            "\tchain postrtg {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark & 0x00004000 == 0x00004000 return comment \"flanneld masq\"\n\
             \t\tip saddr {pod} ip daddr {net} return comment \"flanneld masq\"\n\
             \t\tip saddr {net} ip daddr {pod} return comment \"flanneld masq\"\n\
             \t\tip saddr != {net} ip daddr {pod} return comment \"flanneld masq\"\n\
             \t\tip saddr {net} ip daddr != 224.0.0.0/4 masquerade fully-random comment \"flanneld masq\"\n\
             \t\tip saddr != {net} ip daddr {net} masquerade fully-random comment \"flanneld masq\"\n\
             \t}}\n"
        ));
    }
    if plan.forward {
        chains.push(format!(
            "\tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr {net} accept comment \"flanneld forward\"\n\
             \t\tip daddr {net} accept comment \"flanneld forward\"\n\
             \t}}\n"
        ));
    }
    format!("table ip flannel-ipv4 {{\n{}}}\n", chains.join("\n"))
}

const BOTH: Changes = Changes {
    masq: true,
    forward: true,
};

#[test]
fn iptables_rules_appear_in_flannels_order_with_comments() {
    require_root();
    let ns = Netns::new();
    let p = plan("10.5.72.0/24");
    assert_eq!(ns.firewall(FirewallKind::Iptables).ensure(&p).unwrap(), BOTH);

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

    // read back through the driver: the same lines, each chain hooked once
    assert_eq!(
        ns.firewall(FirewallKind::Iptables).installed().unwrap(),
        Installed {
            masq: Some(InstalledChain {
                hooks: vec!["-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG".into()],
                rules: masq_rules(p.network, p.pod),
            }),
            forward: Some(InstalledChain {
                hooks: vec!["-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD".into()],
                rules: forward_rules(p.network),
            }),
        }
    );
}

#[test]
fn iptables_ensure_twice_changes_nothing_the_second_time() {
    require_root();
    let ns = Netns::new();
    let fw = ns.firewall(FirewallKind::Iptables);
    let p = plan("10.5.72.0/24");
    assert!(fw.ensure(&p).unwrap().any());
    assert_eq!(fw.ensure(&p).unwrap(), Changes::default());
    // a fresh Firewall (a restarted daemon) sees the same: nothing to do
    assert_eq!(
        ns.firewall(FirewallKind::Iptables).ensure(&p).unwrap(),
        Changes::default()
    );
    assert_eq!(ns.weft_lines("nat"), expected_nat(&p));
}

#[test]
fn iptables_hand_edits_are_corrected() {
    require_root();
    let ns = Netns::new();
    let fw = ns.firewall(FirewallKind::Iptables);
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
    require_root();
    let ns = Netns::new();
    let fw = ns.firewall(FirewallKind::Iptables);
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
    require_root();
    let ns = Netns::new();
    let fw = ns.firewall(FirewallKind::Iptables);
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
    require_root();
    let ns = Netns::new();
    let fw = ns.firewall(FirewallKind::Iptables);
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
    assert_eq!(fw.installed().unwrap(), Installed::default());
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
    require_root();
    let ns = Netns::new();
    let fw = ns.firewall(FirewallKind::Nftables);
    let p = plan("10.5.72.0/24");
    assert_eq!(fw.ensure(&p).unwrap(), BOTH);
    let listed = ns.nft_table().expect("table ip flannel-ipv4 exists");
    assert_eq!(listed, expected_nft(&p));
    assert!(listed.contains("type nat hook postrouting priority srcnat; policy accept;"));
    assert!(listed.contains("ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"));
    // read back through the driver (nft -j): the rules as nft's text shows them, in order
    let installed = fw.installed().unwrap();
    let text_rules = |chain: &str| -> Vec<String> {
        let body = listed.split(&format!("chain {chain} {{\n")).nth(1).unwrap();
        body.lines()
            .take_while(|l| l.trim() != "}")
            .skip(1)
            .map(|l| l.trim().to_string())
            .collect()
    };
    let masq = installed.masq.expect("chain postrtg");
    assert_eq!(masq.rules, text_rules("postrtg"));
    assert_eq!(masq.rules.len(), 6);
    assert_eq!(masq.hooks, ["type nat hook postrouting priority 100; policy accept;"]);
    let forward = installed.forward.expect("chain forward");
    assert_eq!(forward.rules, text_rules("forward"));
    assert_eq!(forward.hooks, ["type filter hook forward priority 0; policy accept;"]);
    assert_eq!(fw.ensure(&p).unwrap(), Changes::default());
    assert_eq!(
        ns.firewall(FirewallKind::Nftables).ensure(&p).unwrap(),
        Changes::default()
    );
    // iptables mode left nothing behind
    assert_eq!(ns.weft_lines("nat"), Vec::<String>::new());
}

#[test]
fn nftables_hand_edits_and_new_subnets_are_corrected() {
    require_root();
    let ns = Netns::new();
    let fw = ns.firewall(FirewallKind::Nftables);
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
    assert_eq!(ns.nft_table().unwrap(), expected_nft(&p));

    ns.run(&["nft", "delete", "table", "ip", "flannel-ipv4"]);
    assert_eq!(fw.ensure(&p).unwrap(), BOTH);
    assert_eq!(ns.nft_table().unwrap(), expected_nft(&p));

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
    assert_eq!(listed, expected_nft(&moved));

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
    require_root();
    let ns = Netns::new();
    let fw = ns.firewall(FirewallKind::Nftables);
    fw.ensure(&plan("10.5.72.0/24")).unwrap();
    fw.remove().unwrap();
    assert_eq!(ns.nft_table(), None);
    assert_eq!(fw.installed().unwrap(), Installed::default());
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

/// The table as flannel (v0.25+, through knftables' text) creates it, comments included: a node
/// moving from flanneld to weftd keeps it as it is.
#[test]
fn nftables_keeps_the_table_flannel_made() {
    require_root();
    let ns = Netns::new();
    let p = plan("10.5.72.0/24");
    let flannels = expected_nft(&p)
        .replace(
            "table ip flannel-ipv4 {\n",
            "table ip flannel-ipv4 {\n\tcomment \"rules for flannel-ipv4\"\n",
        )
        .replace(
            "\tchain postrtg {\n",
            "\tchain postrtg {\n\t\tcomment \"chain to manage traffic masquerading by flannel\"\n",
        )
        .replace(
            "\tchain forward {\n",
            "\tchain forward {\n\t\tcomment \"chain to accept flannel traffic\"\n",
        );
    ns.run_with_input(&["nft", "-f", "-"], &flannels);
    assert_eq!(
        ns.nft_table().unwrap(),
        flannels,
        "nft shows flannel's table as written"
    );
    let fw = ns.firewall(FirewallKind::Nftables);
    assert_eq!(fw.ensure(&p).unwrap(), Changes::default());
    assert_eq!(ns.nft_table().unwrap(), flannels, "left as flannel made it");
}

#[test]
fn nftables_ipv6_plan_builds_table_ip6_flannel_ipv6() {
    require_root();
    let ns = Netns::new();
    let v6 = FirewallPlan {
        network: "fc00:5::/48".parse().unwrap(),
        pod: "fc00:5:0:48::1/64".parse().unwrap(),
        masq: true,
        forward: true,
    };
    let fw = firewall_driver(FirewallKind::Nftables, AddrFamily::Ipv6, Some(&ns.0));
    assert_eq!(fw.ensure(&v6).unwrap(), BOTH);
    let listed = ns
        .nft_list("ip6", "flannel-ipv6")
        .expect("table ip6 flannel-ipv6 exists");
    for line in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark & 0x00004000 == 0x00004000 return comment \"flanneld masq\"",
        "ip6 saddr fc00:5:0:48::/64 ip6 daddr fc00:5::/48 return comment \"flanneld masq\"",
        "ip6 saddr fc00:5::/48 ip6 daddr != ff00::/8 masquerade fully-random comment \"flanneld masq\"",
        "ip6 daddr fc00:5::/48 accept comment \"flanneld forward\"",
    ] {
        assert!(listed.contains(line), "{line:?} missing from\n{listed}");
    }
    assert_eq!(ns.nft_table(), None, "the IPv4 table is not touched");
    assert_eq!(fw.ensure(&v6).unwrap(), Changes::default());
    fw.remove().unwrap();
    assert_eq!(ns.nft_list("ip6", "flannel-ipv6"), None);
}

#[test]
fn a_plan_of_the_other_family_is_refused() {
    require_root();
    let ns = Netns::new();
    let v6 = FirewallPlan {
        network: "fc00:5::/48".parse().unwrap(),
        pod: "fc00:5:0:48::/64".parse().unwrap(),
        masq: true,
        forward: true,
    };
    for kind in [FirewallKind::Iptables, FirewallKind::Nftables] {
        let err = ns.firewall(kind).ensure(&v6).unwrap_err();
        assert!(matches!(err, FirewallError::WrongFamily { .. }), "{err:?}");
        assert!(err.to_string().contains("fc00:5::/48"), "{err}");
    }
    assert_eq!(ns.nft_table(), None);
    assert_eq!(ns.weft_lines("nat"), Vec::<String>::new());
}

/// The `setns()` path: a Firewall without `in_netns`, used from a thread that entered the
/// namespace, acts on that namespace (child processes start in the spawning thread's namespace).
#[test]
fn a_thread_inside_the_namespace_needs_no_ip_netns_exec() {
    require_root();
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
        firewall_driver(FirewallKind::Iptables, AddrFamily::Ipv4, None).ensure(&p)
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(changes, BOTH);
    assert_eq!(ns.weft_lines("nat"), expected_nat(&p));
}

#[test]
fn errors_name_the_command_and_its_complaint() {
    require_root();
    let err = firewall_driver(FirewallKind::Iptables, AddrFamily::Ipv4, Some("wtf-does-not-exist"))
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
fn pod_reaches_outside(mode: FirewallKind) {
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
    require_root();
    pod_reaches_outside(FirewallKind::Iptables);
}

#[test]
fn nftables_masquerade_lets_a_pod_reach_the_outside() {
    require_root();
    pod_reaches_outside(FirewallKind::Nftables);
}
