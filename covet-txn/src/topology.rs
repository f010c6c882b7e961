//! Replicas and failover on the public API: the builder's settings that
//! give a manager replica pools and several primary hosts, and the
//! manager's report of where reads went, its probe on demand and its
//! session tokens. The routing itself is `replicas`.

use std::time::Duration;

use sqlx::Pool;

use crate::engine::Backend;
use crate::error::Error;
use crate::manager::{TxManager, TxManagerBuilder};
use crate::replicas::{Options, ReplicaReport, SessionToken};

impl<DB: Backend> TxManager<DB> {
    /// Where read-only transactions went and how far behind each replica
    /// was at the last probe. Empty for a manager without replicas.
    pub fn replicas(&self) -> ReplicaReport {
        self.handle().replica_report()
    }

    /// Probes the replicas now rather than at the next background round:
    /// at start-up, before the first reads, so that they need not go to the
    /// primary while nothing is known.
    pub async fn refresh_replicas(&self) {
        if let Some(replicas) = &self.engine.replicas {
            replicas.refresh().await;
        }
    }

    /// A token for what the current task wrote lately, to hand to the
    /// client so that its next request, served by any process, reads it
    /// back through [`read_after`](Self::read_after). Costs one query on the
    /// primary only when the background probe has not yet sampled a
    /// position past the write. `None`: the task wrote nothing lately (or
    /// the manager has no replicas), and any serving replica has it.
    pub async fn session_token(&self) -> Result<Option<SessionToken>, Error> {
        match &self.engine.replicas {
            Some(replicas) => replicas.session_token().await,
            None => Ok(None),
        }
    }

    /// Makes the current task's read-only transactions run on the primary,
    /// or on a replica that has replayed past `token`: read-your-writes for
    /// a request that follows one that wrote.
    pub fn read_after(&self, token: SessionToken) {
        if let Some(replicas) = &self.engine.replicas {
            replicas.read_after(token);
        }
    }
}

impl<DB: Backend> TxManagerBuilder<DB> {
    /// A read replica: `read_only` transactions that begin a transaction
    /// run on one of the replicas that is up, within
    /// [`max_replica_lag`](Self::max_replica_lag) of the primary and past
    /// the task's own recent writes; every other transaction, and reads when
    /// no replica qualifies, run on the pool given to
    /// [`builder`](TxManager::builder). Call once per replica. A replica's
    /// pool should have a short `acquire_timeout`: a read whose replica
    /// gives no connection goes to the primary once it times out.
    ///
    /// Needs a dialect with [replication queries](crate::dialect::Replication)
    /// (PostgreSQL's, MariaDB's); with another, no replica serves and
    /// [`TxManager::replicas`] says why.
    pub fn replica(mut self, pool: Pool<DB>) -> Self {
        self.replicas.push(pool);
        self
    }

    /// A replica further behind the primary than this serves no reads
    /// (default 5 s). Measured from the primary's log positions, so a
    /// replica of an idle primary is never behind.
    pub fn max_replica_lag(mut self, max_lag: Duration) -> Self {
        self.replica_settings.max_lag = max_lag;
        self
    }

    /// How often the background probe reads the replicas' positions
    /// (default 250 ms): one query on the primary and one on each replica
    /// per round. A task's reads go to the primary for up to about two
    /// rounds after it writes.
    pub fn replica_probe_interval(mut self, interval: Duration) -> Self {
        self.replica_settings.probe_interval = interval;
        self
    }

    /// The hosts the primary may run on, in the order to try them (the
    /// pool's own options are the first guess). A call that loses its
    /// connection, or gets none, waits for the host that accepts writes and
    /// points the pool at it, before its next attempt (with `retry`) or
    /// before it returns its error; so does a read-write call whose write a
    /// primary demoted while still up refused
    /// ([`FailureKind::NotPrimary`](crate::FailureKind::NotPrimary)). Needs
    /// a dialect with replication queries.
    pub fn primary_hosts(mut self, hosts: impl IntoIterator<Item = Options<DB>>) -> Self {
        self.primary_hosts.extend(hosts);
        self
    }

    /// How long a retry waits for one of the [`primary_hosts`](Self::primary_hosts)
    /// to accept writes before it fails with [`Error::NoWritablePrimary`]
    /// (default 30 s).
    pub fn failover_wait(mut self, wait: Duration) -> Self {
        self.failover_wait = wait;
        self
    }
}
