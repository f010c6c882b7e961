//! A manager's live numbers: per-function series of atomic counters and a
//! duration histogram, the registry of transactions running now, and the
//! snapshots taken of them.
//!
//! A transaction finds its function's series through a per-thread cache, so
//! the shared map (and its lock) is touched once per thread and function,
//! not once per transaction. The number of series is bounded: names beyond
//! the limit share one `other` series. Exposition (Prometheus, JSON, CSV)
//! and interpretation (alerts, health) live in `monitor/`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::two_phase::{TwoPhaseStats, TwoPhaseViews};
use crate::quick_map::QuickMap;

use super::counters::{Counter, DURATION_BUCKETS, FunctionMetrics, HistogramCounts};

/// A latency histogram of atomics.
#[derive(Debug, Default)]
struct Histogram {
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

/// The counters of one function (or of the `other` series).
#[derive(Debug)]
pub(crate) struct Series {
    function: String,
    counts: Box<[AtomicU64]>,
    duration: Histogram,
}

impl Series {
    fn new(function: String) -> Self {
        Series {
            function,
            counts: Counter::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            duration: Histogram::default(),
        }
    }

    pub(crate) fn add(&self, counter: Counter) {
        self.counts[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_many(&self, counter: Counter, amount: u64) {
        self.counts[counter as usize].fetch_add(amount, Ordering::Relaxed);
    }

    pub(crate) fn record_duration(&self, duration: Duration) {
        self.duration.record(duration);
    }

    fn snapshot(&self) -> FunctionMetrics {
        FunctionMetrics::from_counts(
            self.function.clone(),
            |counter| self.counts[counter as usize].load(Ordering::Relaxed),
            self.duration.read(),
        )
    }
}

/// A transaction the registry can describe while it runs.
pub(crate) trait ActiveTx: Send + Sync {
    fn describe(&self, now: Instant) -> ActiveTransaction;
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
    active: [Mutex<QuickMap<u64, Arc<dyn ActiveTx>>>; SHARDS],
    /// The two-phase coordinators this manager takes part in.
    pub(crate) two_phase: TwoPhaseViews,
    /// The outbox tables this manager's relays serve.
    #[cfg(feature = "outbox")]
    pub(crate) outbox: super::outbox::OutboxViews,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("id", &self.id).finish()
    }
}

thread_local! {
    /// Series this thread has looked up: (manager, address and length of the
    /// function's name) to series. Equal names at different addresses get
    /// entries of their own, which resolve to the same series.
    static CACHE: RefCell<QuickMap<(u64, usize, usize), Arc<Series>>> = RefCell::new(QuickMap::default());
}

/// Past this many entries a thread's cache starts over, so that managers
/// created and dropped (in tests, per tenant) do not pile up in it.
const CACHE_LIMIT: usize = 4096;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    pub(crate) fn new(id: u64, max_functions: usize) -> Self {
        Metrics {
            id,
            series: Mutex::new(HashMap::new()),
            other: Arc::new(Series::new(OTHER_FUNCTIONS.to_owned())),
            max_functions,
            active: std::array::from_fn(|_| Mutex::new(QuickMap::default())),
            two_phase: TwoPhaseViews::default(),
            #[cfg(feature = "outbox")]
            outbox: super::outbox::OutboxViews::default(),
        }
    }

    /// The series of `function`.
    pub(crate) fn series(&self, function: &'static str) -> Arc<Series> {
        let key = (self.id, function.as_ptr() as usize, function.len());
        if let Some(series) = CACHE.with(|cache| cache.borrow().get(&key).cloned()) {
            return series;
        }
        let series = {
            let mut map = lock(&self.series);
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

    fn shard(&self, id: u64) -> &Mutex<QuickMap<u64, Arc<dyn ActiveTx>>> {
        &self.active[(id % SHARDS as u64) as usize]
    }

    pub(crate) fn activate(&self, id: u64, transaction: Arc<dyn ActiveTx>) {
        lock(self.shard(id)).insert(id, transaction);
    }

    pub(crate) fn deactivate(&self, id: u64) {
        lock(self.shard(id)).remove(&id);
    }

    /// The transactions running now, oldest first. Each shard is locked only
    /// to copy its handles out, so listing never holds up transactions for
    /// longer than that.
    pub(crate) fn active(&self) -> Vec<ActiveTransaction> {
        let mut running = Vec::new();
        for shard in &self.active {
            running.extend(lock(shard).values().cloned());
        }
        let now = Instant::now();
        let mut active: Vec<ActiveTransaction> = running
            .iter()
            .map(|transaction| transaction.describe(now))
            .collect();
        active.sort_by(|a, b| b.age_ms.total_cmp(&a.age_ms));
        active
    }

    /// Every function's counters, and their totals.
    pub(crate) fn snapshot(&self) -> (Vec<FunctionMetrics>, FunctionMetrics) {
        let mut all: Vec<Arc<Series>> = lock(&self.series).values().cloned().collect();
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
/// ```
/// # fn demo(manager: covet_txn::TxManager<sqlx::Sqlite>) {
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
    /// Each function's admission, by name: the functions that ran under
    /// contention management or declared conflict keys.
    pub admission: Vec<AdmissionStatus>,
    /// The two-phase coordinators this manager takes part in, by name.
    pub two_phase: Vec<TwoPhaseStats>,
    /// The outbox tables this manager's relays serve (feature `outbox`).
    #[cfg(feature = "outbox")]
    pub outbox: Vec<super::outbox::OutboxMetrics>,
}

/// How one function's attempts are admitted now (see
/// [`Contention`](crate::Contention)).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[non_exhaustive]
pub struct AdmissionStatus {
    /// The function's path.
    pub function: String,
    /// How many of its attempts (retries included) may run at once under
    /// contention management: the limit at which the function has measured
    /// the most attempts per second that did not end in a conflict, a whole
    /// number between 1 and the pool's size. `None` for a function that
    /// only declares conflict keys.
    pub limit: Option<f64>,
    /// Its attempts waiting for their turn now (keys, limit or
    /// SQLite's writer turn).
    pub waiting: u32,
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
    fn function_names_past_the_limit_share_one_series() {
        let metrics = Metrics::new(u64::MAX, 2);
        let names: [&'static str; 4] = ["a", "b", "c", "d"];
        for name in names {
            metrics.series(name).add(Counter::started);
        }
        let (functions, total) = metrics.snapshot();
        let listed: Vec<(&str, u64)> = functions
            .iter()
            .map(|f| (f.function.as_str(), f.started))
            .collect();
        assert_eq!(listed, [("a", 1), ("b", 1), ("other", 2)]);
        assert_eq!(total.started, 4);
    }

    #[test]
    fn durations_land_in_their_buckets() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(800));
        histogram.record(Duration::from_secs(100));
        let counts = histogram.read();
        assert_eq!(counts.buckets[1], 1);
        assert_eq!(counts.buckets[DURATION_BUCKETS.len()], 1);
    }
}
