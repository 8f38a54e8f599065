//! Applies the masquerade and forward rules (`--ip-masq`, `--iptables-forward-rules`) by running
//! the real `iptables-save`/`iptables-restore` or `nft` binaries, as flanneld does.
//!
//! It owns the iptables chains `FLANNEL-POSTRTG` and `FLANNEL-FWD` with their jumps, and the nft
//! table `ip flannel-ipv4`; it must not touch any other rule. What the rules are is decided in
//! [`weft_core::masq`]; this module reads the kernel back, compares, and applies only a
//! difference, so the daemon can call [`Firewall::ensure`] every `--iptables-resync` seconds.
//! Calls block (std::process): call them from `spawn_blocking`.
//!
//! Network namespaces: iptables and nft act on the namespace of the calling thread, and a child
//! process starts in the namespace of the thread that spawns it. So a `Firewall` works inside a
//! namespace either when used from a thread that has `setns()`ed into it, or, simpler, when
//! built with [`Firewall::in_netns`], which runs every command through `ip netns exec <name>`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use weft_core::masq::{
    chain_removal_input, iptables_restore_input, nft_batch, nft_removal_batch, IptablesState, NftState, FORWARD_CHAIN,
    MASQ_CHAIN, NFT_FORWARD_CHAIN, NFT_MASQ_CHAIN, NFT_TABLE,
};

pub use weft_core::masq::FirewallPlan;

/// Which kernel interface holds the rules (config `EnableNFTables` selects `Nftables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Iptables,
    Nftables,
}

/// What [`Firewall::ensure`] rewrote; all false when the kernel already matched the plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// The masquerade rules (or their absence, or their jump) were corrected.
    pub masq: bool,
    /// The forward rules (or their absence, or their jump) were corrected.
    pub forward: bool,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.masq || self.forward
    }
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
}

const IPTABLES_HINT: &str = "check that the kernel has iptables nat and filter support (xt_MASQUERADE, xt_comment, \
                             xt_mark) and that weftd runs as root, or set EnableNFTables";
const NFT_HINT: &str = "check that the kernel has nftables nat support (nft_masq, nft_chain_nat) and that weftd runs \
                        as root, or unset EnableNFTables";

/// The masquerade and forward rules of one node (or of one network namespace).
#[derive(Debug)]
pub struct Firewall {
    mode: Mode,
    netns: Option<String>,
    /// What the kernel printed right after our last apply, when it printed our rules in a form
    /// other than the one rendered (another iptables/nft version); accepted as matching that
    /// plan so a resync does not rewrite the rules forever.
    accepted: Mutex<Option<(FirewallPlan, Observed)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Observed {
    Iptables(IptablesState),
    Nftables(NftState),
}

impl Firewall {
    pub fn new(mode: Mode) -> Firewall {
        Firewall {
            mode,
            netns: None,
            accepted: Mutex::new(None),
        }
    }

    /// Runs every command in the named network namespace (`ip netns exec <name> ...`).
    pub fn in_netns(mut self, name: impl Into<String>) -> Firewall {
        self.netns = Some(name.into());
        self
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Makes the kernel hold exactly the plan's rules: weft's chains (or nft chains) with exactly
    /// the desired rules, each hooked exactly once, and no chain the plan does not want. Reads
    /// the rules back first and writes only when something differs; the write replaces a chain
    /// atomically.
    pub fn ensure(&self, plan: &FirewallPlan) -> Result<Changes, FirewallError> {
        let have = self.observe()?;
        if self.accepted.lock().unwrap().as_ref() == Some(&(*plan, have.clone())) {
            return Ok(Changes::default());
        }
        let changes = match &have {
            Observed::Iptables(have) => {
                let want = IptablesState::desired(plan);
                let Some(input) = iptables_restore_input(plan, have) else {
                    return Ok(Changes::default());
                };
                self.iptables_restore(&input)?;
                Changes {
                    masq: want.masq != have.masq,
                    forward: want.forward != have.forward,
                }
            }
            Observed::Nftables(have) => {
                let want = NftState::desired(plan);
                if &want == have {
                    return Ok(Changes::default());
                }
                self.nft_apply(&nft_batch(plan))?;
                let chain_differs = |name: &str| want.chains.get(name) != have.chains.get(name);
                let (masq, forward) = (chain_differs(NFT_MASQ_CHAIN), chain_differs(NFT_FORWARD_CHAIN));
                // only the table itself differed (comment, a foreign chain): both were rewritten
                let table_only = !masq && !forward;
                Changes {
                    masq: masq || table_only,
                    forward: forward || table_only,
                }
            }
        };
        tracing::info!(?changes, ?plan, mode = ?self.mode, "firewall rules corrected");
        self.remember_form(plan)?;
        Ok(changes)
    }

    /// Removes weft's chains and their jumps (iptables mode) or its table (nftables mode). A
    /// missing tool means nothing of that mode can be installed, so it is not an error: to switch
    /// modes, call `Firewall::new(old_mode).remove()`.
    pub fn remove(&self) -> Result<(), FirewallError> {
        *self.accepted.lock().unwrap() = None;
        let result = match self.mode {
            Mode::Iptables => self.remove_iptables(),
            Mode::Nftables => self.nft_apply(&nft_removal_batch()),
        };
        match result {
            Err(FirewallError::ToolMissing { .. }) => Ok(()),
            other => other,
        }
    }

    fn remove_iptables(&self) -> Result<(), FirewallError> {
        let Observed::Iptables(have) = self.observe()? else {
            unreachable!("iptables mode observes iptables")
        };
        let input: String = [
            chain_removal_input(&MASQ_CHAIN, &have.masq),
            chain_removal_input(&FORWARD_CHAIN, &have.forward),
        ]
        .into_iter()
        .flatten()
        .collect();
        if input.is_empty() {
            return Ok(());
        }
        self.iptables_restore(&input)
    }

    /// After an apply: if the kernel prints our rules in another form than rendered (but with
    /// the same shape), remember that form as matching the plan.
    fn remember_form(&self, plan: &FirewallPlan) -> Result<(), FirewallError> {
        let after = self.observe()?;
        let same_shape = match &after {
            Observed::Iptables(after) => {
                let want = IptablesState::desired(plan);
                let shape =
                    |s: &IptablesState| [&s.masq, &s.forward].map(|c| (c.declared, c.rules.len(), c.jumps.len()));
                if after == &want {
                    None
                } else {
                    Some(shape(after) == shape(&want))
                }
            }
            Observed::Nftables(after) => {
                let want = NftState::desired(plan);
                let shape = |s: &NftState| {
                    (
                        s.table_lines.len(),
                        s.chains.iter().map(|(k, v)| (k.clone(), v.len())).collect::<Vec<_>>(),
                    )
                };
                if after == &want {
                    None
                } else {
                    Some(shape(after) == shape(&want))
                }
            }
        };
        let mut accepted = self.accepted.lock().unwrap();
        *accepted = None;
        match same_shape {
            None => {}
            Some(true) => {
                tracing::warn!(observed = ?after, "the kernel prints weft's firewall rules in an unexpected form; accepting it");
                *accepted = Some((*plan, after));
            }
            Some(false) => {
                tracing::warn!(observed = ?after, ?plan, "firewall rules differ from the plan right after applying them; another program may be editing them");
            }
        }
        Ok(())
    }

    fn observe(&self) -> Result<Observed, FirewallError> {
        match self.mode {
            Mode::Iptables => {
                let nat = self.run("iptables-save", &["-t", "nat"], None, IPTABLES_HINT)?;
                let filter = self.run("iptables-save", &["-t", "filter"], None, IPTABLES_HINT)?;
                Ok(Observed::Iptables(IptablesState::from_save(&nat, &filter)))
            }
            Mode::Nftables => {
                let listing = match self.run("nft", &["list", "table", "ip", NFT_TABLE], None, NFT_HINT) {
                    Ok(listing) => listing,
                    Err(FirewallError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => {
                        String::new()
                    }
                    Err(e) => return Err(e),
                };
                Ok(Observed::Nftables(NftState::from_listing(&listing)))
            }
        }
    }

    fn iptables_restore(&self, input: &str) -> Result<(), FirewallError> {
        self.run(
            "iptables-restore",
            &["--noflush", "--wait", "5"],
            Some(input),
            IPTABLES_HINT,
        )
        .map(drop)
    }

    fn nft_apply(&self, script: &str) -> Result<(), FirewallError> {
        self.run("nft", &["-f", "-"], Some(script), NFT_HINT).map(drop)
    }

    /// Runs a tool (in the namespace, if any) and returns its stdout.
    fn run(
        &self,
        tool: &'static str,
        args: &[&str],
        stdin: Option<&str>,
        hint: &'static str,
    ) -> Result<String, FirewallError> {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, tool]);
                c
            }
            None => Command::new(tool),
        };
        command.args(args);
        let shown = format!("{} {}", tool, args.join(" "));
        let shown = match &self.netns {
            Some(ns) => format!("ip netns exec {ns} {shown}"),
            None => shown,
        };
        let place = self
            .netns
            .as_ref()
            .map(|ns| format!(" in network namespace {ns}"))
            .unwrap_or_default();
        command
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (tool, package) = if self.netns.is_some() {
                    ("ip", "iproute2")
                } else {
                    (tool, package_of(tool))
                };
                return Err(FirewallError::ToolMissing { tool, package, place });
            }
            Err(source) => return Err(FirewallError::Spawn { command: shown, source }),
        };
        // the input is a few hundred bytes: it fits the pipe, no need for a writer thread; a
        // write error (the tool exited early) is reported only if the tool then claims success
        let write_error = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()).err(),
            _ => None,
        };
        let output = child.wait_with_output().map_err(|source| FirewallError::Spawn {
            command: shown.clone(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if let (true, Some(source)) = (output.status.success(), write_error) {
            return Err(FirewallError::Spawn { command: shown, source });
        }
        if !output.status.success() {
            // `ip netns exec` reports a missing program as: exec of "nft" failed: No such file or directory
            if self.netns.is_some() && stderr.contains("exec of") && stderr.contains("No such file or directory") {
                return Err(FirewallError::ToolMissing {
                    tool,
                    package: package_of(tool),
                    place,
                });
            }
            return Err(FirewallError::Failed {
                command: shown,
                status: output.status.to_string(),
                stderr,
                hint,
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn package_of(tool: &str) -> &'static str {
    if tool == "nft" {
        "nftables"
    } else {
        "iptables"
    }
}
