//! CNI errors: the well-known codes of the CNI spec plus weft's own (100+), and the error JSON a
//! runtime reads from stdout.

use serde::Serialize;

/// Error codes. 1-11 and 50-51 are the spec's; 100+ are weft-cni's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodingFailure = 6,
    InvalidNetworkConfig = 7,
    TryAgainLater = 11,
    PluginNotAvailable = 50,
    /// No free address is left in the node's subnet.
    AddressesExhausted = 100,
    /// CHECK found the container's network differs from its prevResult.
    CheckMismatch = 101,
    /// The delegate plugin failed without a CNI error of its own.
    DelegateFailed = 102,
    /// A kernel (netlink, namespace) operation failed.
    Kernel = 103,
}

/// A CNI error: code, message and details, printed as the spec's error JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn kernel(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        CniError::new(ErrorCode::Kernel, format!("{what}: {err}"))
    }

    pub fn io(what: impl std::fmt::Display, err: &std::io::Error) -> Self {
        CniError::new(ErrorCode::IoFailure, format!("{what}: {err}"))
    }

    /// The error JSON, for `cniVersion`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .expect("the error JSON always serializes")
    }
}

impl From<weft_kernel::netlink::NetlinkError> for CniError {
    fn from(e: weft_kernel::netlink::NetlinkError) -> Self {
        CniError::new(ErrorCode::Kernel, e.to_string())
    }
}
