//! ADD/DEL latency of weft-cni (built-in mode) vs Debian's bridge + host-local, over 100
//! containers each, in the same run. Ignored by default; run it with
//! `cargo test -p weft-cni --release --test bench -- --ignored --nocapture`. Needs root.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const CONTAINERS: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    (ms(percentile(&d, 0.5)), ms(percentile(&d, 0.99)))
}

/// Times ADD for every container, then DEL for every container.
fn measure(
    node: &Node,
    plugin: &str,
    conf: &serde_json::Value,
    containers: &[Netns],
) -> (Vec<Duration>, Vec<Duration>) {
    let mut adds = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        adds.push(node.cni(plugin, "ADD", &format!("b{i}"), &c.path(), conf).ok().took);
    }
    let mut dels = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        dels.push(node.cni(plugin, "DEL", &format!("b{i}"), &c.path(), conf).ok().took);
    }
    assert!(node.ns.veth_names().is_empty());
    (adds, dels)
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn add_del_latency_weft_cni_vs_bridge_host_local() {
    let containers: Vec<Netns> = (0..CONTAINERS).map(|_| Netns::new("bc")).collect();

    let weft_node = Node::new("bw");
    let weft_conf = weft_node.builtin_conf("1.0.0");
    let (weft_add, weft_del) = measure(&weft_node, WEFT_CNI, &weft_conf, &containers);

    let bridge_node = Node::new("bb");
    let bridge_conf = json!({
        "cniVersion": "1.0.0", "name": bridge_node.network, "type": "bridge", "bridge": "cni0",
        "isGateway": true, "ipMasq": false, "mtu": 1450, "hairpinMode": true,
        "ipam": {"type": "host-local", "dataDir": bridge_node.dir.join("host-local"),
                 "ranges": [[{"subnet": "10.5.72.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]},
    });
    let bridge = format!("{CNI_PATH}/bridge");
    let (br_add, br_del) = measure(&bridge_node, &bridge, &bridge_conf, &containers);

    let rows = [
        ("weft-cni (built-in)", summary(weft_add), summary(weft_del)),
        ("bridge + host-local", summary(br_add), summary(br_del)),
    ];
    println!("\nCNI latency over {CONTAINERS} containers (ms)");
    println!("| plugin              | ADD median | ADD p99 | DEL median | DEL p99 |");
    println!("|---------------------|-----------:|--------:|-----------:|--------:|");
    for (name, (am, ap), (dm, dp)) in rows {
        println!("| {name:<19} | {am:>10.2} | {ap:>7.2} | {dm:>10.2} | {dp:>7.2} |");
    }
    let ratio = rows[0].1 .0 / rows[1].1 .0;
    println!("weft-cni ADD median / bridge+host-local ADD median = {ratio:.2}");
}
