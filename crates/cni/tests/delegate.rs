//! Flannel-compatible delegate mode with the real `bridge` and `host-local` plugins. Needs root.

mod common;

use common::*;
use serde_json::{json, Value};

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

#[test]
fn delegate_mode_drives_bridge_and_host_local() {
    let node = Node::new("dg");
    let c = Netns::new("dgc");
    let conf = flannel_conf(&node);
    let result = node.cni(WEFT_CNI, "ADD", "dctr", &c.path(), &conf).ok().json();
    assert_eq!(result["cniVersion"], "0.3.1");
    let address = result["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(address.starts_with("10.5.72.") && address.ends_with("/24"), "{result}");
    assert_eq!(result["ips"][0]["gateway"], "10.5.72.1");

    // The rendered config is saved for DEL, as flannel's plugin saves it.
    let saved: Value = serde_json::from_slice(&std::fs::read(node.dir.join("flannel/dctr")).unwrap()).unwrap();
    assert_eq!(saved["type"], "bridge");
    assert_eq!(saved["name"], node.network.as_str());
    assert_eq!(saved["mtu"], 1450);
    assert_eq!(saved["ipMasq"], false);
    assert_eq!(saved["isGateway"], true);
    assert_eq!(saved["ipam"]["type"], "host-local");
    assert_eq!(saved["ipam"]["ranges"], json!([[{"subnet": "10.5.72.0/24"}]]));
    assert_eq!(saved["ipam"]["routes"], json!([{"dst": "10.5.0.0/16"}]));

    // The bridge plugin built cni0 with the gateway and MTU; the container reaches it.
    assert_eq!(node.ns.ipv4_of("cni0"), vec!["10.5.72.1/24".to_string()]);
    assert_eq!(c.ipv4_of("eth0"), vec![address.clone()]);
    assert!(c.exec_ok(&["ping", "-c1", "-W2", "10.5.72.1"]));

    node.cni(WEFT_CNI, "DEL", "dctr", &c.path(), &conf).ok();
    assert!(!std::path::Path::new(&node.dir.join("flannel/dctr")).exists());
    let reserved = std::fs::read_dir(node.dir.join("host-local"))
        .unwrap()
        .flatten()
        .flat_map(|d| {
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
        });
    assert!(
        reserved.filter(|n| n.starts_with("10.")).count() == 0,
        "host-local still holds an address"
    );
    assert!(node.ns.veth_names().is_empty());
    // A second DEL (nothing saved any more) succeeds.
    node.cni(WEFT_CNI, "DEL", "dctr", &c.path(), &conf).ok();
}

#[test]
fn delegate_mode_check_and_errors() {
    let node = Node::new("dk");
    let c = Netns::new("dkc");
    let mut conf = flannel_conf(&node);
    conf["cniVersion"] = json!("1.0.0");
    let result = node.cni(WEFT_CNI, "ADD", "k", &c.path(), &conf).ok().json();
    node.cni(WEFT_CNI, "CHECK", "k", &c.path(), &with_prev(&conf, &result))
        .ok();
    node.cni(WEFT_CNI, "CHECK", "other", &c.path(), &with_prev(&conf, &result))
        .err(3);
    let addr = result["ips"][0]["address"].as_str().unwrap();
    c.exec(&["ip", "addr", "del", addr, "dev", "eth0"]);
    node.cni(WEFT_CNI, "CHECK", "k", &c.path(), &with_prev(&conf, &result))
        .err(101);
    node.cni(WEFT_CNI, "DEL", "k", &c.path(), &conf).ok();

    // A delegate that fails keeps its error code, and nothing is left saved.
    let mut bad = conf.clone();
    bad["delegate"]["type"] = json!("no-such-plugin");
    let msg = node.cni(WEFT_CNI, "ADD", "k2", &c.path(), &bad).err(7);
    assert!(msg.contains("no-such-plugin") && msg.contains("CNI_PATH"), "{msg}");

    let mut missing = conf.clone();
    missing["subnetFile"] = json!("/run/wtc-missing/subnet.env");
    let msg = node.cni(WEFT_CNI, "ADD", "k3", &c.path(), &missing).err(11);
    assert!(msg.contains("/run/wtc-missing/subnet.env"), "{msg}");
    let mut named = conf.clone();
    named["delegate"]["name"] = json!("x");
    node.cni(WEFT_CNI, "ADD", "k4", &c.path(), &named).err(7);
    assert!(node.ns.veth_names().is_empty());
}
