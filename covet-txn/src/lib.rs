//! Declarative, correct and fast database transactions for async Rust, on
//! sqlx over PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! ```
//! use covet_txn::{transactional, TxManager};
//!
//! #[transactional(isolation = "serializable")]
//! async fn transfer(from: i64, to: i64, amount: i64) -> Result<(), covet_txn::Error> {
//!     for (id, delta) in [(from, -amount), (to, amount)] {
//!         sqlx::query("UPDATE accounts SET balance = balance + ? WHERE id = ?")
//!             .bind(delta)
//!             .bind(id)
//!             .execute(&mut *covet_txn::sqlite::conn()?)
//!             .await?;
//!     }
//!     Ok(())
//! }
//!
//! # async fn demo() -> Result<(), covet_txn::Error> {
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::raw_sql("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER);
//!                INSERT INTO accounts VALUES (1, 100), (2, 0)")
//!     .execute(&pool)
//!     .await?;
//! let manager = TxManager::new(pool);
//! manager.scope(transfer(1, 2, 50)).await?;
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! A `#[transactional]` function begins a transaction when none is running in
//! its task, or nests in the running one inside a SAVEPOINT; it commits when
//! the function returns `Ok` and rolls back on `Err`, on a panic, or when its
//! future is dropped. [`conn`] (or the typed [`postgres::conn`],
//! [`mysql::conn`], [`sqlite::conn`]) lends the current transaction's
//! connection to any sqlx query. The same machinery without the macro is
//! [`TxManager::transaction`].
//!
//! # Where things are
//!
//! - [`transactional`]: the attribute, with its arguments, propagation,
//!   joining, retry and rollback rules.
//! - [`TxManager`]: the manager of a pool, and the closure API
//!   ([`TxManager::transaction`], [`TxManager::transaction_with_retry`]).
//! - [`set_rollback_only`], [`is_rollback_only`], [`current`]: the running
//!   scope.
//! - [`on_commit`](fn@on_commit) and the other hook functions, and the
//!   [`on_commit`](macro@on_commit) handler attributes.
//! - [`test`](macro@test) and [`TxManager::test_transaction`]: tests that
//!   leave no data behind.
//! - [`dialect`]: the SQL and error codes of each database, and how to add
//!   one.
//! - [`TxManagerBuilder::replica`], [`TxManagerBuilder::primary_hosts`]:
//!   read-only transactions on replicas, and following a failover.
//! - [`two_phase`]: one call's work on several databases, committed by
//!   two-phase commit, with a durable decision and crash recovery.
//! - `outbox` (feature `outbox`): messages written in the transaction and
//!   delivered after it commits, at least once, even across a crash.
//! - `monitor` (feature `monitor`): history, alerts, health, Prometheus and
//!   reports. The crates `covet-txn-dashboard` (a live web page) and
//!   `covet-txn-tower` (a transaction per HTTP request) build on this one.
//!
//! # Coming from Spring, Django, Rails or hand-written sqlx
//!
#![doc = include_str!("../docs/coming-from.md")]
//!
//! # How the crate is built
//!
//! Modules form layers, and each imports only from the layers below it (a
//! test in `tests/tests/layers.rs` checks it):
//!
//! | layer | modules | what they own |
//! |---|---|---|
//! | tools | `boxed`, `quick_map` | boxing a future in its allocation; a hash map for the runtime's own small keys |
//! | vocabulary | `options`, `failure` | isolation levels, propagation, failure kinds: data only |
//! | state | `state`, `error` | a transaction's state machine; the runtime's one error type |
//! | events and rules | `event`, `retry`, `nested_acquire`, `admission/` | what hooks see; retry policy and backoff; pool waits of `requires_new`; the queues, limits and key table attempts are admitted through |
//! | requests and dialects | `request`, [`dialect`], `observe` | what a call asks for; per-database SQL, settings and error codes; counting and tracing |
//! | drivers and hook storage | `backend/`, `hooks::list`, `hooks::run` | running a dialect's SQL on each wire protocol; where hooks wait and how a phase runs |
//! | session | `session/` | one transaction on one connection: open, savepoints, end, recovery of a cut-off connection |
//! | topology | `replicas/` | the server a transaction runs on: replicas, their lag, read-your-writes; the writable host after a failover |
//! | engine | `engine` | a manager as the runtime sees it: pool, dialect, policy, metrics |
//! | context | `context`, `defaults` | the task's open scopes; `conn()`, `current()`; the default manager |
//! | hooks and savepoints | `hooks`, `savepoint` | registering hooks from a body; savepoints by hand |
//! | the call | `call::plan`, `call`, `call::settle`, `call::attempts` | plan, run in a frame, settle, retry |
//! | public API | `manager`, `topology`, `testing`, [`two_phase`], `__private`, [`monitor`], `outbox` | [`TxManager`] and the closure API; replicas and failover; test transactions; two-phase commit across managers; what generated code calls; the monitor; the transactional outbox |
//!
//! The live web dashboard is the `covet-txn-dashboard` crate.

#![warn(missing_docs)]
// Without a backend feature no manager can exist, so nothing runs: the crate
// still compiles (crates built on it, such as the dashboard, build and
// document on their own), and the code that runs transactions is dead.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(
        dead_code,
        unused_imports,
        unused_macros,
        unused_variables,
        unused_mut,
        unused_assignments,
        unreachable_code
    )
)]

extern crate self as covet_txn;

mod admission;
mod backend;
mod boxed;
mod call;
mod context;
mod defaults;
pub mod dialect;
mod engine;
mod error;
mod event;
mod failure;
mod hooks;
mod manager;
#[cfg(feature = "monitor")]
pub mod monitor;
mod nested_acquire;
mod observe;
mod options;
#[cfg(feature = "outbox")]
pub mod outbox;
mod quick_map;
mod replicas;
mod request;
mod retry;
mod savepoint;
mod session;
mod state;
mod testing;
mod topology;
pub mod two_phase;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use admission::keys::{ConflictKeys, KEY_SLOTS, MAX_KEYS};
pub use context::{conn, current, is_rollback_only, set_rollback_only};
pub use engine::Backend;
pub use error::{Error, Operation};
pub use event::{HookError, HookOutput, Phase, RollbackCause, TxEvent, TxInfo, TxOutcome};
pub use failure::{CommitOutcome, ErrorSource, Failure, FailureKind, LastFailure};
pub use hooks::{Registration, before_commit, before_rollback, on_commit, on_rollback};
pub use manager::{TxManager, TxManagerBuilder, transaction, transaction_with_retry};
pub use observe::counters::{DURATION_BUCKETS, DurationSummary, FunctionMetrics, HistogramCounts};
pub use observe::metrics::{
    ActiveTransaction, AdmissionStatus, MetricsSnapshot, OTHER_FUNCTIONS, PoolStatus,
};
pub use options::{Contention, Isolation, Propagation, UnknownName};
pub use replicas::{ReplicaReport, ReplicaStatus, SessionToken};
pub use request::{CallOptions, TxOptions};
pub use retry::{RetryPolicy, RetryPredicate};
pub use savepoint::{Savepoint, named_savepoint, savepoint};
pub use session::TxConn;
pub use state::{RollbackOnlyCause, TxId, TxState};

/// PostgreSQL (feature `postgres`): its dialect, and the current
/// transaction's connection without a type annotation.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use crate::backend::postgres::PostgresDialect;

    /// The current PostgreSQL transaction's connection: [`conn`](crate::conn)
    /// for `sqlx::Postgres`.
    pub fn conn() -> Result<crate::TxConn<sqlx::Postgres>, crate::Error> {
        crate::conn::<sqlx::Postgres>()
    }
}

/// MySQL and MariaDB (feature `mysql`): their dialect, and the current
/// transaction's connection without a type annotation.
#[cfg(feature = "mysql")]
pub mod mysql {
    pub use crate::backend::mysql::MySqlDialect;

    /// The current MySQL transaction's connection: [`conn`](crate::conn)
    /// for `sqlx::MySql`.
    pub fn conn() -> Result<crate::TxConn<sqlx::MySql>, crate::Error> {
        crate::conn::<sqlx::MySql>()
    }
}

/// SQLite (feature `sqlite`): its dialect, and the current transaction's
/// connection without a type annotation.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use crate::backend::sqlite::SqliteDialect;

    /// The current SQLite transaction's connection: [`conn`](crate::conn)
    /// for `sqlx::Sqlite`.
    pub fn conn() -> Result<crate::TxConn<sqlx::Sqlite>, crate::Error> {
        crate::conn::<sqlx::Sqlite>()
    }
}

#[doc = include_str!("../docs/transactional.md")]
pub use covet_txn_macros::transactional;

/// Runs an `async fn` test in a transaction that always rolls back, on a
/// runtime of its own, as `#[tokio::test]` would; every `#[transactional]`
/// call in it nests in the test's transaction, so the test leaves no data
/// behind and parallel tests do not see each other's rows. See
/// [`TxManager::test_transaction`] for the rules.
///
/// `manager = <future>` gives the manager to run on, typically a call of an
/// `async fn` that connects; without it the process-wide default manager is
/// used.
///
/// ```
/// # async fn test_db() -> covet_txn::TxManager<sqlx::Sqlite> {
/// #     covet_txn::TxManager::new(sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap())
/// # }
/// #[covet_txn::test(manager = test_db())]
/// async fn an_order_is_saved() -> Result<(), covet_txn::Error> {
///     sqlx::raw_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY); INSERT INTO orders VALUES (1)")
///         .execute(&mut *covet_txn::sqlite::conn()?)
///         .await?;
///     Ok(())
/// }
/// ```
pub use covet_txn_macros::test;

/// Declare handlers that a `#[transactional]` function lists by phase:
/// `#[transactional(on_commit = [send_receipt])]`. A handler is an `async fn`
/// or a plain `fn` taking `&TxEvent` and returning `()` or `Result<(), E>`
/// with `E: Into<Box<dyn Error + Send + Sync>>`.
///
/// ```
/// use covet_txn::{TxEvent, transactional};
///
/// #[covet_txn::on_commit]
/// async fn send_receipt(event: &TxEvent) {
///     println!("{} committed after {:?}", event.name, event.duration);
/// }
///
/// #[transactional(on_commit = [send_receipt])]
/// async fn place_order() -> Result<(), covet_txn::Error> {
///     Ok(())
/// }
/// ```
///
/// The attributes share their names with the functions that register a hook
/// from a transaction's body ([`on_commit()`] and the others): attributes
/// and functions live in separate namespaces. They take one optional
/// argument, `crate = "my_covet"`, for a crate that renamed its covet-txn
/// dependency, as `#[transactional]` does.
pub use covet_txn_macros::{before_commit, before_rollback, on_commit, on_rollback};
