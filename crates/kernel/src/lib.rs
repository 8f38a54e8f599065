//! Kernel adapters: one thin, idempotent wrapper per kernel interface.
//!
//! netlink (links, addresses, routes, neighbours, FDB), firewall rules (iptables-restore and
//! nft), interface selection and sysctls. Errors keep the errno. Nothing here decides what state
//! should exist; callers compute that in the core or a backend.

pub mod firewall;
pub mod iface;
pub mod monitor;
pub mod netlink;
pub mod tun;
