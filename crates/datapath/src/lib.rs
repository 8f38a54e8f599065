//! Backends: each turns "the set of remote leases" into kernel state by reconcile
//! (desired state from the leases vs actual state read from the kernel, apply the difference).

pub mod apply;
pub mod backend;
pub mod factory;
pub mod hostgw;
pub mod leases;
pub mod peer_routes;
pub mod udp;
pub mod vxlan;
pub mod wireguard;
