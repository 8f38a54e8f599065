//! The masquerade and forward rules (`--ip-masq`, `--iptables-forward-rules`) behind one
//! [`FirewallDriver`] trait, with an iptables and an nftables implementation chosen by
//! [`firewall_driver`] from the config's `EnableNFTables`.
//!
//! What the rules are is decided in [`weft_core::masq`]. Each driver reads the kernel back,
//! compares with the plan in a pure function and applies only a difference, so the daemon can
//! call [`FirewallDriver::ensure`] every `--iptables-resync` seconds. The iptables driver owns
//! the chains `FLANNEL-POSTRTG` and `FLANNEL-FWD` with their jumps (through `iptables-save` /
//! `iptables-restore`, parsed by [`weft_core::iptables_save`]); the nftables driver owns the
//! table `ip flannel-ipv4` (`ip6 flannel-ipv6` for an IPv6 plan), written and read as JSON
//! (`nft -j`) with the `nftables` crate's schema ([`nft_json`]). Neither touches any other rule.
//! Calls block (std::process): call them from a thread of their own or `spawn_blocking`.

mod command;
mod iptables;
mod nft;
pub mod nft_json;

use std::fmt;

pub use nftables;
pub use weft_core::masq::{AddrFamily, FirewallPlan};
use weft_core::NetworkConfig;

use command::Runner;

/// Which kernel interface holds the rules (config `EnableNFTables` selects `Nftables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirewallKind {
    Iptables,
    Nftables,
}

impl FirewallKind {
    /// The kind the network config asks for.
    pub fn from_config(cfg: &NetworkConfig) -> FirewallKind {
        if cfg.enable_nftables {
            FirewallKind::Nftables
        } else {
            FirewallKind::Iptables
        }
    }

    /// The kind not in use, whose leftovers a starting daemon clears.
    pub fn other(self) -> FirewallKind {
        match self {
            FirewallKind::Iptables => FirewallKind::Nftables,
            FirewallKind::Nftables => FirewallKind::Iptables,
        }
    }
}

/// One firewall implementation, for one address family, in one network namespace.
pub trait FirewallDriver: Send + Sync + fmt::Debug {
    fn kind(&self) -> FirewallKind;

    /// Makes the kernel hold exactly the plan's rules, each chain hooked exactly once, and no
    /// chain of weft's the plan does not want. Reads the rules back first and writes only when
    /// something differs; a write replaces a chain (iptables) or the table (nftables) atomically.
    /// Returns what was corrected (nothing when the kernel already matched).
    fn ensure(&self, plan: &FirewallPlan) -> Result<Changes, FirewallError>;

    /// Removes everything weft installed: its chains and their jumps, or its table. A missing
    /// tool means nothing of that kind can be installed, so it is not an error.
    fn remove(&self) -> Result<(), FirewallError>;

    /// What is installed now, read back from the kernel.
    fn installed(&self) -> Result<Installed, FirewallError>;
}

/// The driver of `kind` for plans of `family`, running its tools in the named network namespace
/// (`ip netns exec`) or, with None, in the calling thread's.
pub fn firewall_driver(kind: FirewallKind, family: AddrFamily, netns: Option<&str>) -> Box<dyn FirewallDriver> {
    let runner = Runner::new(netns);
    match kind {
        FirewallKind::Iptables => Box::new(iptables::IptablesDriver::new(family, runner)),
        FirewallKind::Nftables => Box::new(nft::NftablesDriver::new(family, runner)),
    }
}

/// What [`FirewallDriver::ensure`] rewrote; all false when the kernel already matched the plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// The masquerade rules (or their absence, or their hook) were corrected.
    pub masq: bool,
    /// The forward rules (or their absence, or their hook) were corrected.
    pub forward: bool,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.masq || self.forward
    }
}

/// weft's rules as the kernel holds them, in the driver's own notation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// The masquerade chain (`FLANNEL-POSTRTG` / `postrtg`), None when it does not exist.
    pub masq: Option<InstalledChain>,
    /// The forward chain (`FLANNEL-FWD` / `forward`), None when it does not exist.
    pub forward: Option<InstalledChain>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstalledChain {
    /// How packets reach the chain: the jumps from POSTROUTING/FORWARD (iptables-save lines), or
    /// the base chain's declaration (`type nat hook postrouting priority 100; policy accept;`).
    pub hooks: Vec<String>,
    /// The rules in order, as `iptables-save` or `nft list` prints them.
    pub rules: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{tool} not found{place}: install {package}")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        /// " in network namespace X" or "".
        place: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}; {hint}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    #[error(
        "`{command}` printed what weft cannot read: {error}; check that nft supports JSON (`nft -j list ruleset`)"
    )]
    Unreadable { command: String, error: String },
    #[error("a {driver:?} firewall driver was given a plan for {plan:?} (network {network}): build one driver per address family")]
    WrongFamily {
        driver: AddrFamily,
        plan: AddrFamily,
        network: ipnet::IpNet,
    },
}

fn check_family(driver: AddrFamily, plan: &FirewallPlan) -> Result<(), FirewallError> {
    if plan.family() == driver && AddrFamily::of(&plan.pod) == driver {
        return Ok(());
    }
    Err(FirewallError::WrongFamily {
        driver,
        plan: if plan.family() == driver {
            AddrFamily::of(&plan.pod)
        } else {
            plan.family()
        },
        network: plan.network,
    })
}
