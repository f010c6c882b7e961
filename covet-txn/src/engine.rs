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
use crate::backend::{self, Driver};
use crate::dialect::Dialect;
use crate::error::{Error, Operation};
use crate::failure::FailureKind;
use crate::hooks::list::ManagerHooks;
use crate::nested_acquire::NestedAcquires;
use crate::observe::Observer;
use crate::observe::metrics::{AdmissionStatus, Metrics, MetricsSnapshot, PoolStatus, unix_millis};
use crate::options::Isolation;
use crate::request::TxOptions;
use crate::retry::RetryPolicy;
use crate::session::{Opening, ProbeCache, Session, SessionErase, SessionHandle, Source};

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
    pub(crate) admission: Admission,
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
}

impl<DB: Backend> Engine<DB> {
    async fn open(&self, request: OpenRequest) -> Result<SessionHandle, Error> {
        let source = match request.lent_from {
            Some(lender) => Source::Lent(Arc::clone(DB::unerase(&lender).ok_or(
                Error::TransactionAborted("its connection belongs to another backend"),
            )?)),
            None if request.holding > 0 => {
                let acquire = async {
                    Box::pin(self.pool.acquire())
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
        let session = Session::open(Opening {
            manager_id: self.id,
            name: request.name,
            options: request.options,
            transactional: request.transactional,
            source,
            attempt: request.attempt,
            server_timeout: request.server_timeout,
            observer: request.observer,
            pool: self.pool.clone(),
            dialect: Arc::clone(&self.dialect),
            probes: &self.probes,
        })
        .await?;
        Ok(DB::erase(session))
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

    pub(crate) async fn open(&self, request: OpenRequest) -> Result<SessionHandle, Error> {
        dispatch!(self, engine => engine.open(request).await)
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
        }
    }
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
