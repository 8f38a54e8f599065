//! `weft lab up --docker`: the seed's third picture, Docker's default network, on weft hosts.
//!
//! Each host runs Debian's dockerd with `--bip/--ip-masq/--mtu` from `weft docker-opts` (so
//! `docker0` holds FLANNEL_SUBNET's first address and FLANNEL_MTU) and one container `c<i>`,
//! from an image imported from busybox-static (no registry), serving HTTP on port 80, published
//! on the host's port 8080. The container's network namespace is attached as the host's pod
//! namespace (`wl-<lab>-h<i>-p1`), so pings, `weft lab exec --pod`, the reachability matrix and
//! the bench treat it as the lab's pod.
//!
//! Docker keeps `--iptables=true` (its default): a published port is Docker's DNAT rule, as on
//! any Docker host. Egress is masqueraded by weft, not Docker: with weftd `--ip-masq`,
//! subnet.env says `FLANNEL_IPMASQ=true` and docker-opts gives Docker `--ip-masq=false`, so
//! Docker adds no MASQUERADE rule (its rule, `-s <subnet> ! -o docker0`, would also rewrite
//! container traffic to other nodes leaving through flannel.1, hiding the source container).
//! Without weftd `--ip-masq` docker-opts gives `--ip-masq=true`: flannel's other pairing.
//!
//! What this module makes, all findable by the lab's name (so [`stop`] and [`release`] clean up
//! after a failure part way or without lab.json), and nothing else it may touch:
//! - per host, under `<labdir>/h<i>/docker/`: data-root (vfs), exec-root (with the containerd
//!   dockerd supervises: its socket, config and state), the API socket, pidfile, daemon.json,
//!   docker_opts.env and dockerd.log;
//! - dockerd runs in the host's network namespace (setns: `ip netns exec` would remount /sys and
//!   dockerd would find no cgroups) and in a mount namespace of its own, a slave of the
//!   machine's, with private tmpfs on /run/containerd (where containerd 1.6 puts its shims'
//!   sockets, a fixed path) and /etc/docker (dockerd's key.json): the mounts dockerd, containerd
//!   and the shims make are never seen outside and vanish with the last of them;
//! - container cgroups under `<hierarchy>/wl-<lab>-h<i>/` (`--cgroup-parent`, cgroupfs driver).

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::Serialize;
use weft_core::SubnetEnv;

use super::error::{LabError, Result};
use super::iproute::{self, command_line};
use super::{lab_dir, netns, pod_ns, process, read_subnet_env, topology, Lab, LabState, PodState};
use crate::docker_opts::{docker_opts_text, DockerOptsArgs};

/// Debian's docker.io (not whatever `docker` comes first in PATH).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";
/// busybox-static: the whole image is this one binary and its applet links.
pub const BUSYBOX: &str = "/bin/busybox";
pub const IMAGE: &str = "weft-lab/busybox:latest";
/// The container's httpd port, and the host port Docker publishes it on.
pub const HTTP_PORT: u16 = 80;
pub const PUBLISHED_PORT: u16 = 8080;
/// How long one dockerd may take to answer on its socket.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);
const APPLETS: &[&str] = &[
    "sh", "ping", "wget", "httpd", "nc", "ip", "ifconfig", "route", "cat", "echo", "sleep", "hostname", "ls", "ps",
    "kill", "grep", "timeout",
];

/// One lab host's Docker: where its files are and how to talk to its daemon.
#[derive(Debug, Clone)]
pub struct DockerHost {
    pub node: usize,
    /// The host's network namespace (also the name of the cgroup parent).
    pub ns: String,
    /// `<labdir>/h<i>/docker`.
    pub dir: PathBuf,
    lab_dir: PathBuf,
}

impl DockerHost {
    pub fn new(lab_dir: &Path, node: usize, ns: &str) -> Self {
        DockerHost {
            node,
            ns: ns.to_string(),
            dir: lab_dir.join(format!("h{node}")).join("docker"),
            lab_dir: lab_dir.to_path_buf(),
        }
    }

    /// Host `node` of a lab.
    pub fn of(lab: &Lab, node: usize) -> Result<Self> {
        Ok(DockerHost::new(lab.dir(), node, lab.host_ns(node)?))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("dockerd.pid")
    }

    /// The file `weft docker-opts` writes for this host.
    pub fn opts_file(&self) -> PathBuf {
        self.dir.join("docker_opts.env")
    }

    /// The host's container.
    pub fn container(&self) -> String {
        format!("c{}", self.node)
    }

    /// `-H` for the docker CLI.
    pub fn host_arg(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// dockerd's pid from its pidfile, while it lives.
    pub fn dockerd_pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(self.pidfile()).ok()?.trim().parse().ok()?;
        process::alive(pid).then_some(pid)
    }

    /// Runs the docker CLI against this host's daemon and waits for it, whatever its exit status.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        let host = self.host_arg();
        let mut all = vec!["-H", host.as_str()];
        all.extend_from_slice(args);
        Command::new(DOCKER)
            .args(&all)
            // The CLI's own config dir, so root's ~/.docker is left alone.
            .env("DOCKER_CONFIG", self.lab_dir.join("docker-cli"))
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                command: command_line(DOCKER, &all),
                source,
            })
    }

    /// Like [`DockerHost::docker`], but a non-zero exit is an error; returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args)?;
        if !out.status.success() {
            let mut all = vec!["-H", "<sock>"];
            all.extend_from_slice(args);
            return Err(LabError::Command {
                command: format!(
                    "{} (host {}, {})",
                    command_line(DOCKER, &all),
                    self.node,
                    self.socket().display()
                ),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// dockerd's flags: this host's files, vfs, cgroups under the host's name, and the
    /// options `weft docker-opts` rendered from subnet.env.
    pub fn dockerd_args(&self, docker_opts: &[String]) -> Vec<String> {
        let d = |name: &str| self.dir.join(name).display().to_string();
        let mut args = vec![
            format!("--config-file={}", d("daemon.json")),
            format!("--data-root={}", d("data")),
            format!("--exec-root={}", d("exec")),
            format!("--host={}", self.host_arg()),
            format!("--pidfile={}", d("dockerd.pid")),
            "--storage-driver=vfs".to_string(),
            "--exec-opt=native.cgroupdriver=cgroupfs".to_string(),
            format!("--cgroup-parent=/{}", self.ns),
            "--iptables=true".to_string(),
            "--ip6tables=false".to_string(),
            // Containers whose PID 1 ignores SIGTERM would hold a shutdown for 15 s.
            "--shutdown-timeout=2".to_string(),
        ];
        args.extend(docker_opts.iter().cloned());
        args
    }

    /// Writes docker_opts.env with `weft docker-opts` from the host's subnet.env and returns the
    /// options of its DOCKER_OPTS line.
    fn docker_opts(&self, subnet_file: &Path) -> Result<Vec<String>> {
        let args = DockerOptsArgs {
            subnet_file: subnet_file.to_path_buf(),
            output: self.opts_file(),
            individual: false,
            combined: false,
            combined_key: "DOCKER_OPTS".to_string(),
            no_ip_masq: false,
        };
        let text = docker_opts_text(&args, None).map_err(|e| LabError::Other(format!("weft docker-opts: {e}")))?;
        write_file(&self.opts_file(), text.as_bytes())?;
        Ok(combined_options(&text))
    }

    /// Starts dockerd (see the module doc for where it runs) and waits until it answers.
    pub fn start_daemon(&self, subnet_file: &Path) -> Result<u32> {
        std::fs::create_dir_all(&self.dir).map_err(|e| LabError::io("creating", &self.dir, e))?;
        write_file(&self.dir.join("daemon.json"), b"{}\n")?;
        let opts = self.docker_opts(subnet_file)?;
        let args = self.dockerd_args(&opts);
        // Mount points for the private tmpfs (the directories containerd and dockerd would make).
        for dir in ["/run/containerd", "/etc/docker"] {
            std::fs::create_dir_all(dir).map_err(|e| LabError::io("creating", dir, e))?;
        }
        let netns_path = netns::netns_path(&self.ns);
        let netns_file =
            File::open(&netns_path).map_err(|e| LabError::io("opening network namespace", &netns_path, e))?;
        let netns_fd = netns_file.as_raw_fd();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| LabError::io("opening log", self.log(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| LabError::io("opening log", self.log(), e))?;
        let mut command = Command::new(DOCKERD);
        command.args(&args).stdin(Stdio::null()).stdout(log).stderr(log2);
        let private = PrivateMounts::new();
        // SAFETY: between fork and exec only raw system calls on memory prepared before the fork
        // (the CStrings in `private`, the namespace's fd) run.
        unsafe {
            command.pre_exec(move || private.enter(netns_fd));
        }
        let child = command.spawn().map_err(|source| LabError::Spawn {
            command: command_line(DOCKERD, &args.iter().map(String::as_str).collect::<Vec<_>>()),
            source,
        })?;
        drop(netns_file);
        let pid = child.id();
        self.wait_ready(pid)?;
        Ok(pid)
    }

    fn wait_ready(&self, pid: u32) -> Result<()> {
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok_and(|o| o.status.success())
            {
                return Ok(());
            }
            if !process::alive(pid) {
                return Err(LabError::Exited {
                    what: format!("dockerd on host {} ({})", self.node, self.ns),
                    detail: format!(
                        "; tail of {}:\n{}",
                        self.log().display(),
                        process::log_tail(&self.log(), 20)
                    ),
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("dockerd on host {} to answer on {}", self.node, self.socket().display()),
                    seconds: DAEMON_TIMEOUT.as_secs(),
                    detail: format!(
                        "; tail of {}:\n{}",
                        self.log().display(),
                        process::log_tail(&self.log(), 20)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `docker import` of the lab's busybox rootfs, unless the image is there.
    pub fn load_image(&self, rootfs_tar: &Path) -> Result<()> {
        if self
            .docker(&["image", "inspect", IMAGE])
            .is_ok_and(|o| o.status.success())
        {
            return Ok(());
        }
        let tar = rootfs_tar.display().to_string();
        self.docker_ok(&["import", "--change", "CMD [\"/bin/sh\"]", &tar, IMAGE])
            .map(drop)
    }

    /// Runs the host's container (httpd on port 80, published on 8080) and attaches its network
    /// namespace as the host's pod namespace; returns the pod it is.
    pub fn run_container(&self, lab_name: &str, env: &SubnetEnv) -> Result<PodState> {
        let name = self.container();
        let published = format!("{PUBLISHED_PORT}:{HTTP_PORT}");
        let script = format!(
            "echo 'hello from {name} on h{}' > /www/index.html && exec httpd -f -p {HTTP_PORT} -h /www",
            self.node
        );
        self.docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &name,
            "-p",
            &published,
            IMAGE,
            "/bin/sh",
            "-c",
            &script,
        ])?;
        let inspect = self.docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Pid}} {{.NetworkSettings.IPAddress}} {{.NetworkSettings.IPPrefixLen}} {{.NetworkSettings.Gateway}}",
            &name,
        ])?;
        let bad = |detail: String| LabError::Parse {
            what: format!("docker inspect {name} on host {}", self.node),
            detail,
        };
        let fields: Vec<&str> = inspect.split_whitespace().collect();
        let [pid, ip, len, gateway] = fields[..] else {
            return Err(bad(format!(
                "expected pid, address, prefix length, gateway: {inspect:?}"
            )));
        };
        let parse_ip = |s: &str| s.parse::<Ipv4Addr>().map_err(|e| bad(format!("{s:?}: {e}")));
        let len: u8 = len.parse().map_err(|e| bad(format!("prefix length {len:?}: {e}")))?;
        let net = |ip| Ipv4Net::new(ip, len).map_err(|e| bad(e.to_string()));
        let (ip, gateway) = (net(parse_ip(ip)?)?, net(parse_ip(gateway)?)?);
        let ns = pod_ns(lab_name, self.node);
        iproute::run("ip", &["netns", "attach", &ns, pid])?;
        Ok(PodState {
            node: self.node,
            ns,
            ip: Some(ip),
            gateway: Some(gateway),
            mtu: env.mtu,
            ip6: None,
        })
    }
}

/// What dockerd's child does before exec: a mount namespace of its own (a slave of the
/// machine's, so the lab's namespaces mounted later still show), private tmpfs on the paths
/// containerd and dockerd fix, then the host's network namespace.
struct PrivateMounts {
    root: CString,
    tmpfs: CString,
    source: CString,
    options: CString,
    targets: [CString; 2],
}

impl PrivateMounts {
    fn new() -> Self {
        let c = |s: &str| CString::new(s).expect("no NUL in a constant");
        PrivateMounts {
            root: c("/"),
            tmpfs: c("tmpfs"),
            source: c("weft-lab"),
            options: c("mode=0755"),
            targets: [c("/run/containerd"), c("/etc/docker")],
        }
    }

    /// Runs in the forked child: only system calls, no allocation.
    fn enter(&self, netns_fd: i32) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: plain system calls on NUL-terminated strings that outlive them.
        unsafe {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            for target in &self.targets {
                check(libc::mount(
                    self.source.as_ptr(),
                    target.as_ptr(),
                    self.tmpfs.as_ptr(),
                    0,
                    self.options.as_ptr().cast(),
                ))?;
            }
            check(libc::setns(netns_fd, libc::CLONE_NEWNET))
        }
    }
}

/// The words of the `DOCKER_OPTS="..."` line of docker-opts' output.
fn combined_options(text: &str) -> Vec<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("DOCKER_OPTS="))
        .map(|v| v.trim_matches('"').split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(|e| LabError::io("writing", path, e))
}

/// Builds `<labdir>/docker-image/rootfs.tar` (once): busybox-static, its applets as links, the
/// directories a container needs, `/www` for httpd.
pub fn build_rootfs(lab_dir: &Path) -> Result<PathBuf> {
    let dir = lab_dir.join("docker-image");
    let tar = dir.join("rootfs.tar");
    if tar.exists() {
        return Ok(tar);
    }
    if !is_static_elf(Path::new(BUSYBOX)) {
        return Err(LabError::ProgramNotFound {
            program: "busybox (static)",
            hint: "the container image is /bin/busybox alone: `apt-get install busybox-static`",
        });
    }
    let root = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&root);
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "www", "root"] {
        let path = root.join(sub);
        std::fs::create_dir_all(&path).map_err(|e| LabError::io("creating", &path, e))?;
    }
    let busybox = root.join("bin/busybox");
    std::fs::copy(BUSYBOX, &busybox).map_err(|e| LabError::io("copying busybox to", &busybox, e))?;
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(|e| LabError::io("linking", &link, e))?;
    }
    write_file(&root.join("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n")?;
    write_file(&root.join("etc/group"), b"root:x:0:\n")?;
    let partial = dir.join("rootfs.tar.tmp");
    let (root_s, partial_s) = (root.display().to_string(), partial.display().to_string());
    iproute::run("tar", &["-C", &root_s, "-cf", &partial_s, "."])?;
    std::fs::rename(&partial, &tar).map_err(|e| LabError::io("writing", &tar, e))?;
    Ok(tar)
}

/// True when `path` is an ELF executable without a program interpreter (statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        // PT_INTERP is 3.
        data.get(at..at + 4).is_some_and(|t| t != 3u32.to_le_bytes())
    })
}

/// Checks that Debian's docker.io, containerd, runc, busybox-static and tar are installed.
pub fn preflight() -> Result<()> {
    let hint =
        "install Debian's docker with `apt-get install --no-install-recommends docker.io busybox-static` (make deps)";
    for (program, path) in [("dockerd", DOCKERD), ("docker", DOCKER)] {
        if !process::is_executable(Path::new(path)) {
            return Err(LabError::ProgramNotFound { program, hint });
        }
    }
    for program in ["containerd", "runc", "tar"] {
        if process::which(program).is_none() {
            return Err(LabError::ProgramNotFound { program, hint });
        }
    }
    Ok(())
}

/// Starts Docker on hosts `nodes` of a lab whose weftds have written subnet.env, all hosts at
/// once: dockerd, the image, the container. Returns each host's pod (its container). A failure
/// leaves what was made for [`stop`] and [`release`] (run by the lab's teardown).
pub fn start_hosts(state: &LabState, nodes: &[usize]) -> Result<Vec<PodState>> {
    preflight()?;
    let tar = build_rootfs(&state.dir)?;
    let hosts: Vec<(DockerHost, PathBuf)> = nodes
        .iter()
        .filter_map(|&node| state.hosts.get(node.wrapping_sub(1)))
        .map(|h| (DockerHost::new(&state.dir, h.node, &h.ns), h.subnet_file.clone()))
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|(host, subnet_file)| {
                let tar = &tar;
                scope.spawn(move || -> Result<PodState> {
                    let env = read_subnet_env(subnet_file)?;
                    host.start_daemon(subnet_file)?;
                    host.load_image(tar)?;
                    host.run_container(&state.name, &env)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LabError::Other("a docker start thread panicked".into())))
            })
            .collect()
    })
}

// ---- teardown: everything found by the lab's name ----

/// The mount points of the machine's cgroup hierarchies (v1 controllers and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

/// The lab's cgroup parents (`<hierarchy>/wl-<lab>-h<i>`) that exist.
pub fn cgroup_dirs(lab: &str) -> Vec<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .flat_map(|mount| {
            std::fs::read_dir(&mount)
                .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| topology::is_lab_ns(lab, n) && !n.ends_with("-sw"))
        })
        .collect()
}

/// Every directory under `dir` (itself included), deepest first.
fn dirs_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(dirs_deepest_first(&entry.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// Pids in the lab's container cgroups.
fn cgroup_pids(lab: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = cgroup_dirs(lab)
        .iter()
        .flat_map(|d| dirs_deepest_first(d))
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// True when a command-line word names a file under one of the lab's Docker host directories
/// (`<labdir>/h<i>/docker/...`): dockerd, its containerd, the shims.
fn names_lab_docker_dir(word: &str, lab_dir: &str) -> bool {
    word.match_indices(lab_dir).any(|(at, _)| {
        let Some(rest) = word[at + lab_dir.len()..].strip_prefix("/h") else {
            return false;
        };
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        digits > 0 && rest[digits..].starts_with("/docker/")
    })
}

/// What `/proc/<pid>/comm` says (15 characters at most) for the programs a lab host's Docker
/// runs outside its containers; a user's `tail -f` of a lab log is not one of them.
const DAEMON_COMMS: &[&str] = &["dockerd", "containerd", "containerd-shim", "docker-proxy", "runc"];

/// Docker's daemons whose command line names the lab's Docker directories.
fn daemon_pids(lab: &str) -> Vec<u32> {
    let dir = lab_dir(lab).display().to_string();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| DAEMON_COMMS.contains(&c.trim()))
        })
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                cmd.split(|&b| b == 0)
                    .any(|w| names_lab_docker_dir(&String::from_utf8_lossy(w), &dir))
            })
        })
        .filter(|&pid| process::alive(pid))
        .collect()
}

/// The mount namespaces of the given processes, and every other process living in them
/// (docker-proxy, a shim whose dockerd is gone).
fn same_mount_ns(pids: &[u32]) -> Vec<u32> {
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let mine = ns_of(std::process::id());
    let wanted: Vec<PathBuf> = pids
        .iter()
        .filter_map(|&p| ns_of(p))
        .filter(|n| Some(n) != mine.as_ref())
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| ns_of(pid).is_some_and(|n| wanted.contains(&n)) && process::alive(pid))
        .collect()
}

/// Stops everything the lab's Docker hosts run: container processes (found by their cgroups:
/// they live in namespaces of their own) get SIGKILL at once, then dockerd, containerd, the
/// shims and anything else in their mount namespaces: what a graceful stop would tidy (state
/// under the lab directory, mounts in their own namespace, rules in the host's namespace) goes
/// with the lab anyway, and SIGTERM would cost about half a second. A lab without Docker finds
/// nothing and costs one scan of /proc.
pub fn stop(lab: &str) -> Result<()> {
    let mut errors = Vec::new();
    for freezer in cgroup_dirs(lab).iter().flat_map(|d| dirs_deepest_first(d)) {
        // A paused container cannot die until it is thawed.
        let state = freezer.join("freezer.state");
        if state.exists() {
            let _ = std::fs::write(&state, "THAWED");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cgroup_pids(lab);
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            errors.push(format!("container processes {pids:?} of lab {lab:?} survived SIGKILL"));
            break;
        }
        let _ = process::terminate(&pids, Duration::ZERO);
    }
    let mut daemons = daemon_pids(lab);
    daemons.extend(same_mount_ns(&daemons));
    daemons.sort_unstable();
    daemons.dedup();
    if let Err(e) = process::terminate(&daemons, Duration::ZERO) {
        errors.push(format!("docker daemons of lab {lab:?}: {e}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LabError::Other(errors.join("; ")))
    }
}

/// One line of /proc/self/mountinfo, the parts used here.
struct MountEntry {
    mount_point: PathBuf,
    fstype: String,
}

/// Mount points are octal-escaped (`\040` for a space).
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mountinfo() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mount_path(mount_point)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// Mount points on this machine under the lab's directory (none when dockerd kept its mounts
/// in its own namespace, as it does).
pub fn mounts_under_lab(lab: &str) -> Vec<PathBuf> {
    let dir = lab_dir(lab);
    mountinfo()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// After [`stop`] and once the lab's processes are gone: unmounts anything left under the lab
/// directory and removes the lab's container cgroups. Returns every error, not just the first.
pub fn release(lab: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let mut mounts = mounts_under_lab(lab);
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for mount in mounts {
        if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
            errors.push(format!("unmounting {}: {e}", mount.display()));
        }
    }
    for parent in cgroup_dirs(lab) {
        for dir in dirs_deepest_first(&parent) {
            // A cgroup empties a moment after its last process is reaped.
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        errors.push(format!("removing cgroup {}: {e}", dir.display()));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
    errors
}

/// What the lab's Docker left on this machine: processes (daemons, containers), cgroup
/// directories, mounts under the lab directory. Empty after `weft lab down`.
pub fn leftovers(lab: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pid in daemon_pids(lab) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        out.push(format!("process {pid}: {}", cmd.trim()));
    }
    out.extend(
        cgroup_pids(lab)
            .into_iter()
            .map(|pid| format!("container process {pid}")),
    );
    out.extend(cgroup_dirs(lab).into_iter().map(|d| format!("cgroup {}", d.display())));
    out.extend(
        mounts_under_lab(lab)
            .into_iter()
            .map(|m| format!("mount {}", m.display())),
    );
    out
}

// ---- status ----

/// One container as `weft lab status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerStatus {
    pub node: usize,
    pub name: String,
    pub image: String,
    pub state: String,
    pub ip: String,
    pub ports: String,
    pub docker0_mtu: Option<u32>,
}

/// The containers of every host's dockerd (a host whose dockerd does not answer shows one
/// line saying so).
pub fn containers(lab: &Lab) -> Vec<ContainerStatus> {
    let mut out = Vec::new();
    for node in 1..=lab.nodes() {
        let Ok(host) = DockerHost::of(lab, node) else {
            continue;
        };
        let mtu = link_mtu(&host.ns, "docker0");
        let listing = host.docker_ok(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}",
        ]);
        let Ok(listing) = listing else {
            out.push(ContainerStatus {
                node,
                name: "-".into(),
                image: "-".into(),
                state: "dockerd not answering".into(),
                ip: "-".into(),
                ports: "-".into(),
                docker0_mtu: mtu,
            });
            continue;
        };
        for line in listing.lines().filter(|l| !l.is_empty()) {
            let mut f = line.split('\t');
            let name = f.next().unwrap_or_default().to_string();
            let ip = host
                .docker_ok(&["inspect", "--format", "{{.NetworkSettings.IPAddress}}", &name])
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            out.push(ContainerStatus {
                node,
                image: f.next().unwrap_or_default().to_string(),
                state: f.next().unwrap_or_default().to_string(),
                // IPv6 duplicates (`:::8080->80/tcp`) add nothing in an IPv4 lab.
                ports: f
                    .next()
                    .unwrap_or_default()
                    .split(", ")
                    .filter(|p| !p.starts_with(":::"))
                    .collect::<Vec<_>>()
                    .join(", "),
                ip: if ip.is_empty() { "-".into() } else { ip },
                name,
                docker0_mtu: mtu,
            });
        }
    }
    out
}

/// The MTU of a device in a namespace, from `ip -o link`.
pub fn link_mtu(ns: &str, dev: &str) -> Option<u32> {
    let out = iproute::run("ip", &["-n", ns, "-o", "link", "show", "dev", dev]).ok()?;
    let mut words = out.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// The containers table `weft lab status` prints after the lab's own.
pub struct ContainersTable<'a>(pub &'a [ContainerStatus]);

impl fmt::Display for ContainersTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        writeln!(f, "docker containers (the pods of the reachability matrix above):")?;
        writeln!(
            f,
            "{:<5} {:<5} {:<14} {:<9} {:<25} {:<24} image",
            "node", "name", "ip", "docker0", "ports", "state"
        )?;
        for c in self.0 {
            let mtu = c.docker0_mtu.map(|m| format!("mtu {m}")).unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "h{:<4} {:<5} {:<14} {:<9} {:<25} {:<24} {}",
                c.node, c.name, c.ip, mtu, c.ports, c.state, c.image
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerd_gets_the_options_docker_opts_wrote() {
        let text = "DOCKER_OPT_BIP=\"--bip=10.5.72.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n\
                    DOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.5.72.1/24 --ip-masq=false --mtu=1450\"\n";
        let opts = combined_options(text);
        assert_eq!(opts, ["--bip=10.5.72.1/24", "--ip-masq=false", "--mtu=1450"]);
        let host = DockerHost::new(Path::new("/run/weft/lab/t"), 2, "wl-t-h2");
        let args = host.dockerd_args(&opts);
        assert!(args.contains(&"--data-root=/run/weft/lab/t/h2/docker/data".to_string()));
        assert!(args.contains(&"--cgroup-parent=/wl-t-h2".to_string()));
        assert!(args.contains(&"--host=unix:///run/weft/lab/t/h2/docker/docker.sock".to_string()));
        assert_eq!(&args[args.len() - 3..], &opts[..], "docker-opts' options come last");
    }

    #[test]
    fn only_this_labs_docker_directories_are_claimed() {
        let dir = "/run/weft/lab/a";
        assert!(names_lab_docker_dir("--data-root=/run/weft/lab/a/h1/docker/data", dir));
        assert!(names_lab_docker_dir(
            "/run/weft/lab/a/h12/docker/exec/containerd/containerd.sock",
            dir
        ));
        assert!(!names_lab_docker_dir("/run/weft/lab/a-b/h1/docker/data", dir));
        assert!(!names_lab_docker_dir(
            "--subnet-file=/run/weft/lab/a/h1/subnet.env",
            dir
        ));
        assert!(!names_lab_docker_dir("/run/weft/lab/a/h/docker/x", dir));
        assert!(!names_lab_docker_dir("/run/weft/lab/a/hx/docker/x", dir));
    }

    #[test]
    fn only_a_static_busybox_makes_an_image() {
        // The test binary itself is dynamically linked (it has a program interpreter).
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(Path::new("/etc/hostname")));
        assert!(!is_static_elf(Path::new("/nonexistent")));
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_path("/run/a\\040b"), "/run/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
