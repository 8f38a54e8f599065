//! weft's operator tooling as a library. `weft::lab` builds a multi-host weft cluster on one
//! machine out of network namespaces; the `weft` binary and the integration tests drive it.

pub mod docker_opts;
pub mod lab;
pub mod leases;
pub mod trace;
