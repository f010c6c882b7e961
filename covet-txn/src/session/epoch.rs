//! Which primary a session's connection came from, as an epoch that moves
//! each time failover points the manager's pool at another host: a COMMIT
//! whose connection was lost is looked up by transaction id only on the
//! primary it was sent to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
}
