//! Root test: two network namespaces on one L2 segment (a veth, 198.51.100.0/24), a
//! HostGwBackend in each, and a "pod" address on a bridge `cni0` per node. Checks that the
//! backend refuses a public IP that is not on the interface, that a datagram crosses between
//! pods, that a route deleted or changed by hand is healed by the next reconcile, that stale
//! routes go while foreign ones stay, and that a departed lease takes its route with it.
//!
//! Fails (saying so) when not run as root. `ip` is used only to build the topology and to
//! inspect or damage state.

mod two_nodes;

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::Duration;

use ipnet::Ipv4Net;
use weft_core::{Lease, SubnetKey};
use weft_datapath::backend::Report;
use weft_datapath::hostgw::HostGwBackend;

use two_nodes::{require_root, run, udp_round_trip, BackendThread, TwoNodes};

const NETWORK: &str = "10.6.0.0/16";

type Reply = mpsc::Sender<Result<Report, String>>;
/// A reconcile request: the leases and where to answer.
type Msg = (Vec<Lease>, Reply);

/// A HostGwBackend running on its own thread inside a namespace.
struct Node {
    thread: BackendThread<Msg>,
    mtu: u32,
    backend_data: serde_json::Value,
}

impl Node {
    /// Starts the backend; Err carries the start error's message.
    fn start(ns: &str, own: &str, public_ip: Ipv4Addr) -> Result<Node, String> {
        let own = SubnetKey::v4(own.parse().unwrap());
        let (thread, (mtu, backend_data)) =
            BackendThread::<Msg>::spawn(ns, move |nl, ext, mut rx, ready| async move {
                let network: Ipv4Net = NETWORK.parse().unwrap();
                let mut backend = match HostGwBackend::start(nl, ext, public_ip, network).await {
                    Ok(b) => b,
                    Err(e) => return ready.send(Err(e.to_string())).unwrap(),
                };
                backend.set_lease(own);
                ready.send(Ok((backend.mtu(), backend.backend_data()))).unwrap();
                while let Some((leases, reply)) = rx.recv().await {
                    let _ = reply.send(backend.reconcile(&leases).await.map_err(|e| e.to_string()));
                }
            })?;
        Ok(Node {
            thread,
            mtu,
            backend_data,
        })
    }

    fn reconcile(&self, leases: &[Lease]) -> Report {
        self.thread
            .ask(|reply| (leases.to_vec(), reply))
            .expect("reconcile succeeds")
    }
}

fn lease(subnet: &str, public_ip: &str, backend: &str) -> Lease {
    Lease::v4(
        subnet.parse().unwrap(),
        public_ip.parse().unwrap(),
        backend,
        serde_json::Value::Null,
    )
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
fn hostgw_refuses_a_public_ip_that_is_not_on_the_interface() {
    require_root();
    let ns = TwoNodes::forwarding_via_cni0("wth", 6);
    let err = Node::start(&ns.a, "10.6.1.0/24", Ipv4Addr::new(203, 0, 113, 7))
        .err()
        .expect("a NATed public IP is refused");
    assert!(
        err.contains("public IP 203.0.113.7 is not an address of interface veth0 (it has 198.51.100.1/24)"),
        "{err}"
    );
    assert!(err.contains("use the vxlan backend"), "{err}");
}

#[test]
fn hostgw_two_nodes_mesh_heal_and_leave() {
    require_root();
    let ns = TwoNodes::forwarding_via_cni0("wth", 6);
    let a = Node::start(&ns.a, "10.6.1.0/24", Ipv4Addr::new(198, 51, 100, 1)).unwrap();
    let b = Node::start(&ns.b, "10.6.2.0/24", Ipv4Addr::new(198, 51, 100, 2)).unwrap();
    assert_eq!(a.mtu, 1500, "host-gw MTU is the interface's");
    assert!(a.backend_data.is_null());

    let leases = vec![
        lease("10.6.1.0/24", "198.51.100.1", "host-gw"),
        lease("10.6.2.0/24", "198.51.100.2", "host-gw"),
        // Ignored: a vxlan node and a udp node.
        lease("10.6.3.0/24", "198.51.100.3", "vxlan"),
        lease("10.6.4.0/24", "198.51.100.4", ""),
    ];
    let ra = a.reconcile(&leases);
    assert_eq!(
        (ra.added, ra.replaced, ra.removed, ra.peers, ra.skipped_leases),
        (1, 0, 0, 1, 2),
        "{ra:?}"
    );
    b.reconcile(&leases);
    let rt = routes(&ns.a);
    assert!(rt.contains("10.6.2.0/24 via 198.51.100.2 dev veth0"), "{rt}");
    assert!(!rt.contains("10.6.3.0") && !rt.contains("10.6.4.0"), "{rt}");
    assert!(rt.contains("10.6.1.0/24 dev cni0"), "own subnet untouched: {rt}");
    assert!(
        udp_round_trip(&ns.a, "10.6.1.1", &ns.b, "10.6.2.1", Duration::from_secs(5)),
        "pod a -> pod b via host-gw"
    );

    // Nothing changed: nothing done.
    assert!(!a.reconcile(&leases).changed());

    // A route deleted by hand: healed.
    run(&["ip", "-n", &ns.a, "route", "del", "10.6.2.0/24"]);
    assert!(
        !udp_round_trip(&ns.a, "10.6.1.1", &ns.b, "10.6.2.1", Duration::from_millis(600)),
        "no path without the route"
    );
    let r = a.reconcile(&leases);
    assert_eq!(r.added, 1, "{r:?}");
    assert!(
        udp_round_trip(&ns.a, "10.6.1.1", &ns.b, "10.6.2.1", Duration::from_secs(5)),
        "ping after route heal"
    );

    // A route changed by hand to a wrong gateway: replaced.
    run(&[
        "ip",
        "-n",
        &ns.a,
        "route",
        "replace",
        "10.6.2.0/24",
        "via",
        "198.51.100.9",
        "dev",
        "veth0",
    ]);
    let r = a.reconcile(&leases);
    assert_eq!(r.replaced, 1, "{r:?}");
    assert!(routes(&ns.a).contains("10.6.2.0/24 via 198.51.100.2 dev veth0"));

    // A stale route in the cluster network goes; one outside it stays.
    run(&[
        "ip",
        "-n",
        &ns.a,
        "route",
        "add",
        "10.6.9.0/24",
        "via",
        "198.51.100.9",
        "dev",
        "veth0",
    ]);
    run(&[
        "ip",
        "-n",
        &ns.a,
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "198.51.100.9",
        "dev",
        "veth0",
    ]);
    let r = a.reconcile(&leases);
    assert_eq!(r.removed, 1, "{r:?}");
    let rt = routes(&ns.a);
    assert!(!rt.contains("10.6.9.0/24") && rt.contains("192.0.2.0/24"), "{rt}");

    // A restart adopts the routes: nothing changes.
    drop(a);
    let a = Node::start(&ns.a, "10.6.1.0/24", Ipv4Addr::new(198, 51, 100, 1)).unwrap();
    assert!(!a.reconcile(&leases).changed(), "restart changes nothing");

    // b leaves: its route goes, ours stays.
    let r = a.reconcile(&leases[..1]);
    assert_eq!(r.removed, 1, "{r:?}");
    let rt = routes(&ns.a);
    assert!(!rt.contains("10.6.2.0/24"), "{rt}");
    assert!(rt.contains("10.6.1.0/24 dev cni0"), "{rt}");
    assert!(
        !udp_round_trip(&ns.a, "10.6.1.1", &ns.b, "10.6.2.1", Duration::from_millis(600)),
        "no path after b left"
    );
}
