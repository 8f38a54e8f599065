//! Control plane: the subnet manager (etcd, or an in-memory fake for unit tests) and the lease
//! life cycle (acquire, keep alive, watch, re-acquire).

pub mod etcd;
pub mod manager;
pub mod memory;
