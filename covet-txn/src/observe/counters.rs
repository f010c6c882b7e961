//! The counters of a function's transactions, in one table: the table
//! generates the counter names, the public [`FunctionMetrics`] fields, their
//! sums and differences, the Prometheus families and the CSV columns. A
//! counter is added in one place.

use std::time::Duration;

use serde::Serialize;

use crate::failure::{CommitOutcome, FailureKind};

/// Upper bounds of the duration histogram's buckets, in seconds; a last,
/// unbounded bucket follows.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// How a counter is exposed: a Prometheus family (without the `covet_txn_`
/// prefix and `_total` suffix), with one label telling apart the counters of
/// one family.
#[cfg(feature = "monitor")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exposed {
    pub(crate) family: &'static str,
    pub(crate) label: Option<(&'static str, &'static str)>,
    pub(crate) help: &'static str,
}

macro_rules! counters {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $family:literal $(, $label:literal = $value:literal)?;
    )+) => {
        /// One of a function's counters.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        pub(crate) enum Counter {
            $($field,)+
        }

        impl Counter {
            /// Every counter, in the table's order.
            pub(crate) const ALL: &'static [Counter] = &[$(Counter::$field,)+];

            /// The counter's name, as the JSON and CSV reports write it.
            #[cfg(feature = "monitor")]
            pub(crate) const fn name(self) -> &'static str {
                match self {
                    $(Counter::$field => stringify!($field),)+
                }
            }

            /// How Prometheus sees it.
            #[cfg(feature = "monitor")]
            pub(crate) const fn exposed(self) -> Exposed {
                match self {
                    $(Counter::$field => Exposed {
                        family: $family,
                        label: label!($($label, $value)?),
                        help: concat!($($doc),+),
                    },)+
                }
            }

            /// Its value in a reading.
            #[cfg(feature = "monitor")]
            pub(crate) const fn read(self, metrics: &FunctionMetrics) -> u64 {
                match self {
                    $(Counter::$field => metrics.$field,)+
                }
            }
        }

        /// The counters of one function (or of all of them), at one moment.
        ///
        /// Rates are over everything counted since the manager was built;
        /// the monitor's snapshot history gives rates over intervals.
        /// Percentiles are read from histogram buckets and are accurate to a
        /// bucket's width.
        #[derive(Debug, Clone, Default, Serialize, PartialEq)]
        #[non_exhaustive]
        pub struct FunctionMetrics {
            /// The function's path, `all` for the totals, `other` past the
            /// limit.
            pub function: String,
            $(
                $(#[doc = $doc])+
                pub $field: u64,
            )+
            /// `committed / (committed + failed)`, `None` before any call
            /// ended.
            pub success_rate: Option<f64>,
            /// `failed / (committed + failed)`.
            pub failure_rate: Option<f64>,
            /// Transaction durations.
            pub duration: DurationSummary,
            /// The raw histogram, for merging and for intervals.
            #[serde(skip)]
            pub histogram: HistogramCounts,
        }

        impl FunctionMetrics {
            /// A reading from counter values in table order.
            pub(crate) fn from_counts(
                function: String,
                counts: impl Fn(Counter) -> u64,
                histogram: HistogramCounts,
            ) -> Self {
                let mut metrics = FunctionMetrics {
                    function,
                    $($field: counts(Counter::$field),)+
                    histogram,
                    ..FunctionMetrics::default()
                };
                metrics.derive();
                metrics
            }

            pub(crate) fn accumulate(&mut self, other: &FunctionMetrics) {
                $(self.$field += other.$field;)+
                self.histogram.add(&other.histogram);
            }

            /// What happened between `earlier` and this reading.
            pub fn since(&self, earlier: &FunctionMetrics) -> FunctionMetrics {
                let mut delta = FunctionMetrics {
                    function: self.function.clone(),
                    $($field: self.$field.saturating_sub(earlier.$field),)+
                    histogram: self.histogram.since(&earlier.histogram),
                    ..FunctionMetrics::default()
                };
                delta.derive();
                delta
            }
        }
    };
}

#[cfg(feature = "monitor")]
macro_rules! label {
    () => {
        None
    };
    ($label:literal, $value:literal) => {
        Some(($label, $value))
    };
}

counters! {
    /// Transactions begun; each attempt counts.
    started: "transactions_started";
    /// Transactions committed.
    committed: "transactions_committed";
    /// Transactions rolled back; each failed attempt counts.
    rolled_back: "transactions_rolled_back";
    /// Calls that returned an error in the end, after any retries.
    failed: "calls_failed";
    /// Retries after a retryable failure.
    retries: "retries";
    /// Calls that timed out.
    timeouts: "timeouts";
    /// COMMITs whose outcome was unknown.
    ambiguous_commits: "ambiguous_commits";
    /// Calls that gave up after every retry.
    retries_exhausted: "retries_exhausted";
    /// Savepoints created by nested scopes.
    savepoints_created: "savepoints_created";
    /// Nested scopes rolled back to their savepoint.
    savepoints_rolled_back: "savepoints_rolled_back";
    /// Serialization failures (PostgreSQL 40001).
    serialization_failures: "failures", "kind" = "serialization_failure";
    /// Deadlocks (PostgreSQL 40P01, MySQL 1213).
    deadlocks: "failures", "kind" = "deadlock";
    /// Lock wait timeouts (MySQL 1205).
    lock_timeouts: "failures", "kind" = "lock_timeout";
    /// Snapshot conflicts (MariaDB 1020).
    snapshot_conflicts: "failures", "kind" = "snapshot_conflict";
    /// Busy or locked database (SQLite).
    busy: "failures", "kind" = "busy";
    /// Connections lost before COMMIT.
    connections_lost: "failures", "kind" = "connection_lost";
    /// Attempts whose write a demoted primary refused.
    not_primary: "failures", "kind" = "not_primary";
    /// Hooks that failed or panicked.
    hook_failures: "hook_failures";
    /// ROLLBACKs (and ROLLBACK TO SAVEPOINTs) that failed; the connection
    /// was then recovered or closed, so the server rolled back.
    rollback_failures: "rollback_failures";
    /// COMMITs whose call was cancelled while they were in flight, and that
    /// the server committed.
    cancelled_commits_committed: "cancelled_commits", "outcome" = "committed";
    /// COMMITs whose call was cancelled while they were in flight, and that
    /// the server answered with an error: nothing committed.
    cancelled_commits_rolled_back: "cancelled_commits", "outcome" = "rolled_back";
    /// COMMITs whose call was cancelled while they were in flight, whose
    /// answer did not come before the deadline: the connection was closed.
    cancelled_commits_unknown: "cancelled_commits", "outcome" = "unknown";
    /// Attempts that waited for their turn (conflict keys, the function's
    /// admission limit, SQLite's one writer) before reaching
    /// the database.
    admission_waits: "admission_waits";
    /// Microseconds attempts spent waiting for their turn, in all.
    admission_wait_microseconds: "admission_wait_microseconds";
}

impl Counter {
    /// The counter of a retryable failure's kind.
    pub(crate) const fn failure(kind: FailureKind) -> Counter {
        match kind {
            FailureKind::SerializationFailure => Counter::serialization_failures,
            FailureKind::Deadlock => Counter::deadlocks,
            FailureKind::LockTimeout => Counter::lock_timeouts,
            FailureKind::SnapshotConflict => Counter::snapshot_conflicts,
            FailureKind::Busy => Counter::busy,
            FailureKind::ConnectionLost => Counter::connections_lost,
            FailureKind::NotPrimary => Counter::not_primary,
        }
    }

    /// The counter of a cancelled COMMIT's outcome.
    pub(crate) const fn cancelled_commit(outcome: CommitOutcome) -> Counter {
        match outcome {
            CommitOutcome::Committed => Counter::cancelled_commits_committed,
            CommitOutcome::Aborted => Counter::cancelled_commits_rolled_back,
            CommitOutcome::Unknown => Counter::cancelled_commits_unknown,
        }
    }
}

impl FunctionMetrics {
    /// Fills the rates and the duration summary from the counts.
    pub(crate) fn derive(&mut self) {
        let ended = self.committed + self.failed;
        self.success_rate = (ended > 0).then(|| self.committed as f64 / ended as f64);
        self.failure_rate = self.success_rate.map(|rate| 1.0 - rate);
        self.duration = DurationSummary::of(&self.histogram);
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramCounts {
    /// Observations per bucket of [`DURATION_BUCKETS`], then the unbounded one.
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// The sum of all observations, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramCounts {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add(&mut self, other: &HistogramCounts) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_nanos += other.sum_nanos;
    }

    /// The counts observed since `earlier`.
    pub fn since(&self, earlier: &HistogramCounts) -> HistogramCounts {
        let mut delta = *self;
        for (mine, theirs) in delta.buckets.iter_mut().zip(earlier.buckets) {
            *mine = mine.saturating_sub(theirs);
        }
        delta.sum_nanos = delta.sum_nanos.saturating_sub(earlier.sum_nanos);
        delta
    }

    /// The `q` quantile (0 to 1), interpolated within its bucket; `None`
    /// without observations. Accurate to the bucket's width: what a
    /// Prometheus `histogram_quantile` over the same buckets answers.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut below = 0.0;
        for (index, count) in self.buckets.iter().enumerate() {
            let count = *count as f64;
            if below + count >= rank && count > 0.0 {
                let lower = if index == 0 {
                    0.0
                } else {
                    DURATION_BUCKETS[index - 1]
                };
                let upper = DURATION_BUCKETS.get(index).copied().unwrap_or(lower * 2.0);
                let within = (rank - below) / count;
                return Some(Duration::from_secs_f64(lower + (upper - lower) * within));
            }
            below += count;
        }
        None
    }

    /// The mean, `None` without observations.
    pub fn mean(&self) -> Option<Duration> {
        let count = self.count();
        (count > 0).then(|| Duration::from_nanos(self.sum_nanos / count))
    }
}

/// Transaction durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct DurationSummary {
    /// Transactions measured.
    pub count: u64,
    /// The mean.
    pub mean_ms: Option<f64>,
    /// The median.
    pub p50_ms: Option<f64>,
    /// The 95th percentile.
    pub p95_ms: Option<f64>,
    /// The 99th percentile.
    pub p99_ms: Option<f64>,
}

impl DurationSummary {
    fn of(histogram: &HistogramCounts) -> Self {
        let millis = |duration: Option<Duration>| duration.map(|d| d.as_secs_f64() * 1000.0);
        DurationSummary {
            count: histogram.count(),
            mean_ms: millis(histogram.mean()),
            p50_ms: millis(histogram.quantile(0.50)),
            p95_ms: millis(histogram.quantile(0.95)),
            p99_ms: millis(histogram.quantile(0.99)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "monitor")]
    #[test]
    fn every_counter_has_a_field_a_family_and_help() {
        let metrics = FunctionMetrics {
            deadlocks: 3,
            ..FunctionMetrics::default()
        };
        for counter in Counter::ALL {
            let exposed = counter.exposed();
            assert!(!exposed.family.is_empty() && !exposed.help.is_empty());
            let expected = if *counter == Counter::deadlocks { 3 } else { 0 };
            assert_eq!(counter.read(&metrics), expected, "{}", counter.name());
        }
        assert_eq!(
            Counter::failure(FailureKind::Deadlock).exposed().label,
            Some(("kind", "deadlock"))
        );
    }

    #[test]
    fn quantiles_are_read_from_the_buckets() {
        let mut counts = HistogramCounts::default();
        counts.buckets[1] = 90; // 0.5 ms to 1 ms
        counts.buckets[6] = 10; // 25 ms to 50 ms
        counts.sum_nanos = 90 * 800_000 + 10 * 40_000_000;
        assert_eq!(counts.count(), 100);
        let p50 = counts.quantile(0.5).unwrap_or_default();
        assert!(
            p50 > Duration::from_micros(500) && p50 <= Duration::from_millis(1),
            "{p50:?}"
        );
        let p99 = counts.quantile(0.99).unwrap_or_default();
        assert!(
            p99 > Duration::from_millis(25) && p99 <= Duration::from_millis(50),
            "{p99:?}"
        );
        let mean = counts.mean().unwrap_or_default();
        assert!((mean.as_secs_f64() - 0.00472).abs() < 0.0001, "{mean:?}");
    }
}
