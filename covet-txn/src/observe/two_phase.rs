//! What the managers know of the two-phase coordinators they take part in:
//! each coordinator's counts, as a participant's metrics show them. A
//! coordinator registers a view of itself with each participant; the view
//! is held weakly, so a dropped coordinator drops out of the snapshots.

use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::Serialize;

/// A two-phase coordinator's counts, from
/// `TwoPhase::stats` and in the
/// [`MetricsSnapshot`](crate::MetricsSnapshot) of each of its participants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TwoPhaseStats {
    /// The coordinator's name.
    pub coordinator: String,
    /// Calls that committed every branch.
    pub committed: u64,
    /// Calls that rolled every branch back.
    pub rolled_back: u64,
    /// Calls that succeeded with a branch left for recovery to commit.
    pub committed_pending_recovery: u64,
    /// Calls whose decision was in doubt.
    pub in_doubt: u64,
    /// Branches recovery committed.
    pub recovered_committed: u64,
    /// Branches recovery rolled back.
    pub recovered_rolled_back: u64,
    /// Prepared branches of this coordinator that the last recovery pass
    /// left: too young to touch, or held by a live connection.
    pub in_doubt_branches: u64,
    /// The age of the oldest of them.
    pub oldest_in_doubt: Option<Duration>,
}

/// A coordinator, as a participant's metrics read it.
pub(crate) trait TwoPhaseView: Send + Sync {
    fn stats(&self) -> TwoPhaseStats;
}

/// The coordinators a manager takes part in.
#[derive(Default)]
pub(crate) struct TwoPhaseViews(Mutex<Vec<Weak<dyn TwoPhaseView>>>);

impl TwoPhaseViews {
    pub(crate) fn add(&self, view: Weak<dyn TwoPhaseView>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(view);
    }

    /// The live coordinators' counts, forgetting the dropped ones.
    pub(crate) fn stats(&self) -> Vec<TwoPhaseStats> {
        let mut views = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        views.retain(|view| view.strong_count() > 0);
        views
            .iter()
            .filter_map(Weak::upgrade)
            .map(|view| view.stats())
            .collect()
    }
}
