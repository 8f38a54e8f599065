//! Root test: two network namespaces joined by a veth (198.51.100.0/24), a VxlanBackend in
//! each, and a "pod" address on a bridge `pod0` per node (as on cni0). Checks that a ping crosses the VXLAN,
//! that damage done by hand (neighbour, FDB entry, the whole device) is healed by the next
//! reconcile, that a restart adopts the device without changing anything, and that a removed
//! lease takes its neighbour, FDB entry and route with it.
//!
//! Fails (saying so) when not run as root. `ip`/`bridge` are used only to build the
//! topology and to inspect or damage state.

mod two_nodes;

use std::fs::File;
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ipnet::Ipv4Net;
use nix::sched::{setns, CloneFlags};
use weft_core::config::VxlanOptions;
use weft_core::{Lease, LeaseAttrs, SubnetKey};
use weft_datapath::backend::Report;
use weft_datapath::vxlan::VxlanBackend;
use weft_kernel::iface::{select_external_interface, select_external_interface_for, IfaceSelection};
use weft_kernel::netlink::{AddrFamily, Netlink};

use two_nodes::{require_root, run, udp_round_trip, BackendThread, TwoNodes};

const NETWORK: &str = "10.5.0.0/16";

type Reply = mpsc::Sender<Result<Report, String>>;
/// A reconcile request: the leases and where to answer.
type Msg = (Vec<Lease>, Reply);

/// A VxlanBackend running on its own thread inside a namespace.
struct Node {
    thread: BackendThread<Msg>,
    backend_data: serde_json::Value,
    mtu: u32,
}

impl Node {
    fn start(ns: &str, own: &str, public_ip: Ipv4Addr, direct_routing: bool) -> Node {
        let own = SubnetKey::v4(own.parse().unwrap());
        let (thread, (backend_data, mtu)) = BackendThread::<Msg>::spawn(ns, move |nl, ext, mut rx, ready| async move {
            let opts = VxlanOptions {
                direct_routing,
                ..VxlanOptions::default()
            };
            let network: Ipv4Net = NETWORK.parse().unwrap();
            // As weftd does: device first (its MAC goes into the lease), then the lease.
            let started = async {
                let mut backend = VxlanBackend::start(nl, ext, public_ip, opts, network).await?;
                backend.set_lease(own).await?;
                Ok::<_, weft_datapath::vxlan::VxlanError>(backend)
            };
            let mut backend = match started.await {
                Ok(b) => b,
                Err(e) => return ready.send(Err(e.to_string())).unwrap(),
            };
            ready.send(Ok((backend.backend_data(), backend.mtu()))).unwrap();
            while let Some((leases, reply)) = rx.recv().await {
                let _ = reply.send(backend.reconcile(&leases).await.map_err(|e| e.to_string()));
            }
        })
        .expect("backend starts");
        Node {
            thread,
            backend_data,
            mtu,
        }
    }

    fn reconcile(&self, leases: &[Lease]) -> Report {
        self.thread
            .ask(|reply| (leases.to_vec(), reply))
            .expect("reconcile succeeds")
    }

    fn vtep_mac(&self) -> String {
        self.backend_data["VtepMAC"].as_str().unwrap().to_string()
    }
}

fn lease(subnet: &str, public_ip: &str, node: &Node) -> Lease {
    Lease::v4(
        subnet.parse().unwrap(),
        public_ip.parse().unwrap(),
        "vxlan",
        node.backend_data.clone(),
    )
}

fn neigh(ns: &str) -> String {
    run(&["ip", "-n", ns, "neigh", "show", "dev", "flannel.1"])
}

fn fdb(ns: &str) -> String {
    run(&["bridge", "-n", ns, "fdb", "show", "dev", "flannel.1"])
}

/// `ip route show`, with the `nhid <id>` of routes through a nexthop object left out: what is
/// asserted is the path (`via`, `dev`, `onlink`), which iproute2 prints after it.
fn routes(ns: &str) -> String {
    run(&["ip", "-n", ns, "route", "show"])
        .lines()
        .map(|line| {
            let mut words = line.split(' ');
            let mut kept = Vec::new();
            while let Some(w) = words.next() {
                if w == "nhid" {
                    words.next();
                } else {
                    kept.push(w);
                }
            }
            kept.join(" ") + "\n"
        })
        .collect()
}

#[test]
fn vxlan_two_nodes_ping_heal_restart_and_remove() {
    require_root();
    let ns = TwoNodes::new("wtn", 5);
    let a = Node::start(&ns.a, "10.5.1.0/24", Ipv4Addr::new(198, 51, 100, 1), false);
    let b = Node::start(&ns.b, "10.5.2.0/24", Ipv4Addr::new(198, 51, 100, 2), false);
    assert_eq!(a.mtu, 1450);
    assert_eq!(a.backend_data["VNI"], 1);
    let leases = vec![
        lease("10.5.1.0/24", "198.51.100.1", &a),
        lease("10.5.2.0/24", "198.51.100.2", &b),
        // Ignored: another backend, and a vxlan lease without a VtepMAC.
        Lease {
            subnet: SubnetKey::v4("10.5.3.0/24".parse().unwrap()),
            attrs: LeaseAttrs::new("198.51.100.3".parse().unwrap(), "", serde_json::Value::Null),
        },
        Lease {
            subnet: SubnetKey::v4("10.5.4.0/24".parse().unwrap()),
            attrs: LeaseAttrs::new("198.51.100.4".parse().unwrap(), "vxlan", serde_json::json!({"VNI": 1})),
        },
    ];

    // The device looks like flannel's.
    let link = run(&["ip", "-d", "-n", &ns.a, "link", "show", "flannel.1"]);
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains("vxlan id 1 local 198.51.100.1 dev veth0"), "{link}");
    assert!(link.contains("dstport 8472 nolearning"), "{link}");
    assert!(link.contains(&a.vtep_mac()), "{link}");
    let addr = run(&["ip", "-n", &ns.a, "-4", "addr", "show", "dev", "flannel.1"]);
    assert!(addr.contains("inet 10.5.1.0/32"), "{addr}");

    let ra = a.reconcile(&leases);
    let rb = b.reconcile(&leases);
    assert_eq!(
        (ra.added, ra.replaced, ra.removed, ra.peers, ra.skipped_leases),
        (3, 0, 0, 1, 2),
        "{ra:?}"
    );
    assert_eq!(rb.added, 3, "{rb:?}");
    assert!(neigh(&ns.a).contains(&format!("10.5.2.0 lladdr {} PERMANENT", b.vtep_mac())));
    assert!(fdb(&ns.a).contains(&format!("{} dst 198.51.100.2 self permanent", b.vtep_mac())));
    assert!(
        routes(&ns.a).contains("10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink"),
        "{}",
        routes(&ns.a)
    );
    assert!(
        udp_round_trip(&ns.a, "10.5.1.1", &ns.b, "10.5.2.1", Duration::from_secs(5)),
        "ping a -> b across VXLAN"
    );

    // A second reconcile with nothing changed does nothing.
    let again = a.reconcile(&leases);
    assert!(!again.changed(), "{again:?}");

    // Lost neighbour entry: healed.
    run(&["ip", "-n", &ns.a, "neigh", "del", "10.5.2.0", "dev", "flannel.1"]);
    let r = a.reconcile(&leases);
    assert_eq!(r.added + r.replaced, 1, "{r:?}");
    assert!(neigh(&ns.a).contains(&format!("10.5.2.0 lladdr {} PERMANENT", b.vtep_mac())));
    assert!(
        udp_round_trip(&ns.a, "10.5.1.1", &ns.b, "10.5.2.1", Duration::from_secs(5)),
        "ping after neighbour heal"
    );

    // Wrong neighbour MAC (e.g. a peer's VTEP MAC changed): replaced.
    run(&[
        "ip",
        "-n",
        &ns.a,
        "neigh",
        "replace",
        "10.5.2.0",
        "lladdr",
        "02:11:22:33:44:55",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    let r = a.reconcile(&leases);
    assert_eq!(r.replaced, 1, "{r:?}");
    assert!(
        udp_round_trip(&ns.a, "10.5.1.1", &ns.b, "10.5.2.1", Duration::from_secs(5)),
        "ping after MAC fix"
    );

    // Lost FDB entry: healed.
    run(&[
        "bridge",
        "-n",
        &ns.a,
        "fdb",
        "del",
        &b.vtep_mac(),
        "dev",
        "flannel.1",
        "dst",
        "198.51.100.2",
    ]);
    assert!(!fdb(&ns.a).contains(&b.vtep_mac()));
    let r = a.reconcile(&leases);
    assert_eq!(r.added, 1, "{r:?}");
    assert!(fdb(&ns.a).contains(&format!("{} dst 198.51.100.2 self permanent", b.vtep_mac())));
    assert!(
        udp_round_trip(&ns.a, "10.5.1.1", &ns.b, "10.5.2.1", Duration::from_secs(5)),
        "ping after FDB heal"
    );

    // Stale entries nobody asked for: removed; foreign routes outside the network stay.
    run(&[
        "ip",
        "-n",
        &ns.a,
        "neigh",
        "add",
        "10.5.9.0",
        "lladdr",
        "02:99:99:99:99:99",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    run(&[
        "ip",
        "-n",
        &ns.a,
        "route",
        "add",
        "10.5.9.0/24",
        "via",
        "10.5.9.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    run(&[
        "ip",
        "-n",
        &ns.a,
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "10.5.9.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    let r = a.reconcile(&leases);
    assert_eq!(r.removed, 2, "{r:?}");
    assert!(!neigh(&ns.a).contains("10.5.9.0"));
    let rt = routes(&ns.a);
    assert!(!rt.contains("10.5.9.0/24") && rt.contains("192.0.2.0/24"), "{rt}");

    // The whole device deleted: created again with the same MAC, and everything back.
    run(&["ip", "-n", &ns.a, "link", "del", "flannel.1"]);
    let r = a.reconcile(&leases);
    assert!(r.device_recreated, "{r:?}");
    assert_eq!(r.added, 3, "{r:?}");
    let link = run(&["ip", "-n", &ns.a, "link", "show", "flannel.1"]);
    assert!(link.contains(&a.vtep_mac()), "VtepMAC is stable: {link}");
    assert!(
        udp_round_trip(&ns.a, "10.5.1.1", &ns.b, "10.5.2.1", Duration::from_secs(5)),
        "ping after device heal"
    );

    // Someone changed the device's MAC: the one the lease advertises is put back.
    let set_mac = ["link", "set", "flannel.1", "address", "02:aa:bb:cc:dd:ee"];
    run(&[&["ip", "-n", &ns.a][..], &set_mac[..]].concat());
    a.reconcile(&leases);
    let link = run(&["ip", "-n", &ns.a, "link", "show", "flannel.1"]);
    assert!(link.contains(&a.vtep_mac()), "MAC restored: {link}");

    // Restart: a new backend adopts the device and its entries; nothing is flushed or changed.
    let mac_before = a.vtep_mac();
    drop(a);
    let a = Node::start(&ns.a, "10.5.1.0/24", Ipv4Addr::new(198, 51, 100, 1), false);
    assert_eq!(a.vtep_mac(), mac_before);
    assert!(neigh(&ns.a).contains(&b.vtep_mac()), "restart keeps entries");
    let leases = vec![
        lease("10.5.1.0/24", "198.51.100.1", &a),
        lease("10.5.2.0/24", "198.51.100.2", &b),
    ];
    let r = a.reconcile(&leases);
    assert!(!r.changed(), "restart changes nothing: {r:?}");

    // b's lease removed: its neighbour, FDB entry and route go; our own pod route stays.
    let r = a.reconcile(&leases[..1]);
    assert_eq!(r.removed, 3, "{r:?}");
    assert!(!neigh(&ns.a).contains("10.5.2.0"));
    assert!(!fdb(&ns.a).contains(&b.vtep_mac()));
    let rt = routes(&ns.a);
    assert!(!rt.contains("10.5.2.0/24"), "{rt}");
    assert!(rt.contains("10.5.1.0/24 dev pod0"), "{rt}");
    assert!(
        !udp_round_trip(&ns.a, "10.5.1.1", &ns.b, "10.5.2.1", Duration::from_secs(1)),
        "no path after lease removal"
    );
}

#[test]
fn direct_routing_uses_the_underlay_for_peers_on_the_same_segment() {
    require_root();
    let ns = TwoNodes::new("wtn", 5);
    let a = Node::start(&ns.a, "10.5.1.0/24", Ipv4Addr::new(198, 51, 100, 1), true);
    let b = Node::start(&ns.b, "10.5.2.0/24", Ipv4Addr::new(198, 51, 100, 2), true);
    let leases = vec![
        lease("10.5.1.0/24", "198.51.100.1", &a),
        lease("10.5.2.0/24", "198.51.100.2", &b),
    ];
    a.reconcile(&leases);
    b.reconcile(&leases);
    let rt = routes(&ns.a);
    assert!(rt.contains("10.5.2.0/24 via 198.51.100.2 dev veth0"), "{rt}");
    assert!(!neigh(&ns.a).contains("10.5.2.0"));
    assert!(
        udp_round_trip(&ns.a, "10.5.1.1", &ns.b, "10.5.2.1", Duration::from_secs(5)),
        "direct ping a -> b"
    );
    let r = a.reconcile(&leases[..1]);
    assert_eq!(r.removed, 1, "{r:?}");
    assert!(!routes(&ns.a).contains("10.5.2.0/24"));
}

#[test]
fn interface_selection_in_a_namespace() {
    require_root();
    let ns = TwoNodes::new("wtn", 5);
    run(&["ip", "-n", &ns.a, "route", "add", "default", "via", "198.51.100.2"]);
    // An IPv6-only network chooses by IPv6: a global address and a default route of that family.
    run(&[
        "ip",
        "-n",
        &ns.a,
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "veth0",
        "nodad",
    ]);
    run(&[
        "ip",
        "-n",
        &ns.a,
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8::2",
        "dev",
        "veth0",
    ]);
    let path = format!("/run/netns/{}", ns.a);
    let handle = thread::spawn(move || {
        setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nl = Netlink::new().unwrap();
            let by_default = select_external_interface(&nl, &IfaceSelection::default())
                .await
                .unwrap();
            assert_eq!(
                (by_default.name.as_str(), by_default.ip),
                ("veth0", Ipv4Addr::new(198, 51, 100, 1).into())
            );
            assert_eq!(by_default.mtu, 1500);
            let by_ipv6 = select_external_interface_for(&nl, &IfaceSelection::default(), AddrFamily::Ipv6)
                .await
                .unwrap();
            assert_eq!(
                (by_ipv6.name.as_str(), by_ipv6.ip),
                ("veth0", "2001:db8::1".parse::<std::net::IpAddr>().unwrap())
            );
            let pod0_v6 = IfaceSelection {
                ifaces: vec!["pod0".into()],
                ..IfaceSelection::default()
            };
            let e = select_external_interface_for(&nl, &pod0_v6, AddrFamily::Ipv6)
                .await
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                "interface pod0 has no global IPv6 address: give it one or choose another with --iface"
            );

            let by_ip = IfaceSelection {
                ifaces: vec!["eth7".into(), "10.5.1.1".into()],
                ..IfaceSelection::default()
            };
            let found = select_external_interface(&nl, &by_ip).await.unwrap();
            assert_eq!(
                (found.name.as_str(), found.ip),
                ("pod0", Ipv4Addr::new(10, 5, 1, 1).into())
            );

            let by_regex = IfaceSelection {
                iface_regex: vec!["^nomatch$".into(), "^pod".into()],
                ..IfaceSelection::default()
            };
            assert_eq!(select_external_interface(&nl, &by_regex).await.unwrap().name, "pod0");

            let can_reach = IfaceSelection {
                can_reach: Some(Ipv4Addr::new(203, 0, 113, 5)),
                ..IfaceSelection::default()
            };
            assert_eq!(select_external_interface(&nl, &can_reach).await.unwrap().name, "veth0");

            let missing = IfaceSelection {
                ifaces: vec!["eth7".into()],
                ..IfaceSelection::default()
            };
            let err = select_external_interface(&nl, &missing).await.unwrap_err().to_string();
            assert_eq!(err, "no interface named eth7 and no interface holds address eth7");
        });
    });
    let joined = handle.join();
    // The default route is gone once removed: the error tells the operator what to pass.
    run(&["ip", "-n", &ns.a, "route", "del", "default"]);
    let path = format!("/run/netns/{}", ns.a);
    let no_default = thread::spawn(move || {
        setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nl = Netlink::new().unwrap();
            select_external_interface(&nl, &IfaceSelection::default())
                .await
                .unwrap_err()
                .to_string()
        })
    })
    .join();
    joined.expect("selection assertions");
    assert!(no_default.unwrap().contains("no default IPv4 route: pass --iface"));
}
