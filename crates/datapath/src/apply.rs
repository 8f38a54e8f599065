//! Applying a reconcile plan: the actions run one by one, a failed one does not stop the
//! rest, and what happened is counted for the report and the error.

use std::future::Future;

use futures::StreamExt;
use weft_kernel::netlink::{Batch, Netlink, NetlinkError};

/// Netlink requests sent together when a plan has many independent actions, rather than one
/// round trip each.
pub const IN_FLIGHT: usize = 64;

/// Actions per netlink batch (one datagram per socket, answered change by change).
pub const BATCH_SIZE: usize = 128;
/// Batches in flight at once: the kernel works on one while weft builds and reads the others.
pub const BATCHES_IN_FLIGHT: usize = 4;

/// Runs independent actions in netlink batches of [`BATCH_SIZE`], several batches in flight
/// (`add` puts one action's change into a batch), and tallies each outcome in plan order; a
/// failure goes to `on_error` (to be logged) and is kept.
pub async fn run_batched<A>(
    nl: &Netlink,
    actions: Vec<A>,
    add: impl Fn(&A, &mut Batch),
    effect: impl Fn(&A) -> Effect,
    on_error: impl Fn(&A, &NetlinkError),
    applied: &mut Applied,
) {
    let mut chunks = Vec::new();
    let mut actions = actions.into_iter().peekable();
    while actions.peek().is_some() {
        chunks.push(actions.by_ref().take(BATCH_SIZE).collect::<Vec<A>>());
    }
    let add = &add;
    let batches = chunks.into_iter().map(|chunk| async move {
        let mut batch = Batch::default();
        for action in &chunk {
            add(action, &mut batch);
        }
        let results = nl.send_batch(batch).await;
        (chunk, results)
    });
    let done: Vec<_> = futures::stream::iter(batches)
        .buffered(BATCHES_IN_FLIGHT)
        .collect()
        .await;
    for (chunk, results) in done {
        for (action, result) in chunk.into_iter().zip(results) {
            applied.record(effect(&action), result, |e| on_error(&action, e));
        }
    }
}

/// Runs the requests of independent actions (each yields its action and the kernel's answer)
/// with several in flight, and tallies each outcome in plan order; a failure goes to `on_error`
/// (to be logged) and is kept.
pub async fn run_together<A, Fut>(
    requests: impl Iterator<Item = Fut>,
    effect: impl Fn(&A) -> Effect,
    on_error: impl Fn(&A, &NetlinkError),
    applied: &mut Applied,
) where
    Fut: Future<Output = (A, Result<(), NetlinkError>)>,
{
    let results: Vec<_> = futures::stream::iter(requests).buffered(IN_FLIGHT).collect().await;
    for (action, result) in results {
        applied.record(effect(&action), result, |e| on_error(&action, e));
    }
}

/// Whether a set action creates an entry or corrects an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Add,
    Replace,
}

/// What a successful action did to a kernel table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Set(Change),
    Removed,
    /// Part of another entry's change, which is the one counted: a peer's nexthop added or
    /// removed together with the route that points at it.
    PartOfRoute,
}

/// The actions of one reconcile that failed: how many of how many, the first error and the rest.
#[derive(Debug)]
pub struct ApplyFailure {
    pub failed: usize,
    pub attempted: usize,
    pub first: NetlinkError,
    pub errors: Vec<NetlinkError>,
}

/// The tally of one plan's actions.
#[derive(Debug, Default)]
pub struct Applied {
    pub added: usize,
    pub replaced: usize,
    pub removed: usize,
    attempted: usize,
    errors: Vec<NetlinkError>,
}

impl Applied {
    /// Counts one action's outcome; a failure goes to `on_error` (to be logged) and is kept.
    pub fn record(&mut self, effect: Effect, result: Result<(), NetlinkError>, on_error: impl FnOnce(&NetlinkError)) {
        self.attempted += 1;
        match result {
            Ok(()) => match effect {
                Effect::Set(Change::Add) => self.added += 1,
                Effect::Set(Change::Replace) => self.replaced += 1,
                Effect::Removed => self.removed += 1,
                Effect::PartOfRoute => {}
            },
            Err(e) => {
                on_error(&e);
                self.errors.push(e);
            }
        }
    }

    /// Adds another tally to this one.
    pub fn merge(&mut self, other: Applied) {
        self.added += other.added;
        self.replaced += other.replaced;
        self.removed += other.removed;
        self.attempted += other.attempted;
        self.errors.extend(other.errors);
    }

    /// Err when any action failed.
    pub fn result(mut self) -> Result<(), ApplyFailure> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let first = self.errors.remove(0);
        Err(ApplyFailure {
            failed: self.errors.len() + 1,
            attempted: self.attempted,
            first,
            errors: self.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_effect_and_keeps_every_failure() {
        let mut applied = Applied::default();
        let mut logged = 0;
        applied.record(Effect::Set(Change::Add), Ok(()), |_| logged += 1);
        applied.record(Effect::Set(Change::Replace), Ok(()), |_| logged += 1);
        applied.record(Effect::Removed, Ok(()), |_| logged += 1);
        assert_eq!((applied.added, applied.replaced, applied.removed), (1, 1, 1));
        let fail = || Err(NetlinkError::Socket(std::io::Error::other("refused")));
        applied.record(Effect::Removed, fail(), |_| logged += 1);
        applied.record(Effect::Set(Change::Add), fail(), |_| logged += 1);
        assert_eq!(logged, 2);
        let failure = applied.result().unwrap_err();
        assert_eq!((failure.failed, failure.attempted, failure.errors.len()), (2, 5, 1));
        assert!(Applied::default().result().is_ok());
    }
}
