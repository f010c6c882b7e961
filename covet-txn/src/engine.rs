//! A manager as the runtime sees it: its pool, its dialect, its retry
//! policy, its hooks and metrics, and opening sessions on it, including the
//! second connection of a `requires_new` call. Held erased as an
//! [`EngineHandle`], an enum over the compiled-in drivers, so that frames and
//! defaults can hold any manager without boxing its futures.
//!
//! The public, typed face of an engine is [`TxManager`](crate::TxManager).

use std::error::Error as StdError;
use std::sync::Arc;
#[cfg(feature = "monitor")]
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use crate::admission::Admission;
use crate::backend::TextRows;
use crate::backend::{self, Driver};
use crate::dialect::{BranchId, Dialect, PreparedTransactions};
use crate::error::{Error, Operation};
use crate::failure::FailureKind;
use crate::hooks::list::ManagerHooks;
use crate::nested_acquire::NestedAcquires;
use crate::observe::Observer;
use crate::observe::metrics::{AdmissionStatus, Metrics, MetricsSnapshot, PoolStatus, unix_millis};
use crate::options::Isolation;
use crate::replicas::{Failover, ReplicaReport, ReplicaSet};
use crate::request::TxOptions;
use crate::retry::RetryPolicy;
use crate::session::{
    Opening, PrimaryEpoch, ProbeCache, Session, SessionErase, SessionHandle, Source, finish_on,
};

/// A database covet-txn can run transactions on: [`sqlx::Postgres`],
/// [`sqlx::MySql`] (also MariaDB) and [`sqlx::Sqlite`], each behind its cargo
/// feature. What differs between databases that share one of these drivers
/// is a [`Dialect`](crate::dialect::Dialect).
///
/// The trait is sealed: its methods are the runtime's business.
pub trait Backend: Driver + SessionErase + EngineErase {}

impl<DB: Driver + SessionErase + EngineErase> Backend for DB {}

/// One manager's runtime half.
#[doc(hidden)]
pub struct Engine<DB: Driver> {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) pool: sqlx::Pool<DB>,
    pub(crate) dialect: Arc<dyn Dialect<DB>>,
    pub(crate) retry_policy: RetryPolicy,
    pub(crate) hooks: Arc<ManagerHooks>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) nested_acquires: NestedAcquires,
    pub(crate) probes: ProbeCache,
    /// Where read-only transactions may run instead of the primary.
    pub(crate) replicas: Option<Arc<ReplicaSet<DB>>>,
    /// The primary's hosts, when it may fail over to another.
    pub(crate) failover: Option<Failover<DB>>,
    pub(crate) admission: Admission,
}

/// Which connection a statement outside any transaction runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// One of the pool's: a call's own work.
    Pool,
    /// One opened for the statement and closed after it: recovery's work,
    /// which must not wait for a pool that blocked transactions hold.
    Dedicated,
}

/// What a call asks of an engine to open a session.
pub(crate) struct OpenRequest {
    pub(crate) name: &'static str,
    pub(crate) options: TxOptions,
    pub(crate) transactional: bool,
    /// An autocommit session whose connection a new transaction borrows.
    pub(crate) lent_from: Option<SessionHandle>,
    /// Connections of this pool the task holds while it waits for this one.
    pub(crate) holding: u32,
    pub(crate) attempt: u32,
    pub(crate) server_timeout: Option<Duration>,
    pub(crate) observer: Option<Observer>,
    /// Begin this branch of a two-phase commit.
    pub(crate) branch: Option<BranchId>,
}

impl<DB: Backend> Engine<DB> {
    async fn open(&self, request: OpenRequest) -> Result<SessionHandle, Error> {
        // A read-only transaction of its own may run on a replica; one that
        // nests or joins runs where its transaction runs.
        let routable = request.transactional
            && request.options.read_only == Some(true)
            && request.lent_from.is_none()
            && request.holding == 0
            && request.branch.is_none();
        if let Some(replicas) = self.replicas.as_ref().filter(|_| routable)
            && let Some((index, pool)) = replicas.route()
        {
            match Session::open(self.opening(&request, Source::Pool, pool.clone(), None)).await {
                Ok(session) => return Ok(DB::erase(session)),
                Err(
                    error @ Error::Database {
                        operation: Operation::Acquire,
                        ..
                    },
                ) => {
                    replicas.failed(index, &error);
                }
                Err(error) => return Err(error),
            }
        }
        let source = match request.lent_from.clone() {
            Some(lender) => Source::Lent(Arc::clone(DB::unerase(&lender).ok_or(
                Error::TransactionAborted("its connection belongs to another backend"),
            )?)),
            None if request.holding > 0 => {
                let acquire = async {
                    crate::boxed::pinned(|| self.pool.acquire())
                        .await
                        .map_err(|source| Error::database(Operation::Acquire, source))
                };
                let max = self.pool.options().get_max_connections();
                Source::Acquired(
                    self.nested_acquires
                        .wait(request.holding, max, acquire)
                        .await?,
                )
            }
            None => Source::Pool,
        };
        let epoch = self.primary_epoch();
        let opening = self.opening(&request, source, self.pool.clone(), epoch);
        Ok(DB::erase(Session::open(opening).await?))
    }

    fn opening(
        &self,
        request: &OpenRequest,
        source: Source<DB>,
        pool: sqlx::Pool<DB>,
        epoch: Option<PrimaryEpoch>,
    ) -> Opening<'_, DB> {
        Opening {
            manager_id: self.id,
            name: request.name,
            options: request.options,
            transactional: request.transactional,
            source,
            attempt: request.attempt,
            server_timeout: request.server_timeout,
            observer: request.observer.clone(),
            pool,
            dialect: Arc::clone(&self.dialect),
            probes: &self.probes,
            branch: request.branch.clone(),
            epoch,
        }
    }

    fn replica_report(&self) -> ReplicaReport {
        let mut report = match &self.replicas {
            Some(replicas) => replicas.report(),
            None => ReplicaReport::default(),
        };
        report.primary_changes = self.failover.as_ref().map_or(0, Failover::changes);
        report
    }

    fn primary_epoch(&self) -> Option<PrimaryEpoch> {
        self.failover.as_ref().map(Failover::epoch)
    }

    async fn rediscover(&self, seen: &PrimaryEpoch) -> Result<(), Error> {
        match &self.failover {
            Some(failover) => failover.rediscover(&self.pool, &*self.dialect, seen).await,
            None => Ok(()),
        }
    }

    async fn connection(&self) -> Result<sqlx::pool::PoolConnection<DB>, Error> {
        crate::boxed::pinned(|| self.pool.acquire())
            .await
            .map_err(|source| Error::database(Operation::Acquire, source))
    }

    /// A connection of its own, outside the pool: recovery must reach the
    /// database even while every pooled connection waits for the locks of
    /// the prepared branches it is about to finish.
    async fn dedicated(&self) -> Result<DB::Connection, Error> {
        use sqlx::ConnectOptions;
        self.pool
            .connect_options()
            .connect()
            .await
            .map_err(|source| Error::database(Operation::Acquire, source))
    }

    async fn readiness(&self) -> Result<Option<String>, Error> {
        let Some(sql) = self.prepared()?.readiness() else {
            return Ok(None);
        };
        let rows = self
            .text_rows(sql.to_owned(), Vec::new(), Via::Dedicated)
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten()))
    }

    async fn list_branches(&self) -> Result<Vec<BranchId>, Error> {
        let prepared = self.prepared()?;
        let mut conn = self.dedicated().await?;
        let listed = DB::list_branches(&mut conn, prepared.list()).await;
        let _ = sqlx::Connection::close(conn).await;
        listed.map_err(|source| Error::database(Operation::FinishPrepared, source))
    }

    async fn finish_branch(&self, branch: &BranchId, commit: bool) -> Result<bool, Error> {
        let prepared = self.prepared()?;
        let mut conn = self.dedicated().await?;
        let finished = finish_on::<DB>(&mut conn, prepared, branch, commit).await;
        let _ = sqlx::Connection::close(conn).await;
        finished
    }

    async fn text_rows(
        &self,
        sql: String,
        parameters: Vec<String>,
        via: Via,
    ) -> Result<TextRows, Error> {
        let rows = match via {
            Via::Pool => {
                let mut conn = self.connection().await?;
                DB::text_rows(&mut conn, sql, parameters).await
            }
            Via::Dedicated => {
                let mut conn = self.dedicated().await?;
                let rows = DB::text_rows(&mut conn, sql, parameters).await;
                let _ = sqlx::Connection::close(conn).await;
                rows
            }
        };
        rows.map_err(|source| Error::database(Operation::DecisionLog, source))
    }

    fn prepared(&self) -> Result<&dyn PreparedTransactions, Error> {
        self.dialect
            .prepared_transactions()
            .ok_or(Error::TwoPhaseUnsupported {
                system: self.dialect.system(),
            })
    }

    fn pool_status(&self) -> PoolStatus {
        PoolStatus {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }
}

/// An engine of any compiled-in driver.
#[doc(hidden)]
#[derive(Clone)]
pub enum EngineHandle {
    #[cfg(feature = "postgres")]
    Postgres(Arc<Engine<sqlx::Postgres>>),
    #[cfg(feature = "mysql")]
    MySql(Arc<Engine<sqlx::MySql>>),
    #[cfg(feature = "sqlite")]
    Sqlite(Arc<Engine<sqlx::Sqlite>>),
}

/// Runs `$body` with `$engine` bound to the handle's typed engine.
macro_rules! dispatch {
    ($handle:expr, $engine:ident => $body:expr) => {
        match $handle {
            #[cfg(feature = "postgres")]
            EngineHandle::Postgres($engine) => $body,
            #[cfg(feature = "mysql")]
            EngineHandle::MySql($engine) => $body,
            #[cfg(feature = "sqlite")]
            EngineHandle::Sqlite($engine) => $body,
            // Without a backend the enum has no variant and no value.
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            _ => unreachable!("no backend feature is enabled"),
        }
    };
}

impl EngineHandle {
    pub(crate) fn id(&self) -> u64 {
        dispatch!(self, engine => engine.id)
    }

    pub(crate) fn name(&self) -> &str {
        dispatch!(self, engine => &engine.name)
    }

    /// The dialect's OpenTelemetry `db.system` name.
    pub(crate) fn system(&self) -> &'static str {
        dispatch!(self, engine => engine.dialect.system())
    }

    pub(crate) fn default_isolation(&self) -> Isolation {
        dispatch!(self, engine => engine.dialect.default_isolation())
    }

    /// The dialect's [`reads_wait_for_commit`](crate::dialect::Dialect::reads_wait_for_commit).
    pub(crate) fn reads_wait_for_commit(&self, isolation: Isolation) -> bool {
        dispatch!(self, engine => engine.dialect.reads_wait_for_commit(isolation))
    }

    pub(crate) fn max_connections(&self) -> u32 {
        dispatch!(self, engine => engine.pool.options().get_max_connections())
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        dispatch!(self, engine => engine.retry_policy)
    }

    pub(crate) fn hooks(&self) -> &Arc<ManagerHooks> {
        dispatch!(self, engine => &engine.hooks)
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        dispatch!(self, engine => &engine.metrics)
    }

    pub(crate) fn admission(&self) -> &Admission {
        dispatch!(self, engine => &engine.admission)
    }

    /// The retryable failure inside `error`, as this manager's dialect
    /// classifies database errors.
    pub(crate) fn classify(&self, error: &(dyn StdError + 'static)) -> Option<FailureKind> {
        dispatch!(self, engine => backend::classify(&*engine.dialect, error))
    }

    /// Whether `error` says this manager's primary host refused a write
    /// because it is no longer the primary; `false` for a manager without
    /// several primary hosts, which has nowhere else to go.
    pub(crate) fn demoted(&self, error: &(dyn StdError + 'static)) -> bool {
        dispatch!(self, engine => engine.failover.is_some()
        && engine.dialect.replication().is_some_and(|queries| {
            crate::failure::chain(error)
                .filter_map(backend::database_error)
                .any(|database| queries.refuses_writes(database))
        }))
    }

    pub(crate) async fn open(&self, request: OpenRequest) -> Result<SessionHandle, Error> {
        dispatch!(self, engine => engine.open(request).await)
    }

    /// Where read-only transactions went, and the replicas' state.
    pub(crate) fn replica_report(&self) -> ReplicaReport {
        dispatch!(self, engine => engine.replica_report())
    }

    /// The primary's epoch now, when the manager follows a failover.
    pub(crate) fn primary_epoch(&self) -> Option<PrimaryEpoch> {
        dispatch!(self, engine => engine.primary_epoch())
    }

    /// After a connection failure in `seen`: finds the writable primary
    /// host again (nothing without several hosts).
    pub(crate) async fn rediscover(&self, seen: &PrimaryEpoch) -> Result<(), Error> {
        dispatch!(self, engine => engine.rediscover(seen).await)
    }

    /// A read-write transaction of the current task committed: its
    /// read-only ones wait for replicas to replay it.
    pub(crate) fn committed_write(&self) {
        dispatch!(self, engine => if let Some(replicas) = &engine.replicas {
            replicas.committed_write();
        })
    }

    /// The dialect's two-phase SQL, or the error that says there is none.
    pub(crate) fn prepared(&self) -> Result<&dyn PreparedTransactions, Error> {
        dispatch!(self, engine => engine.prepared())
    }

    /// Why the server cannot hold prepared transactions, if it cannot.
    pub(crate) async fn two_phase_readiness(&self) -> Result<Option<String>, Error> {
        dispatch!(self, engine => engine.readiness().await)
    }

    /// The prepared branches the database holds now, read on a connection
    /// of its own.
    pub(crate) async fn prepared_branches(&self) -> Result<Vec<BranchId>, Error> {
        dispatch!(self, engine => engine.list_branches().await)
    }

    /// Commits or rolls back a prepared branch on a connection of its own;
    /// `Ok(false)`: the database did not let this connection finish it.
    pub(crate) async fn finish_branch(
        &self,
        branch: &BranchId,
        commit: bool,
    ) -> Result<bool, Error> {
        dispatch!(self, engine => engine.finish_branch(branch, commit).await)
    }

    /// Runs a query of text parameters and text columns outside any
    /// transaction, on a connection `via` says.
    pub(crate) async fn text_rows(
        &self,
        sql: String,
        parameters: Vec<String>,
        via: Via,
    ) -> Result<TextRows, Error> {
        dispatch!(self, engine => engine.text_rows(sql, parameters, via).await)
    }

    #[cfg(feature = "monitor")]
    pub(crate) fn downgrade(&self) -> WeakEngine {
        WeakEngine(match self {
            #[cfg(feature = "postgres")]
            EngineHandle::Postgres(engine) => WeakInner::Postgres(Arc::downgrade(engine)),
            #[cfg(feature = "mysql")]
            EngineHandle::MySql(engine) => WeakInner::MySql(Arc::downgrade(engine)),
            #[cfg(feature = "sqlite")]
            EngineHandle::Sqlite(engine) => WeakInner::Sqlite(Arc::downgrade(engine)),
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            _ => unreachable!("no backend feature is enabled"),
        })
    }

    /// Runs `visitor` on the handle's typed engine: code written once,
    /// generic over the backend, reached from an erased handle.
    #[cfg(feature = "outbox")]
    pub(crate) fn visit<V: EngineVisitor>(&self, visitor: V) -> V::Output {
        dispatch!(self, engine => visitor.visit(engine))
    }

    /// Everything the manager has counted, and the transactions running now.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let metrics = self.metrics();
        let (functions, total) = metrics.snapshot();
        MetricsSnapshot {
            manager: self.name().to_owned(),
            backend: self.system().to_owned(),
            taken_at_ms: unix_millis(SystemTime::now()),
            total,
            functions,
            active: metrics.active(),
            pool: dispatch!(self, engine => engine.pool_status()),
            admission: self
                .admission()
                .readings()
                .into_iter()
                .map(|(function, reading)| AdmissionStatus {
                    function: function.to_owned(),
                    limit: reading.limit,
                    waiting: reading.waiting,
                })
                .collect(),
            two_phase: metrics.two_phase.stats(),
            #[cfg(feature = "outbox")]
            outbox: metrics.outbox.metrics(),
        }
    }
}

/// Work generic over the backend, to run on an [`EngineHandle`]'s engine.
#[cfg(feature = "outbox")]
pub(crate) trait EngineVisitor {
    type Output;

    fn visit<DB: Backend>(self, engine: &Arc<Engine<DB>>) -> Self::Output;
}

/// An engine held without keeping it alive.
#[cfg(feature = "monitor")]
#[derive(Clone)]
pub(crate) struct WeakEngine(WeakInner);

#[cfg(feature = "monitor")]
#[derive(Clone)]
enum WeakInner {
    #[cfg(feature = "postgres")]
    Postgres(Weak<Engine<sqlx::Postgres>>),
    #[cfg(feature = "mysql")]
    MySql(Weak<Engine<sqlx::MySql>>),
    #[cfg(feature = "sqlite")]
    Sqlite(Weak<Engine<sqlx::Sqlite>>),
}

#[cfg(feature = "monitor")]
impl WeakEngine {
    pub(crate) fn upgrade(&self) -> Option<EngineHandle> {
        match &self.0 {
            #[cfg(feature = "postgres")]
            WeakInner::Postgres(weak) => weak.upgrade().map(EngineHandle::Postgres),
            #[cfg(feature = "mysql")]
            WeakInner::MySql(weak) => weak.upgrade().map(EngineHandle::MySql),
            #[cfg(feature = "sqlite")]
            WeakInner::Sqlite(weak) => weak.upgrade().map(EngineHandle::Sqlite),
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            _ => unreachable!("no backend feature is enabled"),
        }
    }
}

/// Moving a driver's engines into an [`EngineHandle`].
pub trait EngineErase: Driver {
    /// The engine, erased.
    #[doc(hidden)]
    fn erase_engine(engine: Arc<Engine<Self>>) -> EngineHandle;
}

macro_rules! erase {
    ($feature:literal, $driver:ty, $variant:ident) => {
        #[cfg(feature = $feature)]
        impl EngineErase for $driver {
            fn erase_engine(engine: Arc<Engine<Self>>) -> EngineHandle {
                EngineHandle::$variant(engine)
            }
        }
    };
}

erase!("postgres", sqlx::Postgres, Postgres);
erase!("mysql", sqlx::MySql, MySql);
erase!("sqlite", sqlx::Sqlite, Sqlite);
