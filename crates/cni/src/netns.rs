//! Container network namespaces: opening one by path (and refusing a path that is not a network
//! namespace before anything is created), and opening a netlink socket inside it (the shared
//! wrapper's [`Netlink::new_in`]: a short-lived thread enters it, so the plugin's own threads
//! never change namespace). The socket stays bound to the container's namespace and is driven
//! by the caller's runtime.

use std::fs::{File, FileType};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use nix::sys::statfs::{fstatfs, NSFS_MAGIC};
use weft_kernel::netlink::{Netlink, NetlinkError};

use crate::error::{CniError, ErrorCode};

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`, the CLONE_NEW* type of a namespace fd.
const NS_GET_NSTYPE: u32 = (0xb7 << 8) | 0x3;

/// What a file that is not a namespace is, for the error message.
pub fn describe_file_type(ft: &FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "a regular file"
    }
}

/// What kind of namespace a `NS_GET_NSTYPE` answer is, for the error message.
pub fn describe_ns_type(nstype: i32) -> &'static str {
    match nstype {
        libc::CLONE_NEWNET => "a network namespace",
        libc::CLONE_NEWNS => "a mount namespace",
        libc::CLONE_NEWUTS => "a UTS namespace",
        libc::CLONE_NEWIPC => "an IPC namespace",
        libc::CLONE_NEWUSER => "a user namespace",
        libc::CLONE_NEWPID => "a PID namespace",
        libc::CLONE_NEWCGROUP => "a cgroup namespace",
        libc::CLONE_NEWTIME => "a time namespace",
        _ => "a namespace of an unknown type",
    }
}

fn not_a_netns(path: &str, what: &str) -> CniError {
    CniError::new(
        ErrorCode::InvalidEnvironment,
        format!(
            "CNI_NETNS={path} is not a network namespace (it is {what}); give the path of the container's \
             network namespace, e.g. /var/run/netns/<name> or /proc/<pid>/ns/net"
        ),
    )
}

/// An open network namespace file (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`).
#[derive(Debug)]
pub struct NetnsFile {
    pub path: String,
    pub file: File,
}

impl NetnsFile {
    /// Opens `path` and makes sure it is a network namespace (nsfs, of the net type). Anything
    /// else (missing, a file, a directory, another kind of namespace) is code 4 naming CNI_NETNS.
    pub fn open(path: &str) -> Result<Self, CniError> {
        let cannot = |e: std::io::Error| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::InvalidEnvironment
            } else {
                ErrorCode::IoFailure
            };
            CniError::new(
                code,
                format!("cannot open the container network namespace CNI_NETNS={path}: {e}"),
            )
        };
        // Only a regular file can be a namespace; a FIFO or device is never opened (that could
        // block or have side effects).
        let file_type = std::fs::metadata(path).map_err(cannot)?.file_type();
        if !file_type.is_file() {
            return Err(not_a_netns(path, describe_file_type(&file_type)));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(cannot)?;
        let on_nsfs = fstatfs(file.as_fd()).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC);
        if !on_nsfs {
            return Err(not_a_netns(path, "a regular file"));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd we own.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if nstype < 0 {
            let e = std::io::Error::last_os_error();
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_NETNS={path}: cannot tell which kind of namespace it is (NS_GET_NSTYPE: {e})"),
            ));
        }
        if nstype != libc::CLONE_NEWNET {
            return Err(not_a_netns(path, describe_ns_type(nstype)));
        }
        Ok(NetnsFile {
            path: path.to_string(),
            file,
        })
    }

    /// A netlink socket inside this namespace, driven by `runtime`.
    pub fn netlink(&self, runtime: &tokio::runtime::Handle) -> Result<Netlink, CniError> {
        Netlink::new_in(self.file.as_fd(), runtime).map_err(|e| match e {
            NetlinkError::EnterNetns { message, .. } => CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "cannot enter CNI_NETNS={}: {message} (is it a network namespace?)",
                    self.path
                ),
            ),
            other => other.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_types_are_named() {
        assert_eq!(describe_ns_type(libc::CLONE_NEWNET), "a network namespace");
        assert_eq!(describe_ns_type(libc::CLONE_NEWNS), "a mount namespace");
        assert_eq!(describe_ns_type(0), "a namespace of an unknown type");
    }

    #[test]
    fn files_that_are_not_namespaces_are_refused_with_code_4() {
        let dir = std::env::temp_dir();
        let e = NetnsFile::open(dir.to_str().unwrap()).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS=") && e.msg.contains("a directory"), "{e}");
        let e = NetnsFile::open("/proc/self/status").unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("a regular file"), "{e}");
        let e = NetnsFile::open("/dev/null").unwrap_err();
        assert!(e.msg.contains("a character device"), "{e}");
        let e = NetnsFile::open("/proc/self/ns/mnt").unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            e.msg.contains("CNI_NETNS=/proc/self/ns/mnt") && e.msg.contains("a mount namespace"),
            "{e}"
        );
        assert_eq!(NetnsFile::open("/nonexistent/wtc-netns").unwrap_err().code, 4);
        // Our own network namespace is one.
        NetnsFile::open("/proc/self/ns/net").unwrap();
    }
}
