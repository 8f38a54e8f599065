//! Lab hosts of a wireguard lab share one machine's `/run`: without care every weftd would read
//! the same `/run/flannel/wgkey` (one key for all nodes) and bind the same
//! `/var/run/wireguard/flannel-wg.sock` (and `flannel-wg-v6.sock`). Each host gets its own two
//! directories under its lab directory, bind-mounted over `/run/flannel` and `/run/wireguard` (`/var/run` is `/run`) in the
//! private mount namespace `ip netns exec` gives every command it runs. weftd then runs with
//! flannel's default paths, and `weft lab exec --node N -- wg show` reads host N's device.

use std::path::{Path, PathBuf};
use std::process::Output;

use super::error::{LabError, Result};
use super::iproute::command_line;
use super::Lab;

/// The lease prefix the lab's weftds use.
const SUBNETS: &str = "/coreos.com/network/subnets/";

/// The script that mounts the host's directories and runs the command: `$1` the host's
/// /run/flannel, `$2` its /run/wireguard, the command after them.
const MOUNT_AND_EXEC: &str = "mkdir -p /run/flannel /run/wireguard \
    && mount --bind \"$1\" /run/flannel && mount --bind \"$2\" /run/wireguard \
    && shift 2 && exec \"$@\"";

/// Host `node`'s own `/run/flannel` (its key file `wgkey`) in the lab directory `dir`.
pub fn flannel_run_dir(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("h{node}/run-flannel"))
}

/// Host `node`'s own `/var/run/wireguard` (the userspace API sockets `flannel-wg.sock` and
/// `flannel-wg-v6.sock`).
pub fn wireguard_run_dir(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("h{node}/run-wireguard"))
}

/// `program args` wrapped so that it runs with host `node`'s /run/flannel and /run/wireguard.
pub fn wrap(dir: &Path, node: usize, program: &str, args: &[String]) -> Result<(String, Vec<String>)> {
    let (flannel, wireguard) = (flannel_run_dir(dir, node), wireguard_run_dir(dir, node));
    for d in [&flannel, &wireguard] {
        std::fs::create_dir_all(d).map_err(|e| LabError::io("creating host directory", d, e))?;
    }
    let mut wrapped = vec![
        "-c".to_string(),
        MOUNT_AND_EXEC.to_string(),
        "weft-lab-wg".to_string(),
        flannel.display().to_string(),
        wireguard.display().to_string(),
        program.to_string(),
    ];
    wrapped.extend(args.iter().cloned());
    Ok(("sh".to_string(), wrapped))
}

impl Lab {
    /// Whether the lab's network uses the wireguard backend.
    pub fn is_wireguard(&self) -> bool {
        self.state.backend == "wireguard"
    }

    /// Runs `cmd` on host `node` with the host's own /run/flannel and /var/run/wireguard (on
    /// other labs, as [`Lab::exec_in_host`]).
    pub fn exec_in_host_run(&self, node: usize, cmd: &[&str]) -> Result<Output> {
        if !self.is_wireguard() || cmd.is_empty() {
            return self.exec_in_host(node, cmd);
        }
        let args: Vec<String> = cmd[1..].iter().map(|s| s.to_string()).collect();
        let (program, args) = wrap(&self.state.dir, node, cmd[0], &args)?;
        let mut full = vec![program.as_str()];
        full.extend(args.iter().map(String::as_str));
        self.exec_in_host(node, &full)
    }

    /// Like [`Lab::exec_in_host_run`], but an error when the command fails; returns stdout.
    pub fn run_in_host(&self, node: usize, cmd: &[&str]) -> Result<String> {
        let out = self.exec_in_host_run(node, cmd)?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: command_line(cmd[0], &cmd[1..]),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Turns hosts `nodes` into nodes that run no weftd but Debian's wireguard-go, configured
    /// with `wg` from the leases in etcd as flannel's kernel backend configures its devices in
    /// its default Mode separate: `flannel-wg` for IPv4 (peers at PublicIP:51820, allowed IPs
    /// the lease's IPv4 subnet), and in a dual-stack or IPv6-only lab `flannel-wg-v6` for IPv6
    /// (peers at [PublicIPv6]:51821, the IPv6 subnet), both with one new key (`wg genkey`)
    /// written into the host's lease (BackendData, BackendV6Data), `psk` when given, the lease
    /// address /32 or /128, MTU 1420 and the network's scope-link route. The pods stay. Returns
    /// the new public keys, in the order of `nodes`.
    pub fn wireguard_go(&mut self, nodes: &[usize], psk: Option<&str>) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for &node in nodes {
            self.stop_node(node)?;
            let dir = self.state.dir.join(format!("h{node}"));
            let private = super::iproute::run("wg", &["genkey"])?;
            let key_file = dir.join("wg-go.key");
            std::fs::write(&key_file, private.trim()).map_err(|e| LabError::io("writing", &key_file, e))?;
            let public = pubkey(private.trim())?;
            if let Some(psk) = psk {
                let psk_file = dir.join("wg-go.psk");
                std::fs::write(&psk_file, psk).map_err(|e| LabError::io("writing", &psk_file, e))?;
            }
            for device in self.go_devices() {
                // Our persistent device goes; wireguard-go creates its own.
                let _ = self.run_in_host(node, &["ip", "link", "del", device.name]);
                self.run_in_host(node, &["wireguard-go", device.name])?;
            }
            // Our lease as flannel writes it, with the new key.
            let key = lease_key(self, node)?;
            let raw = self
                .etcd_get(&key)?
                .ok_or_else(|| LabError::Other(format!("no lease {key}")))?;
            let mut value: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| LabError::Parse {
                what: key.clone(),
                detail: e.to_string(),
            })?;
            for device in self.go_devices() {
                value[device.data] = serde_json::json!({ "PublicKey": public });
            }
            self.etcd_put(&key, value.to_string())?;
            keys.push(public);
        }
        for &node in nodes {
            for device in self.go_devices() {
                self.configure_wireguard_go(node, &device, psk.is_some())?;
            }
        }
        Ok(keys)
    }

    /// The devices of a wireguard-go host, as flannel's Mode separate: one per family the lab has.
    fn go_devices(&self) -> Vec<GoDevice> {
        let v4 = GoDevice {
            name: "flannel-wg",
            port: 51820,
            ipv6: false,
            data: "BackendData",
        };
        let v6 = GoDevice {
            name: "flannel-wg-v6",
            port: 51821,
            ipv6: true,
            data: "BackendV6Data",
        };
        [
            (!self.state.ipv6_only).then_some(v4),
            self.state.dual_stack.then_some(v6),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// `wg set` and addressing of one device of a wireguard-go host from the leases in etcd.
    fn configure_wireguard_go(&self, node: usize, device: &GoDevice, psk: bool) -> Result<()> {
        let dir = self.state.dir.join(format!("h{node}"));
        let mine = lease_key(self, node)?;
        let mut set: Vec<String> = ["wg", "set", device.name, "private-key"]
            .map(String::from)
            .into_iter()
            .chain([
                dir.join("wg-go.key").display().to_string(),
                "listen-port".into(),
                device.port.to_string(),
            ])
            .collect();
        for (key, raw) in self.etcd_get_prefix(SUBNETS)? {
            let Some((subnet, peer, endpoint)) = go_peer(&key, &raw, device).filter(|_| key != mine) else {
                continue;
            };
            set.extend(["peer".into(), peer, "endpoint".into(), endpoint]);
            set.extend(["allowed-ips".into(), subnet.to_string()]);
            if psk {
                set.extend(["preshared-key".into(), dir.join("wg-go.psk").display().to_string()]);
            }
        }
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        self.run_in_host(node, &set)?;
        let own = own_subnet(self, node)?;
        let (addr, network) = match device.ipv6 {
            true => (
                own.ipv6.map(|n| format!("{}/128", n.network())),
                super::LAB_IPV6_NETWORK.to_string(),
            ),
            false => (
                own.ipv4.map(|n| format!("{}/32", n.network())),
                self.state.network.to_string(),
            ),
        };
        let addr =
            addr.ok_or_else(|| LabError::Other(format!("host {node}'s lease has no subnet for {}", device.name)))?;
        self.run_in_host(node, &["ip", "addr", "replace", &addr, "dev", device.name, "nodad"])?;
        self.run_in_host(node, &["ip", "link", "set", device.name, "mtu", "1420", "up"])?;
        self.run_in_host(
            node,
            &["ip", "route", "replace", &network, "dev", device.name, "scope", "link"],
        )?;
        Ok(())
    }

    /// The wireguard-go process of host `node`, if it runs one.
    pub fn wireguard_go_pid(&self, node: usize) -> Option<u32> {
        let inode = super::netns::netns_inode(self.host_ns(node).ok()?)?;
        super::process::processes_in(&[inode])
            .into_iter()
            .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "wireguard-go"))
    }

    /// Host `node`'s private key file.
    pub fn wireguard_key_file(&self, node: usize) -> PathBuf {
        flannel_run_dir(&self.state.dir, node).join("wgkey")
    }
}

/// `wg pubkey` of a private key.
pub fn pubkey(private: &str) -> Result<String> {
    use std::io::Write;
    let spawn_err = |source| LabError::Spawn {
        command: "wg pubkey".into(),
        source,
    };
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(private.trim().as_bytes())
        .map_err(spawn_err)?;
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One device of a wireguard-go host: its name, port and family, and the lease field its
/// peers' keys are in.
struct GoDevice {
    name: &'static str,
    port: u16,
    ipv6: bool,
    data: &'static str,
}

/// The peer a lease (etcd key and value) asks of `device`: its subnet of the device's family,
/// its key and its endpoint; None when it has no such side.
fn go_peer(key: &str, raw: &[u8], device: &GoDevice) -> Option<(ipnet::IpNet, String, String)> {
    let lease: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let subnets = weft_core::SubnetKey::parse(key.rsplit('/').next()?).ok()?;
    let peer = lease[device.data]["PublicKey"].as_str()?.to_string();
    match device.ipv6 {
        true => {
            let ip = lease["PublicIPv6"].as_str()?;
            Some((subnets.ipv6?.into(), peer, format!("[{ip}]:{}", device.port)))
        }
        false => {
            let ip = lease["PublicIP"].as_str()?;
            Some((subnets.ipv4?.into(), peer, format!("{ip}:{}", device.port)))
        }
    }
}

/// Host `node`'s subnets, from its subnet.env.
fn own_subnet(lab: &Lab, node: usize) -> Result<weft_core::SubnetKey> {
    let env = lab.subnet_env(node)?;
    let key = weft_core::SubnetKey {
        ipv4: env.subnet.map(|n| n.trunc()),
        ipv6: env.ipv6_subnet.map(|n| n.trunc()),
    };
    if key.ipv4.is_none() && key.ipv6.is_none() {
        return Err(LabError::Other(format!("subnet.env of host {node} has no subnet")));
    }
    Ok(key)
}

/// The etcd key of host `node`'s lease.
fn lease_key(lab: &Lab, node: usize) -> Result<String> {
    Ok(format!("{SUBNETS}{}", own_subnet(lab, node)?.to_key()))
}
