//! Observing transactions: the one place that is told of each point in a
//! transaction's life (begun, savepoint, failure, retry, timeout, commit,
//! rollback, a hook or a ROLLBACK that failed, a COMMIT cut off) and turns
//! it into counters, the active-transaction registry and tracing events and
//! spans.
//!
//! The runtime's other modules call an [`Observer`] and never touch a
//! counter or write an event themselves; this module knows nothing of
//! connections or SQL.

pub(crate) mod counters;
pub(crate) mod metrics;
#[cfg(feature = "outbox")]
pub(crate) mod outbox;
pub(crate) mod two_phase;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use self::counters::Counter;
use self::metrics::{ActiveTx, Metrics, Series};
use crate::error::Error;
use crate::event::Phase;
use crate::failure::{CommitOutcome, FailureKind};
use crate::options::Isolation;
use crate::state::TxId;

/// How a retry waits before its attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryWait {
    /// It sleeps its backoff.
    Backoff(Duration),
    /// It waits for its function's next turn, ahead of first attempts, and
    /// sleeps nothing.
    InLane,
}

/// What one function's calls report to.
#[derive(Clone)]
pub(crate) struct Observer {
    name: &'static str,
    series: Arc<Series>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("name", &self.name)
            .finish()
    }
}

impl Observer {
    /// The observer of `name`'s calls in a manager's `metrics`.
    pub(crate) fn new(metrics: &Arc<Metrics>, name: &'static str) -> Self {
        Observer {
            name,
            series: metrics.series(name),
            metrics: Arc::clone(metrics),
        }
    }

    /// A transaction began; it is listed as running until it ends.
    pub(crate) fn begun(&self, id: TxId, transaction: Arc<dyn ActiveTx>) {
        self.series.add(Counter::started);
        self.metrics.activate(id.get(), transaction);
    }

    /// A transaction ended: committed, rolled back, or with an outcome that
    /// could not be known. Call once per transaction (see [`TxAccount`]).
    fn ended(&self, id: TxId, started_at: Instant, outcome: CommitOutcome) {
        match outcome {
            CommitOutcome::Committed => self.series.add(Counter::committed),
            CommitOutcome::Aborted => self.series.add(Counter::rolled_back),
            CommitOutcome::Unknown => {}
        }
        self.series.record_duration(started_at.elapsed());
        self.metrics.deactivate(id.get());
    }

    pub(crate) fn savepoint_created(&self) {
        self.series.add(Counter::savepoints_created);
    }

    pub(crate) fn savepoint_rolled_back(&self) {
        self.series.add(Counter::savepoints_rolled_back);
    }

    /// An attempt failed in a way a new attempt can fix.
    pub(crate) fn failed_with(&self, kind: FailureKind) {
        self.series.add(Counter::failure(kind));
    }

    /// The call will run again after `wait`: what `wait_ms` logs is the
    /// backoff it sleeps, none for a retry that waits for its function's
    /// next turn instead (that wait is logged when the retry is admitted).
    pub(crate) fn retrying(&self, attempt: u32, cause: &'static str, wait: RetryWait) {
        let (slept, in_lane) = match wait {
            RetryWait::Backoff(backoff) => (backoff, false),
            RetryWait::InLane => (Duration::ZERO, true),
        };
        tracing::info!(
            target: "covet_txn",
            transaction = self.name,
            attempt,
            cause,
            wait_ms = slept.as_secs_f64() * 1000.0,
            in_lane,
            "retrying the transaction"
        );
        self.series.add(Counter::retries);
    }

    /// An attempt waited `waited` for its turn before reaching the
    /// database.
    pub(crate) fn admitted_after(&self, attempt: u32, waited: Duration) {
        tracing::debug!(
            target: "covet_txn",
            transaction = self.name,
            attempt,
            waited_ms = waited.as_secs_f64() * 1000.0,
            "admitted after waiting for its turn"
        );
        self.series.add(Counter::admission_waits);
        self.series.add_many(
            Counter::admission_wait_microseconds,
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// The call's deadline passed.
    pub(crate) fn timed_out(&self, attempts: u32, budget: Duration) {
        tracing::warn!(
            target: "covet_txn",
            transaction = self.name,
            attempts,
            timeout_ms = budget.as_secs_f64() * 1000.0,
            "the transaction's deadline passed; it was rolled back"
        );
        self.series.add(Counter::timeouts);
    }

    /// The connection failed while COMMIT was in flight.
    pub(crate) fn ambiguous_commit(&self, outcome: CommitOutcome, transaction_id: Option<&str>) {
        if outcome == CommitOutcome::Committed {
            tracing::warn!(
                target: "covet_txn",
                transaction = self.name,
                transaction_id,
                "the connection failed during COMMIT; the server confirms the transaction committed"
            );
        }
        self.series.add(Counter::ambiguous_commits);
    }

    /// The call gave up after every retry.
    pub(crate) fn retries_exhausted(&self) {
        self.series.add(Counter::retries_exhausted);
    }

    /// The call returned an error in the end.
    pub(crate) fn call_failed(&self) {
        self.series.add(Counter::failed);
    }

    /// A hook failed or panicked.
    pub(crate) fn hook_failed(
        &self,
        phase: Phase,
        hook: &'static str,
        transaction_id: TxId,
        error: &dyn std::fmt::Display,
    ) {
        tracing::warn!(
            target: "covet_txn::hooks",
            phase = phase.name(),
            hook,
            transaction = self.name,
            transaction_id = transaction_id.get(),
            error = %error,
            "a transaction hook failed"
        );
        self.series.add(Counter::hook_failures);
    }

    /// A ROLLBACK, or a ROLLBACK TO SAVEPOINT of `scope`, failed.
    pub(crate) fn rollback_failed(&self, scope: Option<&'static str>, error: &Error) {
        match scope {
            Some(scope) => tracing::warn!(
                target: "covet_txn",
                transaction = self.name,
                scope,
                %error,
                "rolling back to a savepoint failed; the transaction cannot commit"
            ),
            None => tracing::warn!(
                target: "covet_txn",
                transaction = self.name,
                %error,
                "rollback failed; the connection was recovered or closed, so the server rolled back"
            ),
        }
        self.series.add(Counter::rollback_failures);
    }

    /// A COMMIT cut off by a cancellation ended as `outcome`.
    fn cancelled_commit(&self, id: TxId, outcome: CommitOutcome) {
        tracing::info!(
            target: "covet_txn",
            transaction = self.name,
            transaction_id = id.get(),
            outcome = outcome.name(),
            "the call was cancelled while COMMIT was in flight; the server's answer was read in \
             the background"
        );
        self.series.add(Counter::cancelled_commit(outcome));
    }

    /// The INFO span a transaction runs in.
    pub(crate) fn transaction_span(
        &self,
        system: &'static str,
        isolation: Option<Isolation>,
        read_only: bool,
        attempt: u32,
    ) -> tracing::Span {
        tracing::info_span!(
            target: "covet_txn",
            "transaction",
            otel.name = self.name,
            db.system = system,
            db.operation.name = "transaction",
            code.function = self.name,
            covet.isolation = isolation.map_or("default", Isolation::name),
            covet.read_only = read_only,
            covet.attempt = attempt,
            covet.depth = 1,
            covet.outcome = tracing::field::Empty,
        )
    }

    /// The DEBUG span a savepoint scope runs in.
    pub(crate) fn savepoint_span(&self, depth: u32) -> tracing::Span {
        tracing::debug_span!(
            target: "covet_txn",
            "savepoint",
            code.function = self.name,
            covet.depth = depth,
            covet.outcome = tracing::field::Empty,
        )
    }
}

/// A transaction's count of its own end, made once, by whichever of its
/// owners sees the end first (the call settling it, a cancellation, the
/// background recovery of a COMMIT cut off in flight).
#[derive(Debug)]
pub(crate) struct TxAccount {
    observer: Observer,
    id: TxId,
    started_at: Instant,
    finished: AtomicBool,
}

impl TxAccount {
    pub(crate) fn new(observer: Observer, id: TxId, started_at: Instant) -> Self {
        TxAccount {
            observer,
            id,
            started_at,
            finished: AtomicBool::new(false),
        }
    }

    pub(crate) fn observer(&self) -> &Observer {
        &self.observer
    }

    /// Counts the transaction's end, the first time only.
    pub(crate) fn finish(&self, outcome: CommitOutcome) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.observer.ended(self.id, self.started_at, outcome);
        }
    }

    /// A COMMIT cut off by a cancellation ended as `outcome`.
    pub(crate) fn settle_cancelled_commit(&self, outcome: CommitOutcome) {
        self.observer.cancelled_commit(self.id, outcome);
        self.finish(outcome);
    }
}
