//! Benchmark of the udp backend against the kernel's VXLAN, in the same run: two namespaces
//! per backend joined by a veth, single-stream TCP pod to pod with iperf3 (median of runs),
//! ping latency, and the CPU the udp workers use per Gbit/s. Prints a table with the ratio.
//!
//! Root only, and ignored by default (it takes a minute):
//! `cargo test --release -p weft-datapath --test udp_bench -- --ignored --nocapture`
//! `WEFT_BENCH_SECS` (default 10) and `WEFT_BENCH_RUNS` (default 3) shorten it.

mod two_nodes;
mod udp_common;

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use udp_common::{require_root, udp_lease, vxlan_lease, Kind, Node, Topology};
use weft_datapath::udp::UdpTuning;

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 run from `src` in `ns_a` to `dst` in `ns_b`: received bits per second.
fn iperf(ns_a: &str, src: &str, ns_b: &str, dst: &str, secs: u32) -> f64 {
    let _server = Server(
        Command::new("ip")
            .args(["netns", "exec", ns_b, "iperf3", "-s", "-1", "-B", dst])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start iperf3 server"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new("ip")
            .args(["netns", "exec", ns_a, "iperf3", "-c", dst, "-B", src, "-J"])
            .args(["-t", &secs.to_string()])
            .output()
            .expect("run iperf3 client");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps;
        }
        assert!(
            Instant::now() < deadline,
            "iperf3 {src} -> {dst} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Average ping round trip in ms.
fn ping_rtt(ns: &str, src: &str, dst: &str) -> f64 {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", "50", "-i", "0.01", "-I", src, dst,
        ])
        .output()
        .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("rtt"))
        .unwrap_or_else(|| panic!("{text}"));
    line.split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// CPU seconds (user + system) used by this process so far: the udp workers of both nodes.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Row {
    name: String,
    gbps: f64,
    rtt_ms: f64,
    cores_per_gbps: Option<f64>,
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn udp_vs_vxlan_single_stream() {
    require_root();
    let secs = env_or("WEFT_BENCH_SECS", 10);
    let runs = env_or("WEFT_BENCH_RUNS", 3);
    let (ip_a, ip_b) = (Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(198, 51, 100, 2));

    let tv = Topology::new("wtu", 5);
    let va = Node::start(&tv.a, "10.5.1.0/24", ip_a, Kind::Vxlan);
    let vb = Node::start(&tv.b, "10.5.2.0/24", ip_b, Kind::Vxlan);
    let vleases = vec![
        vxlan_lease("10.5.1.0/24", "198.51.100.1", &va),
        vxlan_lease("10.5.2.0/24", "198.51.100.2", &vb),
    ];
    va.reconcile(&vleases);
    vb.reconcile(&vleases);

    let workers = UdpTuning::default().workers;
    let uleases = vec![
        udp_lease("10.5.1.0/24", "198.51.100.1"),
        udp_lease("10.5.2.0/24", "198.51.100.2"),
    ];
    let tu = Topology::new("wtu", 5);
    let ua = Node::start(
        &tu.a,
        "10.5.1.0/24",
        ip_a,
        Kind::Udp(UdpTuning {
            workers,
            offload: true,
            cpu_affinity: true,
        }),
    );
    let ub = Node::start(
        &tu.b,
        "10.5.2.0/24",
        ip_b,
        Kind::Udp(UdpTuning {
            workers,
            offload: true,
            cpu_affinity: true,
        }),
    );
    ua.reconcile(&uleases);
    ub.reconcile(&uleases);
    let tp = Topology::new("wtu", 5);
    let pa = Node::start(
        &tp.a,
        "10.5.1.0/24",
        ip_a,
        Kind::Udp(UdpTuning {
            workers,
            offload: false,
            cpu_affinity: true,
        }),
    );
    let pb = Node::start(
        &tp.b,
        "10.5.2.0/24",
        ip_b,
        Kind::Udp(UdpTuning {
            workers,
            offload: false,
            cpu_affinity: true,
        }),
    );
    pa.reconcile(&uleases);
    pb.reconcile(&uleases);

    let mut host = Vec::new();
    let mut vxlan = Vec::new();
    let mut udp = Vec::new();
    let mut plain = Vec::new();
    let mut udp_cpu = 0.0;
    let mut udp_secs = 0.0;
    for _ in 0..runs {
        host.push(iperf(&tv.a, "198.51.100.1", &tv.b, "198.51.100.2", secs));
        vxlan.push(iperf(&tv.a, "10.5.1.1", &tv.b, "10.5.2.1", secs));
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        udp.push(iperf(&tu.a, "10.5.1.1", &tu.b, "10.5.2.1", secs));
        udp_cpu += cpu_seconds() - cpu0;
        udp_secs += t0.elapsed().as_secs_f64();
        plain.push(iperf(&tp.a, "10.5.1.1", &tp.b, "10.5.2.1", secs));
    }
    let udp_bits: f64 = udp.iter().map(|b| b * f64::from(secs)).sum();
    let rows = [
        Row {
            name: "host to host (veth)".into(),
            gbps: median(host) / 1e9,
            rtt_ms: ping_rtt(&tv.a, "198.51.100.1", "198.51.100.2"),
            cores_per_gbps: None,
        },
        Row {
            name: "vxlan (kernel)".into(),
            gbps: median(vxlan) / 1e9,
            rtt_ms: ping_rtt(&tv.a, "10.5.1.1", "10.5.2.1"),
            cores_per_gbps: None,
        },
        Row {
            name: format!("udp weft, offloads, {workers}w"),
            gbps: median(udp) / 1e9,
            rtt_ms: ping_rtt(&tu.a, "10.5.1.1", "10.5.2.1"),
            // Cores busy per Gbit/s moved, both nodes' workers together.
            cores_per_gbps: Some((udp_cpu / udp_secs) / (udp_bits / udp_secs / 1e9)),
        },
        Row {
            name: format!("udp weft, no offload, {workers}w"),
            gbps: median(plain) / 1e9,
            rtt_ms: ping_rtt(&tp.a, "10.5.1.1", "10.5.2.1"),
            cores_per_gbps: None,
        },
    ];
    let vx = rows[1].gbps;
    let vx_rtt = rows[1].rtt_ms;
    println!();
    println!("single-stream TCP pod to pod, iperf3 {secs} s, median of {runs}");
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>10} {:>14}",
        "path", "Gbit/s", "/ vxlan", "rtt ms", "rtt/vxlan", "cores/Gbit/s"
    );
    for r in &rows {
        println!(
            "{:<30} {:>9.2} {:>9.2} {:>9.3} {:>10.2} {:>14}",
            r.name,
            r.gbps,
            r.gbps / vx,
            r.rtt_ms,
            r.rtt_ms / vx_rtt,
            r.cores_per_gbps
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    let c = ua.counters();
    println!("udp node a counters: {c:?}");
    drop((ua, ub, pa, pb, va, vb));
}
