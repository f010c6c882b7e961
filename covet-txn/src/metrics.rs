//! Counting what transactions do, cheaply: per manager and per function
//! name, atomics only on the hot path, and a registry of the transactions
//! running now.
//!
//! A transaction finds its function's series through a per-thread cache, so
//! the shared map (and its lock) is touched once per thread and function,
//! not once per transaction. The number of series is bounded: names beyond
//! the limit share one `other` series.
//!
//! This module owns the numbers and their snapshot; exposition (Prometheus,
//! JSON, CSV) and interpretation (alerts, health) live in `monitor/`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::CommitOutcome;
use crate::hooks::Phase;
use crate::options::Isolation;
use crate::retry::FailureKind;
use crate::transaction::{ErasedSession, TxState};

/// What is counted per function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Started,
    Committed,
    RolledBack,
    /// A call that returned an error in the end, after any retries.
    Failed,
    Retries,
    Timeouts,
    AmbiguousCommits,
    RetriesExhausted,
    SavepointsCreated,
    SavepointsRolledBack,
    Failure(FailureKind),
    HookFailure(Phase),
    /// A ROLLBACK (or ROLLBACK TO SAVEPOINT) that failed.
    RollbackFailures,
    /// A COMMIT cut off by a cancellation, by what became of it.
    CancelledCommit(CommitOutcome),
}

impl Count {
    const SLOTS: usize = 11 + FAILURE_KINDS.len() + HOOK_PHASES.len() + COMMIT_OUTCOMES.len();

    fn slot(self) -> usize {
        match self {
            Count::Started => 0,
            Count::Committed => 1,
            Count::RolledBack => 2,
            Count::Failed => 3,
            Count::Retries => 4,
            Count::Timeouts => 5,
            Count::AmbiguousCommits => 6,
            Count::RetriesExhausted => 7,
            Count::SavepointsCreated => 8,
            Count::SavepointsRolledBack => 9,
            Count::Failure(kind) => 10 + FAILURE_KINDS.iter().position(|k| *k == kind).unwrap_or(0),
            Count::HookFailure(phase) => {
                10 + FAILURE_KINDS.len() + HOOK_PHASES.iter().position(|p| *p == phase).unwrap_or(0)
            }
            Count::RollbackFailures => 10 + FAILURE_KINDS.len() + HOOK_PHASES.len(),
            Count::CancelledCommit(outcome) => {
                11 + FAILURE_KINDS.len()
                    + HOOK_PHASES.len()
                    + COMMIT_OUTCOMES
                        .iter()
                        .position(|o| *o == outcome)
                        .unwrap_or(0)
            }
        }
    }
}

const FAILURE_KINDS: [FailureKind; 6] = [
    FailureKind::SerializationFailure,
    FailureKind::Deadlock,
    FailureKind::LockTimeout,
    FailureKind::SnapshotConflict,
    FailureKind::Busy,
    FailureKind::ConnectionLost,
];

const COMMIT_OUTCOMES: [CommitOutcome; 3] = [
    CommitOutcome::Committed,
    CommitOutcome::Aborted,
    CommitOutcome::Unknown,
];

const HOOK_PHASES: [Phase; 4] = [
    Phase::BeforeCommit,
    Phase::AfterCommit,
    Phase::BeforeRollback,
    Phase::AfterRollback,
];

/// Upper bounds of the duration histogram's buckets, in seconds; a last,
/// unbounded bucket follows.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A latency histogram of atomics.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn record(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn read(&self) -> HistogramCounts {
        HistogramCounts {
            buckets: self
                .buckets
                .each_ref()
                .map(|bucket| bucket.load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
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
    /// without observations. Accurate to the bucket's width.
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

/// The counters of one function (or of the `other` series).
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) function: String,
    counts: [AtomicU64; Count::SLOTS],
    duration: Histogram,
}

impl Series {
    fn new(function: String) -> Self {
        Series {
            function,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            duration: Histogram::default(),
        }
    }

    pub(crate) fn add(&self, count: Count) {
        self.counts[count.slot()].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, count: Count) -> u64 {
        self.counts[count.slot()].load(Ordering::Relaxed)
    }

    pub(crate) fn record_duration(&self, duration: Duration) {
        self.duration.record(duration);
    }

    fn snapshot(&self) -> FunctionMetrics {
        let mut metrics = FunctionMetrics {
            function: self.function.clone(),
            started: self.get(Count::Started),
            committed: self.get(Count::Committed),
            rolled_back: self.get(Count::RolledBack),
            failed: self.get(Count::Failed),
            retries: self.get(Count::Retries),
            timeouts: self.get(Count::Timeouts),
            ambiguous_commits: self.get(Count::AmbiguousCommits),
            retries_exhausted: self.get(Count::RetriesExhausted),
            savepoints_created: self.get(Count::SavepointsCreated),
            savepoints_rolled_back: self.get(Count::SavepointsRolledBack),
            serialization_failures: self.get(Count::Failure(FailureKind::SerializationFailure)),
            deadlocks: self.get(Count::Failure(FailureKind::Deadlock)),
            lock_timeouts: self.get(Count::Failure(FailureKind::LockTimeout)),
            snapshot_conflicts: self.get(Count::Failure(FailureKind::SnapshotConflict)),
            busy: self.get(Count::Failure(FailureKind::Busy)),
            connections_lost: self.get(Count::Failure(FailureKind::ConnectionLost)),
            hook_failures: HOOK_PHASES
                .iter()
                .map(|phase| self.get(Count::HookFailure(*phase)))
                .sum(),
            rollback_failures: self.get(Count::RollbackFailures),
            cancelled_commits: CancelledCommits {
                committed: self.get(Count::CancelledCommit(CommitOutcome::Committed)),
                rolled_back: self.get(Count::CancelledCommit(CommitOutcome::Aborted)),
                unknown: self.get(Count::CancelledCommit(CommitOutcome::Unknown)),
            },
            histogram: self.duration.read(),
            ..FunctionMetrics::default()
        };
        metrics.derive();
        metrics
    }
}

/// How many function names get a series of their own, by default.
pub const DEFAULT_MAX_FUNCTIONS: usize = 200;

/// The name of the series shared by functions past the limit.
pub const OTHER_FUNCTIONS: &str = "other";

const SHARDS: usize = 16;

/// A manager's metrics.
pub(crate) struct Metrics {
    /// Identifies this manager's series in the per-thread caches.
    id: u64,
    series: Mutex<HashMap<&'static str, Arc<Series>>>,
    other: Arc<Series>,
    max_functions: usize,
    active: [Mutex<QuickMap<u64, Arc<dyn ErasedSession>>>; SHARDS],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("id", &self.id).finish()
    }
}

/// A multiply-and-rotate hash for small keys of our own (ids, addresses):
/// the default SipHash guards against hostile keys these cannot be, at
/// several times the cost, on every transaction.
#[derive(Default)]
struct QuickHasher(u64);

impl Hasher for QuickHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}

type QuickMap<K, V> = HashMap<K, V, BuildHasherDefault<QuickHasher>>;

thread_local! {
    /// Series this thread has looked up: (manager, address and length of the
    /// function's name) to series. Equal names at different addresses get
    /// entries of their own, which resolve to the same series.
    static CACHE: RefCell<QuickMap<(u64, usize, usize), Arc<Series>>> = RefCell::new(QuickMap::default());
}

/// Past this many entries a thread's cache starts over, so that managers
/// created and dropped (in tests, per tenant) do not pile up in it.
const CACHE_LIMIT: usize = 4096;

impl Metrics {
    pub(crate) fn new(id: u64, max_functions: usize) -> Self {
        Metrics {
            id,
            series: Mutex::new(HashMap::new()),
            other: Arc::new(Series::new(OTHER_FUNCTIONS.to_owned())),
            max_functions,
            active: std::array::from_fn(|_| Mutex::new(QuickMap::default())),
        }
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The series of `function`.
    pub(crate) fn series(&self, function: &'static str) -> Arc<Series> {
        let key = (self.id, function.as_ptr() as usize, function.len());
        if let Some(series) = CACHE.with(|cache| cache.borrow().get(&key).cloned()) {
            return series;
        }
        let series = {
            let mut map = Self::lock(&self.series);
            match map.get(function) {
                Some(series) => Arc::clone(series),
                None if map.len() >= self.max_functions => Arc::clone(&self.other),
                None => {
                    let series = Arc::new(Series::new(function.to_owned()));
                    map.insert(function, Arc::clone(&series));
                    series
                }
            }
        };
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key, Arc::clone(&series));
        });
        series
    }

    fn shard(&self, id: u64) -> &Mutex<QuickMap<u64, Arc<dyn ErasedSession>>> {
        &self.active[(id % SHARDS as u64) as usize]
    }

    pub(crate) fn activate(&self, session: Arc<dyn ErasedSession>) {
        let id = session.core().id.get();
        Self::lock(self.shard(id)).insert(id, session);
    }

    pub(crate) fn deactivate(&self, id: u64) {
        Self::lock(self.shard(id)).remove(&id);
    }

    /// The transactions running now. Each shard is locked only to copy its
    /// handles out, so listing never holds up transactions for longer than
    /// that.
    pub(crate) fn active(&self) -> Vec<ActiveTransaction> {
        let mut sessions = Vec::new();
        for shard in &self.active {
            sessions.extend(Self::lock(shard).values().cloned());
        }
        let now = Instant::now();
        let mut active: Vec<ActiveTransaction> = sessions
            .iter()
            .map(|session| ActiveTransaction::describe(session.as_ref(), now))
            .collect();
        active.sort_by(|a, b| b.age_ms.total_cmp(&a.age_ms));
        active
    }

    pub(crate) fn snapshot(&self) -> (Vec<FunctionMetrics>, FunctionMetrics) {
        let mut all: Vec<Arc<Series>> = Self::lock(&self.series).values().cloned().collect();
        all.push(Arc::clone(&self.other));
        let mut functions: Vec<FunctionMetrics> = all
            .iter()
            .map(|series| series.snapshot())
            .filter(|metrics| {
                metrics.started > 0 || metrics.failed > 0 || metrics.savepoints_created > 0
            })
            .collect();
        functions.sort_by(|a, b| a.function.cmp(&b.function));
        let mut total = FunctionMetrics {
            function: "all".to_owned(),
            ..FunctionMetrics::default()
        };
        for function in &functions {
            total.accumulate(function);
        }
        total.derive();
        (functions, total)
    }
}

/// The counters of one function, or of all of them, at one moment.
///
/// Rates are over everything counted since the manager was built; the
/// monitor's snapshot history gives rates over intervals. Percentiles are
/// read from histogram buckets and are accurate to a bucket's width.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FunctionMetrics {
    /// The function's path, `all` for the totals, `other` past the limit.
    pub function: String,
    /// Transactions begun (each attempt counts).
    pub started: u64,
    /// Transactions committed.
    pub committed: u64,
    /// Transactions rolled back (each failed attempt counts).
    pub rolled_back: u64,
    /// Calls that returned an error in the end, after any retries.
    pub failed: u64,
    /// Retries after a retryable failure.
    pub retries: u64,
    /// Calls that timed out.
    pub timeouts: u64,
    /// COMMITs whose outcome was unknown.
    pub ambiguous_commits: u64,
    /// Calls that gave up after every retry.
    pub retries_exhausted: u64,
    /// Savepoints created by nested scopes.
    pub savepoints_created: u64,
    /// Nested scopes rolled back to their savepoint.
    pub savepoints_rolled_back: u64,
    /// Serialization failures (PostgreSQL 40001).
    pub serialization_failures: u64,
    /// Deadlocks (PostgreSQL 40P01, MySQL 1213).
    pub deadlocks: u64,
    /// Lock wait timeouts (MySQL 1205).
    pub lock_timeouts: u64,
    /// Snapshot conflicts (MariaDB 1020).
    pub snapshot_conflicts: u64,
    /// Busy or locked database (SQLite).
    pub busy: u64,
    /// Connections lost before COMMIT.
    pub connections_lost: u64,
    /// Hooks that failed or panicked.
    pub hook_failures: u64,
    /// ROLLBACKs (and ROLLBACK TO SAVEPOINTs) that failed; the connection
    /// was closed, so the server rolled back.
    pub rollback_failures: u64,
    /// COMMITs cut off by a cancellation, by what became of them.
    pub cancelled_commits: CancelledCommits,
    /// `committed / (committed + failed)`, `None` before any call ended.
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
    fn accumulate(&mut self, other: &FunctionMetrics) {
        self.started += other.started;
        self.committed += other.committed;
        self.rolled_back += other.rolled_back;
        self.failed += other.failed;
        self.retries += other.retries;
        self.timeouts += other.timeouts;
        self.ambiguous_commits += other.ambiguous_commits;
        self.retries_exhausted += other.retries_exhausted;
        self.savepoints_created += other.savepoints_created;
        self.savepoints_rolled_back += other.savepoints_rolled_back;
        self.serialization_failures += other.serialization_failures;
        self.deadlocks += other.deadlocks;
        self.lock_timeouts += other.lock_timeouts;
        self.snapshot_conflicts += other.snapshot_conflicts;
        self.busy += other.busy;
        self.connections_lost += other.connections_lost;
        self.hook_failures += other.hook_failures;
        self.rollback_failures += other.rollback_failures;
        self.cancelled_commits.committed += other.cancelled_commits.committed;
        self.cancelled_commits.rolled_back += other.cancelled_commits.rolled_back;
        self.cancelled_commits.unknown += other.cancelled_commits.unknown;
        self.histogram.add(&other.histogram);
    }

    /// Fills the rates and the duration summary from the counts.
    pub(crate) fn derive(&mut self) {
        let ended = self.committed + self.failed;
        self.success_rate = (ended > 0).then(|| self.committed as f64 / ended as f64);
        self.failure_rate = self.success_rate.map(|rate| 1.0 - rate);
        self.duration = DurationSummary::of(&self.histogram);
    }

    /// What happened between `earlier` and this reading.
    pub fn since(&self, earlier: &FunctionMetrics) -> FunctionMetrics {
        let mut delta = FunctionMetrics {
            function: self.function.clone(),
            started: self.started.saturating_sub(earlier.started),
            committed: self.committed.saturating_sub(earlier.committed),
            rolled_back: self.rolled_back.saturating_sub(earlier.rolled_back),
            failed: self.failed.saturating_sub(earlier.failed),
            retries: self.retries.saturating_sub(earlier.retries),
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            ambiguous_commits: self
                .ambiguous_commits
                .saturating_sub(earlier.ambiguous_commits),
            retries_exhausted: self
                .retries_exhausted
                .saturating_sub(earlier.retries_exhausted),
            savepoints_created: self
                .savepoints_created
                .saturating_sub(earlier.savepoints_created),
            savepoints_rolled_back: self
                .savepoints_rolled_back
                .saturating_sub(earlier.savepoints_rolled_back),
            serialization_failures: self
                .serialization_failures
                .saturating_sub(earlier.serialization_failures),
            deadlocks: self.deadlocks.saturating_sub(earlier.deadlocks),
            lock_timeouts: self.lock_timeouts.saturating_sub(earlier.lock_timeouts),
            snapshot_conflicts: self
                .snapshot_conflicts
                .saturating_sub(earlier.snapshot_conflicts),
            busy: self.busy.saturating_sub(earlier.busy),
            connections_lost: self
                .connections_lost
                .saturating_sub(earlier.connections_lost),
            hook_failures: self.hook_failures.saturating_sub(earlier.hook_failures),
            rollback_failures: self
                .rollback_failures
                .saturating_sub(earlier.rollback_failures),
            cancelled_commits: CancelledCommits {
                committed: self
                    .cancelled_commits
                    .committed
                    .saturating_sub(earlier.cancelled_commits.committed),
                rolled_back: self
                    .cancelled_commits
                    .rolled_back
                    .saturating_sub(earlier.cancelled_commits.rolled_back),
                unknown: self
                    .cancelled_commits
                    .unknown
                    .saturating_sub(earlier.cancelled_commits.unknown),
            },
            histogram: self.histogram.since(&earlier.histogram),
            ..FunctionMetrics::default()
        };
        delta.derive();
        delta
    }
}

/// What became of COMMITs whose call was cancelled while they were in
/// flight: the runtime waits for the server's answer in the background.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CancelledCommits {
    /// The server committed.
    pub committed: u64,
    /// The server answered the COMMIT with an error: nothing committed.
    pub rolled_back: u64,
    /// No answer came before the deadline; the connection was closed.
    pub unknown: u64,
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

/// A transaction running now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActiveTransaction {
    /// Its id.
    pub id: u64,
    /// The function that began it.
    pub function: String,
    /// 1, or more while a savepoint scope runs.
    pub depth: u32,
    /// The isolation asked for.
    pub isolation: Option<String>,
    /// Its state.
    pub state: String,
    /// Which attempt.
    pub attempt: u32,
    /// How long it has run, in milliseconds.
    pub age_ms: f64,
}

impl ActiveTransaction {
    fn describe(session: &dyn ErasedSession, now: Instant) -> Self {
        let core = session.core();
        ActiveTransaction {
            id: core.id.get(),
            function: core.name.to_owned(),
            depth: core.depth(),
            isolation: core
                .isolation
                .map(|level| Isolation::name(level).to_owned()),
            state: TxState::name(core.state()).to_owned(),
            attempt: core.attempt,
            age_ms: now.saturating_duration_since(core.started_at).as_secs_f64() * 1000.0,
        }
    }
}

/// The pool's connections at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open.
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most the pool may open.
    pub max: u32,
}

impl PoolStatus {
    /// Whether every connection the pool may open is in use.
    pub fn saturated(&self) -> bool {
        self.max > 0 && self.size >= self.max && self.idle == 0
    }
}

/// Everything a manager has counted, at one moment; serializes to JSON.
///
/// ```no_run
/// # fn demo(manager: covet_txn::TxManager<sqlx::Postgres>) {
/// let snapshot = manager.metrics();
/// println!("{} committed, p99 {:?} ms", snapshot.total.committed, snapshot.total.duration.p99_ms);
/// # }
/// ```
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsSnapshot {
    /// The manager's name.
    pub manager: String,
    /// The backend's OpenTelemetry `db.system` name.
    pub backend: String,
    /// When the snapshot was taken, in milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    /// All functions together.
    pub total: FunctionMetrics,
    /// Per function, by name.
    pub functions: Vec<FunctionMetrics>,
    /// The transactions running now, oldest first.
    pub active: Vec<ActiveTransaction>,
    /// The pool.
    pub pool: PoolStatus,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_read_from_the_buckets() {
        let histogram = Histogram::default();
        for _ in 0..90 {
            histogram.record(Duration::from_micros(800));
        }
        for _ in 0..10 {
            histogram.record(Duration::from_millis(40));
        }
        let counts = histogram.read();
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

    #[test]
    fn function_names_past_the_limit_share_one_series() {
        let metrics = Metrics::new(u64::MAX, 2);
        let names: [&'static str; 4] = ["a", "b", "c", "d"];
        for name in names {
            metrics.series(name).add(Count::Started);
        }
        let (functions, total) = metrics.snapshot();
        let listed: Vec<(&str, u64)> = functions
            .iter()
            .map(|f| (f.function.as_str(), f.started))
            .collect();
        assert_eq!(listed, [("a", 1), ("b", 1), ("other", 2)]);
        assert_eq!(total.started, 4);
    }
}
