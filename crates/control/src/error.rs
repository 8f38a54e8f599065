//! The control plane's error type: every message names what failed, on which key or endpoint,
//! and what to do about it.

use weft_core::{AllocError, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach etcd at {endpoints}: {cause}; check --etcd-endpoints and that etcd is running")]
    Unreachable { endpoints: String, cause: String },
    #[error("etcd options: {0}")]
    BadOptions(String),
    #[error("cannot read the etcd {what} {path}: {cause}; check --etcd-{flag}")]
    TlsFile {
        what: &'static str,
        flag: &'static str,
        path: String,
        cause: std::io::Error,
    },
    #[error("etcd {op} of {key} failed: {cause}")]
    Etcd {
        op: &'static str,
        key: String,
        cause: String,
    },
    #[error("config key {key}: {error}")]
    InvalidConfig { key: String, error: ConfigError },
    #[error("config key {key} is not set: write it, e.g. etcdctl put {key} '{{\"Network\":\"10.5.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'")]
    MissingConfig { key: String },
    #[error(transparent)]
    OutOfSubnets(#[from] AllocError),
    #[error(
        "could not lease a subnet under {prefix}: {attempts} attempts in a row lost a race with other nodes; retry"
    )]
    Contention { prefix: String, attempts: u32 },
}

impl ControlError {
    pub(crate) fn etcd(op: &'static str, key: &str, cause: impl std::fmt::Display) -> Self {
        ControlError::Etcd {
            op,
            key: key.to_string(),
            cause: cause.to_string(),
        }
    }
}
