//! weft-cni in the lab: containers plugged in by the CNI plugin (as a runtime calls it: env vars
//! and stdin, inside the node) on different hosts reach each other over VXLAN, and reach an
//! address outside the cluster masqueraded.

mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use common::*;
use weft::lab::Lab;
use weft_core::BackendKind;

fn weft_cni() -> std::path::PathBuf {
    let path = weftd().with_file_name("weft-cni");
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// Runs weft-cni ADD for a new container namespace on host `node`; returns its address.
fn cni_add(lab: &Lab, node: usize, container_ns: &str) -> Ipv4Addr {
    let out = Command::new("ip")
        .args(["netns", "add", container_ns])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = lab.dir().join(format!("h{node}"));
    let ipam = dir.join("ipam");
    // The lab's own pod already holds .2 on cni0: reserve it in the shared host-local layout.
    let pod = lab.pod_ip(node).unwrap();
    std::fs::create_dir_all(ipam.join("weft")).unwrap();
    std::fs::write(ipam.join("weft").join(pod.to_string()), "lab-pod\r\neth0").unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "type": "weft-cni",
        "subnetFile": dir.join("subnet.env"),
        "ipamDataDir": ipam,
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", lab.host_ns(node).unwrap()])
        .arg(weft_cni())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container_ns)
        .env("CNI_NETNS", format!("/var/run/netns/{container_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weft-cni ADD: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_bridge_mac_pinned(lab, node, &result);
    let addr = result["ips"][0]["address"].as_str().unwrap();
    addr.split('/').next().unwrap().parse().unwrap()
}

/// The lab made cni0 with a fixed MAC (so it never follows its ports), weft-cni kept it, and the
/// result shows it.
fn assert_bridge_mac_pinned(lab: &Lab, node: usize, result: &serde_json::Value) {
    let host = lab.host_ns(node).unwrap();
    let read = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", host])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mac = read(&["cat", "/sys/class/net/cni0/address"]);
    assert_eq!(mac, weft::lab::iproute::bridge_mac(host, "cni0"));
    assert_eq!(
        read(&["cat", "/sys/class/net/cni0/addr_assign_type"]),
        "3",
        "cni0's MAC is set"
    );
    assert_eq!(result["interfaces"][0]["name"], "cni0");
    assert_eq!(result["interfaces"][0]["mac"], mac.as_str());
}

#[test]
fn containers_plugged_by_weft_cni_talk_across_hosts_and_egress_masqueraded() {
    let mut spec = spec(&lab_name("ccn"), 2, BackendKind::Vxlan);
    spec.ip_masq = true;
    let lab = up(spec);
    // Named like the lab's pods so `lab down` removes them even if the test fails.
    let c1 = format!("wl-{}-h1-p2", lab.name());
    let c2 = format!("wl-{}-h2-p2", lab.name());
    let a1 = cni_add(&lab, 1, &c1);
    let a2 = cni_add(&lab, 2, &c2);
    assert!(
        lab.subnet_env(1).unwrap().subnet.unwrap().contains(&a1),
        "{a1} from host 1's subnet"
    );
    assert!(
        lab.subnet_env(2).unwrap().subnet.unwrap().contains(&a2),
        "{a2} from host 2's subnet"
    );

    let ping = |ns: &str, to: Ipv4Addr| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ping",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                &to.to_string(),
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(ping(&c1, a2), "container on host 1 reaches container on host 2");
    assert!(ping(&c2, a1), "and back");
    assert!(ping(&c1, lab.pod_ip(2).unwrap()), "and the lab's pod on host 2");
    assert_eq!(
        egress_source(&lab, &c1, 7710),
        Ipv4Addr::new(198, 51, 100, 1),
        "egress masqueraded"
    );
}
