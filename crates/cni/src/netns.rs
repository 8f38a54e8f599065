//! Container network namespaces: opening one by path, and opening a netlink socket inside it
//! from a short-lived thread that `setns()`es there, so the plugin's own threads never change
//! namespace. The socket stays bound to the container's namespace and is driven by the caller's
//! runtime.

use std::fs::File;
use std::os::fd::AsFd;

use nix::sched::CloneFlags;
use weft_kernel::netlink::Netlink;

use crate::error::{CniError, ErrorCode};

/// An open network namespace file (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`).
#[derive(Debug)]
pub struct NetnsFile {
    pub path: String,
    pub file: File,
}

impl NetnsFile {
    pub fn open(path: &str) -> Result<Self, CniError> {
        let file = File::open(path).map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::InvalidEnvironment
            } else {
                ErrorCode::IoFailure
            };
            CniError::new(
                code,
                format!("cannot open the container network namespace CNI_NETNS={path}: {e}"),
            )
        })?;
        Ok(NetnsFile {
            path: path.to_string(),
            file,
        })
    }

    /// A netlink socket inside this namespace, driven by `runtime`.
    pub fn netlink(&self, runtime: &tokio::runtime::Handle) -> Result<Netlink, CniError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| {
                        CniError::new(
                            ErrorCode::InvalidEnvironment,
                            format!(
                                "cannot enter CNI_NETNS={}: {errno} (is it a network namespace?)",
                                self.path
                            ),
                        )
                    })?;
                    let _enter = runtime.enter();
                    Netlink::new().map_err(CniError::from)
                })
                .join()
                .unwrap_or_else(|_| Err(CniError::new(ErrorCode::Kernel, "the namespace thread panicked")))
        })
    }
}
