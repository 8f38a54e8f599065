//! Kernel adapters: one thin, idempotent wrapper per kernel interface.
//!
//! netlink (links, addresses, routes, neighbours, FDB, namespaces; IPv4 and IPv6), kernel
//! change notifications, firewall rules (iptables-restore and nft), interface selection, TUN.
//! Errors keep the errno. Nothing here decides what state should exist; callers compute that in
//! the core or a backend.

pub mod firewall;
pub mod iface;
pub mod monitor;
pub mod netlink;
pub mod tun;
