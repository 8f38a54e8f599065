//! Lab hosts of a wireguard lab share one machine's `/run`: without care every weftd would read
//! the same `/run/flannel/wgkey` (one key for all nodes) and bind the same
//! `/var/run/wireguard/flannel-wg.sock`. Each host gets its own two directories under its lab
//! directory, bind-mounted over `/run/flannel` and `/run/wireguard` (`/var/run` is `/run`) in the
//! private mount namespace `ip netns exec` gives every command it runs. weftd then runs with
//! flannel's default paths, and `weft lab exec --node N -- wg show` reads host N's device.

use std::path::{Path, PathBuf};
use std::process::Output;

use super::error::{LabError, Result};
use super::Lab;

/// The script that mounts the host's directories and runs the command: `$1` the host's
/// /run/flannel, `$2` its /run/wireguard, the command after them.
const MOUNT_AND_EXEC: &str = "mkdir -p /run/flannel /run/wireguard \
    && mount --bind \"$1\" /run/flannel && mount --bind \"$2\" /run/wireguard \
    && shift 2 && exec \"$@\"";

/// Host `node`'s own `/run/flannel` (its key file `wgkey`) in the lab directory `dir`.
pub fn flannel_run_dir(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("h{node}/run-flannel"))
}

/// Host `node`'s own `/var/run/wireguard` (the userspace API socket `flannel-wg.sock`).
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

    /// Host `node`'s private key file.
    pub fn wireguard_key_file(&self, node: usize) -> PathBuf {
        flannel_run_dir(&self.state.dir, node).join("wgkey")
    }
}
