//! /healthz and /metrics as an operator scrapes them from a node.

mod common;

use std::time::Duration;

use common::*;
use weft::lab::Lab;
use weft_core::BackendKind;

/// GET `path` from weftd's HTTP port on host `node`; returns the whole response.
fn get(lab: &Lab, node: usize, path: &str) -> String {
    host_out(
        lab,
        node,
        &[
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/8471 && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"),
        ],
    )
}

fn metric(page: &str, name: &str) -> Option<u64> {
    page.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn healthz_and_metrics_report_what_the_node_does() {
    let mut spec = spec(&lab_name("cme"), 2, BackendKind::Vxlan);
    spec.weftd_args
        .extend(["--healthz-port=8471".to_string(), "--healthz-etcd-grace=2".to_string()]);
    let lab = up(spec);
    assert!(all_pods_reach_each_other(&lab));

    let health = get(&lab, 1, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok\n"),
        "{health}"
    );

    let page = get(&lab, 1, "/metrics");
    assert_eq!(metric(&page, "weft_leases"), Some(2), "{page}");
    assert_eq!(metric(&page, "weft_lease_held"), Some(1), "{page}");
    assert!(
        metric(&page, "weft_reconcile_runs_total{backend=\"vxlan\"}").unwrap() >= 1,
        "{page}"
    );
    assert!(page.contains("# TYPE weft_etcd_watch_restarts_total counter"), "{page}");
    let corrections = |p: &str| metric(p, "weft_reconcile_corrections_total{backend=\"vxlan\"}").unwrap();
    let before = corrections(&page);

    // A neighbour entry removed by hand is a correction the metrics count.
    let next_hop = subnet_ip(&lab, 2).to_string();
    host_out(&lab, 1, &["ip", "neigh", "del", &next_hop, "dev", "flannel.1"]);
    assert!(
        wait_until(Duration::from_secs(6), || corrections(&get(&lab, 1, "/metrics"))
            > before),
        "corrections counted"
    );

    // etcd unreachable for longer than the grace period: /healthz says so.
    let switch = lab.switch_ns().to_string();
    let ipt = |op: &str| {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &switch, "iptables", op, "INPUT", "-p", "tcp", "--dport", "2379", "-j", "DROP",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    ipt("-I");
    let unhealthy = wait_until(Duration::from_secs(30), || {
        let h = get(&lab, 1, "/healthz");
        h.starts_with("HTTP/1.1 503") && h.contains("etcd unreachable")
    });
    ipt("-D");
    assert!(
        unhealthy,
        "healthz reports etcd unreachable: {}",
        get(&lab, 1, "/healthz")
    );
    assert!(
        wait_until(Duration::from_secs(30), || get(&lab, 1, "/healthz")
            .starts_with("HTTP/1.1 200 OK")),
        "healthy again once etcd answers: {}",
        get(&lab, 1, "/healthz")
    );
}
