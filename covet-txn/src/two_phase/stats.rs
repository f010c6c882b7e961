//! What a coordinator counts: its calls by outcome, the branches recovery
//! finished, and the in-doubt branches its last recovery pass found, with
//! their Prometheus exposition.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use crate::observe::two_phase::TwoPhaseStats;

/// How a two-phase call ended, as `covet_txn_two_phase_total{outcome}`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwoPhaseOutcome {
    /// Every branch committed.
    Committed,
    /// Every branch rolled back (the body failed, a PREPARE failed, or the
    /// decision was to abort).
    RolledBack,
    /// The decision to commit is durable and the call reported success, but
    /// a branch's phase two failed: recovery commits it.
    CommittedPendingRecovery,
    /// Whether the decision was recorded is not known: recovery decides.
    InDoubt,
}

impl TwoPhaseOutcome {
    const ALL: [TwoPhaseOutcome; 4] = [
        TwoPhaseOutcome::Committed,
        TwoPhaseOutcome::RolledBack,
        TwoPhaseOutcome::CommittedPendingRecovery,
        TwoPhaseOutcome::InDoubt,
    ];

    /// The outcome's label value.
    pub fn name(self) -> &'static str {
        match self {
            TwoPhaseOutcome::Committed => "committed",
            TwoPhaseOutcome::RolledBack => "rolled_back",
            TwoPhaseOutcome::CommittedPendingRecovery => "committed_pending_recovery",
            TwoPhaseOutcome::InDoubt => "in_doubt",
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    outcomes: [AtomicU64; 4],
    recovered_committed: AtomicU64,
    recovered_rolled_back: AtomicU64,
    in_doubt: Mutex<(u64, Option<Duration>)>,
}

impl Counters {
    pub(crate) fn count(&self, outcome: TwoPhaseOutcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn recovered(&self, committed: bool) {
        let counter = if committed {
            &self.recovered_committed
        } else {
            &self.recovered_rolled_back
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_in_doubt(&self, branches: u64, oldest: Option<Duration>) {
        *self.in_doubt.lock().unwrap_or_else(PoisonError::into_inner) = (branches, oldest);
    }

    pub(crate) fn snapshot(&self, coordinator: &str) -> TwoPhaseStats {
        let outcome =
            |outcome: TwoPhaseOutcome| self.outcomes[outcome as usize].load(Ordering::Relaxed);
        let (in_doubt_branches, oldest_in_doubt) =
            *self.in_doubt.lock().unwrap_or_else(PoisonError::into_inner);
        TwoPhaseStats {
            coordinator: coordinator.to_owned(),
            committed: outcome(TwoPhaseOutcome::Committed),
            rolled_back: outcome(TwoPhaseOutcome::RolledBack),
            committed_pending_recovery: outcome(TwoPhaseOutcome::CommittedPendingRecovery),
            in_doubt: outcome(TwoPhaseOutcome::InDoubt),
            recovered_committed: self.recovered_committed.load(Ordering::Relaxed),
            recovered_rolled_back: self.recovered_rolled_back.load(Ordering::Relaxed),
            in_doubt_branches,
            oldest_in_doubt,
        }
    }

    /// The counts in Prometheus' text format.
    pub(crate) fn exposition(&self, coordinator: &str) -> String {
        let stats = self.snapshot(coordinator);
        let mut text = String::from(
            "# HELP covet_txn_two_phase_total Two-phase calls by outcome.\n\
             # TYPE covet_txn_two_phase_total counter\n",
        );
        for outcome in TwoPhaseOutcome::ALL {
            let value = self.outcomes[outcome as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                text,
                "covet_txn_two_phase_total{{coordinator=\"{coordinator}\",outcome=\"{}\"}} {value}",
                outcome.name()
            );
        }
        let _ = write!(
            text,
            "# HELP covet_txn_two_phase_recovered_total Prepared branches recovery finished.\n\
             # TYPE covet_txn_two_phase_recovered_total counter\n\
             covet_txn_two_phase_recovered_total{{coordinator=\"{coordinator}\",decision=\"commit\"}} {}\n\
             covet_txn_two_phase_recovered_total{{coordinator=\"{coordinator}\",decision=\"abort\"}} {}\n\
             # HELP covet_txn_two_phase_in_doubt Prepared branches the last recovery pass left.\n\
             # TYPE covet_txn_two_phase_in_doubt gauge\n\
             covet_txn_two_phase_in_doubt{{coordinator=\"{coordinator}\"}} {}\n\
             # HELP covet_txn_two_phase_in_doubt_oldest_seconds Age of the oldest of them.\n\
             # TYPE covet_txn_two_phase_in_doubt_oldest_seconds gauge\n\
             covet_txn_two_phase_in_doubt_oldest_seconds{{coordinator=\"{coordinator}\"}} {}\n",
            stats.recovered_committed,
            stats.recovered_rolled_back,
            stats.in_doubt_branches,
            stats.oldest_in_doubt.map_or(0.0, |age| age.as_secs_f64()),
        );
        text
    }
}
