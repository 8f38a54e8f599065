//! /healthz and /metrics as an operator scrapes them from a node.

mod common;

use std::time::Duration;

use common::*;
use weft_core::BackendKind;

#[test]
fn healthz_and_metrics_report_what_the_node_does() {
    let mut spec = spec(&lab_name("cme"), 2, BackendKind::Vxlan);
    spec.weftd_args
        .extend(["--healthz-port=8471".to_string(), "--healthz-etcd-grace=5".to_string()]);
    let lab = up(spec);
    assert!(all_pods_reach_each_other(&lab));

    let health = http_get(&lab, 1, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok\n"),
        "{health}"
    );

    let page = http_get(&lab, 1, "/metrics");
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
        wait_until(Duration::from_secs(6), || corrections(&http_get(&lab, 1, "/metrics"))
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
    // The grace (5 s) counts from etcd's last answer, so /healthz turns 503 about 5 s after etcd
    // goes silent: not before the grace less one check interval (1.25 s), not long after it.
    ipt("-I");
    let silent = std::time::Instant::now();
    let unhealthy = wait_until(Duration::from_secs(30), || {
        let h = http_get(&lab, 1, "/healthz");
        h.starts_with("HTTP/1.1 503") && h.contains("etcd unreachable")
    });
    let after = silent.elapsed();
    eprintln!("/healthz turned 503 {after:?} after etcd went silent (grace 5 s)");
    ipt("-D");
    assert!(
        unhealthy,
        "healthz reports etcd unreachable: {}",
        http_get(&lab, 1, "/healthz")
    );
    assert!(
        after >= Duration::from_millis(3500) && after <= Duration::from_millis(7500),
        "/healthz turned 503 {after:?} after etcd went silent, with a 5 s grace"
    );
    assert!(
        wait_until(Duration::from_secs(30), || http_get(&lab, 1, "/healthz")
            .starts_with("HTTP/1.1 200 OK")),
        "healthy again once etcd answers: {}",
        http_get(&lab, 1, "/healthz")
    );
}
