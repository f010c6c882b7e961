//! Several hosts for the primary: finding the one that accepts writes (as
//! libpq's `target_session_attrs=read-write`), and finding it again after a
//! connection failure or a write refused by a primary demoted while still
//! up, by pointing the manager's pool at it. The pool's idle connections
//! are closed then: those of a demoted host still work, and would refuse
//! every write they are lent for. A connection lent out at that moment goes
//! back to the pool and fails its next write once, which finds the primary
//! again and closes it with the other idle ones.
//!
//! Each move to another host starts a new epoch. A COMMIT whose connection
//! was lost is resolved by transaction id only within the epoch it began
//! in: after a failover the new primary may never have received the
//! transaction and may even give its id to another one, so the outcome
//! stays unknown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection};

use super::{first_value, replication};
use crate::backend::Driver;
use crate::dialect::Dialect;
use crate::error::{Error, Operation};
use crate::session::PrimaryEpoch;

/// How long a retry waits for a writable primary after a failover, unless
/// the builder says otherwise.
pub(crate) const DEFAULT_FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// How long one host may take to answer whether it is writable.
const HOST_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between two passes over the hosts while none is writable.
const PASS_PAUSE: Duration = Duration::from_millis(100);
/// `current` before the first discovery.
const UNKNOWN: usize = usize::MAX;

pub(crate) type Options<DB> = <<DB as sqlx::Database>::Connection as Connection>::Options;

/// The primary's candidate hosts and which one the pool points at.
pub(crate) struct Failover<DB: Driver> {
    hosts: Vec<Options<DB>>,
    current: AtomicUsize,
    epoch: Arc<AtomicU64>,
    /// One discovery at a time; the others wait for its answer.
    discovering: tokio::sync::Mutex<()>,
    wait: Duration,
}

impl<DB: Driver> Failover<DB> {
    /// `None` without hosts.
    pub(crate) fn new(hosts: Vec<Options<DB>>, wait: Duration) -> Option<Self> {
        if hosts.is_empty() {
            return None;
        }
        Some(Failover {
            hosts,
            current: AtomicUsize::new(UNKNOWN),
            epoch: Arc::new(AtomicU64::new(0)),
            discovering: tokio::sync::Mutex::new(()),
            wait,
        })
    }

    /// The epoch a session opened now belongs to.
    pub(crate) fn epoch(&self) -> PrimaryEpoch {
        PrimaryEpoch::new(Arc::clone(&self.epoch))
    }

    /// How often the pool was moved to another host.
    pub(crate) fn changes(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// After a connection failure seen in `seen`: finds the writable host,
    /// waiting up to the failover wait for one, and points `pool` at it.
    /// Callers that failed together share one discovery.
    pub(crate) async fn rediscover(
        &self,
        pool: &sqlx::Pool<DB>,
        dialect: &dyn Dialect<DB>,
        seen: &PrimaryEpoch,
    ) -> Result<(), Error> {
        let writable = replication(dialect)?.writable();
        let _one_at_a_time = self.discovering.lock().await;
        if seen.changed() {
            return Ok(());
        }
        let deadline = Instant::now() + self.wait;
        loop {
            for (index, host) in self.hosts.iter().enumerate() {
                let answer = tokio::time::timeout(HOST_TIMEOUT, is_writable::<DB>(host, writable));
                if let Ok(Ok(true)) = answer.await {
                    if self.current.swap(index, Ordering::AcqRel) != index {
                        // The epoch moves before the pool does: a resolution
                        // that reaches the new host sees the new epoch.
                        self.epoch.fetch_add(1, Ordering::AcqRel);
                        pool.set_connect_options(host.clone());
                        tracing::warn!(
                            host = index,
                            "covet-txn: the primary moved to another host"
                        );
                    }
                    close_idle(pool).await;
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::NoWritablePrimary {
                    hosts: self.hosts.len(),
                    waited: self.wait,
                });
            }
            tokio::time::sleep(PASS_PAUSE).await;
        }
    }
}

/// Closes the connections idle in `pool` now. sqlx cannot tell which host
/// a connection is open to, so those already on the writable host go too:
/// this runs only after a failure, and they are made again on demand.
async fn close_idle<DB: Driver>(pool: &sqlx::Pool<DB>) {
    for _ in 0..pool.num_idle() {
        let Some(conn) = pool.try_acquire() else {
            return;
        };
        let _ = conn.close().await;
    }
}

async fn is_writable<DB: Driver>(host: &Options<DB>, sql: &'static str) -> Result<bool, Error> {
    let mut conn = host
        .connect()
        .await
        .map_err(|source| Error::database(Operation::Replication, source))?;
    let writable = first_value::<DB>(&mut conn, sql).await;
    let _ = conn.close().await;
    Ok(writable?.as_deref() == Some("true"))
}
