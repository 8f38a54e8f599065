//! The nftables driver: `nft -j list table` to read, one `nft -j -f -` transaction to write,
//! both as JSON in the `nftables` crate's schema ([`super::nft_json`]).
//!
//! The crate's own `helper` runs `nft` itself; weft runs it through [`Runner`] instead, so the
//! commands work in a named network namespace and fail with the same errors as iptables'.

use std::sync::Mutex;

use nftables::schema::Nftables;
use weft_core::masq::{AddrFamily, FirewallPlan};

use super::command::Runner;
use super::nft_json::{self, NftTable, TableState, FORWARD_CHAIN, MASQ_CHAIN};
use super::{check_family, Changes, FirewallDriver, FirewallError, FirewallKind, Installed, InstalledChain};

const HINT: &str = "check that the kernel has nftables nat support (nft_masq, nft_chain_nat) and that weftd runs as \
                    root, or unset EnableNFTables";

#[derive(Debug)]
pub(super) struct NftablesDriver {
    family: AddrFamily,
    table: NftTable,
    runner: Runner,
    /// What nft printed right after our last apply, when it printed our table in a form other
    /// than the one built (another nft version); accepted as matching that plan so a resync does
    /// not rewrite the table forever.
    accepted: Mutex<Option<(FirewallPlan, Option<TableState>)>>,
}

impl NftablesDriver {
    pub(super) fn new(family: AddrFamily, runner: Runner) -> NftablesDriver {
        NftablesDriver {
            family,
            table: NftTable::for_family(family),
            runner,
            accepted: Mutex::new(None),
        }
    }

    /// The parsed listing of weft's table; an empty ruleset when the table does not exist.
    fn list(&self) -> Result<nft_json::Ruleset, FirewallError> {
        let args = ["-j", "list", "table", self.table.family_word(), self.table.name];
        let json = match self.runner.run("nft", &args, None, HINT) {
            Ok(json) => json,
            Err(FirewallError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => {
                return Ok(nft_json::Ruleset::default())
            }
            Err(e) => return Err(e),
        };
        nft_json::parse_ruleset(&json).map_err(|e| FirewallError::Unreadable {
            command: self.runner.shown("nft", &args),
            error: e.to_string(),
        })
    }

    fn observe(&self) -> Result<Option<TableState>, FirewallError> {
        Ok(TableState::from_ruleset(&self.list()?, &self.table))
    }

    fn apply(&self, batch: &Nftables) -> Result<(), FirewallError> {
        let json = serde_json::to_string(batch).expect("nftables objects serialize");
        self.runner.run("nft", &["-j", "-f", "-"], Some(&json), HINT).map(drop)
    }

    /// After an apply: if nft prints our table in another form than built (but with the same
    /// shape), remember that form as matching the plan.
    fn remember_form(&self, plan: &FirewallPlan, want: Option<&TableState>) -> Result<(), FirewallError> {
        let after = self.observe()?;
        let mut accepted = self.accepted.lock().unwrap();
        *accepted = None;
        if after.as_ref() == want {
            return Ok(());
        }
        if after.as_ref().map(TableState::shape) == want.map(TableState::shape) {
            tracing::warn!(observed = ?after, "nft prints weft's table in an unexpected form; accepting it");
            *accepted = Some((*plan, after));
        } else {
            tracing::warn!(observed = ?after, ?plan, "the nft table differs from the plan right after applying it; another program may be editing it");
        }
        Ok(())
    }
}

impl FirewallDriver for NftablesDriver {
    fn kind(&self) -> FirewallKind {
        FirewallKind::Nftables
    }

    fn ensure(&self, plan: &FirewallPlan) -> Result<Changes, FirewallError> {
        check_family(self.family, plan)?;
        let have = self.observe()?;
        if self.accepted.lock().unwrap().as_ref() == Some(&(*plan, have.clone())) {
            return Ok(Changes::default());
        }
        let want = TableState::desired(plan);
        let changes = nft_json::changes(want.as_ref(), have.as_ref());
        if !changes.any() {
            return Ok(changes);
        }
        self.apply(&nft_json::apply_batch(plan))?;
        tracing::info!(?changes, ?plan, table = %self.table, "nftables: masquerade/forward rules corrected");
        self.remember_form(plan, want.as_ref())?;
        Ok(changes)
    }

    fn remove(&self) -> Result<(), FirewallError> {
        *self.accepted.lock().unwrap() = None;
        match self.apply(&nft_json::removal_batch(&self.table)) {
            Err(FirewallError::ToolMissing { .. }) => Ok(()),
            other => other,
        }
    }

    fn installed(&self) -> Result<Installed, FirewallError> {
        let ruleset = self.list()?;
        let Some(table) = ruleset.table(self.table.family, self.table.name) else {
            return Ok(Installed::default());
        };
        let chain = |name: &str| {
            table.chains.iter().find(|c| c.name == name).map(|c| InstalledChain {
                hooks: c.base.iter().map(nft_json::render_base).collect(),
                rules: c.rules.iter().map(nft_json::render_rule).collect(),
            })
        };
        Ok(Installed {
            masq: chain(MASQ_CHAIN),
            forward: chain(FORWARD_CHAIN),
        })
    }
}
