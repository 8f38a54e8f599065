//! Control plane: the subnet manager (etcd, or an in-memory fake for unit tests) and the lease
//! life cycle (acquire, keep alive, watch, re-acquire).

pub mod error;
pub mod etcd;
pub mod manager;
pub mod memory;
pub mod store;
pub mod subnet_manager;

pub use error::ControlError;
pub use etcd::{EtcdOptions, EtcdSubnetManager};
pub use manager::{KeeperOptions, LeaseBook, LeaseHealth, LeaseKeeper, LeaseSnapshot, LeaseWatcher, RefusalLog};
pub use memory::MemoryStore;
pub use store::{StoredKey, SubnetStore};
pub use subnet_manager::SubnetManager;
pub mod etcd_args;
