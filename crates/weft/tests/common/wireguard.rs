//! Shared pieces of the wireguard cluster tests: commands with a host's own /run/flannel and
//! /var/run/wireguard, `weft trace` from a host, and a capture of the underlay that tells
//! WireGuard messages from anything else.

use std::process::{Child, Command, Stdio};

use weft::lab::Lab;

/// An ICMP payload pattern to look for on the underlay (it must never be seen in clear).
pub const MARKER: &str = "c0ffee15deadbeef";

/// Runs `cmd` on host `node` with the host's own /run/flannel and /var/run/wireguard; its
/// stdout, after asserting it succeeded.
pub fn run(lab: &Lab, node: usize, cmd: &[&str]) -> String {
    let out = lab.exec_in_host_run(node, cmd).expect("exec in host");
    assert!(
        out.status.success(),
        "{cmd:?} on h{node}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `weft trace <src> <dst>` run on host 1 against the lab's etcd; its report.
pub fn trace_from_h1(lab: &Lab, src: &str, dst: &str) -> String {
    let dir = lab.dir().display().to_string();
    let trace = [
        env!("CARGO_BIN_EXE_weft").to_string(),
        "trace".into(),
        src.to_string(),
        dst.to_string(),
        format!("--subnet-file={dir}/h1/subnet.env"),
        "--etcd-endpoints=https://198.51.100.254:2379".into(),
        format!("--etcd-cafile={dir}/ca.pem"),
        format!("--etcd-certfile={dir}/client.pem"),
        format!("--etcd-keyfile={dir}/client-key.pem"),
    ];
    let trace: Vec<&str> = trace.iter().map(String::as_str).collect();
    run(lab, 1, &trace)
}

/// A capture of the underlay (every frame on the switch's ports, both families) in the switch
/// namespace: after `finish`, the IP packets that were not WireGuard messages on 51820/51821
/// (etcd's TLS on 2379 is the control plane; IGMP, and ICMPv6's neighbour discovery and MLD, the
/// underlay's own: all left out), the WireGuard messages per family, and whether the marker
/// appeared.
pub struct Capture(Child, std::io::BufReader<std::process::ChildStdout>);

const SNIFFER: &str = r#"
import socket, struct, sys, time
marker, seconds = bytes.fromhex(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.settimeout(0.2)  # every port of the switch (each frame seen on the way in and out)
print("ready", flush=True)
wg4 = wg6 = other = seen = 0
end = time.time() + seconds
while time.time() < end:
    try: f = s.recv(65535)
    except socket.timeout: continue
    if marker in f: seen += 1
    kind = f[12:14]
    if kind == b'\x08\x00':
        ip = f[14:]; proto = ip[9]; l4 = ip[(ip[0] & 15) * 4:]; v6 = False
    elif kind == b'\x86\xdd':
        ip = f[14:]; proto = ip[6]; l4 = ip[40:]; v6 = True
    else: continue
    if proto in (0, 2, 58): continue  # IGMP; ICMPv6 (and MLD behind its hop-by-hop header)
    if proto == 6 and 2379 in struct.unpack('!HH', l4[:4]): continue
    if proto == 17:
        ports = struct.unpack('!HH', l4[:4]); p = l4[8:]
        if (51820 in ports or 51821 in ports) and len(p) >= 4 and p[0] in (1, 2, 3, 4) and p[1:4] == b'\0\0\0':
            if v6: wg6 += 1
            else: wg4 += 1
            continue
    other += 1
    print("other: v6 %s proto %d" % (v6, proto))
print("wg4 %d wg6 %d other %d marker %d" % (wg4, wg6, other, seen))
"#;

impl Capture {
    pub fn start(lab: &Lab, seconds: u32) -> Capture {
        let mut child = Command::new("ip")
            .args(["netns", "exec", lab.switch_ns(), "python3", "-c", SNIFFER, MARKER])
            .arg(seconds.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the capture starts");
        Capture(child, out)
    }

    /// The summary numbers: (WireGuard over IPv4, WireGuard over IPv6, other, marker seen), and
    /// the whole text.
    pub fn finish(mut self) -> ([u64; 4], String) {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut self.1, &mut text).unwrap();
        self.0.wait().unwrap();
        let summary = text.lines().last().unwrap_or_default();
        eprintln!("underlay capture: {summary}");
        let numbers: Vec<u64> = summary
            .split_whitespace()
            .skip(1)
            .step_by(2)
            .map(|n| n.parse().unwrap())
            .collect();
        (
            numbers.try_into().unwrap_or_else(|_| panic!("capture summary: {text}")),
            text,
        )
    }
}
