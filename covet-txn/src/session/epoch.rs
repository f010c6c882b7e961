//! Which primary a session's connection came from, as an epoch that moves
//! each time failover points the manager's pool at another host: a COMMIT
//! whose connection was lost is looked up by transaction id only on the
//! primary it was sent to.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::failure::CommitOutcome;

/// The epoch a session began in, and the manager's counter.
#[derive(Debug, Clone)]
pub(crate) struct PrimaryEpoch {
    counter: Arc<AtomicU64>,
    seen: u64,
}

impl PrimaryEpoch {
    pub(crate) fn new(counter: Arc<AtomicU64>) -> Self {
        let seen = counter.load(Ordering::Acquire);
        PrimaryEpoch { counter, seen }
    }

    /// Whether the primary has moved since.
    pub(crate) fn changed(&self) -> bool {
        self.counter.load(Ordering::Acquire) != self.seen
    }

    /// The outcome `lookup` finds, if the primary stayed where `epoch` (the
    /// session's, if the manager follows a failover) saw it before the
    /// lookup and during it; otherwise unknown, without asking: the id
    /// means nothing on the new primary.
    pub(crate) async fn resolve_within(
        epoch: Option<&PrimaryEpoch>,
        lookup: impl Future<Output = CommitOutcome>,
    ) -> CommitOutcome {
        let moved = || epoch.is_some_and(PrimaryEpoch::changed);
        if moved() {
            return CommitOutcome::Unknown;
        }
        let outcome = lookup.await;
        if moved() {
            CommitOutcome::Unknown
        } else {
            outcome
        }
    }
}
