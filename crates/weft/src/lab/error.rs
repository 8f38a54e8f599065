//! The one error type of the lab: each variant says what failed, on what, and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("weft lab needs root (network namespaces, veth, bridges): run it with sudo")]
    NotRoot,
    #[error("{program} not found in PATH: {hint}")]
    ProgramNotFound { program: &'static str, hint: &'static str },
    #[error("lab {name:?} is already up ({path} exists): run `weft lab down --name {name}` first")]
    AlreadyUp { name: String, path: PathBuf },
    #[error("lab {name:?} is not up ({path} is missing): run `weft lab up --name {name} ...` first")]
    NotUp { name: String, path: PathBuf },
    #[error("invalid lab spec: {0}")]
    BadSpec(String),
    #[error("lab {name:?} has no node {node} (nodes are 1..={nodes})")]
    NoSuchNode { name: String, node: usize, nodes: usize },
    #[error("node {node} has no pod yet (its weftd never wrote subnet.env)")]
    NoPod { node: usize },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {ns}: {source} (is the lab up? `ip netns list`)")]
    Netns {
        ns: String,
        #[source]
        source: nix::Error,
    },
    #[error("in network namespace {ns}: {source}")]
    Netlink {
        ns: String,
        #[source]
        source: weft_kernel::netlink::NetlinkError,
    },
    #[error("generating the lab's TLS certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("etcd {what}: {source}")]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("timed out after {seconds}s waiting for {what}{detail}")]
    Timeout { what: String, seconds: u64, detail: String },
    #[error("{what} exited early{detail}")]
    Exited { what: String, detail: String },
    #[error("lab state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
