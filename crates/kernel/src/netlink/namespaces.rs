//! Network namespaces: running code, and opening a netlink socket, inside another namespace.
//! A short-lived thread enters the namespace with `setns`; no other thread (and no async worker)
//! ever changes namespace. A socket opened there stays bound to that namespace for its whole
//! life, whichever thread drives it. Creating and deleting named namespaces (a bind mount under
//! /run/netns) is not done here.

use std::future::Future;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;

use super::{Netlink, NetlinkError};

/// The path of a named network namespace (`ip netns add <name>`): `/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs `f` on a new thread that has entered the network namespace `ns` (an open
/// `/run/netns/<name>` or `/proc/<pid>/ns/net`), and returns what it returned. A failed `setns`
/// keeps its errno (EINVAL: not a network namespace; EPERM: no CAP_SYS_ADMIN).
pub fn in_netns<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> Result<T, NetlinkError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(|errno| NetlinkError::EnterNetns {
                    errno: errno as i32,
                    message: errno.desc().to_string(),
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetlinkError::Unexpected {
                    op: "work inside a network namespace".into(),
                    detail: "the namespace thread panicked".into(),
                })
            })
    })
}

/// Runs the future `f` makes from a netlink socket of namespace `ns` to completion, on a new
/// thread inside that namespace with its own current-thread runtime: for synchronous callers
/// (the lab, tests) that program another namespace.
pub fn block_on_in_netns<T, F, Fut>(ns: BorrowedFd<'_>, f: F) -> Result<T, NetlinkError>
where
    T: Send,
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = Result<T, NetlinkError>>,
{
    in_netns(ns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| NetlinkError::Unexpected {
                op: "start a runtime inside a network namespace".into(),
                detail: e.to_string(),
            })?;
        runtime.block_on(async { f(Netlink::new()?).await })
    })?
}

impl Netlink {
    /// Opens a socket inside the network namespace `ns`, driven by `runtime`: a short-lived
    /// thread enters the namespace and opens it there, so the caller's threads never move.
    pub fn new_in(ns: BorrowedFd<'_>, runtime: &tokio::runtime::Handle) -> Result<Netlink, NetlinkError> {
        in_netns(ns, || {
            let _enter = runtime.enter();
            Netlink::new()
        })?
    }
}
