//! Root test: a two-node VXLAN setup in network namespaces (node a with a pod namespace on its
//! `cni0`, node b, a VxlanBackend in each, a real etcd inside a's namespace holding the leases),
//! then `run_trace` on node a while things are broken on purpose: a deleted neighbour or FDB
//! entry, a neighbour MAC that differs from the lease's VtepMAC, ip_forward=0, a FORWARD policy
//! of DROP, a missing subnet.env, a missing lease, a pod MTU above the tunnel's. Each time the
//! trace must name that cause; after the backend's reconcile (or the undo) it must be clean.
//!
//! Fails (saying so) when not run as root. `ip`, `bridge`, `iptables` and `sysctl` are
//! used only to build the topology and to damage it.

use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nix::sched::{setns, CloneFlags};
use weft_control::etcd::EtcdOptions;
use weft_core::config::VxlanOptions;
use weft_core::{Lease, SubnetKey};
use weft_datapath::vxlan::VxlanBackend;
use weft_trace::{render_json, render_text, run_trace, Cause, Trace, TraceOptions};

const PREFIX: &str = "/coreos.com/network";
const ETCD_URL: &str = "http://127.0.0.1:2379";

#[path = "../../datapath/tests/two_nodes/mod.rs"]
mod two_nodes;

use two_nodes::{require_root, run, udp_round_trip, BackendThread, TwoNodes};

/// Node a with a pod on its `cni0` (10.5.1.2, MTU 1450), node b; both forward.
fn topology() -> TwoNodes {
    let mut ns = TwoNodes::forwarding_via_cni0("wth", 5);
    ns.set_bridge_mtu(1450);
    ns.add_pod_on_a(1450);
    ns
}

/// Runs `f`'s future on a current-thread runtime in a thread that entered namespace `ns`.
fn in_netns<T, F, Fut>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .expect("namespace thread")
}

/// etcd listening on 127.0.0.1:2379 inside node a's namespace; killed on drop.
struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start(ns: &str) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let log = File::create(dir.path().join("etcd.log")).unwrap();
        let peer = "http://127.0.0.1:2380";
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "/usr/bin/etcd", "--name=default"])
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={ETCD_URL}"))
            .arg(format!("--advertise-client-urls={ETCD_URL}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/etcd");
        let etcd = Etcd { child, _dir: dir };
        let up = in_netns(ns, || async {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", 2379)).is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        });
        assert!(up, "etcd did not listen within 15 s");
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd_put(ns: &str, key: String, value: String) {
    in_netns(ns, move || async move {
        let mut c = etcd_client::Client::connect([ETCD_URL], None).await.unwrap();
        c.put(key, value, None).await.unwrap();
    })
}

fn etcd_delete(ns: &str, key: String) {
    in_netns(ns, move || async move {
        let mut c = etcd_client::Client::connect([ETCD_URL], None).await.unwrap();
        c.delete(key, None).await.unwrap();
    })
}

type Reply = mpsc::Sender<Result<(), String>>;
/// A reconcile request: the leases and where to answer.
type Msg = (Vec<Lease>, Reply);

/// A VxlanBackend on its own thread inside a node's namespace.
struct Node {
    thread: BackendThread<Msg>,
    backend_data: serde_json::Value,
}

impl Node {
    fn start(ns: &str, own: &str, public_ip: Ipv4Addr) -> Node {
        let own = SubnetKey::v4(own.parse().unwrap());
        let (thread, backend_data) = BackendThread::<Msg>::spawn(ns, move |nl, ext, mut rx, ready| async move {
            let opts = VxlanOptions::default();
            let network: Ipv4Net = "10.5.0.0/16".parse().unwrap();
            let mut backend = VxlanBackend::start(nl, ext, public_ip, opts, network)
                .await
                .expect("vxlan backend starts");
            backend.set_lease(own).await.expect("set lease");
            ready.send(Ok(backend.backend_data())).unwrap();
            while let Some((leases, reply)) = rx.recv().await {
                let _ = reply.send(backend.reconcile(&leases).await.map(|_| ()).map_err(|e| e.to_string()));
            }
        })
        .expect("backend starts");
        Node { thread, backend_data }
    }

    fn reconcile(&self, leases: &[Lease]) {
        self.thread
            .ask(|reply| (leases.to_vec(), reply))
            .expect("reconcile succeeds");
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

fn lease_key(l: &Lease) -> String {
    format!("{PREFIX}/subnets/{}", l.subnet.to_key())
}

/// A UDP round trip from the pod (10.5.1.2) to node b's cni0 address (10.5.2.1) within `within`.
fn pod_reaches_b(ns: &TwoNodes, within: Duration) -> bool {
    let pod = ns.pod.as_deref().expect("the topology has a pod");
    udp_round_trip(pod, "10.5.1.2", &ns.b, "10.5.2.1", within)
}

fn trace_on(ns: &str, opts: &TraceOptions) -> Trace {
    let opts = opts.clone();
    in_netns(ns, move || async move { run_trace(&opts).await.expect("trace runs") })
}

fn write_subnet_env(path: &Path) {
    std::fs::write(
        path,
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
}

/// Asserts that the trace's first break is `cause`, and that the text names it.
fn assert_breaks(t: &Trace, cause: Cause, needle: &str) {
    let text = render_text(t);
    assert!(!t.ok, "expected a break ({cause:?}):\n{text}");
    assert_eq!(t.causes().first(), Some(&cause), "\n{text}");
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

fn assert_clean(t: &Trace) {
    assert!(t.ok, "expected a clean trace:\n{}", render_text(t));
}

#[test]
fn trace_names_each_break_on_a_two_node_vxlan_setup() {
    require_root();
    let ns = topology();
    let etcd = Etcd::start(&ns.a);
    let a = Node::start(&ns.a, "10.5.1.0/24", Ipv4Addr::new(198, 51, 100, 1));
    let b = Node::start(&ns.b, "10.5.2.0/24", Ipv4Addr::new(198, 51, 100, 2));
    let leases = vec![
        lease("10.5.1.0/24", "198.51.100.1", &a),
        lease("10.5.2.0/24", "198.51.100.2", &b),
    ];
    etcd_put(
        &ns.a,
        format!("{PREFIX}/config"),
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#.into(),
    );
    for l in &leases {
        etcd_put(&ns.a, lease_key(l), l.attrs.to_json());
    }
    a.reconcile(&leases);
    b.reconcile(&leases);
    assert!(
        pod_reaches_b(&ns, Duration::from_secs(5)),
        "the setup works before we break it"
    );

    let dir = tempfile::tempdir().unwrap();
    let subnet_env: PathBuf = dir.path().join("subnet.env");
    write_subnet_env(&subnet_env);
    let mut opts = TraceOptions::new("10.5.1.2".parse().unwrap(), "10.5.2.1".parse().unwrap());
    opts.subnet_file = subnet_env.clone();
    opts.etcd = Some(EtcdOptions {
        endpoints: vec![ETCD_URL.into()],
        dial_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    });

    // Healthy: every hop named, with the entries the backend put there.
    let t = trace_on(&ns.a, &opts);
    assert_clean(&t);
    let text = render_text(&t);
    eprintln!("{text}");
    assert_eq!(t.backend.as_deref(), Some("vxlan"));
    // The route points at b's nexthop object (weft's id range, subnet index 2); the trace
    // shows the path the nexthop gives it.
    assert!(
        text.contains("10.5.2.0/24 nhid 1996488706 via 10.5.2.0 dev flannel.1 onlink table main"),
        "{text}"
    );
    assert!(
        text.contains(&format!("10.5.2.0 dev flannel.1 lladdr {} PERMANENT", b.vtep_mac())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} dev flannel.1 dst 198.51.100.2 self permanent",
            b.vtep_mac()
        )),
        "{text}"
    );
    assert!(text.contains("198.51.100.0/24 dev veth0 table main"), "{text}");
    assert!(
        text.contains("10.5.2.0/24 PublicIP 198.51.100.2 backend vxlan"),
        "{text}"
    );
    assert!(text.contains("vpod 1450"), "the pod's interface is checked: {text}");

    // Lost neighbour entry.
    run(&["ip", "-n", &ns.a, "neigh", "del", "10.5.2.0", "dev", "flannel.1"]);
    assert_breaks(
        &trace_on(&ns.a, &opts),
        Cause::MissingNeighbour,
        "no neighbour entry for 10.5.2.0",
    );
    a.reconcile(&leases);
    assert_clean(&trace_on(&ns.a, &opts));

    // Neighbour MAC differs from the VtepMAC in b's lease.
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
    let t = trace_on(&ns.a, &opts);
    assert_breaks(
        &t,
        Cause::VtepMacMismatch,
        &format!("advertises VtepMAC {}", b.vtep_mac()),
    );
    a.reconcile(&leases);
    assert_clean(&trace_on(&ns.a, &opts));

    // Lost FDB entry.
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
    let t = trace_on(&ns.a, &opts);
    assert_breaks(&t, Cause::MissingFdb, "no FDB entry for");
    let json: serde_json::Value = serde_json::from_str(&render_json(&t)).unwrap();
    assert_eq!(json["ok"], false);
    assert!(
        json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["cause"] == "missing_fdb"),
        "{json}"
    );
    a.reconcile(&leases);
    assert_clean(&trace_on(&ns.a, &opts));

    // ip_forward=0.
    run(&["ip", "netns", "exec", &ns.a, "sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert_breaks(
        &trace_on(&ns.a, &opts),
        Cause::IpForwardDisabled,
        "net.ipv4.ip_forward = 0",
    );
    assert!(!pod_reaches_b(&ns, Duration::from_millis(600)), "the break is real");
    run(&["ip", "netns", "exec", &ns.a, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert_clean(&trace_on(&ns.a, &opts));

    // FORWARD policy DROP without a forward rule; then with flannel's forward rules.
    let ipt = |args: &[&str]| run(&[&["ip", "netns", "exec", &ns.a, "iptables"][..], args].concat());
    ipt(&["-P", "FORWARD", "DROP"]);
    assert_breaks(&trace_on(&ns.a, &opts), Cause::ForwardDropped, ":FORWARD DROP");
    assert!(!pod_reaches_b(&ns, Duration::from_millis(600)), "the break is real");
    ipt(&["-A", "FORWARD", "-s", "10.5.0.0/16", "-j", "ACCEPT"]);
    ipt(&["-A", "FORWARD", "-d", "10.5.0.0/16", "-j", "ACCEPT"]);
    assert_clean(&trace_on(&ns.a, &opts));
    assert!(pod_reaches_b(&ns, Duration::from_secs(5)), "the rules let it through");
    ipt(&["-F", "FORWARD"]);
    ipt(&["-P", "FORWARD", "ACCEPT"]);

    // The same in nftables (read as `nft -j`): a forward base chain of the host's own table that
    // drops by policy; then with accept rules for the cluster network in it.
    let nft = |args: &[&str]| run(&[&["ip", "netns", "exec", &ns.a, "nft"][..], args].concat());
    nft(&["add", "table", "inet", "host"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "host",
        "fwd_in",
        "{ type filter hook forward priority filter + 10; policy drop; }",
    ]);
    assert_breaks(
        &trace_on(&ns.a, &opts),
        Cause::ForwardDropped,
        "policy drop (nft inet host chain fwd_in)",
    );
    assert!(!pod_reaches_b(&ns, Duration::from_millis(600)), "the break is real");
    nft(&[
        "add",
        "rule",
        "inet",
        "host",
        "fwd_in",
        "ip",
        "saddr",
        "10.5.0.0/16",
        "accept",
    ]);
    nft(&[
        "add",
        "rule",
        "inet",
        "host",
        "fwd_in",
        "ip",
        "daddr",
        "10.5.0.0/16",
        "accept",
    ]);
    let t = trace_on(&ns.a, &opts);
    assert_clean(&t);
    assert!(
        render_text(&t).contains("ip saddr 10.5.0.0/16 accept (nft inet host chain fwd_in)"),
        "{}",
        render_text(&t)
    );
    assert!(pod_reaches_b(&ns, Duration::from_secs(5)), "the rules let it through");
    nft(&["delete", "table", "inet", "host"]);

    // Missing subnet.env.
    std::fs::remove_file(&subnet_env).unwrap();
    assert_breaks(
        &trace_on(&ns.a, &opts),
        Cause::MissingSubnetEnv,
        &format!("{} does not exist", subnet_env.display()),
    );
    write_subnet_env(&subnet_env);

    // No lease for the destination's subnet.
    etcd_delete(&ns.a, lease_key(&leases[1]));
    assert_breaks(
        &trace_on(&ns.a, &opts),
        Cause::NoLease,
        "no lease in etcd covers 10.5.2.1",
    );
    etcd_put(&ns.a, lease_key(&leases[1]), leases[1].attrs.to_json());

    // The pod's interface MTU above the tunnel's.
    run(&["ip", "-n", &ns.a, "link", "set", "vpod", "mtu", "1500"]);
    assert_breaks(
        &trace_on(&ns.a, &opts),
        Cause::MtuMismatch,
        "10.5.1.2's interface (vpod on cni0) has MTU 1500 but flannel.1 carries at most 1450",
    );
    run(&["ip", "-n", &ns.a, "link", "set", "vpod", "mtu", "1450"]);

    assert_clean(&trace_on(&ns.a, &opts));
    drop(etcd);
}
