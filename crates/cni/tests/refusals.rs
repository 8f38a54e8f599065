//! Bad CNI input is refused before anything is created: a CNI error with the right code and a
//! message naming the input (and the file it came from), in the cniVersion of the config, and
//! nothing left behind — no bridge or veth on the node, no address file, no saved delegate
//! config, no interface in the container. Both modes, driven like a runtime drives the plugin
//! (environment + stdin, inside a node namespace). Needs root.

mod common;

use std::path::Path;

use common::*;
use serde_json::{json, Value};

/// A config for each mode: built-in, and flannel's (delegate mode, with the real bridge and
/// host-local plugins behind it).
fn confs(node: &Node) -> [(&'static str, Value); 2] {
    let flannel = json!({
        "cniVersion": "0.4.0",
        "name": node.network,
        "type": "flannel",
        "subnetFile": node.subnet_file(),
        "dataDir": node.dir.join("flannel"),
        "ipam": {"dataDir": node.dir.join("host-local")},
        "delegate": {"isDefaultGateway": true},
    });
    [("built-in", node.builtin_conf("0.4.0")), ("delegate", flannel)]
}

fn files_under(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                files_under(&e.path())
            } else {
                vec![e.path().display().to_string()]
            }
        })
        .collect()
}

fn link_names(ns: &Netns) -> Vec<String> {
    ns.links()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// The node has only its loopback, no store or saved config holds a file, the container has
/// only its loopback.
fn assert_nothing_left(node: &Node, container: &Netns, case: &str) {
    assert_eq!(link_names(&node.ns), ["lo"], "{case}: the node gained a device");
    for dir in ["ipam", "flannel", "host-local"] {
        let left = files_under(&node.dir.path().join(dir));
        assert!(left.is_empty(), "{case}: {left:?} left behind");
    }
    assert_eq!(link_names(container), ["lo"], "{case}: the container gained a device");
}

/// Asserts a CNI error: exit status, code, the cniVersion it is reported in, and that the message
/// contains every part; returns the message.
fn assert_refused(run: &Run, code: u64, version: &str, parts: &[&str], case: &str) -> String {
    assert_ne!(run.code, 0, "{case}: expected a refusal, got {}", run.stdout);
    let v = run.json();
    assert_eq!(v["code"], code, "{case}: {}", run.stdout);
    assert_eq!(v["cniVersion"], version, "{case}: {}", run.stdout);
    let msg = v["msg"].as_str().unwrap().to_string();
    for part in parts {
        assert!(msg.contains(part), "{case}: {part:?} not in {msg:?}");
    }
    msg
}

fn subnet_env(network: &str, subnet: &str, mtu: &str) -> String {
    format!("FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n")
}

#[test]
fn a_subnet_outside_the_network_is_refused_naming_the_file_and_both_values() {
    let node = Node::with_subnet_env("out", &subnet_env("10.5.0.0/16", "10.6.72.1/24", "1450"));
    let c = Netns::new("outc");
    let path = node.subnet_file();
    for (mode, conf) in confs(&node) {
        let run = node.cni(WEFT_CNI, "ADD", "x", &c.path(), &conf);
        let parts = [
            path.as_str(),
            "FLANNEL_SUBNET=10.6.72.1/24",
            "FLANNEL_NETWORK=10.5.0.0/16",
        ];
        assert_refused(&run, 5, "0.4.0", &parts, mode);
        assert_nothing_left(&node, &c, mode);
    }
}

#[test]
fn an_mtu_out_of_range_is_refused_naming_the_file_and_the_key() {
    for mtu in ["0", "70000"] {
        let node = Node::with_subnet_env("mtu", &subnet_env("10.5.0.0/16", "10.5.72.1/24", mtu));
        let c = Netns::new("mtuc");
        let path = node.subnet_file();
        for (mode, conf) in confs(&node) {
            let run = node.cni(WEFT_CNI, "ADD", "x", &c.path(), &conf);
            let key = format!("FLANNEL_MTU={mtu}");
            assert_refused(&run, 5, "0.4.0", &[path.as_str(), &key, "68 to 65535"], mode);
            assert_nothing_left(&node, &c, mode);
        }
    }
}

#[test]
fn a_netns_that_is_not_a_network_namespace_is_refused_naming_cni_netns() {
    let node = Node::new("nsx");
    let c = Netns::new("nsxc");
    let fifo = node.dir.join("fifo");
    sh(&["mkfifo", &fifo]);
    let dir = node.dir.path().display().to_string();
    let cases = [
        (node.subnet_file(), "a regular file"),
        (dir, "a directory"),
        ("/proc/self/ns/mnt".to_string(), "a mount namespace"),
        (fifo, "a FIFO"),
        ("/dev/null".to_string(), "a character device"),
    ];
    for (mode, conf) in confs(&node) {
        for (netns, what) in &cases {
            let case = format!("{mode}, CNI_NETNS={netns}");
            for command in ["ADD", "CHECK"] {
                let run = node.cni(
                    WEFT_CNI,
                    command,
                    "x",
                    netns,
                    &with_prev(&conf, &json!({"cniVersion": "0.4.0"})),
                );
                let named = format!("CNI_NETNS={netns} is not a network namespace");
                assert_refused(&run, 4, "0.4.0", &[&named, what], &format!("{case} {command}"));
            }
            assert_nothing_left(&node, &c, &case);
        }
    }
    // The real namespace still works afterwards.
    let (_, conf) = &confs(&node)[0];
    node.cni(WEFT_CNI, "ADD", "x", &c.path(), conf).ok();
    node.cni(WEFT_CNI, "DEL", "x", &c.path(), conf).ok();
}

#[test]
fn errors_are_reported_in_the_configs_cni_version() {
    let node = Node::new("ver");
    let c = Netns::new("verc");
    let conf = node.builtin_conf("0.3.1");
    // Before the config is read: CNI_COMMAND missing, CNI_IFNAME bad.
    let run = run_in(
        &node.ns.path(),
        WEFT_CNI,
        &[("CNI_PATH", CNI_PATH)],
        conf.to_string().as_bytes(),
    );
    assert_refused(&run, 4, "0.3.1", &["CNI_COMMAND"], "no CNI_COMMAND");
    let run = node.cni_raw(WEFT_CNI, "ADD", "x", &c.path(), "a/b", conf.to_string().as_bytes());
    assert_refused(&run, 4, "0.3.1", &["CNI_IFNAME"], "bad CNI_IFNAME");
    // A config that is bad otherwise: no name, a key of the wrong type, an unsupported version,
    // cut short after cniVersion.
    let mut no_name = conf.clone();
    no_name.as_object_mut().unwrap().remove("name");
    assert_refused(
        &node.cni(WEFT_CNI, "ADD", "x", &c.path(), &no_name),
        7,
        "0.3.1",
        &["name"],
        "no name",
    );
    let mut wrong_type = conf.clone();
    wrong_type["hairpinMode"] = json!("yes");
    let run = node.cni(WEFT_CNI, "ADD", "x", &c.path(), &wrong_type);
    assert_refused(&run, 7, "0.3.1", &["wrong type"], "wrong type");
    let run = node.cni(WEFT_CNI, "ADD", "x", &c.path(), &node.builtin_conf("7.0.0"));
    assert_refused(&run, 1, "7.0.0", &["7.0.0"], "unsupported version");
    let run = node.cni_raw(
        WEFT_CNI,
        "ADD",
        "x",
        &c.path(),
        "eth0",
        br#"{"cniVersion":"0.4.0","name":"#,
    );
    assert_refused(&run, 6, "0.4.0", &["not a JSON object"], "cut short");
    // Only stdin that is not JSON at all gets the newest version.
    let run = node.cni_raw(WEFT_CNI, "ADD", "x", &c.path(), "eth0", b"{not json");
    assert_refused(&run, 6, "1.1.0", &["not a JSON object"], "not JSON");
    assert_nothing_left(&node, &c, "version cases");
}

#[test]
fn bad_ipv6_values_are_refused_naming_the_file_and_the_key() {
    let v4 = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    let cases = [
        (
            format!("{v4}FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n"),
            vec![
                "FLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64",
                "outside",
                "FLANNEL_IPV6_NETWORK=fc00::/48",
            ],
        ),
        (
            format!("{v4}FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1\n"),
            vec!["FLANNEL_IPV6_SUBNET=\"fc00:0:0:1::1\" is not an IPv6 CIDR"],
        ),
        (
            format!("{v4}FLANNEL_IPV6_NETWORK=10.6.0.0/16\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n"),
            vec!["FLANNEL_IPV6_NETWORK=\"10.6.0.0/16\" is not an IPv6 CIDR"],
        ),
        (
            format!("{v4}FLANNEL_IPV6_NETWORK=fc00::/48\n"),
            vec!["FLANNEL_IPV6_SUBNET is missing"],
        ),
        (
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/127\nFLANNEL_MTU=1450\n".to_string(),
            vec!["FLANNEL_IPV6_SUBNET=fc00::1/127 leaves no address"],
        ),
        (
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1200\n".to_string(),
            vec!["FLANNEL_MTU=1200", "IPv6 needs 1280"],
        ),
    ];
    for (text, parts) in cases {
        let node = Node::with_subnet_env("v6b", &text);
        let c = Netns::new("v6bc");
        let path = node.subnet_file();
        let mut all = parts.clone();
        all.push(path.as_str());
        for (mode, conf) in confs(&node) {
            let case = format!("{mode}, {}", parts[0]);
            let run = node.cni(WEFT_CNI, "ADD", "x", &c.path(), &conf);
            assert_refused(&run, 5, "0.4.0", &all, &case);
            assert_nothing_left(&node, &c, &case);
        }
    }
}
