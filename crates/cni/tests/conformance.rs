//! Spec conformance of built-in mode, driven like a runtime drives a plugin: environment
//! variables + stdin, real namespaces, a fake subnet.env. Needs root.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn add_check_del_for_every_version() {
    let node = Node::new("cf");
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let c = Netns::new("cfc");
        let id = format!("ctr{i}");
        let conf = node.builtin_conf(version);
        let result = node.cni(WEFT_CNI, "ADD", &id, &c.path(), &conf).ok().json();

        assert_eq!(result["cniVersion"], version);
        let ifaces = result["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 3, "{result}");
        assert_eq!(ifaces[0]["name"], "cni0");
        assert!(ifaces[1]["name"].as_str().unwrap().starts_with("veth"));
        assert!(ifaces[1].get("sandbox").is_none());
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], c.path());
        let mac = ifaces[2]["mac"].as_str().unwrap();
        assert_eq!(mac.len(), 17, "{mac}");
        assert_eq!(ifaces[2].get("mtu").is_some(), version == "1.1.0", "{result}");
        let ip = &result["ips"][0];
        assert_eq!(ip["interface"], 2);
        assert_eq!(ip["gateway"], "10.5.72.1");
        assert_eq!(ip.get("version").is_some(), !version.starts_with('1'), "{result}");
        let address = ip["address"].as_str().unwrap().to_string();
        assert!(address.starts_with("10.5.72.") && address.ends_with("/24"), "{address}");
        assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.5.72.1"}]));
        assert_eq!(result["dns"], json!({"nameservers": ["10.5.0.10"]}));

        // What the user notices: the container has the address, the MAC, and reaches its gateway.
        assert_eq!(c.ipv4_of("eth0"), vec![address.clone()]);
        let link: Value = serde_json::from_str(&c.exec(&["ip", "-j", "link", "show", "eth0"])).unwrap();
        assert_eq!(link[0]["address"], mac);
        assert_eq!(link[0]["mtu"], 1450);
        assert!(c.exec_ok(&["ping", "-c1", "-W2", "10.5.72.1"]), "gateway unreachable");
        let hairpin = sh(&[
            "ip",
            "-n",
            &node.ns.name,
            "-d",
            "link",
            "show",
            ifaces[1]["name"].as_str().unwrap(),
        ]);
        assert!(
            hairpin.contains("hairpin on") && hairpin.contains("master cni0"),
            "{hairpin}"
        );

        let check = node.cni(WEFT_CNI, "CHECK", &id, &c.path(), &with_prev(&conf, &result));
        if version.starts_with("0.3") {
            check.err(1);
        } else {
            check.ok();
        }

        node.cni(WEFT_CNI, "DEL", &id, &c.path(), &conf).ok();
        assert!(node.address_files().is_empty());
        assert!(node.ns.veth_names().is_empty());
        assert!(c.links().iter().all(|l| l["ifname"] != "eth0"));
        // DEL is idempotent: again, without a netns, and for a container never added.
        node.cni(WEFT_CNI, "DEL", &id, &c.path(), &conf).ok();
        node.cni(WEFT_CNI, "DEL", &id, "", &conf).ok();
        node.cni(WEFT_CNI, "DEL", "never-added", "", &conf).ok();
    }
}

#[test]
fn two_containers_talk_over_the_bridge_and_check_sees_damage() {
    let node = Node::new("tw");
    let (a, b) = (Netns::new("twa"), Netns::new("twb"));
    let conf = node.builtin_conf("1.0.0");
    let ra = node.cni(WEFT_CNI, "ADD", "a", &a.path(), &conf).ok().json();
    let rb = node.cni(WEFT_CNI, "ADD", "b", &b.path(), &conf).ok().json();
    let ip_b = rb["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(ra["ips"][0]["address"], rb["ips"][0]["address"]);
    assert!(a.exec_ok(&["ping", "-c1", "-W2", &ip_b]), "a cannot reach b");

    // ADD twice for the same container and interface is refused and leaves a working container.
    node.cni(WEFT_CNI, "ADD", "a", &a.path(), &conf).err(4);
    node.cni(WEFT_CNI, "CHECK", "a", &a.path(), &with_prev(&conf, &ra)).ok();

    // CHECK notices a lost address and a lost route.
    let addr = ra["ips"][0]["address"].as_str().unwrap();
    a.exec(&["ip", "addr", "del", addr, "dev", "eth0"]);
    let msg = node
        .cni(WEFT_CNI, "CHECK", "a", &a.path(), &with_prev(&conf, &ra))
        .err(101);
    assert!(msg.contains("lacks address"), "{msg}");
    a.exec(&["ip", "addr", "add", addr, "dev", "eth0"]);
    let msg = node
        .cni(WEFT_CNI, "CHECK", "a", &a.path(), &with_prev(&conf, &ra))
        .err(101);
    assert!(msg.contains("route 0.0.0.0/0 via 10.5.72.1 is missing"), "{msg}");

    node.cni(WEFT_CNI, "DEL", "a", &a.path(), &conf).ok();
    node.cni(WEFT_CNI, "DEL", "b", &b.path(), &conf).ok();
    assert!(node.address_files().is_empty());
    assert!(node.ns.veth_names().is_empty());
}

#[test]
fn del_after_the_namespace_is_gone() {
    let node = Node::new("gone");
    let mut c = Netns::new("gonec");
    let conf = node.builtin_conf("1.0.0");
    node.cni(WEFT_CNI, "ADD", "g", &c.path(), &conf).ok();
    let path = c.path();
    c.delete();
    node.cni(WEFT_CNI, "DEL", "g", &path, &conf).ok();
    assert!(node.address_files().is_empty());
    assert!(node.ns.veth_names().is_empty());
}

#[test]
fn version_status_and_gc() {
    let node = Node::new("vs");
    let v = node
        .cni(WEFT_CNI, "VERSION", "", "", &json!({"cniVersion": "1.0.0"}))
        .ok()
        .json();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    let conf = node.builtin_conf("1.1.0");
    let status = node.cni(WEFT_CNI, "STATUS", "", "", &conf).ok();
    assert!(status.stdout.is_empty());
    node.cni(WEFT_CNI, "STATUS", "", "", &node.builtin_conf("1.0.0")).err(1);

    let (a, b) = (Netns::new("vsa"), Netns::new("vsb"));
    node.cni(WEFT_CNI, "ADD", "keep", &a.path(), &conf).ok();
    node.cni(WEFT_CNI, "ADD", "stale", &b.path(), &conf).ok();
    assert_eq!(node.address_files().len(), 2);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    node.cni(WEFT_CNI, "GC", "", "", &gc).ok();
    assert_eq!(node.address_files().len(), 1);
    assert_eq!(
        node.ns.veth_names().len(),
        1,
        "the stale container's veth is removed too"
    );
    node.cni(WEFT_CNI, "DEL", "keep", &a.path(), &conf).ok();

    std::fs::remove_file(node.subnet_file()).unwrap();
    let msg = node.cni(WEFT_CNI, "STATUS", "", "", &conf).err(50);
    assert!(msg.contains("subnet.env"), "{msg}");
}

#[test]
fn bad_inputs_are_clear_errors_and_leave_nothing() {
    let node = Node::new("bad");
    let c = Netns::new("badc");
    let conf = node.builtin_conf("1.0.0");

    let msg = node
        .cni_raw(WEFT_CNI, "ADD", "x", &c.path(), "eth0", b"{not json")
        .err(6);
    assert!(msg.contains("not a JSON object"), "{msg}");
    let msg = node.cni(WEFT_CNI, "ADD", "x", "", &conf).err(4);
    assert!(msg.contains("CNI_NETNS"), "{msg}");
    let msg = node
        .cni(WEFT_CNI, "ADD", "x", &c.path(), &node.builtin_conf("7.0.0"))
        .err(1);
    assert!(msg.contains("7.0.0"), "{msg}");
    let mut no_name = conf.clone();
    no_name.as_object_mut().unwrap().remove("name");
    node.cni(WEFT_CNI, "ADD", "x", &c.path(), &no_name).err(7);
    node.cni_raw(WEFT_CNI, "ADD", "x", &c.path(), "a/b", conf.to_string().as_bytes())
        .err(4);
    node.cni(WEFT_CNI, "ADD", "x", "/var/run/netns/wtc-does-not-exist", &conf)
        .err(4);

    let mut missing = conf.clone();
    missing["subnetFile"] = json!(node.dir.join("nope/subnet.env"));
    let msg = node.cni(WEFT_CNI, "ADD", "x", &c.path(), &missing).err(11);
    assert!(
        msg.contains("weftd has not written subnet.env yet") && msg.contains("nope/subnet.env"),
        "{msg}"
    );

    // The container already has an eth0: the veth cannot be created; the address is given back.
    c.exec(&["ip", "link", "add", "eth0", "type", "bridge"]);
    node.cni(WEFT_CNI, "ADD", "x", &c.path(), &conf).err(4);
    c.exec(&["ip", "link", "del", "eth0"]);

    assert!(node.address_files().is_empty(), "{:?}", node.address_files());
    assert!(node.ns.veth_names().is_empty());
    assert!(c.links().iter().all(|l| l["ifname"] != "eth0"));
}

#[test]
fn exhausted_subnet_is_a_clear_error() {
    // A /29: 6 hosts, minus the gateway, leaves 5 container addresses.
    let node = Node::with_subnet_env(
        "ex",
        "FLANNEL_NETWORK=10.6.0.0/16\nFLANNEL_SUBNET=10.6.0.1/29\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    );
    let conf = node.builtin_conf("1.0.0");
    let containers: Vec<Netns> = (0..6).map(|_| Netns::new("exc")).collect();
    let mut got = Vec::new();
    for (i, c) in containers.iter().take(5).enumerate() {
        let r = node
            .cni(WEFT_CNI, "ADD", &format!("e{i}"), &c.path(), &conf)
            .ok()
            .json();
        got.push(r["ips"][0]["address"].as_str().unwrap().to_string());
    }
    got.sort();
    assert_eq!(
        got,
        [
            "10.6.0.2/29",
            "10.6.0.3/29",
            "10.6.0.4/29",
            "10.6.0.5/29",
            "10.6.0.6/29"
        ]
    );
    let msg = node.cni(WEFT_CNI, "ADD", "e5", &containers[5].path(), &conf).err(100);
    assert!(msg.contains("no free address left in 10.6.0.0/29"), "{msg}");
    assert!(containers[5].links().iter().all(|l| l["ifname"] != "eth0"));
    assert_eq!(node.ns.veth_names().len(), 5);
    for i in 0..5 {
        node.cni(WEFT_CNI, "DEL", &format!("e{i}"), "", &conf).ok();
    }
    assert!(node.address_files().is_empty());
    assert!(node.ns.veth_names().is_empty());
}

fn link_mac(ns: &Netns, dev: &str) -> String {
    let link: Value = serde_json::from_str(&sh(&["ip", "-j", "-n", &ns.name, "link", "show", dev])).unwrap();
    link[0]["address"].as_str().unwrap().to_string()
}

/// `addr_assign_type` of a device as the kernel shows it in the namespace's own sysfs (3: set).
fn addr_assign_type(ns: &Netns, dev: &str) -> String {
    ns.exec(&["cat", &format!("/sys/class/net/{dev}/addr_assign_type")])
        .trim()
        .to_string()
}

/// Pings `dst` from `ns` every 20 ms for `count` pings while `meanwhile` runs; returns how many
/// were lost.
fn pings_lost_while(ns: &Netns, dst: &str, count: u32, meanwhile: impl FnOnce()) -> u32 {
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ping", "-n", "-q", "-i", "0.02", "-W", "1"])
        .args(["-c", &count.to_string(), dst])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    meanwhile();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    count - received
}

#[test]
fn removing_the_container_with_the_lowest_veth_mac_keeps_the_gateway_mac() {
    let node = Node::new("mac");
    let containers = [Netns::new("maca"), Netns::new("macb")];
    let conf = node.builtin_conf("1.0.0");
    let results: Vec<Value> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            node.cni(WEFT_CNI, "ADD", &format!("m{i}"), &c.path(), &conf)
                .ok()
                .json()
        })
        .collect();
    let gateway_mac = link_mac(&node.ns, "cni0");
    assert_eq!(
        addr_assign_type(&node.ns, "cni0"),
        "3",
        "the bridge's MAC is set, not taken from a port"
    );
    for r in &results {
        assert_eq!(r["interfaces"][0]["name"], "cni0");
        assert_eq!(
            r["interfaces"][0]["mac"],
            gateway_mac.as_str(),
            "the result shows the bridge's MAC"
        );
    }

    // The container whose host veth has the lowest MAC is the one an unpinned bridge would copy.
    let host_mac = |r: &Value| link_mac(&node.ns, r["interfaces"][1]["name"].as_str().unwrap());
    let (low, high) = if host_mac(&results[0]) < host_mac(&results[1]) {
        (0, 1)
    } else {
        (1, 0)
    };
    let survivor = &containers[high];
    // Short neighbour timers, so that a stale gateway MAC would cost pings within the run.
    for (key, value) in [("base_reachable_time_ms", "500"), ("delay_first_probe_time", "1")] {
        survivor.exec(&["sysctl", "-qw", &format!("net.ipv4.neigh.eth0.{key}={value}")]);
    }
    assert!(survivor.exec_ok(&["ping", "-c1", "-W2", "10.5.72.1"]));
    let lost = pings_lost_while(survivor, "10.5.72.1", 150, || {
        node.cni(WEFT_CNI, "DEL", &format!("m{low}"), &containers[low].path(), &conf)
            .ok();
    });
    assert_eq!(link_mac(&node.ns, "cni0"), gateway_mac, "the gateway MAC changed");
    assert_eq!(lost, 0, "the other container lost pings to its gateway");
    let neigh = survivor.exec(&["ip", "neigh", "show", "10.5.72.1"]);
    assert!(neigh.contains(&gateway_mac), "{neigh}");
    node.cni(WEFT_CNI, "DEL", &format!("m{high}"), &survivor.path(), &conf)
        .ok();
}

#[test]
fn an_adopted_bridge_keeps_the_mac_it_has_and_stops_following_its_ports() {
    let node = Node::new("adopt");
    // A bridge someone else made, unpinned, with a port: its MAC is that port's.
    node.ns.exec(&["ip", "link", "add", "cni0", "type", "bridge"]);
    node.ns
        .exec(&["ip", "link", "add", "wtc-p0", "type", "veth", "peer", "name", "wtc-p1"]);
    node.ns.exec(&["ip", "link", "set", "wtc-p0", "master", "cni0"]);
    let before = link_mac(&node.ns, "cni0");
    assert_eq!(before, link_mac(&node.ns, "wtc-p0"));
    assert_ne!(addr_assign_type(&node.ns, "cni0"), "3");

    let c = Netns::new("adoptc");
    let conf = node.builtin_conf("1.1.0");
    let result = node.cni(WEFT_CNI, "ADD", "ad", &c.path(), &conf).ok().json();
    assert_eq!(addr_assign_type(&node.ns, "cni0"), "3");
    assert_eq!(
        link_mac(&node.ns, "cni0"),
        before,
        "adopting the bridge changed the gateway MAC"
    );
    assert_eq!(result["interfaces"][0]["mac"], before.as_str());
    // The port it copied goes; the gateway MAC stays.
    node.ns.exec(&["ip", "link", "del", "wtc-p0"]);
    assert_eq!(link_mac(&node.ns, "cni0"), before);
    assert!(c.exec_ok(&["ping", "-c1", "-W2", "10.5.72.1"]));
    node.cni(WEFT_CNI, "DEL", "ad", &c.path(), &conf).ok();
}
