//! The iptables driver: `iptables-save` to read, `iptables-restore --noflush` to write
//! (`ip6tables-*` for IPv6 plans). The rule text and the repair input come from
//! [`weft_core::masq`].

use std::sync::Mutex;

use weft_core::masq::{
    chain_removal_input, iptables_restore_input, AddrFamily, ChainState, FirewallPlan, IptablesState, FORWARD_CHAIN,
    MASQ_CHAIN,
};

use super::command::Runner;
use super::{check_family, Changes, FirewallDriver, FirewallError, FirewallKind, Installed, InstalledChain};

const HINT: &str = "check that the kernel has iptables nat and filter support (xt_MASQUERADE, xt_comment, xt_mark) \
                    and that weftd runs as root, or set EnableNFTables";

#[derive(Debug)]
pub(super) struct IptablesDriver {
    family: AddrFamily,
    runner: Runner,
    /// What the kernel printed right after our last apply, when it printed our rules in a form
    /// other than the one rendered (another iptables version); accepted as matching that plan
    /// so a resync does not rewrite the rules forever.
    accepted: Mutex<Option<(FirewallPlan, IptablesState)>>,
}

impl IptablesDriver {
    pub(super) fn new(family: AddrFamily, runner: Runner) -> IptablesDriver {
        IptablesDriver {
            family,
            runner,
            accepted: Mutex::new(None),
        }
    }

    fn save_tool(&self) -> &'static str {
        match self.family {
            AddrFamily::Ipv4 => "iptables-save",
            AddrFamily::Ipv6 => "ip6tables-save",
        }
    }

    fn restore_tool(&self) -> &'static str {
        match self.family {
            AddrFamily::Ipv4 => "iptables-restore",
            AddrFamily::Ipv6 => "ip6tables-restore",
        }
    }

    fn observe(&self) -> Result<IptablesState, FirewallError> {
        let nat = self.runner.run(self.save_tool(), &["-t", "nat"], None, HINT)?;
        let filter = self.runner.run(self.save_tool(), &["-t", "filter"], None, HINT)?;
        Ok(IptablesState::from_save(&nat, &filter))
    }

    fn restore(&self, input: &str) -> Result<(), FirewallError> {
        self.runner
            .run(self.restore_tool(), &["--noflush", "--wait", "5"], Some(input), HINT)
            .map(drop)
    }

    /// After an apply: if the kernel prints our rules in another form than rendered (but with
    /// the same shape), remember that form as matching the plan.
    fn remember_form(&self, plan: &FirewallPlan) -> Result<(), FirewallError> {
        let after = self.observe()?;
        let want = IptablesState::desired(plan);
        let shape = |s: &IptablesState| [&s.masq, &s.forward].map(|c| (c.declared, c.rules.len(), c.jumps.len()));
        let mut accepted = self.accepted.lock().unwrap();
        *accepted = None;
        if after == want {
            return Ok(());
        }
        if shape(&after) == shape(&want) {
            tracing::warn!(observed = ?after, "iptables prints weft's rules in an unexpected form; accepting it");
            *accepted = Some((*plan, after));
        } else {
            tracing::warn!(observed = ?after, ?plan, "iptables rules differ from the plan right after applying them; another program may be editing them");
        }
        Ok(())
    }
}

impl FirewallDriver for IptablesDriver {
    fn kind(&self) -> FirewallKind {
        FirewallKind::Iptables
    }

    fn ensure(&self, plan: &FirewallPlan) -> Result<Changes, FirewallError> {
        check_family(self.family, plan)?;
        let have = self.observe()?;
        if self.accepted.lock().unwrap().as_ref() == Some(&(*plan, have.clone())) {
            return Ok(Changes::default());
        }
        let Some(input) = iptables_restore_input(plan, &have) else {
            return Ok(Changes::default());
        };
        self.restore(&input)?;
        let want = IptablesState::desired(plan);
        let changes = Changes {
            masq: want.masq != have.masq,
            forward: want.forward != have.forward,
        };
        tracing::info!(?changes, ?plan, "iptables: masquerade/forward rules corrected");
        self.remember_form(plan)?;
        Ok(changes)
    }

    fn remove(&self) -> Result<(), FirewallError> {
        *self.accepted.lock().unwrap() = None;
        let have = match self.observe() {
            Ok(have) => have,
            Err(FirewallError::ToolMissing { .. }) => return Ok(()),
            Err(e) => return Err(e),
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
        self.restore(&input)
    }

    fn installed(&self) -> Result<Installed, FirewallError> {
        let have = self.observe()?;
        let chain = |c: ChainState| {
            c.declared.then_some(InstalledChain {
                hooks: c.jumps,
                rules: c.rules,
            })
        };
        Ok(Installed {
            masq: chain(have.masq),
            forward: chain(have.forward),
        })
    }
}
