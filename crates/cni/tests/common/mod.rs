//! Test fixtures: network namespaces removed on drop, a node namespace with a fake subnet.env
//! written by the test (no weftd), and a runner that drives a CNI plugin the way a runtime does
//! (environment + stdin, from inside the node namespace).
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const WEFT_CNI: &str = env!("CARGO_BIN_EXE_weft-cni");
pub const CNI_PATH: &str = "/usr/lib/cni";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique name with the `wtc-` prefix (at most 15 characters, so it also fits an interface).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("wtc-{tag}{}-{n}", std::process::id() % 10000)
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A named network namespace (`/var/run/netns/<name>`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn exec_ok(&self, args: &[&str]) -> bool {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh_ok(&full)
    }

    /// The namespace's links as `ip -j link` JSON.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_str(&sh(&["ip", "-j", "-n", &self.name, "-d", "link", "show"])).unwrap()
    }

    pub fn veth_names(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|l| l["linkinfo"]["info_kind"] == "veth")
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn ipv4_of(&self, dev: &str) -> Vec<String> {
        let v: Value =
            serde_json::from_str(&sh(&["ip", "-j", "-n", &self.name, "-4", "addr", "show", "dev", dev])).unwrap();
        v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The global IPv6 addresses of `dev` (link-local left out), each with `!` appended when
    /// the kernel holds it tentative or DAD failed (not usable yet).
    pub fn ipv6_of(&self, dev: &str) -> Vec<String> {
        let v: Value =
            serde_json::from_str(&sh(&["ip", "-j", "-n", &self.name, "-6", "addr", "show", "dev", dev])).unwrap();
        v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["scope"] == "global")
                    .map(|i| {
                        let unusable = i["tentative"] == true || i["dadfailed"] == true;
                        let mark = if unusable { "!" } else { "" };
                        format!("{}/{}{mark}", i["local"].as_str().unwrap(), i["prefixlen"])
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reads a sysctl of the namespace (e.g. `net.ipv6.conf.all.forwarding`).
    pub fn sysctl(&self, key: &str) -> String {
        self.exec(&["sysctl", "-n", key]).trim().to_string()
    }

    /// Deletes the namespace now (the drop then does nothing).
    pub fn delete(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
            self.name.clear();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> String {
        self.0.join(p).to_string_lossy().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node: its namespace (where the plugin runs, like a host), a data dir and subnet.env.
pub struct Node {
    pub ns: Netns,
    pub dir: TempDir,
    pub network: String,
}

pub const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

impl Node {
    pub fn new(tag: &str) -> Node {
        Node::with_subnet_env(tag, SUBNET_ENV)
    }

    pub fn with_subnet_env(tag: &str, subnet_env: &str) -> Node {
        let ns = Netns::new(tag);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        let dir = TempDir::new(tag);
        std::fs::write(dir.join("subnet.env"), subnet_env).unwrap();
        Node {
            network: unique("net"),
            ns,
            dir,
        }
    }

    pub fn subnet_file(&self) -> String {
        self.dir.join("subnet.env")
    }

    /// A built-in mode config for `version`.
    pub fn builtin_conf(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "name": self.network,
            "type": "weft-cni",
            "subnetFile": self.subnet_file(),
            "ipamDataDir": self.dir.join("ipam"),
            "hairpinMode": true,
            "dns": {"nameservers": ["10.5.0.10"]},
        })
    }

    /// The reserved addresses (file names) of the built-in store, both families.
    pub fn address_files(&self) -> Vec<String> {
        let dir = self.dir.path().join("ipam").join(&self.network);
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `plugin` for `command` inside the node namespace.
    pub fn cni(&self, plugin: &str, command: &str, container: &str, netns: &str, conf: &Value) -> Run {
        self.cni_raw(plugin, command, container, netns, "eth0", conf.to_string().as_bytes())
    }

    pub fn cni_raw(
        &self,
        plugin: &str,
        command: &str,
        container: &str,
        netns: &str,
        ifname: &str,
        stdin: &[u8],
    ) -> Run {
        let vars = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", CNI_PATH),
        ];
        run_in(&self.ns.path(), plugin, &vars, stdin)
    }
}

/// One plugin run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "plugin failed: {} {}", self.stdout, self.stderr);
        self
    }
    /// Asserts a CNI error with `code` and returns its message.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(self.code, 0, "expected failure, got {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "{}", self.stdout);
        assert!(v["cniVersion"].is_string(), "{}", self.stdout);
        v["msg"].as_str().unwrap().to_string()
    }
}

/// Runs a plugin binary with `vars` (and nothing else from our environment but PATH), `stdin`,
/// inside the namespace at `ns_path`.
pub fn run_in(ns_path: &str, plugin: &str, vars: &[(&str, &str)], stdin: &[u8]) -> Run {
    use std::io::Write;
    let ns = File::open(ns_path).unwrap();
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setns is async-signal-safe; the fd stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn plugin");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    drop(ns);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        took,
    }
}

/// `conf` with `prevResult` set.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}
