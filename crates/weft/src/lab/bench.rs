//! `weft lab bench`: single-stream TCP throughput (iperf3) and ping RTT, pod-to-pod across two
//! hosts against host-to-host on the underlay, medians of several runs; over IPv6 in a
//! dual-stack lab (`--ipv6`: the pods' IPv6 addresses against the IPv6 underlay).

use std::fmt;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::{LabError, Result};
use super::iproute::command_line;
use super::{process, Lab};

const IPERF_PORT: &str = "5201";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Length of one iperf3 run.
    pub seconds: u64,
    pub runs: usize,
    /// Pings per RTT measurement, 10 ms apart (sparse: each finds the path idle) and 1 ms
    /// apart (dense: back-to-back requests), five times as many of the dense.
    pub pings: usize,
    /// Client node and server node.
    pub from: usize,
    pub to: usize,
    /// Measure over IPv6 (a dual-stack lab): pod IPv6 addresses, IPv6 underlay.
    pub ipv6: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            seconds: 10,
            runs: 3,
            pings: 40,
            from: 1,
            to: 2,
            ipv6: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub lab: String,
    pub backend: String,
    /// Measured over IPv6.
    #[serde(default)]
    pub ipv6: bool,
    pub seconds: u64,
    pub runs: usize,
    /// Median throughput, bits per second (iperf3's end.sum_received).
    pub host_bps: f64,
    pub pod_bps: f64,
    pub host_bps_runs: Vec<f64>,
    pub pod_bps_runs: Vec<f64>,
    /// Median ping RTT in milliseconds, pings 10 ms apart; None when no reply came back.
    pub host_rtt_ms: Option<f64>,
    pub pod_rtt_ms: Option<f64>,
    /// The same with pings 1 ms apart.
    pub host_rtt_dense_ms: Option<f64>,
    pub pod_rtt_dense_ms: Option<f64>,
    /// pod / host.
    pub throughput_ratio: f64,
    pub rtt_ratio: Option<f64>,
    /// CPU the weftds of both nodes used during the pod-to-pod runs, in cores (CPU seconds per
    /// second); near zero for kernel datapaths, the cost of the udp backend.
    pub weftd_cores: Option<f64>,
}

/// CPU seconds (user + system) used so far by the weftds of `nodes`.
fn weftd_cpu_seconds(lab: &Lab, nodes: &[usize]) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for &node in nodes {
        // A host running wireguard-go instead of weftd (`weft lab wireguard-go`): its CPU.
        let pid = lab.weftd_pid(node).or_else(|| lab.wireguard_go_pid(node))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        total += (utime + stime) / ticks;
    }
    Some(total)
}

pub fn run(lab: &Lab, options: &BenchOptions) -> Result<BenchReport> {
    if options.runs == 0 || options.seconds == 0 {
        return Err(LabError::BadSpec(
            "bench needs --runs and --seconds of at least 1".into(),
        ));
    }
    let (from, to) = (options.from, options.to);
    if from == to {
        return Err(LabError::BadSpec("bench needs two different nodes".into()));
    }
    let (host_ip, pod_ip): (IpAddr, IpAddr) = if options.ipv6 {
        if !lab.state().dual_stack {
            return Err(LabError::BadSpec(
                "bench --ipv6 needs a dual-stack lab (weft lab up --dual-stack)".into(),
            ));
        }
        (super::topology::underlay_ipv6(to).into(), lab.pod_ip6(to)?.into())
    } else {
        (lab.underlay_ip(to)?.into(), lab.pod_ip(to)?.into())
    };
    let host_pair = (lab.host_ns(from)?.to_string(), lab.host_ns(to)?.to_string(), host_ip);
    let pod_pair = (lab.pod_ns(from)?.to_string(), lab.pod_ns(to)?.to_string(), pod_ip);

    // Runs alternate host, pod, host, pod, ... so that a slow spell of this (shared, noisy)
    // machine falls on both paths alike, and the ratio compares like with like.
    let host_client = Iperf::start(&host_pair.0, &host_pair.1, host_pair.2)?;
    let pod_client = Iperf::start(&pod_pair.0, &pod_pair.1, pod_pair.2)?;
    let (mut host_bps_runs, mut pod_bps_runs) = (Vec::new(), Vec::new());
    let (mut weftd_cpu, mut pod_time) = (Some(0.0), Duration::ZERO);
    let (mut host_rtts, mut pod_rtts) = (Vec::new(), Vec::new());
    let (mut host_dense, mut pod_dense) = (Vec::new(), Vec::new());
    for _ in 0..options.runs {
        host_bps_runs.push(host_client.run(options.seconds)?);
        let cpu_before = weftd_cpu_seconds(lab, &[from, to]);
        let started = Instant::now();
        pod_bps_runs.push(pod_client.run(options.seconds)?);
        pod_time += started.elapsed();
        weftd_cpu = match (weftd_cpu, cpu_before, weftd_cpu_seconds(lab, &[from, to])) {
            (Some(total), Some(a), Some(b)) => Some(total + (b - a)),
            _ => None,
        };
        host_rtts.extend(rtts(&host_pair.0, host_pair.2, options.pings, SPARSE)?);
        pod_rtts.extend(rtts(&pod_pair.0, pod_pair.2, options.pings, SPARSE)?);
        host_dense.extend(rtts(&host_pair.0, host_pair.2, 5 * options.pings, DENSE)?);
        pod_dense.extend(rtts(&pod_pair.0, pod_pair.2, 5 * options.pings, DENSE)?);
    }
    drop((host_client, pod_client));
    let weftd_cores = weftd_cpu.map(|cpu| cpu / pod_time.as_secs_f64());
    let median_of = |v: &[f64]| (!v.is_empty()).then(|| median(v));
    let (host_rtt_ms, pod_rtt_ms) = (median_of(&host_rtts), median_of(&pod_rtts));
    let (host_bps, pod_bps) = (median(&host_bps_runs), median(&pod_bps_runs));
    Ok(BenchReport {
        lab: lab.name().to_string(),
        backend: lab.state().backend.clone(),
        ipv6: options.ipv6,
        seconds: options.seconds,
        runs: options.runs,
        host_bps,
        pod_bps,
        host_bps_runs,
        pod_bps_runs,
        host_rtt_ms,
        pod_rtt_ms,
        host_rtt_dense_ms: median_of(&host_dense),
        pod_rtt_dense_ms: median_of(&pod_dense),
        throughput_ratio: if host_bps > 0.0 { pod_bps / host_bps } else { 0.0 },
        rtt_ratio: match (pod_rtt_ms, host_rtt_ms) {
            (Some(p), Some(h)) if h > 0.0 => Some(p / h),
            _ => None,
        },
        weftd_cores,
    })
}

/// An iperf3 server in one namespace and the client command that measures against it from
/// another. The server is killed when this is dropped.
struct Iperf {
    server: Child,
    client_ns: String,
    server_ns: String,
    server_ip: String,
}

impl Iperf {
    fn start(client_ns: &str, server_ns: &str, server_ip: IpAddr) -> Result<Self> {
        if process::which("iperf3").is_none() {
            return Err(LabError::ProgramNotFound {
                program: "iperf3",
                hint: "install it with `apt-get install iperf3`",
            });
        }
        let args = ["netns", "exec", server_ns, "iperf3", "-s", "-p", IPERF_PORT];
        let server = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: command_line("ip", &args),
                source,
            })?;
        Ok(Iperf {
            server,
            client_ns: client_ns.to_string(),
            server_ns: server_ns.to_string(),
            server_ip: server_ip.to_string(),
        })
    }

    /// One single-stream run of `seconds`: the receiver's bits per second.
    fn run(&self, seconds: u64) -> Result<f64> {
        let (client_ns, ip) = (self.client_ns.as_str(), self.server_ip.as_str());
        let secs = seconds.to_string();
        let args = [
            "netns", "exec", client_ns, "iperf3", "-c", ip, "-p", IPERF_PORT, "-t", &secs, "-J",
        ];
        // The server may still be starting: retry a refused connection for a few seconds.
        let deadline = Instant::now() + Duration::from_secs(5);
        let report = loop {
            let out = run_bounded("ip", &args, Duration::from_secs(seconds + 15))?;
            let parsed: serde_json::Value = serde_json::from_slice(&out).map_err(|e| LabError::Parse {
                what: format!("iperf3 -J output from {client_ns}"),
                detail: e.to_string(),
            })?;
            match parsed.get("error").and_then(|e| e.as_str()) {
                Some(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                Some(error) => {
                    return Err(LabError::Other(format!(
                        "iperf3 from {client_ns} to {ip} (server in {}): {error}",
                        self.server_ns
                    )));
                }
                None => break parsed,
            }
        };
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| LabError::Parse {
                what: format!("iperf3 -J output from {client_ns}"),
                detail: "no end.sum_received.bits_per_second".into(),
            })
    }
}

impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Ping intervals (seconds, as ping takes them): sparse and dense.
const SPARSE: &str = "0.01";
const DENSE: &str = "0.001";

/// The RTTs of `count` pings `interval` seconds apart, bounded by a deadline (lost ones left out).
fn rtts(ns: &str, to: IpAddr, count: usize, interval: &str) -> Result<Vec<f64>> {
    let to = to.to_string();
    let count_arg = count.max(1).to_string();
    let args = [
        "netns", "exec", ns, "ping", "-n", "-c", &count_arg, "-i", interval, "-w", "10", &to,
    ];
    let out = run_bounded("ip", &args, Duration::from_secs(15))?;
    let text = String::from_utf8_lossy(&out);
    let times: Vec<f64> = text
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("time="))
        .filter_map(|t| t.parse().ok())
        .collect();
    Ok(times)
}

/// Runs a command, killing it if it outlives `limit`; returns its stdout.
fn run_bounded(program: &str, args: &[&str], limit: Duration) -> Result<Vec<u8>> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| LabError::Spawn {
            command: command_line(program, args),
            source,
        })?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(output)) => Ok(output.stdout),
        Ok(Err(source)) => Err(LabError::Spawn {
            command: command_line(program, args),
            source,
        }),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(LabError::Timeout {
                what: command_line(program, args),
                seconds: limit.as_secs(),
                detail: String::new(),
            })
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn gbits(bps: f64) -> String {
    format!("{:.2} Gbit/s", bps / 1e9)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lab {} ({}{}): single TCP stream, median of {} x {} s; ping RTT median, pings 10 ms and 1 ms apart",
            self.lab,
            self.backend,
            if self.ipv6 { ", IPv6" } else { "" },
            self.runs,
            self.seconds
        )?;
        writeln!(
            f,
            "{:<14} {:>14} {:>8} {:>12} {:>8} {:>12}",
            "path", "throughput", "ratio", "rtt", "ratio", "rtt 1 ms"
        )?;
        let rtt = |r: Option<f64>| r.map(|ms| format!("{ms:.3} ms")).unwrap_or_else(|| "no reply".into());
        writeln!(
            f,
            "{:<14} {:>14} {:>8.2} {:>12} {:>8.2} {:>12}",
            "host-to-host",
            gbits(self.host_bps),
            1.0,
            rtt(self.host_rtt_ms),
            1.0,
            rtt(self.host_rtt_dense_ms)
        )?;
        let rtt_ratio = self.rtt_ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
        writeln!(
            f,
            "{:<14} {:>14} {:>8.2} {:>12} {:>8} {:>12}",
            "pod-to-pod",
            gbits(self.pod_bps),
            self.throughput_ratio,
            rtt(self.pod_rtt_ms),
            rtt_ratio,
            rtt(self.pod_rtt_dense_ms)
        )?;
        if let Some(cores) = self.weftd_cores {
            let per_gbit = if self.pod_bps > 0.0 {
                cores / (self.pod_bps / 1e9)
            } else {
                0.0
            };
            writeln!(
                f,
                "weftd CPU during pod-to-pod: {cores:.2} cores, {per_gbit:.3} cores per Gbit/s"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
