//! Root test of the vxlan backend's nexthop objects, on two namespaces joined by a veth: each
//! peer's route points at a nexthop of weft's id range; a route flanneld left (same path, no
//! nexthop) is replaced in place with no moment without a route; a nexthop deleted by hand
//! (which silently takes its route with it) is put back from the kernel's notification, route
//! included; a restart finds the nexthops and routes and changes nothing.
//!
//! Fails (saying so) when not run as root. `ip` is used only to build the topology and
//! to inspect or damage state.

mod two_nodes;

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft_core::config::VxlanOptions;
use weft_core::{Lease, SubnetKey};
use weft_datapath::backend::{Backend, LeaseSet, Report};
use weft_datapath::vxlan::VxlanBackend;

use two_nodes::{require_root, run, udp_round_trip, BackendThread, TwoNodes};

const NETWORK: &str = "10.7.0.0/16";
/// The nexthop id of peer subnet 10.7.2.0/24: weft's base with subnet index 2.
const NH_B: u32 = 0x7700_0002;

type Msg = (Vec<Lease>, mpsc::Sender<Result<Report, String>>);

/// A VxlanBackend on its own thread inside a namespace, reconciling on request and repairing
/// from kernel notifications in between, as weftd does.
struct Node {
    thread: BackendThread<Msg>,
    backend_data: serde_json::Value,
}

impl Node {
    fn start(ns: &str, own: &str, public_ip: Ipv4Addr) -> Node {
        let own = SubnetKey::v4(own.parse().unwrap());
        let (thread, backend_data) = BackendThread::<Msg>::spawn(ns, move |nl, ext, mut rx, ready| async move {
            let network: Ipv4Net = NETWORK.parse().unwrap();
            let mut events = weft_kernel::monitor::subscribe().expect("kernel notifications");
            let started = async {
                let mut backend = VxlanBackend::start(nl, ext, public_ip, VxlanOptions::default(), network).await?;
                backend.set_lease(own).await?;
                Ok::<_, weft_datapath::vxlan::VxlanError>(backend)
            };
            let mut backend = match started.await {
                Ok(b) => b,
                Err(e) => return ready.send(Err(e.to_string())).unwrap(),
            };
            ready.send(Ok(backend.backend_data())).unwrap();
            let mut all = LeaseSet::new();
            loop {
                tokio::select! {
                    msg = rx.recv() => {
                        let Some((leases, reply)) = msg else { return };
                        all = leases.iter().map(|l| (l.subnet, l.attrs.clone())).collect();
                        let _ = reply.send(VxlanBackend::reconcile(&mut backend, &leases).await.map_err(|e| e.to_string()));
                    }
                    Some(event) = events.recv() => {
                        if let Err(e) = Backend::kernel_changed(&mut backend, &event, &all).await {
                            eprintln!("repair failed: {e}");
                        }
                    }
                }
            }
        })
        .expect("backend starts");
        Node { thread, backend_data }
    }

    fn reconcile(&self, leases: &[Lease]) -> Report {
        self.thread
            .ask(|reply| (leases.to_vec(), reply))
            .expect("reconcile succeeds")
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

fn route_to_b(ns: &str) -> String {
    run(&["ip", "-n", ns, "route", "show", "10.7.2.0/24"])
}

fn nexthops(ns: &str) -> String {
    run(&["ip", "-n", ns, "nexthop", "show"])
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn vxlan_routes_through_nexthops_replace_flanneld_routes_heal_and_survive_a_restart() {
    require_root();
    let ns = TwoNodes::new("wnx", 7);
    let a = Node::start(&ns.a, "10.7.1.0/24", Ipv4Addr::new(198, 51, 100, 1));
    let b = Node::start(&ns.b, "10.7.2.0/24", Ipv4Addr::new(198, 51, 100, 2));

    // flanneld ran on a before: its plain route to b's subnet is there when weft first reconciles.
    run(&[
        "ip",
        "-n",
        &ns.a,
        "route",
        "add",
        "10.7.2.0/24",
        "via",
        "10.7.2.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    let leases = vec![
        lease("10.7.1.0/24", "198.51.100.1", &a),
        lease("10.7.2.0/24", "198.51.100.2", &b),
    ];
    let r = a.reconcile(&leases);
    assert_eq!(
        (r.added, r.replaced, r.removed),
        (2, 1, 0),
        "neighbour and FDB added, route replaced: {r:?}"
    );
    b.reconcile(&leases);
    let rt = route_to_b(&ns.a);
    assert!(
        rt.contains(&format!("10.7.2.0/24 nhid {NH_B} via 10.7.2.0 dev flannel.1")),
        "{rt}"
    );
    assert_eq!(rt.lines().count(), 1, "one route, flanneld's is gone: {rt}");
    let nh = nexthops(&ns.a);
    assert!(nh.contains(&format!("id {NH_B} via 10.7.2.0 dev flannel.1")), "{nh}");
    assert!(nh.contains("onlink"), "{nh}");
    assert!(
        udp_round_trip(&ns.a, "10.7.1.1", &ns.b, "10.7.2.1", Duration::from_secs(5)),
        "pod a -> pod b through the nexthop route"
    );

    // The nexthop deleted by hand takes the route with it; the notification brings both back.
    run(&["ip", "-n", &ns.a, "nexthop", "del", "id", &NH_B.to_string()]);
    let healed = wait_until(Duration::from_secs(1), || route_to_b(&ns.a).contains("nhid"));
    assert!(healed.is_some(), "route back within 1 s: {}", route_to_b(&ns.a));
    assert!(nexthops(&ns.a).contains(&format!("id {NH_B} via 10.7.2.0 dev flannel.1")));
    assert!(udp_round_trip(
        &ns.a,
        "10.7.1.1",
        &ns.b,
        "10.7.2.1",
        Duration::from_secs(5)
    ));

    // A nexthop changed by hand is put back.
    run(&[
        "ip",
        "-n",
        &ns.a,
        "nexthop",
        "replace",
        "id",
        &NH_B.to_string(),
        "via",
        "10.7.2.9",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    let healed = wait_until(Duration::from_secs(1), || {
        nexthops(&ns.a).contains(&format!("id {NH_B} via 10.7.2.0 dev flannel.1"))
    });
    assert!(healed.is_some(), "{}", nexthops(&ns.a));

    // A stale nexthop of weft's range (a lease that is gone) is removed; another program's stays.
    run(&[
        "ip",
        "-n",
        &ns.a,
        "nexthop",
        "add",
        "id",
        "1996488713",
        "via",
        "10.7.9.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    run(&[
        "ip",
        "-n",
        &ns.a,
        "nexthop",
        "add",
        "id",
        "42",
        "via",
        "198.51.100.2",
        "dev",
        "veth0",
    ]);
    let r = a.reconcile(&leases);
    assert!(r.changed(), "{r:?}");
    let nh = nexthops(&ns.a);
    assert!(!nh.contains("1996488713") && nh.contains("id 42 "), "{nh}");
    run(&["ip", "-n", &ns.a, "nexthop", "del", "id", "42"]);

    // Restart: the new backend finds its nexthops and routes and changes nothing, and traffic
    // keeps crossing throughout.
    let before = (nexthops(&ns.a), route_to_b(&ns.a));
    drop(a);
    assert_eq!((nexthops(&ns.a), route_to_b(&ns.a)), before, "stopping flushes nothing");
    let a = Node::start(&ns.a, "10.7.1.0/24", Ipv4Addr::new(198, 51, 100, 1));
    let leases = vec![
        lease("10.7.1.0/24", "198.51.100.1", &a),
        lease("10.7.2.0/24", "198.51.100.2", &b),
    ];
    let r = a.reconcile(&leases);
    assert!(!r.changed(), "restart changes nothing: {r:?}");
    assert_eq!((nexthops(&ns.a), route_to_b(&ns.a)), before);
    assert!(udp_round_trip(
        &ns.a,
        "10.7.1.1",
        &ns.b,
        "10.7.2.1",
        Duration::from_secs(5)
    ));

    // b's lease removed: its route and nexthop go.
    let r = a.reconcile(&leases[..1]);
    assert_eq!(r.removed, 3, "route, neighbour and FDB entry: {r:?}");
    assert_eq!(route_to_b(&ns.a), "");
    assert!(!nexthops(&ns.a).contains(&NH_B.to_string()));
}
