//! The background probe: each round reads the primary's log position, then
//! each replica's replayed position, and works out how far behind each
//! replica is in time, from the history of the primary's positions: a
//! replica that has replayed past the primary's position of time `t` has
//! everything the primary had at `t`. An idle primary writes nothing, so a
//! replica of an idle primary is never counted as behind.
//!
//! One task per manager, holding it weakly: it ends when the manager is
//! dropped or its runtime shuts down (the next read starts another).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Observed, ReplicaSet, first_value, replication};
use crate::backend::Driver;
use crate::dialect::Replication;
use crate::error::{Error, Operation};

/// A probe query that takes longer than this counts as a failure.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The primary's positions over the last rounds, oldest first.
#[derive(Default)]
pub(super) struct Samples(Mutex<VecDeque<(Instant, u64)>>);

impl Samples {
    fn push(&self, at: Instant, position: u64, keep: Duration) {
        let mut samples = self.lock();
        samples.push_back((at, position));
        while samples.len() > 2 && samples.front().is_some_and(|(t, _)| t.elapsed() > keep) {
            samples.pop_front();
        }
    }

    /// How long before `now` the primary was at `replayed`: between the
    /// last sample at or behind it and the next one, by linear
    /// interpolation (a probe's granularity would otherwise floor the lag
    /// of a busy primary at a round or two); with no sample that old, the
    /// age of the oldest (a lower bound).
    fn lag(&self, now: Instant, replayed: u64) -> Option<Duration> {
        let samples = self.lock();
        let behind = samples
            .iter()
            .rposition(|(_, position)| *position <= replayed);
        let Some(index) = behind else {
            return samples
                .front()
                .map(|(at, _)| now.saturating_duration_since(*at));
        };
        let (at, position) = samples[index];
        let passed = match samples.get(index + 1) {
            Some(&(next_at, next_position)) if next_position > position => {
                let share = (replayed - position) as f64 / (next_position - position) as f64;
                at + (next_at - at).mul_f64(share)
            }
            _ => at,
        };
        Some(now.saturating_duration_since(passed))
    }

    fn latest(&self) -> Option<u64> {
        self.lock().back().map(|(_, position)| *position)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, u64)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Starts the probe task of `set` if none runs and a runtime is there.
pub(super) fn spawn<DB: Driver>(set: &Arc<ReplicaSet<DB>>) {
    if tokio::runtime::Handle::try_current().is_err() || set.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(set);
    tokio::spawn(async move {
        let _running = Running(weak.clone());
        loop {
            let Some(set) = weak.upgrade() else { return };
            round(&set).await;
            let interval = set.settings.probe_interval;
            drop(set);
            tokio::time::sleep(interval).await;
        }
    });
}

/// Marks the probe stopped when its task ends, however it ends.
struct Running<DB: Driver>(Weak<ReplicaSet<DB>>);

impl<DB: Driver> Drop for Running<DB> {
    fn drop(&mut self) {
        if let Some(set) = self.0.upgrade() {
            set.probing.store(false, Ordering::Release);
        }
    }
}

/// One round: the primary's position, then every replica's.
pub(super) async fn round<DB: Driver>(set: &ReplicaSet<DB>) {
    let queries = match replication(&*set.dialect) {
        Ok(queries) => queries,
        Err(error) => {
            for replica in &set.replicas {
                replica.set(Observed {
                    probed_at: Some(Instant::now()),
                    error: Some(error.to_string()),
                    ..Observed::default()
                });
            }
            return;
        }
    };
    let started = Instant::now();
    let keep = set.settings.max_lag + set.settings.freshness();
    // A primary whose position cannot be read gives the replicas no lag,
    // so none serves; a position it cannot order is the reason each
    // replica shows. A failure to reach it is the primary's own business.
    let primary = match position(&set.primary, queries, queries.write_position()).await {
        Ok(position) => {
            set.samples.push(started, position, keep);
            set.writes.sampled(started, position, keep);
            None
        }
        Err(error @ Error::ReplicationPosition(_)) => Some(format!("on the primary: {error}")),
        Err(_) => None,
    };
    let primary = &primary;
    // Side by side, each recorded as it answers: a replica that hangs
    // until the probe's timeout holds up no other's answer.
    let probes = set.replicas.iter().map(|replica| async move {
        let replayed = position(&replica.pool, queries, queries.replay_position()).await;
        let now = Instant::now();
        replica.set(match replayed {
            Ok(replayed) => Observed {
                probed_at: Some(now),
                reachable: true,
                replayed: Some(replayed),
                lag: set.samples.lag(started, replayed),
                lag_bytes: set
                    .samples
                    .latest()
                    .map(|latest| latest.saturating_sub(replayed)),
                error: primary.clone(),
            },
            Err(error) => Observed {
                probed_at: Some(now),
                error: Some(error.to_string()),
                ..Observed::default()
            },
        });
    });
    futures_util::future::join_all(probes).await;
}

/// Runs a position query of `queries` on a connection of `pool`.
pub(super) async fn position<DB: Driver>(
    pool: &sqlx::Pool<DB>,
    queries: &dyn Replication,
    sql: &'static str,
) -> Result<u64, Error> {
    let query = async {
        let mut conn = pool
            .acquire()
            .await
            .map_err(|source| Error::database(Operation::Replication, source))?;
        let text = first_value::<DB>(&mut conn, sql)
            .await?
            .ok_or(Error::NotAReplica)?;
        queries
            .parse_position(&text)
            .map_err(Error::ReplicationPosition)
    };
    tokio::time::timeout(PROBE_TIMEOUT, query)
        .await
        .unwrap_or(Err(Error::Timeout {
            timeout: PROBE_TIMEOUT,
            attempts: 1,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_how_long_ago_the_primary_was_where_the_replica_is() {
        let samples = Samples::default();
        let t0 = Instant::now();
        samples.push(t0, 100, Duration::from_secs(60));
        samples.push(
            t0 + Duration::from_millis(100),
            200,
            Duration::from_secs(60),
        );
        samples.push(
            t0 + Duration::from_millis(200),
            300,
            Duration::from_secs(60),
        );
        let now = t0 + Duration::from_millis(200);
        assert_eq!(samples.lag(now, 300), Some(Duration::ZERO));
        assert_eq!(samples.lag(now, 200), Some(Duration::from_millis(100)));
        assert_eq!(samples.lag(now, 250), Some(Duration::from_millis(50)));
        assert_eq!(samples.lag(now, 50), Some(Duration::from_millis(200)));
    }
}
