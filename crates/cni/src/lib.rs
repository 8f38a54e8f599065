//! weft-cni, the CNI plugin that plugs containers into the subnet weftd leased for the node.
//!
//! Built-in mode (no `delegate` in the config): bridge + veth + a host-local-compatible address
//! store, all through netlink. Delegate mode (flannel's config): renders and runs the real
//! `bridge` + `host-local` plugins as flannel's plugin does. Also `docker-opts`, the
//! mk-docker-opts replacement. It owns no daemon state: subnet.env is its only input from weftd.

pub mod bridge;
pub mod builtin;
pub mod delegate;
pub mod error;
pub mod invocation;
pub mod ipam;
pub mod netns;
pub mod plugin;
pub mod subnet_env;
pub mod types;
pub mod veth;

pub use error::{CniError, ErrorCode};
pub use plugin::{run, Outcome};
