//! What a trace says: one step per table entry consulted, each ok, broken (with the cause and a
//! fix in words) or informational; rendered as text or JSON.

use std::fmt::Write;
use std::net::IpAddr;

use serde::Serialize;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The entry exists and is what the path needs.
    Ok,
    /// The path breaks here.
    Broken,
    /// Context, or a check that does not apply to this path.
    Info,
}

/// Why a path breaks; stable names for scripts (`--json`) and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    MissingSubnetEnv,
    InvalidSubnetEnv,
    SourceNotLocal,
    DestinationOutsideNetwork,
    EtcdUnreachable,
    NoLease,
    IpForwardDisabled,
    ForwardDropped,
    NoRoute,
    RouteNotIntoOverlay,
    RouteMismatchesLease,
    MissingNeighbour,
    NeighbourUnresolved,
    VtepMacMismatch,
    MissingFdb,
    FdbDestinationMismatch,
    NoUnderlayRoute,
    MtuMismatch,
    DeviceDown,
    UdpPeerMissing,
    UdpPeerMismatch,
    /// An IPv6 trace on a node whose subnet.env has no IPv6 side (not dual stack).
    Ipv6NotEnabled,
    /// An IPv4 trace on a node whose subnet.env has no IPv4 side (an IPv6-only network).
    Ipv4NotEnabled,
    /// The owning lease has an IPv6 subnet but no PublicIPv6 (or, for vxlan, no BackendV6Data
    /// VtepMAC).
    LeaseLacksIpv6,
    /// Only a lease every node refuses (a conflict, a bad value, ...) covers the destination.
    LeaseRefused,
    /// Source and destination of different address families.
    MixedFamilies,
}

/// One step of the walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What was checked: `subnet.env`, `route`, `neighbour`, `fdb`, ...
    pub check: &'static str,
    pub status: Status,
    /// The table entry that decided it, as `ip`/`bridge` would print it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// What it means, and for a break what to do.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

impl Step {
    pub fn ok(check: &'static str, entry: impl Into<String>, message: impl Into<String>) -> Step {
        Step {
            check,
            status: Status::Ok,
            entry: Some(entry.into()).filter(|e: &String| !e.is_empty()),
            message: message.into(),
            cause: None,
        }
    }

    pub fn info(check: &'static str, message: impl Into<String>) -> Step {
        Step {
            check,
            status: Status::Info,
            entry: None,
            message: message.into(),
            cause: None,
        }
    }

    pub fn broken(check: &'static str, cause: Cause, message: impl Into<String>) -> Step {
        Step {
            check,
            status: Status::Broken,
            entry: None,
            message: message.into(),
            cause: Some(cause),
        }
    }

    pub fn with_entry(mut self, entry: impl Into<String>) -> Step {
        self.entry = Some(entry.into());
        self
    }
}

/// The whole walk from `src` to `dst` on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The backend the path uses (`vxlan`, `host-gw`, `udp`, `local`), once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub steps: Vec<Step>,
    /// No step broke.
    pub ok: bool,
}

impl Trace {
    pub fn new(src: IpAddr, dst: IpAddr, backend: Option<String>, steps: Vec<Step>) -> Trace {
        let ok = steps.iter().all(|s| s.status != Status::Broken);
        Trace {
            src,
            dst,
            backend,
            steps,
            ok,
        }
    }

    /// The causes of every break, in walk order.
    pub fn causes(&self) -> Vec<Cause> {
        self.steps.iter().filter_map(|s| s.cause).collect()
    }

    /// The first step that broke.
    pub fn first_break(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.status == Status::Broken)
    }
}

/// Human-readable output: one line per step (the entry, then what it means), breaks marked.
pub fn render_text(trace: &Trace) -> String {
    let mut out = format!("trace {} -> {}", trace.src, trace.dst);
    if let Some(b) = &trace.backend {
        let _ = write!(out, " ({b})");
    }
    out.push('\n');
    for step in &trace.steps {
        let mark = match step.status {
            Status::Ok => "ok",
            Status::Broken => "BROKEN",
            Status::Info => "--",
        };
        let _ = write!(out, "  {mark:<6} {:<11} ", step.check);
        match &step.entry {
            Some(entry) => {
                let _ = writeln!(out, "{entry}");
                let _ = writeln!(out, "  {:<6} {:<11} {}", "", "", step.message);
            }
            None => {
                let _ = writeln!(out, "{}", step.message);
            }
        }
    }
    let breaks = trace.steps.iter().filter(|s| s.status == Status::Broken).count();
    if breaks == 0 {
        let _ = writeln!(out, "result: no break found on this node");
    } else {
        let first = trace.first_break().expect("breaks > 0");
        let _ = writeln!(
            out,
            "result: {breaks} problem{} found; first at {}: {}",
            if breaks == 1 { "" } else { "s" },
            first.check,
            first.message
        );
    }
    out
}

/// The same as JSON (pretty-printed, with a trailing newline).
pub fn render_json(trace: &Trace) -> String {
    serde_json::to_string_pretty(trace).expect("a trace always serializes") + "\n"
}
