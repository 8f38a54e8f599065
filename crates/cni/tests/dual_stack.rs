//! Dual stack and IPv6 only, as flanneld writes subnet.env for them (FLANNEL_IPV6_NETWORK and
//! FLANNEL_IPV6_SUBNET beside, or instead of, the IPv4 pair): pods get an address, a gateway
//! and a default route of each family, reach each other over both, and lose both on DEL; in
//! delegate mode the rendered config is flannel's. Real namespaces; needs root.

mod common;

use common::*;
use serde_json::{json, Value};

const DUAL: &str = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\n\
                    FLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// flanneld with EnableIPv4 false writes no IPv4 pair.
const IPV6_ONLY: &str =
    "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:7::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";

fn address_of(ip: &Value) -> String {
    ip["address"].as_str().unwrap().split('/').next().unwrap().to_string()
}

/// `ip -j route show` of the namespace for `family` ("-4" or "-6"), as (dst, gateway) pairs.
fn routes(ns: &Netns, family: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&ns.exec(&["ip", "-j", family, "route", "show"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or_default().to_string(),
                r["gateway"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Pings with a few tries: the first packets may wait for neighbour discovery.
fn ping(ns: &Netns, dst: &str) -> bool {
    (0..3).any(|_| ns.exec_ok(&["ping", "-c1", "-W2", dst]))
}

#[test]
fn dual_stack_pods_get_both_families_reach_each_other_and_lose_both_on_del() {
    let node = Node::with_subnet_env("ds", DUAL);
    let (a, b) = (Netns::new("dsa"), Netns::new("dsb"));
    let conf = node.builtin_conf("1.0.0");
    let ra = node.cni(WEFT_CNI, "ADD", "a", &a.path(), &conf).ok().json();
    let rb = node.cni(WEFT_CNI, "ADD", "b", &b.path(), &conf).ok().json();

    // The result lists both addresses on the container interface, IPv4 first, and both routes.
    let ips = ra["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{ra}");
    assert_eq!(ips[0]["gateway"], "10.5.72.1");
    assert_eq!(ips[1]["gateway"], "fc00:0:0:1::1");
    assert!(
        ips.iter().all(|ip| ip["interface"] == 2 && ip.get("version").is_none()),
        "{ra}"
    );
    let (a4, a6) = (ips[0]["address"].as_str().unwrap(), ips[1]["address"].as_str().unwrap());
    assert!(a4.starts_with("10.5.72.") && a4.ends_with("/24"), "{a4}");
    assert!(a6.starts_with("fc00:0:0:1::") && a6.ends_with("/64"), "{a6}");
    assert_eq!(
        ra["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.5.72.1"}, {"dst": "::/0", "gw": "fc00:0:0:1::1"}])
    );

    // The pod has both, the IPv6 one usable at once (no DAD), and a default route of each family.
    assert_eq!(a.ipv4_of("eth0"), vec![a4.to_string()]);
    assert_eq!(a.ipv6_of("eth0"), vec![a6.to_string()]);
    assert!(
        routes(&a, "-4").contains(&("default".into(), "10.5.72.1".into())),
        "{:?}",
        routes(&a, "-4")
    );
    assert!(
        routes(&a, "-6").contains(&("default".into(), "fc00:0:0:1::1".into())),
        "{:?}",
        routes(&a, "-6")
    );
    // The bridge holds both gateways; the node forwards both families.
    assert_eq!(node.ns.ipv4_of("cni0"), vec!["10.5.72.1/24".to_string()]);
    assert_eq!(node.ns.ipv6_of("cni0"), vec!["fc00:0:0:1::1/64".to_string()]);
    assert_eq!(node.ns.sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(node.ns.sysctl("net.ipv6.conf.all.forwarding"), "1");

    // Pod to pod and pod to gateway, over IPv4 and IPv6.
    let (b4, b6) = (address_of(&rb["ips"][0]), address_of(&rb["ips"][1]));
    assert!(ping(&a, &b4), "a cannot reach b over IPv4");
    assert!(ping(&a, &b6), "a cannot reach b over IPv6");
    assert!(ping(&b, &address_of(&ra["ips"][1])), "b cannot reach a over IPv6");
    assert!(ping(&a, "fc00:0:0:1::1"), "a cannot reach its IPv6 gateway");

    // Both addresses are reserved in host-local's layout, one hint per range.
    let mut files = node.address_files();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(files.contains(&address_of(&ra["ips"][1])), "{files:?}");
    let store = node.dir.path().join("ipam").join(&node.network);
    assert!(store.join("last_reserved_ip.0").is_file() && store.join("last_reserved_ip.1").is_file());

    // CHECK verifies both families.
    node.cni(WEFT_CNI, "CHECK", "a", &a.path(), &with_prev(&conf, &ra)).ok();
    a.exec(&["ip", "addr", "del", a6, "dev", "eth0"]);
    let msg = node
        .cni(WEFT_CNI, "CHECK", "a", &a.path(), &with_prev(&conf, &ra))
        .err(101);
    assert!(msg.contains("lacks address") && msg.contains(a6), "{msg}");
    a.exec(&["ip", "addr", "add", a6, "dev", "eth0", "nodad"]);
    node.cni(WEFT_CNI, "CHECK", "a", &a.path(), &with_prev(&conf, &ra)).ok();
    a.exec(&["ip", "-6", "route", "del", "default"]);
    let msg = node
        .cni(WEFT_CNI, "CHECK", "a", &a.path(), &with_prev(&conf, &ra))
        .err(101);
    assert!(msg.contains("route ::/0 via fc00:0:0:1::1 is missing"), "{msg}");

    // DEL removes both and frees both addresses.
    node.cni(WEFT_CNI, "DEL", "a", &a.path(), &conf).ok();
    assert!(a.links().iter().all(|l| l["ifname"] != "eth0"));
    let left = node.address_files();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&address_of(&ra["ips"][0])) && !left.contains(&address_of(&ra["ips"][1])));
    node.cni(WEFT_CNI, "DEL", "b", &b.path(), &conf).ok();
    assert!(node.address_files().is_empty());
    assert!(node.ns.veth_names().is_empty());
}

#[test]
fn results_before_1_0_0_name_each_addresses_version() {
    let node = Node::with_subnet_env("dv", DUAL);
    let c = Netns::new("dvc");
    let conf = node.builtin_conf("0.4.0");
    let r = node.cni(WEFT_CNI, "ADD", "v", &c.path(), &conf).ok().json();
    assert_eq!(r["ips"][0]["version"], "4");
    assert_eq!(r["ips"][1]["version"], "6");
    node.cni(WEFT_CNI, "CHECK", "v", &c.path(), &with_prev(&conf, &r)).ok();
    node.cni(WEFT_CNI, "DEL", "v", &c.path(), &conf).ok();
    assert!(node.address_files().is_empty());
}

#[test]
fn ipv6_only_pods_get_ipv6_alone() {
    let node = Node::with_subnet_env("v6", IPV6_ONLY);
    let (a, b) = (Netns::new("v6a"), Netns::new("v6b"));
    let mut conf = node.builtin_conf("1.1.0");
    conf["isDefaultGateway"] = json!(false);
    let ra = node.cni(WEFT_CNI, "ADD", "a", &a.path(), &conf).ok().json();
    let rb = node.cni(WEFT_CNI, "ADD", "b", &b.path(), &conf).ok().json();
    assert_eq!(ra["ips"].as_array().unwrap().len(), 1, "{ra}");
    assert_eq!(ra["ips"][0]["gateway"], "fc00:0:0:7::1");
    // Without a default gateway, the route is to the cluster network.
    assert_eq!(ra["routes"], json!([{"dst": "fc00::/48", "gw": "fc00:0:0:7::1"}]));
    assert_eq!(ra["interfaces"][2]["mtu"], 1430);
    assert!(a.ipv4_of("eth0").is_empty());
    assert_eq!(
        a.ipv6_of("eth0"),
        vec![ra["ips"][0]["address"].as_str().unwrap().to_string()]
    );
    assert!(routes(&a, "-6").contains(&("fc00::/48".into(), "fc00:0:0:7::1".into())));
    assert!(node.ns.ipv4_of("cni0").is_empty());
    assert_eq!(node.ns.ipv6_of("cni0"), vec!["fc00:0:0:7::1/64".to_string()]);
    assert!(ping(&a, &address_of(&rb["ips"][0])), "a cannot reach b over IPv6");
    // The only range is range 0, as in flannel's IPAM.
    let store = node.dir.path().join("ipam").join(&node.network);
    assert_eq!(
        std::fs::read_to_string(store.join("last_reserved_ip.0")).unwrap(),
        address_of(&rb["ips"][0])
    );
    node.cni(WEFT_CNI, "CHECK", "a", &a.path(), &with_prev(&conf, &ra)).ok();
    // GC gives back the IPv6 address of an attachment the runtime no longer knows.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    node.cni(WEFT_CNI, "GC", "", "", &gc).ok();
    assert_eq!(node.address_files(), vec![address_of(&ra["ips"][0])]);
    assert_eq!(node.ns.veth_names().len(), 1);
    node.cni(WEFT_CNI, "DEL", "a", &a.path(), &conf).ok();
    node.cni(WEFT_CNI, "DEL", "b", &b.path(), &conf).ok();
    assert!(node.address_files().is_empty());
    assert!(node.ns.veth_names().is_empty());
}

fn flannel_conf(node: &Node) -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": node.network,
        "type": "flannel",
        "subnetFile": node.subnet_file(),
        "dataDir": node.dir.join("flannel"),
        "ipam": {"dataDir": node.dir.join("host-local")},
        "delegate": {"hairpinMode": true, "isDefaultGateway": true},
    })
}

/// What flannel's CNI plugin v1.1.0 (shipped with flannel v0.20.0) hands its delegate for
/// `flannel_conf` and `subnet_env` (flannel_linux.go doCmdAdd and getDelegateIPAM): the
/// delegate's keys, name, type bridge, ipMasq = !FLANNEL_IPMASQ, mtu, isGateway, cniVersion, and
/// the config's ipam with type host-local, one range set per family (IPv4 first, the subnet
/// masked by net.ParseCIDR) and a route to each network after the config's own routes.
fn flannels_rendering(node: &Node, ranges: Value, routes: Value) -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": node.network,
        "type": "bridge",
        "hairpinMode": true,
        "isDefaultGateway": true,
        "ipMasq": false,
        "mtu": 1450,
        "isGateway": true,
        "ipam": {
            "dataDir": node.dir.join("host-local"),
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
        },
    })
}

#[test]
fn delegate_mode_renders_flannels_config_and_the_bridge_plugin_gives_both_families() {
    let node = Node::with_subnet_env("dd", DUAL);
    let c = Netns::new("ddc");
    let conf = flannel_conf(&node);
    let result = node.cni(WEFT_CNI, "ADD", "dd", &c.path(), &conf).ok().json();

    let saved: Value = serde_json::from_slice(&std::fs::read(node.dir.join("flannel/dd")).unwrap()).unwrap();
    assert_eq!(
        saved,
        flannels_rendering(
            &node,
            json!([[{"subnet": "10.5.72.0/24"}], [{"subnet": "fc00:0:0:1::/64"}]]),
            json!([{"dst": "10.5.0.0/16"}, {"dst": "fc00::/48"}]),
        )
    );

    // host-local gave one address of each range; the bridge plugin put both on the pod.
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{result}");
    assert_eq!(ips[0]["version"], "4");
    assert_eq!(ips[1]["version"], "6");
    assert_eq!(ips[1]["gateway"], "fc00:0:0:1::1");
    let a6 = ips[1]["address"].as_str().unwrap();
    assert!(a6.starts_with("fc00:0:0:1::") && a6.ends_with("/64"), "{a6}");
    assert_eq!(c.ipv4_of("eth0"), vec![ips[0]["address"].as_str().unwrap().to_string()]);
    assert!(node
        .ns
        .ipv6_of("cni0")
        .iter()
        .any(|a| a.starts_with("fc00:0:0:1::1/64")));
    assert!(routes(&c, "-6").contains(&("fc00::/48".into(), "fc00:0:0:1::1".into())));
    // The bridge plugin leaves the pod's IPv6 address to DAD: give it the time it needs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.ipv6_of("eth0") != vec![a6.to_string()] && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(c.ipv6_of("eth0"), vec![a6.to_string()]);
    assert!(ping(&c, "fc00:0:0:1::1"), "the pod cannot reach its IPv6 gateway");
    // CHECK (0.4.0 and later) looks at both families of the container.
    let mut conf4 = conf.clone();
    conf4["cniVersion"] = json!("0.4.0");
    let prev = json!({"cniVersion": "0.4.0", "interfaces": result["interfaces"], "ips": result["ips"],
                      "routes": result["routes"]});
    node.cni(WEFT_CNI, "CHECK", "dd", &c.path(), &with_prev(&conf4, &prev))
        .ok();
    c.exec(&["ip", "-6", "route", "del", "fc00::/48"]);
    let msg = node
        .cni(WEFT_CNI, "CHECK", "dd", &c.path(), &with_prev(&conf4, &prev))
        .err(101);
    assert!(msg.contains("fc00::/48"), "{msg}");

    node.cni(WEFT_CNI, "DEL", "dd", &c.path(), &conf).ok();
    let store = node.dir.path().join("host-local").join(&node.network);
    let held: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(held.is_empty(), "host-local still holds {held:?}");
    assert!(node.ns.veth_names().is_empty());
}

#[test]
fn delegate_mode_ipv6_only_renders_one_range_and_one_route() {
    let node = Node::with_subnet_env("d6", IPV6_ONLY);
    let c = Netns::new("d6c");
    let conf = flannel_conf(&node);
    let result = node.cni(WEFT_CNI, "ADD", "d6", &c.path(), &conf).ok().json();
    let saved: Value = serde_json::from_slice(&std::fs::read(node.dir.join("flannel/d6")).unwrap()).unwrap();
    let mut want = flannels_rendering(
        &node,
        json!([[{"subnet": "fc00:0:0:7::/64"}]]),
        json!([{"dst": "fc00::/48"}]),
    );
    want["mtu"] = json!(1430);
    want["ipMasq"] = json!(true);
    assert_eq!(saved, want);
    assert_eq!(result["ips"].as_array().unwrap().len(), 1, "{result}");
    assert_eq!(result["ips"][0]["version"], "6");
    assert!(c.ipv4_of("eth0").is_empty());
    node.cni(WEFT_CNI, "DEL", "d6", &c.path(), &conf).ok();
    assert!(node.ns.veth_names().is_empty());
}

#[test]
fn a_container_with_ipv6_disabled_is_a_clear_error_and_add_rolls_back_both_families() {
    let node = Node::with_subnet_env("dx", DUAL);
    let c = Netns::new("dxc");
    c.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    let conf = node.builtin_conf("1.0.0");
    let msg = node.cni(WEFT_CNI, "ADD", "x", &c.path(), &conf).err(103);
    assert!(
        msg.contains("IPv6 is disabled") && msg.contains("eth0") && msg.contains(&c.path()),
        "{msg}"
    );
    // The IPv4 address and the IPv6 one were both given back; the veth is gone.
    assert!(node.address_files().is_empty(), "{:?}", node.address_files());
    assert!(node.ns.veth_names().is_empty());
    assert!(c.links().iter().all(|l| l["ifname"] != "eth0"));
    // With IPv6 back on, the same container gets both.
    c.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0"]);
    let r = node.cni(WEFT_CNI, "ADD", "x", &c.path(), &conf).ok().json();
    assert_eq!(r["ips"].as_array().unwrap().len(), 2, "{r}");
    node.cni(WEFT_CNI, "DEL", "x", &c.path(), &conf).ok();
    assert!(node.address_files().is_empty());
}
