//! `weft trace <src> <dst>`: walks a packet's path on this node through the live kernel tables
//! (route, neighbour, FDB, underlay route, forwarding, MTUs) and the owning lease in etcd, and
//! says, for each hop, which entry decided it, or where and why the path breaks. IPv4 and IPv6
//! packets take the same walk, each through its own family's side of a dual-stack node
//! ([`family::Family`]).
//!
//! Collection ([`collect`]) only reads; the walk ([`walk::walk`]) is pure and unit-tested from
//! plain [`facts::Facts`]. It runs in the calling thread's network namespace.

pub mod collect;
pub mod facts;
pub mod family;
pub mod forward;
pub mod options;
pub mod report;
pub mod walk;
pub mod wireguard;

pub use options::{TraceError, TraceOptions, DEFAULT_BRIDGE, DEFAULT_SUBNET_FILE};
pub use report::{render_json, render_text, Cause, Status, Step, Trace};

/// Reads this node's tables (and etcd) and walks `src -> dst`. Errors only when the kernel
/// cannot be read at all, or when `src` and `dst` are of different families; everything else is
/// a step of the trace.
pub async fn run_trace(opts: &TraceOptions) -> Result<Trace, TraceError> {
    if family::Family::of(opts.src) != family::Family::of(opts.dst) {
        return Err(TraceError::MixedFamilies {
            src: opts.src,
            dst: opts.dst,
        });
    }
    let facts = collect::collect(opts).await?;
    Ok(walk::walk(&facts))
}
