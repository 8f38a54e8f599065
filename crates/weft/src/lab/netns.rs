//! Running Rust code inside a named network namespace: a fresh thread enters the namespace with
//! setns and runs the closure there, so no other thread (and no async worker) ever changes
//! namespace.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::{setns, CloneFlags};

use super::error::{LabError, Result};

pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// Runs `f` on a new thread that has entered network namespace `ns` (a name under /run/netns).
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send,
    T: Send,
{
    let path = netns_path(ns);
    let file = File::open(&path).map_err(|e| LabError::io("opening network namespace", &path, e))?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| LabError::Netns {
                ns: ns.to_string(),
                source,
            })?;
            drop(file);
            f()
        });
        handle
            .join()
            .unwrap_or_else(|_| Err(LabError::Other(format!("a thread working in {ns} panicked"))))
    })
}

/// The inode that identifies a named namespace, as seen in `/proc/<pid>/ns/net`.
pub fn netns_inode(ns: &str) -> Option<u64> {
    std::fs::metadata(netns_path(ns)).ok().map(|m| m.ino())
}

/// Writes a sysctl under /proc/sys/net of namespace `ns` (e.g. "net/ipv4/ip_forward").
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = PathBuf::from("/proc/sys").join(key);
    in_netns(ns, || {
        std::fs::write(&path, value).map_err(|e| LabError::io("writing sysctl", &path, e))
    })
}
