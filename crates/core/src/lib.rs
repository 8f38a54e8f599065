//! weft's pure core: everything that decides, nothing that does I/O.
//!
//! It owns the flannel-compatible data formats (network config, subnet keys, lease JSON,
//! subnet.env, docker options) and the pure decisions built on them (subnet allocation, the
//! masquerade/forward rule sets). It must not touch the kernel, the network, files or clocks.

pub mod admission;
pub mod allocate;
pub mod config;
pub mod config_error;
pub mod docker_opts;
pub mod iptables_save;
pub mod lease;
pub mod mac;
pub mod masq;
pub mod peer_file;
pub mod subnet_env;
pub mod wireguard;

pub use admission::{admit, Admission, Admitter, Decisions, LeaseRecord, Refusal, Refused};
pub use allocate::{choose_subnet, AllocError, Allocation};
pub use config::{BackendKind, ConfigError, NetworkConfig};
pub use lease::{Lease, LeaseAttrs, LeaseError, SubnetKey};
pub use subnet_env::{SubnetEnv, SubnetEnvError};
