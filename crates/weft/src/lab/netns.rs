//! Running Rust code inside a named network namespace, through weft's kernel wrapper: a fresh
//! thread enters the namespace with setns and runs the closure (or a netlink conversation) there,
//! so no other thread (and no async worker) ever changes namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use weft_kernel::netlink::{self, Netlink, NetlinkError};

use super::error::{LabError, Result};

pub fn netns_path(ns: &str) -> PathBuf {
    netlink::netns_path(ns)
}

fn open(ns: &str) -> Result<File> {
    let path = netns_path(ns);
    File::open(&path).map_err(|e| LabError::io("opening network namespace", &path, e))
}

/// The lab's error for a failure inside namespace `ns`: a failed setns says the lab may be down.
fn in_ns_error(ns: &str, e: NetlinkError) -> LabError {
    match e {
        NetlinkError::EnterNetns { errno, .. } => LabError::Netns {
            ns: ns.to_string(),
            source: nix::Error::from_raw(errno),
        },
        source => LabError::Netlink {
            ns: ns.to_string(),
            source,
        },
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns` (a name under /run/netns).
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send,
    T: Send,
{
    let file = open(ns)?;
    netlink::in_netns(file.as_fd(), f).map_err(|e| in_ns_error(ns, e))?
}

/// Runs the netlink conversation `f` inside network namespace `ns`, on a thread there.
pub fn with_netlink<T, F, Fut>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = std::result::Result<T, NetlinkError>>,
{
    let file = open(ns)?;
    netlink::block_on_in_netns(file.as_fd(), f).map_err(|e| in_ns_error(ns, e))
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
