//! Declarative, correct and fast database transactions for async Rust, on
//! sqlx over PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! ```no_run
//! use covet_txn::{transactional, TxManager};
//! use sqlx::Sqlite;
//!
//! #[transactional(isolation = "serializable")]
//! async fn transfer(from: i64, to: i64, amount: i64) -> Result<(), covet_txn::Error> {
//!     for (id, delta) in [(from, -amount), (to, amount)] {
//!         sqlx::query("UPDATE accounts SET balance = balance + ? WHERE id = ?")
//!             .bind(delta)
//!             .bind(id)
//!             .execute(&mut *covet_txn::conn::<Sqlite>()?)
//!             .await?;
//!     }
//!     Ok(())
//! }
//!
//! # async fn demo() -> Result<(), covet_txn::Error> {
//! let pool = sqlx::SqlitePool::connect("sqlite://bank.db").await?;
//! TxManager::new(pool).install_default()?;
//! transfer(1, 2, 50).await?;
//! # Ok(()) }
//! ```
//!
//! A `#[transactional]` function begins a transaction when none is running in
//! its task, or nests in the running one inside a SAVEPOINT; it commits when
//! the function returns `Ok` and rolls back on `Err`, on a panic, or when its
//! future is dropped. [`conn`] lends the current transaction's connection to
//! any sqlx query. The same machinery without the macro is
//! [`TxManager::transaction`].
//!
//! Modules, one per concept: `options` (what a call asks for), `context`
//! (the task-local scopes), `manager` (pools and defaults), `scope` (running
//! one call), `retry` (whether and when to run a call again), `hooks` (side
//! effects tied to a transaction's fate), `metrics` (counting them),
//! [`monitor`] (snapshots, alerts, health, reports; feature `monitor`),
//! `transaction` (a transaction's connection and state), `savepoint`
//! (savepoints by hand), `backend` (everything that differs per database),
//! `error`. The live web dashboard is the `covet-txn-dashboard` crate.

#![warn(missing_docs)]

extern crate self as covet_txn;

mod backend;
mod context;
mod error;
mod hooks;
mod manager;
mod metrics;
#[cfg(feature = "monitor")]
pub mod monitor;
mod options;
mod retry;
mod savepoint;
mod scope;
mod transaction;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::Backend;
pub use context::{conn, current};
pub use error::{CommitOutcome, Error, LastFailure, Operation};
pub use hooks::{
    HookOutput, Phase, Registration, RollbackCause, TxEvent, TxOutcome, before_commit,
    before_rollback, on_commit, on_rollback,
};
pub use manager::{TxManager, TxManagerBuilder, transaction, transaction_with_retry};
pub use metrics::{
    ActiveTransaction, DURATION_BUCKETS, DurationSummary, FunctionMetrics, HistogramCounts,
    MetricsSnapshot, OTHER_FUNCTIONS, PoolStatus,
};
pub use options::{Isolation, Propagation, TxOptions};
pub use retry::{Failure, FailureKind, RetryPolicy, RetryPredicate};
pub use savepoint::{Savepoint, named_savepoint, savepoint};
pub use transaction::{TxConn, TxId, TxInfo, TxState};

/// Runs an `async fn` in a transaction.
///
/// See the crate documentation and the README for the arguments.
pub use covet_txn_macros::transactional;

/// Declare handlers that a `#[transactional]` function lists by phase:
/// `#[transactional(on_commit = [send_receipt])]`. A handler is an `async fn`
/// or a plain `fn` taking `&TxEvent` and returning `()` or `Result<(), E>`
/// with `E: Display`.
///
/// ```no_run
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
