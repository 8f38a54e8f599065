//! Runs the firewall tools (`iptables-save`, `iptables-restore`, `nft`), in a network namespace
//! when asked, and turns their failures into [`FirewallError`]s that name the command.
//!
//! Network namespaces: iptables and nft act on the namespace of the calling thread, and a child
//! process starts in the namespace of the thread that spawns it. So a driver works inside a
//! namespace either when used from a thread that has `setns()`ed into it, or, simpler, when
//! built for a named namespace, which runs every command through `ip netns exec <name>`.

use std::io::Write;
use std::process::{Command, Stdio};

use super::FirewallError;

#[derive(Debug, Clone, Default)]
pub(super) struct Runner {
    netns: Option<String>,
}

impl Runner {
    pub(super) fn new(netns: Option<&str>) -> Runner {
        Runner {
            netns: netns.map(str::to_string),
        }
    }

    /// How a command is shown in errors: `ip netns exec X nft -j list ...` or `nft -j list ...`.
    pub(super) fn shown(&self, tool: &str, args: &[&str]) -> String {
        let shown = format!("{} {}", tool, args.join(" "));
        match &self.netns {
            Some(ns) => format!("ip netns exec {ns} {shown}"),
            None => shown,
        }
    }

    /// Runs a tool (in the namespace, if any) and returns its stdout.
    pub(super) fn run(
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
        let shown = self.shown(tool, args);
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
        // the input is a few kilobytes at most: it fits the pipe, no need for a writer thread; a
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
