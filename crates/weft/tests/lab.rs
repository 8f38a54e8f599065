//! Root tests of `weft::lab`: a lab is built from real namespaces, a real etcd with TLS and a
//! stand-in weftd (a script that writes a subnet.env from its host number, then sleeps), and is
//! torn down completely. Run: `cargo test -p weft --test lab` as root.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use weft::lab::{iproute, Lab, LabError, LabSpec, WeftdBinary};
use weft_core::BackendKind;

/// A stand-in for weftd: writes `FLANNEL_SUBNET=10.5.<host>.1/24` to --subnet-file and sleeps.
fn stand_in_weftd() -> PathBuf {
    let path = std::env::temp_dir().join(format!("weft-lab-stand-in-weftd-{}", std::process::id()));
    let script = r#"#!/bin/sh
for a in "$@"; do case "$a" in --subnet-file=*) f="${a#--subnet-file=}";; esac; done
i=$(ip -4 -o addr show dev eth0 | sed -E 's/.* 198\.51\.100\.([0-9]+)\/.*/\1/')
printf 'FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.%s.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n' "$i" > "$f.tmp"
mv "$f.tmp" "$f"
echo "stand-in weftd $* on host $i"
exec sleep 600
"#;
    if !path.exists() {
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

fn lab_namespaces(name: &str) -> Vec<String> {
    iproute::netns_list()
        .into_iter()
        .filter(|ns| weft::lab::topology::is_lab_ns(name, ns))
        .collect()
}

fn spec(name: &str, nodes: usize) -> LabSpec {
    let mut spec = LabSpec::new(name, nodes, BackendKind::HostGw);
    spec.weftd = WeftdBinary::At(stand_in_weftd());
    spec.weftd_args = vec!["--stand-in-extra".into()];
    spec.subnet_timeout = Duration::from_secs(10);
    spec
}

fn stdout(output: std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Static host-gw routes between hosts, standing for what weftd's host-gw backend would add.
fn route_pods(lab: &Lab) {
    for host in 1..=lab.nodes() {
        for pod in lab.pods() {
            if pod.node != host {
                let via = lab.underlay_ip(pod.node).unwrap().to_string();
                let net = pod.ip.unwrap().trunc().to_string();
                let out = lab
                    .exec_in_host(host, &["ip", "route", "replace", &net, "via", &via])
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

#[test]
fn up_builds_hosts_etcd_and_pods_and_down_removes_everything() {
    let name = "tlab-full";
    let _ = Lab::down_by_name(name);
    let mut lab = Lab::up(spec(name, 2)).expect("lab up");

    // Namespaces and the underlay.
    let mut namespaces = lab_namespaces(name);
    namespaces.sort();
    assert_eq!(
        namespaces,
        [
            "wl-tlab-full-h1",
            "wl-tlab-full-h1-p1",
            "wl-tlab-full-h2",
            "wl-tlab-full-h2-p1",
            "wl-tlab-full-sw"
        ]
    );
    let addrs = stdout(
        lab.exec_in_host(2, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
            .unwrap(),
    );
    assert!(addrs.contains("198.51.100.2/24"), "{addrs}");
    let routes = stdout(lab.exec_in_host(2, &["ip", "route", "show", "default"]).unwrap());
    assert!(routes.contains("default via 198.51.100.254 dev eth0"), "{routes}");
    let forward = stdout(lab.exec_in_host(1, &["cat", "/proc/sys/net/ipv4/ip_forward"]).unwrap());
    assert_eq!(forward.trim(), "1");
    // Each host's receive processing runs on its own CPU (RPS on eth0) when there are two.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        let rps = |host| {
            let out = lab.exec_in_host(host, &["cat", "/sys/class/net/eth0/queues/rx-0/rps_cpus"]);
            u64::from_str_radix(&stdout(out.unwrap()).trim().replace(',', ""), 16).unwrap()
        };
        assert_eq!((rps(1), rps(2)), (0b01, 0b10));
    }
    assert!(lab
        .exec_in_host(1, &["ping", "-c1", "-W1", "203.0.113.1"])
        .unwrap()
        .status
        .success());

    // etcd over TLS, with the network config written.
    let config = lab.etcd_get(weft::lab::CONFIG_KEY).unwrap().expect("config key");
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}})
    );
    lab.etcd_put(
        "/coreos.com/network/subnets/10.5.9.0-24",
        br#"{"PublicIP":"198.51.100.9","PublicIPv6":null}"#,
    )
    .unwrap();
    let leases = lab.leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].value["PublicIP"], "198.51.100.9");
    assert!(lab.etcd_delete("/coreos.com/network/subnets/10.5.9.0-24").unwrap());
    assert!(lab
        .etcd_get("/coreos.com/network/subnets/10.5.9.0-24")
        .unwrap()
        .is_none());

    // weftd got flannel's flags; the pods sit on cni0 with the subnet.env's addresses.
    let log = std::fs::read_to_string(&lab.host(1).unwrap().weftd_log).unwrap();
    for flag in [
        "--etcd-endpoints=https://198.51.100.254:2379",
        "--etcd-cafile=",
        "--subnet-file=",
        "--iface=eth0",
    ] {
        assert!(log.contains(flag), "{flag} missing from {log}");
    }
    assert!(log.contains("--stand-in-extra"));
    assert_eq!(lab.pod_ip(1).unwrap(), Ipv4Addr::new(10, 5, 1, 2));
    assert_eq!(lab.pod_ip(2).unwrap(), Ipv4Addr::new(10, 5, 2, 2));
    let pod_link = stdout(
        lab.exec_in_pod(1, &["ip", "-o", "link", "show", "dev", "eth0"])
            .unwrap(),
    );
    assert!(pod_link.contains("mtu 1400"), "{pod_link}");
    let bridge = stdout(
        lab.exec_in_host(1, &["ip", "-4", "-o", "addr", "show", "dev", "cni0"])
            .unwrap(),
    );
    assert!(bridge.contains("10.5.1.1/24"), "{bridge}");
    assert!(lab.ping(1, Ipv4Addr::new(10, 5, 1, 1)), "pod reaches its gateway");
    assert!(
        !lab.ping(1, lab.pod_ip(2).unwrap()),
        "no route between pods before the backend adds one"
    );
    route_pods(&lab);
    assert!(lab.ping(1, lab.pod_ip(2).unwrap()));
    assert_eq!(lab.reachability(), vec![vec![None, Some(true)], vec![Some(true), None]]);

    // A fresh process sees the same lab.
    let reopened = Lab::open(name).unwrap();
    assert_eq!(reopened.state(), lab.state());
    drop(reopened);
    assert!(lab.weftd_alive(1), "dropping a reopened lab must not tear it down");

    // Restart replaces the daemon and leaves the kernel state (routes, pods) alone.
    let before = lab.weftd_pid(1).unwrap();
    lab.restart_node(1).unwrap();
    assert_ne!(lab.weftd_pid(1).unwrap(), before);
    assert!(lab.weftd_alive(1));
    assert!(lab.ping(1, lab.pod_ip(2).unwrap()));
    lab.stop_node(2).unwrap();
    assert!(!lab.weftd_alive(2));
    lab.start_node(2).unwrap();
    assert!(lab.weftd_alive(2));
    lab.kill_node(2).unwrap();
    assert!(!lab.weftd_alive(2));
    lab.start_node(2).unwrap();
    assert!(lab.weftd_alive(2));

    // A third node joins with its own pod.
    assert_eq!(lab.add_node().unwrap(), 3);
    assert_eq!(lab.pod_ip(3).unwrap(), Ipv4Addr::new(10, 5, 3, 2));
    route_pods(&lab);
    assert!(lab.wait_ping(3, lab.pod_ip(1).unwrap(), Duration::from_secs(3)));
    let status = lab.status();
    assert_eq!(status.hosts.len(), 3);
    assert!(status.hosts.iter().all(|h| h.weftd_alive));
    assert!(
        status.reachability.iter().flatten().all(|cell| cell != &Some(false)),
        "{status}"
    );

    let etcd_pid = lab.state().etcd_pid;
    let dir = lab.dir().to_path_buf();
    lab.down().unwrap();
    assert!(lab_namespaces(name).is_empty());
    assert!(!dir.exists());
    assert!(
        !std::path::Path::new(&format!("/proc/{etcd_pid}")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{etcd_pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        }
    );
    Lab::down_by_name(name).expect("down is idempotent");
}

#[test]
fn a_second_up_is_refused_and_drop_tears_down() {
    let name = "tlab-twice";
    let _ = Lab::down_by_name(name);
    let mut first = spec(name, 1);
    first.weftd = WeftdBinary::Skip;
    let lab = Lab::up(first.clone()).expect("lab up");
    assert!(lab.pods().is_empty(), "no weftd, no subnet.env, no pod");
    match Lab::up(first) {
        Err(LabError::AlreadyUp { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected AlreadyUp, got {other:?}"),
    }
    assert_eq!(
        lab_namespaces(name).len(),
        2,
        "the refused up must not touch the running lab"
    );
    drop(lab);
    assert!(lab_namespaces(name).is_empty());
    assert!(!weft::lab::lab_dir(name).exists());
}

#[test]
fn a_weftd_that_dies_fails_up_with_its_log_and_leaves_nothing() {
    let name = "tlab-dies";
    let _ = Lab::down_by_name(name);
    let mut spec = spec(name, 1);
    spec.weftd = WeftdBinary::At("/bin/false".into());
    let err = Lab::up(spec).expect_err("weftd exits at once");
    assert!(err.to_string().contains("weftd on host 1"), "{err}");
    assert!(lab_namespaces(name).is_empty());
}

/// With the real weftd (built next to this test binary, e.g. `cargo build -p weftd` into the same
/// target dir, as `make test` does): two vxlan hosts get leases and their pods reach each other.
/// Without the binary the test fails saying how to build it.
#[test]
fn real_weftd_connects_pods_over_vxlan() {
    let weftd = weft::lab::find_weftd().expect(
        "no weftd binary next to the test executable or in PATH: run `cargo build --workspace --bins` first (make test does)",
    );
    let name = "tlab-real";
    let _ = Lab::down_by_name(name);
    let mut spec = LabSpec::new(name, 2, BackendKind::Vxlan);
    spec.weftd = WeftdBinary::At(weftd);
    let lab = Lab::up(spec).expect("lab up with the real weftd");
    let leases = lab.leases().unwrap();
    assert_eq!(leases.len(), 2, "{leases:?}");
    for lease in &leases {
        assert!(
            lease.key.starts_with("/coreos.com/network/subnets/10.5."),
            "{}",
            lease.key
        );
        assert_eq!(lease.value["BackendType"], "vxlan");
    }
    let env = lab.subnet_env(1).unwrap();
    assert_eq!(env.mtu, 1450);
    assert!(
        lab.wait_ping(1, lab.pod_ip(2).unwrap(), Duration::from_secs(10)),
        "pod 1 reaches pod 2"
    );
    assert!(
        lab.wait_ping(2, lab.pod_ip(1).unwrap(), Duration::from_secs(10)),
        "pod 2 reaches pod 1"
    );
}
