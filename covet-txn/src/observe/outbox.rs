//! What the managers know of the outbox tables their relays serve: each
//! table's counts and lag in this process, as the manager's metrics show
//! them. A relay registers its table with its manager when it starts; the
//! table is held weakly.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::Serialize;

/// One topic's counts since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TopicCounts {
    /// Messages whose transaction committed.
    pub enqueued: u64,
    /// Messages a handler accepted.
    pub delivered: u64,
    /// Handler failures (each is retried, or dead-lettered).
    pub failed: u64,
    /// Messages that ran out of attempts.
    pub dead_lettered: u64,
}

/// An outbox table's counts, as `Outbox::metrics`
/// returns them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxMetrics {
    /// The table.
    pub table: String,
    /// Counts per topic.
    pub topics: BTreeMap<String, TopicCounts>,
    /// The age of the oldest undelivered message when a relay of this
    /// process last looked; `None` before any looked, zero when none was
    /// waiting.
    pub lag: Option<Duration>,
}

/// An outbox table, as a manager's metrics read it.
pub(crate) trait OutboxView: Send + Sync {
    fn metrics(&self) -> OutboxMetrics;
}

/// The outbox tables a manager's relays serve.
#[derive(Default)]
pub(crate) struct OutboxViews(Mutex<Vec<Weak<dyn OutboxView>>>);

impl OutboxViews {
    pub(crate) fn add(&self, view: Weak<dyn OutboxView>) {
        let mut views = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !views.iter().any(|known| Weak::ptr_eq(known, &view)) {
            views.push(view);
        }
    }

    /// Each live table's counts.
    pub(crate) fn metrics(&self) -> Vec<OutboxMetrics> {
        let mut views = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        views.retain(|view| view.strong_count() > 0);
        views
            .iter()
            .filter_map(Weak::upgrade)
            .map(|view| view.metrics())
            .collect()
    }
}
