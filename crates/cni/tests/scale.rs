//! 50 concurrent ADDs on one node: 50 distinct addresses, all reachable from the bridge; 50
//! concurrent DELs leave no address, veth or file behind. Needs root.

mod common;

use std::collections::HashSet;
use std::thread;

use common::*;

const N: usize = 50;

#[test]
fn fifty_concurrent_adds_then_dels() {
    let node = Node::new("sc");
    let containers: Vec<Netns> = (0..N).map(|_| Netns::new("scc")).collect();
    let conf = node.builtin_conf("1.0.0");

    let addresses: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    let r = node.cni(WEFT_CNI, "ADD", &format!("s{i}"), &c.path(), conf).ok().json();
                    r["ips"][0]["address"]
                        .as_str()
                        .unwrap()
                        .split('/')
                        .next()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<&String> = addresses.iter().collect();
    assert_eq!(distinct.len(), N, "duplicate addresses: {addresses:?}");
    assert_eq!(node.address_files().len(), N);
    assert_eq!(node.ns.veth_names().len(), N);

    // Reachable from the bridge (the node), 10 pings at a time.
    for batch in addresses.chunks(10) {
        thread::scope(|s| {
            for ip in batch {
                let node = &node;
                s.spawn(move || assert!(node.ns.exec_ok(&["ping", "-c1", "-W2", ip]), "{ip} unreachable"));
            }
        });
    }

    thread::scope(|s| {
        for (i, c) in containers.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || node.cni(WEFT_CNI, "DEL", &format!("s{i}"), &c.path(), conf).ok());
        }
    });
    assert!(node.address_files().is_empty(), "{:?}", node.address_files());
    assert!(node.ns.veth_names().is_empty());
    for c in &containers {
        assert!(c.links().iter().all(|l| l["ifname"] != "eth0"));
    }
}
