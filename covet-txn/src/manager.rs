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

use crate::admission::Admission;
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
use crate::options::Contention;
use crate::replicas::{DEFAULT_FAILOVER_WAIT, Failover, Options, ReplicaSet, ReplicaSettings};
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
    pub(crate) engine: Arc<Engine<DB>>,
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
            contention: Contention::Off,
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
    pub(crate) replicas: Vec<Pool<DB>>,
    pub(crate) replica_settings: ReplicaSettings,
    pub(crate) primary_hosts: Vec<Options<DB>>,
    pub(crate) failover_wait: Duration,
    contention: Contention,
}

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

    /// Whether the manager's calls manage contention (see [`Contention`]);
    /// a function's `contention = "..."` overrides it. Off by default.
    pub fn contention(mut self, contention: Contention) -> Self {
        self.contention = contention;
        self
    }

    /// How many function names get metrics of their own (default 200);
    /// the rest share one `other` series, which keeps label cardinality
    /// bounded.
    pub fn max_functions(mut self, max_functions: usize) -> Self {
        self.max_functions = max_functions;
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
        let admission = Admission::new(
            self.contention,
            self.pool.options().get_max_connections(),
            DB::writer_gate(&self.pool),
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
                admission,
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
