//! The transaction manager: a sqlx pool with an identity, the closure API
//! that runs a body in a transaction, and the default manager that
//! `#[transactional]` uses when it names none.
//!
//! A manager is cheap to clone and can be shared across tasks; several
//! managers (several databases) live side by side, each scope finding the
//! transactions of its own manager only.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::Pool;

use crate::backend::Backend;
use crate::context::{self, Frame};
use crate::error::Error;
use crate::error::Operation;
use crate::hooks::{HookOutput, ManagerHooks, Phase, TxEvent};
use crate::metrics::{
    Count, DEFAULT_MAX_FUNCTIONS, Metrics, MetricsSnapshot, PoolStatus, Series, unix_millis,
};
use crate::nested_acquire::NestedAcquires;
use crate::options::TxOptions;
use crate::retry::RetryPolicy;
use crate::scope::{self, Attempts};
use crate::transaction::{Accounting, ErasedSession, Opening, Session, Source, TxConn};

/// Runs transactions on one sqlx pool.
///
/// ```no_run
/// use covet_txn::{TxManager, TxOptions, Isolation};
/// # async fn demo() -> Result<(), covet_txn::Error> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// let manager = TxManager::new(pool);
/// manager.install_default()?; // for `#[transactional]` without `manager = ...`
///
/// let options = TxOptions::new().isolation(Isolation::Serializable);
/// let total: i64 = manager
///     .transaction(options, || async {
///         let total = sqlx::query_scalar("SELECT sum(balance)::bigint FROM accounts")
///             .fetch_one(&mut *covet_txn::conn::<sqlx::Postgres>()?)
///             .await?;
///         Ok::<_, covet_txn::Error>(total)
///     })
///     .await?;
/// # let _ = total; Ok(()) }
/// ```
pub struct TxManager<DB: Backend> {
    shared: Arc<Shared<DB>>,
}

struct Shared<DB: Backend> {
    id: u64,
    name: String,
    pool: Pool<DB>,
    retry_policy: RetryPolicy,
    hooks: ManagerHooks,
    metrics: Arc<Metrics>,
    nested_acquires: NestedAcquires,
}

impl<DB: Backend> Clone for TxManager<DB> {
    fn clone(&self) -> Self {
        TxManager {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for TxManager<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxManager")
            .field("name", &self.shared.name)
            .field(
                "backend",
                &<DB as crate::backend::sealed::BackendOps>::SYSTEM,
            )
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
    /// ```no_run
    /// use std::time::{Duration, SystemTime};
    /// use covet_txn::{RetryPolicy, TxManager};
    /// # fn demo(pool: sqlx::PgPool) {
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
        }
    }

    /// The pool transactions are taken from.
    pub fn pool(&self) -> &Pool<DB> {
        &self.shared.pool
    }

    /// The manager's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Makes this manager the process-wide default for `#[transactional]`
    /// functions that name none. Call it once at start-up; a second call fails
    /// with [`Error::DefaultManagerAlreadySet`].
    pub fn install_default(&self) -> Result<(), Error> {
        DEFAULT
            .set(self.handle())
            .map_err(|_| Error::DefaultManagerAlreadySet)
    }

    /// Runs `body` with this manager as the default of the current task,
    /// ahead of the process-wide default. Useful in tests and for
    /// per-tenant databases.
    pub fn scope<F: Future>(&self, body: F) -> impl Future<Output = F::Output> + use<DB, F> {
        SCOPED_DEFAULT.scope(self.handle(), body)
    }

    /// Everything this manager has counted, and the transactions running
    /// now. Taking it never holds up transactions for more than copying the
    /// active list.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.handle().metrics_snapshot()
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
        self.shared.retry_policy
    }

    /// Runs `body` in a transaction of this manager with `options`: begins one
    /// (or nests, joins, per the propagation), commits if `body` returns `Ok`,
    /// rolls back if it returns `Err` or panics. What `#[transactional]`
    /// expands to.
    ///
    /// The body runs once; for retries use
    /// [`transaction_with_retry`](Self::transaction_with_retry).
    pub async fn transaction<T, E, F, Fut>(&self, options: TxOptions, body: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error> + StdError + 'static,
    {
        scope::run(
            Some(self.handle()),
            options,
            inspect_std_error,
            Box::pin(body()),
        )
        .await
    }

    /// Like [`transaction`](Self::transaction), but runs `body` again (a fresh
    /// future each time) when an attempt fails in a way a retry can fix, as
    /// the options' retry settings (or this manager's policy) allow.
    pub async fn transaction_with_retry<T, E, F, Fut>(
        &self,
        options: TxOptions,
        body: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error> + StdError + 'static,
    {
        retry_loop(Some(self.handle()), options.retry(), body).await
    }

    /// Lends the connection of this manager's innermost running transaction;
    /// [`conn`](crate::conn) picks the innermost of any manager.
    pub fn conn(&self) -> Result<TxConn<DB>, Error> {
        let id = self.shared.id;
        context::lend::<DB>(|frame| frame.session.core().manager_id == id)
    }

    #[doc(hidden)]
    pub fn handle(&self) -> ManagerHandle {
        ManagerHandle(Arc::clone(&self.shared) as Arc<dyn ErasedManager>)
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
}

impl<DB: Backend> TxManagerBuilder<DB> {
    /// A name for logs and metrics (for example the database it serves); by
    /// default the backend's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
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
        self.hooks.add(
            phase,
            Arc::new(move |event| Box::pin(hook(event).map(HookOutput::into_hook_result))),
        );
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
        let name = self
            .name
            .unwrap_or_else(|| <DB as crate::backend::sealed::BackendOps>::SYSTEM.to_owned());
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        TxManager {
            shared: Arc::new(Shared {
                id,
                name,
                pool: self.pool,
                retry_policy: self.retry_policy,
                hooks: self.hooks,
                metrics: Arc::new(Metrics::new(id, self.max_functions)),
                nested_acquires: NestedAcquires::default(),
            }),
        }
    }
}

/// Runs `body` in a transaction of the default manager. See
/// [`TxManager::transaction`].
pub async fn transaction<T, E, F, Fut>(options: TxOptions, body: F) -> Result<T, E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<Error> + StdError + 'static,
{
    scope::run(None, options, inspect_std_error, Box::pin(body())).await
}

/// Runs `body` in a transaction of the default manager, retrying. See
/// [`TxManager::transaction_with_retry`].
pub async fn transaction_with_retry<T, E, F, Fut>(options: TxOptions, body: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<Error> + StdError + 'static,
{
    retry_loop(None, options.retry(), body).await
}

async fn retry_loop<T, E, F, Fut>(
    manager: Option<ManagerHandle>,
    options: TxOptions,
    mut body: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<Error> + StdError + 'static,
{
    let mut attempts = Attempts::new(manager, options);
    loop {
        if let Some(result) = attempts.attempt(inspect_std_error, Box::pin(body())).await {
            return result;
        }
    }
}

fn inspect_std_error<E: StdError + 'static>(error: &E) -> Option<&(dyn StdError + 'static)> {
    Some(error)
}

/// A manager with its backend erased, as scopes and defaults hold it.
#[doc(hidden)]
#[derive(Clone)]
pub struct ManagerHandle(Arc<dyn ErasedManager>);

/// A manager held without keeping it alive.
#[cfg_attr(not(feature = "monitor"), allow(dead_code))]
pub(crate) struct WeakManager(std::sync::Weak<dyn ErasedManager>);

impl WeakManager {
    #[cfg_attr(not(feature = "monitor"), allow(dead_code))]
    pub(crate) fn upgrade(&self) -> Option<ManagerHandle> {
        self.0.upgrade().map(ManagerHandle)
    }
}

/// What the scope runner needs of a manager.
pub(crate) struct ErasedOpening {
    pub(crate) name: &'static str,
    pub(crate) options: TxOptions,
    pub(crate) transactional: bool,
    pub(crate) lent_from: Option<Arc<dyn ErasedSession>>,
    /// Connections of this pool the task holds while it waits for this one.
    pub(crate) holding: u32,
    pub(crate) attempt: u32,
    pub(crate) server_timeout: Option<Duration>,
    /// The series to count the transaction in.
    pub(crate) series: Option<Arc<Series>>,
}

trait ErasedManager: Send + Sync + 'static {
    fn id(&self) -> u64;
    fn max_connections(&self) -> u32;
    fn retry_policy(&self) -> RetryPolicy;
    fn hooks(&self) -> &ManagerHooks;
    fn metrics(&self) -> &Arc<Metrics>;
    fn name(&self) -> &str;
    fn backend(&self) -> &'static str;
    fn pool_status(&self) -> PoolStatus;
    fn open(&self, opening: ErasedOpening) -> BoxFuture<'_, Result<Arc<dyn ErasedSession>, Error>>;
}

impl<DB: Backend> ErasedManager for Shared<DB> {
    fn id(&self) -> u64 {
        self.id
    }

    fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.retry_policy
    }

    fn hooks(&self) -> &ManagerHooks {
        &self.hooks
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        <DB as crate::backend::sealed::BackendOps>::SYSTEM
    }

    fn pool_status(&self) -> PoolStatus {
        PoolStatus {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }

    fn open(&self, opening: ErasedOpening) -> BoxFuture<'_, Result<Arc<dyn ErasedSession>, Error>> {
        Box::pin(async move {
            let source = match opening.lent_from {
                Some(session) => {
                    Source::Lent(session.into_any().downcast::<Session<DB>>().map_err(|_| {
                        Error::TransactionAborted("its connection belongs to another backend")
                    })?)
                }
                None if opening.holding > 0 => {
                    let acquire = async {
                        self.pool
                            .acquire()
                            .await
                            .map_err(|source| Error::database(Operation::Acquire, source))
                    };
                    let max = self.pool.options().get_max_connections();
                    Source::Acquired(
                        self.nested_acquires
                            .wait(opening.holding, max, acquire)
                            .await?,
                    )
                }
                None => Source::Pool,
            };
            let transactional = opening.transactional;
            let session = Session::open(
                &self.pool,
                Opening {
                    manager_id: self.id,
                    name: opening.name,
                    options: opening.options,
                    transactional,
                    source,
                    attempt: opening.attempt,
                    server_timeout: opening.server_timeout,
                    accounting: opening
                        .series
                        .map(|series| Arc::new(Accounting::new(Arc::clone(&self.metrics), series))),
                },
            )
            .await?;
            let session = session as Arc<dyn ErasedSession>;
            if let Some(accounting) = &session.core().accounting {
                accounting.series.add(Count::Started);
                self.metrics.activate(Arc::clone(&session));
            }
            Ok(session)
        })
    }
}

impl ManagerHandle {
    pub(crate) fn id(&self) -> u64 {
        self.0.id()
    }

    pub(crate) fn max_connections(&self) -> u32 {
        self.0.max_connections()
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.0.retry_policy()
    }

    pub(crate) fn hooks(&self) -> &ManagerHooks {
        self.0.hooks()
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        self.0.metrics()
    }

    pub(crate) fn backend(&self) -> &'static str {
        self.0.backend()
    }

    #[cfg_attr(not(feature = "monitor"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakManager {
        WeakManager(Arc::downgrade(&self.0))
    }

    pub(crate) fn metrics_snapshot(&self) -> MetricsSnapshot {
        let metrics = self.0.metrics();
        let (functions, total) = metrics.snapshot();
        MetricsSnapshot {
            manager: self.0.name().to_owned(),
            backend: self.0.backend().to_owned(),
            taken_at_ms: unix_millis(SystemTime::now()),
            total,
            functions,
            active: metrics.active(),
            pool: self.0.pool_status(),
        }
    }

    pub(crate) async fn open(
        &self,
        opening: ErasedOpening,
    ) -> Result<Arc<dyn ErasedSession>, Error> {
        self.0.open(opening).await
    }

    /// The manager a scope without an explicit one runs on: the task's scoped
    /// default, else the process-wide default, else the manager of the
    /// innermost running transaction.
    pub(crate) fn resolve_default(head: Option<&Arc<Frame>>) -> Result<ManagerHandle, Error> {
        if let Ok(scoped) = SCOPED_DEFAULT.try_with(ManagerHandle::clone) {
            return Ok(scoped);
        }
        if let Some(global) = DEFAULT.get() {
            return Ok(global.clone());
        }
        head.map(|frame| frame.manager.clone())
            .ok_or(Error::NoDefaultManager)
    }
}

static DEFAULT: OnceLock<ManagerHandle> = OnceLock::new();

tokio::task_local! {
    static SCOPED_DEFAULT: ManagerHandle;
}
