//! The transaction manager: a sqlx pool with a dialect, a retry policy,
//! hooks and metrics; the closure API that runs a body in a transaction;
//! and installing a manager as the default that `#[transactional]` uses when
//! it names none.
//!
//! A manager is cheap to clone and can be shared across tasks; several
//! managers (several databases) live side by side, each scope finding the
//! transactions of its own manager only.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Pool;

use crate::call::attempts::{Attempts, run_once};
use crate::context;
use crate::defaults;
use crate::dialect::Dialect;
use crate::engine::{Backend, Engine, EngineHandle};
use crate::error::Error;
use crate::event::{HookOutput, Phase, TxEvent, boxed_hook};
use crate::failure::{ErrorSource, inspect_source};
use crate::hooks::list::ManagerHooks;
use crate::nested_acquire::NestedAcquires;
use crate::observe::metrics::{DEFAULT_MAX_FUNCTIONS, Metrics, MetricsSnapshot};
use crate::replicas::{Failover, Options, ReplicaReport, ReplicaSet, ReplicaSettings, SessionToken};
use crate::request::CallOptions;
use crate::retry::RetryPolicy;
use crate::session::{ProbeCache, TxConn};

/// Runs transactions on one sqlx pool.
///
/// ```
/// use covet_txn::{Isolation, TxManager, TxOptions};
/// # async fn demo() -> Result<(), covet_txn::Error> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let manager = TxManager::new(pool);
///
/// let options = TxOptions::new().isolation(Isolation::Serializable);
/// let answer: i64 = manager
///     .transaction(options, || async {
///         let answer = sqlx::query_scalar("SELECT 6 * 7")
///             .fetch_one(&mut *covet_txn::sqlite::conn()?)
///             .await?;
///         Ok::<_, covet_txn::Error>(answer)
///     })
///     .await?;
/// assert_eq!(answer, 42);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub struct TxManager<DB: Backend> {
    engine: Arc<Engine<DB>>,
}

impl<DB: Backend> Clone for TxManager<DB> {
    fn clone(&self) -> Self {
        TxManager {
            engine: Arc::clone(&self.engine),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for TxManager<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxManager")
            .field("name", &self.engine.name)
            .field("backend", &self.engine.dialect.system())
            .finish()
    }
}

impl<DB: Backend> TxManager<DB> {
    /// A manager for `pool` with the default settings.
    pub fn new(pool: Pool<DB>) -> Self {
        TxManager::builder(pool).build()
    }

    /// A manager for `pool`, configured step by step.
    ///
    /// ```
    /// use std::time::Duration;
    /// use covet_txn::{RetryPolicy, TxManager};
    /// # fn demo(pool: sqlx::SqlitePool) {
    /// let manager = TxManager::builder(pool)
    ///     .name("orders")
    ///     .retry_policy(RetryPolicy::new().retries(5).backoff(Duration::from_millis(2)))
    ///     .build();
    /// # }
    /// ```
    pub fn builder(pool: Pool<DB>) -> TxManagerBuilder<DB> {
        TxManagerBuilder {
            pool,
            name: None,
            retry_policy: RetryPolicy::new(),
            hooks: ManagerHooks::default(),
            max_functions: DEFAULT_MAX_FUNCTIONS,
            dialect: None,
            replicas: Vec::new(),
            replica_settings: ReplicaSettings::default(),
            primary_hosts: Vec::new(),
            failover_wait: DEFAULT_FAILOVER_WAIT,
        }
    }

    /// The pool transactions are taken from.
    pub fn pool(&self) -> &Pool<DB> {
        &self.engine.pool
    }

    /// The manager's name.
    pub fn name(&self) -> &str {
        &self.engine.name
    }

    /// The dialect the manager's transactions are written in.
    pub fn dialect(&self) -> &Arc<dyn Dialect<DB>> {
        &self.engine.dialect
    }

    /// Makes this manager the process-wide default for `#[transactional]`
    /// functions that name none. Call it once at start-up; a second call fails
    /// with [`Error::DefaultManagerAlreadySet`].
    pub fn install_default(&self) -> Result<(), Error> {
        defaults::install(self.handle())
    }

    /// Runs `body` with this manager as the default of the current task,
    /// ahead of the process-wide default. Useful in tests and for
    /// per-tenant databases.
    pub fn scope<F: Future>(&self, body: F) -> impl Future<Output = F::Output> + use<DB, F> {
        defaults::scope(self.handle(), body)
    }

    /// Everything this manager has counted, and the transactions running
    /// now. Taking it never holds up transactions for more than copying the
    /// active list.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.handle().snapshot()
    }

    /// Starts a monitor with the default settings: a sample every 10 s, a
    /// history of 3,600, alerts at the default thresholds.
    #[cfg(feature = "monitor")]
    pub fn monitor(&self) -> crate::monitor::Monitor {
        self.monitor_with(crate::monitor::MonitorConfig::default())
    }

    /// Starts a monitor with these settings. Its background sampling needs
    /// a tokio runtime; without one it samples only when asked.
    #[cfg(feature = "monitor")]
    pub fn monitor_with(&self, config: crate::monitor::MonitorConfig) -> crate::monitor::Monitor {
        crate::monitor::Monitor::start(&self.handle(), config)
    }

    /// The metrics in the Prometheus (OpenMetrics) text format, with
    /// `manager` and `function` labels; serve it with
    /// [`OPENMETRICS_CONTENT_TYPE`](crate::monitor::OPENMETRICS_CONTENT_TYPE).
    #[cfg(feature = "monitor")]
    pub fn prometheus_text(&self) -> Result<String, Error> {
        crate::monitor::export_text(self.prometheus_collector())
    }

    /// The metrics as a collector for your own `prometheus_client` registry.
    #[cfg(feature = "monitor")]
    pub fn prometheus_collector(&self) -> crate::monitor::PrometheusCollector {
        crate::monitor::PrometheusCollector(self.handle())
    }

    /// The retry policy of calls that ask for `retry` without saying how.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.engine.retry_policy
    }

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

    /// Runs `body` in a transaction of this manager with `options`: begins one
    /// (or nests, joins, per the propagation), commits if `body` returns `Ok`,
    /// rolls back if it returns `Err` or panics. What `#[transactional]`
    /// expands to. `options` is a [`TxOptions`](crate::TxOptions), or [`CallOptions`] made by
    /// [`TxOptions::commit_on`](crate::TxOptions::commit_on). The body's error type is any
    /// `std::error::Error` that converts from [`Error`], `anyhow::Error`, or
    /// `Box<dyn Error + Send + Sync>`.
    ///
    /// The body runs once; for retries use
    /// [`transaction_with_retry`](Self::transaction_with_retry).
    pub async fn transaction<T, E, M, F, Fut>(
        &self,
        options: impl Into<CallOptions<E>>,
        body: F,
    ) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error> + ErrorSource<M>,
    {
        run_once(
            Some(self.handle()),
            options.into(),
            inspect_source::<E, M>,
            body(),
        )
        .await
    }

    /// Like [`transaction`](Self::transaction), but runs `body` again (a fresh
    /// future each time) when an attempt fails in a way a retry can fix, as
    /// the options' retry settings (or this manager's policy) allow.
    pub async fn transaction_with_retry<T, E, M, F, Fut>(
        &self,
        options: impl Into<CallOptions<E>>,
        body: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error> + ErrorSource<M>,
    {
        retry_loop(Some(self.handle()), options.into(), body).await
    }

    /// Lends the connection of this manager's innermost running transaction;
    /// [`conn`](crate::conn) picks the innermost of any manager.
    pub fn conn(&self) -> Result<TxConn<DB>, Error> {
        let id = self.engine.id;
        context::lend::<DB>(|frame| frame.session.core().manager_id == id)
    }

    #[doc(hidden)]
    pub fn handle(&self) -> EngineHandle {
        DB::erase_engine(Arc::clone(&self.engine))
    }
}

/// Builds a [`TxManager`].
#[must_use]
pub struct TxManagerBuilder<DB: Backend> {
    pool: Pool<DB>,
    name: Option<String>,
    retry_policy: RetryPolicy,
    hooks: ManagerHooks,
    max_functions: usize,
    dialect: Option<Arc<dyn Dialect<DB>>>,
    replicas: Vec<Pool<DB>>,
    replica_settings: ReplicaSettings,
    primary_hosts: Vec<Options<DB>>,
    failover_wait: Duration,
}

/// How long a retry waits for a writable primary after a failover.
const DEFAULT_FAILOVER_WAIT: Duration = Duration::from_secs(30);

impl<DB: Backend> TxManagerBuilder<DB> {
    /// A name for logs and metrics (for example the database it serves); by
    /// default the dialect's `db.system` name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The dialect of the database behind the pool, when it is not the
    /// driver's own: a database that speaks the PostgreSQL or MySQL protocol
    /// with rules of its own (see [`dialect`](crate::dialect)).
    pub fn dialect(mut self, dialect: impl Dialect<DB>) -> Self {
        self.dialect = Some(Arc::new(dialect));
        self
    }

    /// The retry policy for calls that ask for `retry` without saying how;
    /// what a call does say overrides it.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = policy;
        self
    }

    /// Runs `hook` after every committed transaction of this manager (audit
    /// logs, metrics sinks), after the hooks the transaction registered.
    pub fn on_commit<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(TxEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output: HookOutput> + Send + 'static,
    {
        self.hook(Phase::AfterCommit, hook)
    }

    /// Runs `hook` inside every transaction of this manager just before
    /// COMMIT; a failure rolls the transaction back.
    pub fn before_commit<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(TxEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output: HookOutput> + Send + 'static,
    {
        self.hook(Phase::BeforeCommit, hook)
    }

    /// Runs `hook` after every rolled-back transaction of this manager.
    pub fn on_rollback<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(TxEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output: HookOutput> + Send + 'static,
    {
        self.hook(Phase::AfterRollback, hook)
    }

    /// Runs `hook` inside every transaction of this manager just before it
    /// rolls back.
    pub fn before_rollback<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(TxEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output: HookOutput> + Send + 'static,
    {
        self.hook(Phase::BeforeRollback, hook)
    }

    fn hook<F, Fut>(mut self, phase: Phase, hook: F) -> Self
    where
        F: Fn(TxEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output: HookOutput> + Send + 'static,
    {
        self.hooks
            .add(phase, Arc::new(move |event| boxed_hook(hook(event))));
        self
    }

    /// How many function names get metrics of their own (default 200);
    /// the rest share one `other` series, which keeps label cardinality
    /// bounded.
    pub fn max_functions(mut self, max_functions: usize) -> Self {
        self.max_functions = max_functions;
        self
    }

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
    /// (PostgreSQL's); with another, no replica serves and
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
    /// pool's own options are the first guess). After a connection failure
    /// a retrying call waits for the host that accepts writes, points the
    /// pool at it and runs there. Needs a dialect with replication queries.
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

    /// The manager.
    pub fn build(self) -> TxManager<DB> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let dialect = self.dialect.unwrap_or_else(DB::default_dialect);
        let name = self.name.unwrap_or_else(|| dialect.system().to_owned());
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let replicas = ReplicaSet::new(
            self.pool.clone(),
            Arc::clone(&dialect),
            self.replicas,
            self.replica_settings,
        );
        TxManager {
            engine: Arc::new(Engine {
                id,
                name,
                pool: self.pool,
                dialect,
                retry_policy: self.retry_policy,
                hooks: Arc::new(self.hooks),
                metrics: Arc::new(Metrics::new(id, self.max_functions)),
                nested_acquires: NestedAcquires::default(),
                probes: ProbeCache::default(),
                replicas,
                failover: Failover::new(self.primary_hosts, self.failover_wait),
            }),
        }
    }
}

/// Runs `body` in a transaction of the default manager. See
/// [`TxManager::transaction`].
pub async fn transaction<T, E, M, F, Fut>(
    options: impl Into<CallOptions<E>>,
    body: F,
) -> Result<T, E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<Error> + ErrorSource<M>,
{
    run_once(None, options.into(), inspect_source::<E, M>, body()).await
}

/// Runs `body` in a transaction of the default manager, retrying. See
/// [`TxManager::transaction_with_retry`].
pub async fn transaction_with_retry<T, E, M, F, Fut>(
    options: impl Into<CallOptions<E>>,
    body: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<Error> + ErrorSource<M>,
{
    retry_loop(None, options.into(), body).await
}

async fn retry_loop<T, E, M, F, Fut>(
    manager: Option<EngineHandle>,
    mut options: CallOptions<E>,
    mut body: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<Error> + ErrorSource<M>,
{
    options.options = options.options.retry();
    let mut attempts = Attempts::new(manager, options);
    loop {
        if let Some(result) = attempts.attempt(inspect_source::<E, M>, body()).await {
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_given_as_tx_options_take_any_error_type() {
        use crate::request::TxOptions;
        let options: CallOptions<std::io::Error> = TxOptions::new().into();
        assert!(options.commit_on.is_none());
    }
}
