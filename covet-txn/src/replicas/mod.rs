//! Choosing the server a transaction runs on: read-only transactions on a
//! replica that is up, close enough behind the primary and, for a reader
//! that wrote lately, past its write (`writes`); the primary otherwise. The
//! replicas' state comes from a background probe (`probe`), never from a
//! query per transaction. Finding the writable server among several
//! primary hosts after a failover is `failover`.
//!
//! Backend-agnostic: the queries are the dialect's
//! [`Replication`](crate::dialect::Replication); positions are numbers.

mod failover;
mod probe;
mod writes;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::backend::Driver;
use crate::dialect::{Dialect, Replication};
use crate::error::Error;

pub(crate) use self::failover::{DEFAULT_FAILOVER_WAIT, Failover, Options};
pub use self::writes::SessionToken;
use self::writes::Writes;

/// How replicas are chosen and watched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplicaSettings {
    /// A replica further behind the primary than this serves no reads.
    pub(crate) max_lag: Duration,
    /// How often the background probe reads the positions.
    pub(crate) probe_interval: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings {
            max_lag: Duration::from_secs(5),
            probe_interval: Duration::from_millis(250),
        }
    }
}

impl ReplicaSettings {
    /// How long a probe's answer stays good enough to route by: three
    /// rounds, and the wait for a replica that hangs until the probe's
    /// timeout, which delays the next round.
    fn freshness(&self) -> Duration {
        self.probe_interval * 3 + probe::PROBE_TIMEOUT
    }
}

/// What the last probe found on one replica.
#[derive(Debug, Clone, Default)]
struct Observed {
    probed_at: Option<Instant>,
    reachable: bool,
    replayed: Option<u64>,
    /// The replica has everything the primary had this long before the
    /// probe.
    lag: Option<Duration>,
    lag_bytes: Option<u64>,
    error: Option<String>,
}

struct Replica<DB: sqlx::Database> {
    name: String,
    pool: sqlx::Pool<DB>,
    observed: RwLock<Observed>,
    routed: AtomicU64,
}

impl<DB: sqlx::Database> Replica<DB> {
    fn observed(&self) -> Observed {
        self.observed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, observed: Observed) {
        *self
            .observed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = observed;
    }

    /// May serve a read that needs `position` replayed, per the last probe.
    fn serves(&self, settings: &ReplicaSettings, position: Option<u64>) -> bool {
        let observed = self
            .observed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (Some(probed_at), Some(lag)) = (observed.probed_at, observed.lag) else {
            return false;
        };
        let age = probed_at.elapsed();
        observed.reachable
            && age <= settings.freshness()
            && lag + age <= settings.max_lag
            && position.is_none_or(|needed| observed.replayed.is_some_and(|done| done >= needed))
    }
}

/// A manager's replicas, their state, and the counts of where reads went.
pub(crate) struct ReplicaSet<DB: Driver> {
    primary: sqlx::Pool<DB>,
    dialect: Arc<dyn Dialect<DB>>,
    replicas: Vec<Replica<DB>>,
    settings: ReplicaSettings,
    writes: Writes,
    samples: probe::Samples,
    next: AtomicUsize,
    probing: AtomicBool,
    on_primary_unavailable: AtomicU64,
    on_primary_for_writes: AtomicU64,
}

impl<DB: Driver> ReplicaSet<DB> {
    /// `None` when there are no replicas. With a dialect that cannot follow
    /// replication no replica ever serves, and each says why.
    pub(crate) fn new(
        primary: sqlx::Pool<DB>,
        dialect: Arc<dyn Dialect<DB>>,
        pools: Vec<sqlx::Pool<DB>>,
        settings: ReplicaSettings,
    ) -> Option<Arc<Self>> {
        if pools.is_empty() {
            return None;
        }
        let replicas = pools
            .into_iter()
            .enumerate()
            .map(|(index, pool)| Replica {
                name: format!("replica-{index}"),
                pool,
                observed: RwLock::default(),
                routed: AtomicU64::new(0),
            })
            .collect();
        let set = Arc::new(ReplicaSet {
            primary,
            dialect,
            replicas,
            settings,
            writes: Writes::default(),
            samples: probe::Samples::default(),
            next: AtomicUsize::new(0),
            probing: AtomicBool::new(false),
            on_primary_unavailable: AtomicU64::new(0),
            on_primary_for_writes: AtomicU64::new(0),
        });
        probe::spawn(&set);
        Some(set)
    }

    /// The replica pool a read-only transaction of the current reader runs
    /// on, or `None` for the primary. Counts the choice.
    pub(crate) fn route(self: &Arc<Self>) -> Option<(usize, &sqlx::Pool<DB>)> {
        if !self.probing.load(Ordering::Relaxed) {
            probe::spawn(self);
        }
        let position = match self.writes.need() {
            // Wrote, and no sample since: only the primary has it for sure.
            Some(need) if need.position.is_none() => {
                self.on_primary_for_writes.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            need => need.and_then(|need| need.position),
        };
        let count = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut any_fresh = false;
        for offset in 0..count {
            let index = (start + offset) % count;
            let replica = &self.replicas[index];
            if replica.serves(&self.settings, position) {
                replica.routed.fetch_add(1, Ordering::Relaxed);
                return Some((index, &replica.pool));
            }
            any_fresh |= position.is_some() && replica.serves(&self.settings, None);
        }
        if any_fresh {
            self.on_primary_for_writes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.on_primary_unavailable.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// The replica at `index` could not give a connection: it serves no
    /// reads until a probe finds it again, and this read goes to the
    /// primary.
    pub(crate) fn failed(&self, index: usize, error: &Error) {
        if let Some(replica) = self.replicas.get(index) {
            let mut observed = replica.observed();
            observed.reachable = false;
            observed.error = Some(error.to_string());
            replica.set(observed);
            replica.routed.fetch_sub(1, Ordering::Relaxed);
        }
        self.on_primary_unavailable.fetch_add(1, Ordering::Relaxed);
    }

    /// The current reader committed a write. The probe, which forgets old
    /// writes, runs from here on too: a manager built outside a runtime
    /// that only writes would otherwise keep every task's entry.
    pub(crate) fn committed_write(self: &Arc<Self>) {
        if !self.probing.load(Ordering::Relaxed) {
            probe::spawn(self);
        }
        self.writes.committed();
    }

    /// The current reader must see what `token` stands for.
    pub(crate) fn read_after(&self, token: SessionToken) {
        self.writes.read_after(token);
    }

    /// A token for what the current reader wrote: the sample that covers
    /// its last write, or, before one exists, the primary's position read
    /// now (one query). `None` when it wrote nothing lately.
    pub(crate) async fn session_token(&self) -> Result<Option<SessionToken>, Error> {
        match self.writes.need() {
            None => Ok(None),
            Some(need) => match need.position {
                Some(position) => Ok(Some(SessionToken(position))),
                None => {
                    let queries = replication(&*self.dialect)?;
                    probe::position(&self.primary, queries, queries.write_position())
                        .await
                        .map(|position| Some(SessionToken(position)))
                }
            },
        }
    }

    /// Probes every replica now instead of waiting for the next round.
    pub(crate) async fn refresh(&self) {
        probe::round(self).await;
    }

    pub(crate) fn report(&self) -> ReplicaReport {
        ReplicaReport {
            replicas: self
                .replicas
                .iter()
                .map(|replica| {
                    let observed = replica.observed();
                    ReplicaStatus {
                        name: replica.name.clone(),
                        reachable: observed.reachable,
                        serving: replica.serves(&self.settings, None),
                        lag: observed.lag,
                        lag_bytes: observed.lag_bytes,
                        reads: replica.routed.load(Ordering::Relaxed),
                        last_error: observed.error,
                    }
                })
                .collect(),
            max_lag: self.settings.max_lag,
            reads_on_primary_unavailable: self.on_primary_unavailable.load(Ordering::Relaxed),
            reads_on_primary_for_writes: self.on_primary_for_writes.load(Ordering::Relaxed),
            primary_changes: 0,
        }
    }
}

/// The first column of the first row of `sql`, run on `conn`.
async fn first_value<DB: Driver>(
    conn: &mut DB::Connection,
    sql: &'static str,
) -> Result<Option<String>, Error> {
    let rows = DB::text_rows(conn, sql.to_owned(), Vec::new())
        .await
        .map_err(|source| Error::database(crate::error::Operation::Replication, source))?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next().flatten()))
}

/// The dialect's replication queries, or the error that says there are
/// none.
pub(crate) fn replication<DB: sqlx::Database>(
    dialect: &dyn Dialect<DB>,
) -> Result<&dyn Replication, Error> {
    dialect.replication().ok_or(Error::ReplicationUnsupported {
        system: dialect.system(),
    })
}

/// Where a manager's read-only transactions went, and what its replicas
/// looked like at the last probe: [`TxManager::replicas`](crate::TxManager::replicas).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplicaReport {
    /// Each replica, in the order the builder was given them.
    pub replicas: Vec<ReplicaStatus>,
    /// The lag bound: a replica further behind serves no reads.
    pub max_lag: Duration,
    /// Read-only transactions run on the primary because no replica was up
    /// and within the lag bound.
    pub reads_on_primary_unavailable: u64,
    /// Read-only transactions run on the primary because their task (or
    /// session token) wrote something no serving replica had replayed yet.
    pub reads_on_primary_for_writes: u64,
    /// How often failover found the writable server on another host.
    pub primary_changes: u64,
}

/// One replica at the last probe.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// `replica-0`, `replica-1`, ... in the order the builder was given them.
    pub name: String,
    /// The last probe reached it.
    pub reachable: bool,
    /// Serves reads now: reachable, probed lately, within the lag bound.
    pub serving: bool,
    /// It had everything the primary had this long before the last probe.
    pub lag: Option<Duration>,
    /// How far its replayed position was behind the primary's, in the
    /// dialect's units: bytes of WAL on PostgreSQL, transactions (GTID
    /// sequence numbers) on MariaDB.
    pub lag_bytes: Option<u64>,
    /// Read-only transactions it has served.
    pub reads: u64,
    /// Why the last probe or connection failed, if it did.
    pub last_error: Option<String>,
}
