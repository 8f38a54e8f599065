//! Shared pieces of the cluster tests: a lab running the real weftd, polling, reading logs.
#![allow(dead_code)]

pub mod wireguard;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft::lab::{in_netns, Lab, LabSpec, WeftdBinary, INTERNET_IP};
use weft_core::BackendKind;

/// The real weftd from this workspace's target directory. `make test` builds it first; a test
/// without it must fail, not pass vacuously.
pub fn weftd() -> PathBuf {
    weft::lab::find_weftd().expect(
        "weftd binary not found next to the test binary: run `cargo build --workspace --bins` first (make test does)",
    )
}

/// A lab spec running the real weftd with a short reconcile interval.
pub fn spec(name: &str, nodes: usize, backend: BackendKind) -> LabSpec {
    let mut spec = LabSpec::new(name, nodes, backend);
    spec.weftd = WeftdBinary::At(weftd());
    spec.weftd_args = vec!["--reconcile-interval=2".into()];
    spec
}

/// A lab name unique to this test process.
pub fn lab_name(base: &str) -> String {
    format!("{base}{}", std::process::id() % 10000)
}

pub fn up(spec: LabSpec) -> Lab {
    let _ = Lab::down_by_name(&spec.name);
    Lab::up(spec).expect("lab up")
}

/// Polls `cond` every 100 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn host_out(lab: &Lab, node: usize, cmd: &[&str]) -> String {
    let out = lab.exec_in_host(node, cmd).expect("exec in host");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn weftd_log(lab: &Lab, node: usize) -> String {
    std::fs::read_to_string(lab.dir().join(format!("h{node}/weftd.log"))).unwrap_or_default()
}

pub fn subnet_file(lab: &Lab, node: usize) -> PathBuf {
    lab.dir().join(format!("h{node}/subnet.env"))
}

pub fn vtep_mac(lab: &Lab, node: usize) -> String {
    mac_of(lab, node, "flannel.1")
}

/// The network address of node's subnet (the VXLAN next hop other nodes use for it).
pub fn subnet_ip(lab: &Lab, node: usize) -> Ipv4Addr {
    lab.subnet_env(node).expect("subnet.env").subnet.unwrap().network()
}

pub fn all_pods_reach_each_other(lab: &Lab) -> bool {
    let pods: Vec<(usize, Ipv4Addr)> = lab
        .pods()
        .iter()
        .map(|p| (p.node, p.ip.expect("an IPv4 lab").addr()))
        .collect();
    pods.iter().all(|(from, _)| {
        pods.iter()
            .filter(|(to, _)| to != from)
            .all(|(_, ip)| lab.wait_ping(*from, *ip, Duration::from_secs(5)))
    })
}

/// Connects from the pod namespace `pod_ns` to 203.0.113.1 (outside the cluster, in the switch namespace) and
/// returns the source address the server saw.
pub fn egress_source(lab: &Lab, pod_ns: &str, port: u16) -> Ipv4Addr {
    match egress_source_to(lab, pod_ns, SocketAddr::from((INTERNET_IP, port))) {
        IpAddr::V4(ip) => ip,
        other => panic!("unexpected peer {other}"),
    }
}

/// Connects from the pod namespace `pod_ns` to `to`, an address of the switch namespace (outside
/// the cluster), and returns the source address the server saw.
pub fn egress_source_to(lab: &Lab, pod_ns: &str, to: SocketAddr) -> IpAddr {
    let switch = lab.switch_ns().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        in_netns(&switch, move || {
            let listener = TcpListener::bind(to).expect("bind in the switch namespace");
            tx.send(()).unwrap();
            let (mut conn, peer) = listener.accept().expect("accept");
            let mut buf = [0u8; 16];
            let _ = conn.read(&mut buf);
            Ok(peer)
        })
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server listening");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            pod_ns,
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{}/{} && echo hi >&3", to.ip(), to.port()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pod connects out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.join().unwrap().expect("server").ip()
}

/// Sends `len` bytes (a pattern no offset repeats within 251 bytes) over one TCP connection
/// from the pod of host `from` to `to` (a pod address) and returns the bytes that arrived:
/// bulk TCP, so a datapath with offloads carries it as super-segments.
pub fn tcp_transfer(lab: &Lab, from: usize, to_node: usize, to: SocketAddr, len: usize) -> Vec<u8> {
    let pattern = |i: usize| (i % 251) as u8;
    let server_ns = lab.pod_ns(to_node).unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        in_netns(&server_ns, move || {
            let listener = TcpListener::bind(to).expect("bind in the pod namespace");
            tx.send(()).unwrap();
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut got = Vec::with_capacity(len);
            let _ = conn.read_to_end(&mut got);
            Ok(got)
        })
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server listening");
    let client_ns = lab.pod_ns(from).unwrap().to_string();
    in_netns(&client_ns, move || {
        let mut conn = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
        conn.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let data: Vec<u8> = (0..len).map(pattern).collect();
        std::io::Write::write_all(&mut conn, &data).expect("send");
        Ok(())
    })
    .unwrap();
    server.join().unwrap().expect("server")
}

/// GET `path` from weftd's HTTP port (8471, as the tests start it) on host `node`; returns the
/// whole response.
pub fn http_get(lab: &Lab, node: usize, path: &str) -> String {
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

/// The value of the first sample of `name` (with its labels, if given) on a /metrics page.
pub fn metric(page: &str, name: &str) -> Option<u64> {
    page.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Every pod reaches every other pod at its IPv6 address (retrying a few seconds each).
pub fn all_pods_reach_each_other_v6(lab: &Lab) -> bool {
    let pods: Vec<(usize, IpAddr)> = lab
        .pods()
        .iter()
        .map(|p| (p.node, IpAddr::from(p.ip6.expect("a dual-stack pod").addr())))
        .collect();
    pods.iter().all(|(from, _)| {
        pods.iter()
            .filter(|(to, _)| to != from)
            .all(|(_, ip)| lab.wait_ping(*from, *ip, Duration::from_secs(5)))
    })
}

pub fn mac_of(lab: &Lab, node: usize, dev: &str) -> String {
    host_out(lab, node, &["cat", &format!("/sys/class/net/{dev}/address")])
        .trim()
        .to_string()
}

/// `ip route` on a host, without the `nhid <id>` of routes through a nexthop object: what is
/// asserted is the path (`via`, `dev`), which iproute2 prints after it.
pub fn routes(lab: &Lab, node: usize) -> String {
    without_nhid(&host_out(lab, node, &["ip", "route"]))
}

/// [`routes`] for IPv6 (`ip -6 route`).
pub fn v6_routes(lab: &Lab, node: usize) -> String {
    without_nhid(&host_out(lab, node, &["ip", "-6", "route"]))
}

fn without_nhid(listing: &str) -> String {
    listing
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

/// Restarts weftd on `node` and waits until it has written subnet.env again; its lease key and
/// subnet.env are what they were.
pub fn restart_keeps_the_lease(lab: &mut Lab, node: usize) {
    let (key_before, env_before) = (
        lease_key(lab, node),
        std::fs::read_to_string(subnet_file(lab, node)).unwrap(),
    );
    let writes = |lab: &Lab| weftd_log(lab, node).matches("wrote subnet file").count();
    let written = writes(lab);
    lab.restart_node(node).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || writes(lab) > written),
        "{}",
        weftd_log(lab, node)
    );
    assert_eq!(lease_key(lab, node), key_before);
    assert_eq!(std::fs::read_to_string(subnet_file(lab, node)).unwrap(), env_before);
}

/// Host `node`'s lease key (both subnets) from its subnet.env.
pub fn lease_key(lab: &Lab, node: usize) -> String {
    let env = lab.subnet_env(node).unwrap();
    weft_core::SubnetKey {
        ipv4: env.subnet.map(|n| n.trunc()),
        ipv6: env.ipv6_subnet.map(|n| n.trunc()),
    }
    .to_key()
}

/// The lab's etcd flags for `weft` commands run on a lab host (endpoint and client certificate).
pub fn etcd_flags(lab: &Lab) -> Vec<String> {
    let dir = lab.dir().display().to_string();
    vec![
        "--etcd-endpoints=https://198.51.100.254:2379".into(),
        format!("--etcd-cafile={dir}/ca.pem"),
        format!("--etcd-certfile={dir}/client.pem"),
        format!("--etcd-keyfile={dir}/client-key.pem"),
    ]
}

/// What one `weft trace --json` run on host 1 said.
pub struct Traced {
    pub ok: bool,
    /// The causes of the broken steps.
    pub causes: Vec<String>,
    pub json: serde_json::Value,
    pub text: String,
}

impl Traced {
    /// The step `check` of the walk (panics naming the whole output when absent).
    pub fn step(&self, check: &str) -> &serde_json::Value {
        self.json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["check"] == check)
            .unwrap_or_else(|| panic!("no {check} step: {}", self.text))
    }

    pub fn entry(&self, check: &str) -> String {
        self.step(check)["entry"].as_str().unwrap_or_default().to_string()
    }

    pub fn message(&self, check: &str) -> String {
        self.step(check)["message"].as_str().unwrap_or_default().to_string()
    }
}

/// Runs `weft trace --json src dst --subnet-file=<subnet_file>` on host 1.
pub fn run_trace(lab: &Lab, src: IpAddr, dst: IpAddr, subnet_file: &str) -> Traced {
    let mut args = vec![
        env!("CARGO_BIN_EXE_weft").to_string(),
        "trace".into(),
        "--json".into(),
        src.to_string(),
        dst.to_string(),
        format!("--subnet-file={subnet_file}"),
    ];
    args.extend(etcd_flags(lab));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.exec_in_host(1, &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let causes = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["cause"].as_str().map(str::to_string))
        .collect();
    Traced {
        ok: out.status.success(),
        causes,
        json,
        text,
    }
}

/// The value of host `node`'s lease in etcd, as stored.
pub fn lease_value(lab: &Lab, node: usize) -> String {
    let key = format!("/coreos.com/network/subnets/{}", lease_key(lab, node));
    let value = lab
        .etcd_get(&key)
        .unwrap()
        .unwrap_or_else(|| panic!("no lease at {key}"));
    String::from_utf8(value).unwrap()
}
