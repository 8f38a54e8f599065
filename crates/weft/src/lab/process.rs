//! The lab's long-running processes (etcd, weftd, iperf3): started detached inside a namespace,
//! found by the namespace they live in, stopped with SIGTERM then SIGKILL.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::error::{LabError, Result};
use super::iproute::command_line;

/// Starts `program args` inside namespace `ns` in its own session (so it outlives the caller and
/// its terminal), output appended to `log`. Returns its pid (`ip netns exec` execs in place).
pub fn spawn_detached(ns: &str, program: &str, args: &[String], log: &Path) -> Result<u32> {
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| LabError::io("opening log", log, e))
    };
    let (stdout, stderr): (File, File) = (open_log()?, open_log()?);
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]).args(args);
    // Logs are files: no colour escapes (tracing-subscriber honours NO_COLOR).
    command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    let child = command.spawn().map_err(|source| LabError::Spawn {
        command: command_line(program, &args.iter().map(String::as_str).collect::<Vec<_>>()),
        source,
    })?;
    Ok(child.id())
}

/// True while the process exists and is not a zombie. Reaps it if it is our child.
pub fn alive(pid: u32) -> bool {
    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The network namespace inode of a process, if it still exists.
pub fn netns_inode_of(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    // The link reads "net:[4026532281]".
    let text = link.to_string_lossy();
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every process whose network namespace is one of `inodes`.
pub fn processes_in(inodes: &[u64]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| netns_inode_of(pid).is_some_and(|ino| inodes.contains(&ino)))
        .filter(|&pid| alive(pid))
        .collect()
}

/// SIGTERM, wait up to `grace`, then SIGKILL and wait up to 5 s more (a zero grace sends
/// SIGKILL at once). A missing process is success.
pub fn terminate(pids: &[u32], grace: Duration) -> Result<()> {
    let signal_all = |sig: Signal| {
        for &pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    };
    if !grace.is_zero() {
        signal_all(Signal::SIGTERM);
        if wait_gone(pids, grace) {
            return Ok(());
        }
    }
    signal_all(Signal::SIGKILL);
    if wait_gone(pids, Duration::from_secs(5)) {
        return Ok(());
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    Err(LabError::Other(format!("processes {left:?} survived SIGKILL")))
}

fn wait_gone(pids: &[u32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pids.iter().all(|&p| !alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds a program in PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
