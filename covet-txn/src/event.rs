//! What the outside sees of a transaction: the hook phases, how a
//! transaction ended and why, the event a hook receives, the snapshot
//! [`current`](crate::current) returns, and what a hook may return.
//!
//! Data only: registering and running hooks is `hooks`' business.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::error::Error;
use crate::failure::FailureKind;
use crate::options::{Isolation, Propagation};
use crate::state::{RollbackOnlyCause, TxId, TxState};

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Inside the transaction, just before COMMIT; may use the connection. An
    /// error rolls the transaction back and is returned to the caller.
    BeforeCommit,
    /// After the outermost COMMIT succeeded, outside the transaction.
    AfterCommit,
    /// Inside the transaction, just before ROLLBACK (or ROLLBACK TO
    /// SAVEPOINT).
    BeforeRollback,
    /// After the rollback, outside the rolled-back scope.
    AfterRollback,
}

impl Phase {
    /// Every phase, in the order a transaction meets them.
    pub const ALL: [Phase; 4] = [
        Phase::BeforeCommit,
        Phase::AfterCommit,
        Phase::BeforeRollback,
        Phase::AfterRollback,
    ];

    /// The phase's name, as the attributes, logs and metrics write it.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::BeforeCommit => "before_commit",
            Phase::AfterCommit => "on_commit",
            Phase::BeforeRollback => "before_rollback",
            Phase::AfterRollback => "on_rollback",
        }
    }

    pub(crate) fn is_rollback(self) -> bool {
        matches!(self, Phase::BeforeRollback | Phase::AfterRollback)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the transaction (or savepoint scope) ended, as hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// It committed (or, for `before_commit`, is about to).
    Committed,
    /// It rolled back (or, for `before_rollback`, is about to).
    RolledBack,
}

/// Why a transaction rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollbackCause {
    /// The function returned an error.
    Error {
        /// The error's message.
        message: String,
        /// Its retryable kind, if it is one.
        kind: Option<FailureKind>,
    },
    /// The function panicked.
    Panic,
    /// The deadline passed.
    Timeout,
    /// The call's future was dropped.
    Cancelled,
    /// The transaction was marked rollback-only.
    RollbackOnly(RollbackOnlyCause),
    /// The scope called [`set_rollback_only`](crate::set_rollback_only).
    Requested,
    /// A nested scope was cut off (its deadline, a dropped future), which
    /// aborted the transaction.
    Aborted(&'static str),
    /// A nested scope hit a failure only a retry can fix.
    Doomed(FailureKind),
    /// A `before_commit` hook failed.
    HookFailed(String),
    /// COMMIT itself failed.
    CommitFailed(String),
}

impl fmt::Display for RollbackCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackCause::Error { message, .. } => {
                write!(f, "the function returned an error: {message}")
            }
            RollbackCause::Panic => f.write_str("the function panicked"),
            RollbackCause::Timeout => f.write_str("the deadline passed"),
            RollbackCause::Cancelled => f.write_str("the call was cancelled"),
            RollbackCause::RollbackOnly(cause) => write!(f, "{cause}"),
            RollbackCause::Requested => f.write_str("the scope asked to roll back"),
            RollbackCause::Aborted(reason) => write!(f, "the transaction was aborted: {reason}"),
            RollbackCause::Doomed(kind) => write!(f, "a nested scope hit a {kind}"),
            RollbackCause::HookFailed(message) => {
                write!(f, "a before_commit hook failed: {message}")
            }
            RollbackCause::CommitFailed(message) => write!(f, "COMMIT failed: {message}"),
        }
    }
}

/// A snapshot of the running transaction, as seen from inside it.
///
/// ```
/// # async fn demo() {
/// if let Some(info) = covet_txn::current() {
///     println!("{} `{}` at depth {} is {}", info.id, info.name, info.depth, info.state);
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TxInfo {
    /// The transaction's id; a savepoint scope shares its transaction's id.
    pub id: TxId,
    /// The name of the scope (the function's path under `#[transactional]`).
    pub name: &'static str,
    /// The name of the outermost scope, which began the transaction.
    pub transaction_name: &'static str,
    /// 1 for the outermost transaction, one more per savepoint scope.
    pub depth: u32,
    /// The isolation level asked for when the transaction began (`None`: the
    /// server's default).
    pub isolation: Option<Isolation>,
    /// Whether the transaction is read-only.
    pub read_only: bool,
    /// The propagation of the current scope.
    pub propagation: Propagation,
    /// The transaction's state.
    pub state: TxState,
    /// Whether a transaction is open at all: `false` in the autocommit
    /// session of `supports`, `never` or `not_supported`.
    pub transactional: bool,
    /// Whether the transaction can no longer commit (marked rollback-only,
    /// doomed or aborted).
    pub rollback_only: bool,
    /// Whether the current scope will roll back at its end because it
    /// called [`set_rollback_only`](crate::set_rollback_only).
    pub scope_rollback_only: bool,
    /// The backend's OpenTelemetry `db.system` name.
    pub backend: &'static str,
    /// Which attempt of a retrying call this is, from 1.
    pub attempt: u32,
    /// When the transaction began.
    pub started_at: Instant,
    /// When the scope must be over, if it has a timeout.
    pub deadline: Option<Instant>,
}

/// What a hook learns about the transaction.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TxEvent {
    /// The transaction's id.
    pub id: TxId,
    /// The name of the scope the event is about (the function's path).
    pub name: &'static str,
    /// The backend's OpenTelemetry `db.system` name.
    pub backend: &'static str,
    /// 1 for the transaction, more for a savepoint scope.
    pub depth: u32,
    /// Which attempt of a retrying call, from 1.
    pub attempt: u32,
    /// Committed, or rolled back.
    pub outcome: TxOutcome,
    /// Why it rolled back, for rollback phases.
    pub cause: Option<RollbackCause>,
    /// When the transaction began.
    pub started_at: Instant,
    /// How long it had run when the event was made.
    pub duration: Duration,
    /// For `on_rollback`: the ROLLBACK (or ROLLBACK TO SAVEPOINT) itself
    /// failed with this error. The connection was then closed or recovered,
    /// so the server rolled back.
    pub rollback_error: Option<Arc<Error>>,
}

impl TxEvent {
    pub(crate) fn new(info: &TxInfo, outcome: TxOutcome, cause: Option<RollbackCause>) -> Self {
        TxEvent {
            id: info.id,
            name: info.name,
            backend: info.backend,
            depth: info.depth,
            attempt: info.attempt,
            outcome,
            cause,
            started_at: info.started_at,
            duration: info.started_at.elapsed(),
            rollback_error: None,
        }
    }
}

/// A hook's error, kept whole: a `before_commit` failure becomes the
/// `source()` of [`Error::HookFailed`], where the retry classification
/// finds a database failure inside it.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a hook may return: nothing, or a `Result` whose error is logged and,
/// for `before_commit`, returned to the caller inside [`Error::HookFailed`].
/// Any thread-safe error type works, as do `anyhow::Error`, `String` and
/// `&'static str`.
#[diagnostic::on_unimplemented(
    message = "a hook must return `()` or `Result<(), E>` with `E` an error type that is `Send + Sync` (or `String`, `&str`, `anyhow::Error`), not `{Self}`",
    label = "this hook's return type"
)]
pub trait HookOutput {
    /// The outcome as the runtime records it.
    fn into_hook_result(self) -> Result<(), HookError>;
}

impl HookOutput for () {
    fn into_hook_result(self) -> Result<(), HookError> {
        Ok(())
    }
}

impl<E: Into<HookError>> HookOutput for Result<(), E> {
    fn into_hook_result(self) -> Result<(), HookError> {
        self.map_err(Into::into)
    }
}

/// A hook's future, boxed, with its outcome made uniform.
#[doc(hidden)]
pub type HookFuture = BoxFuture<'static, Result<(), HookError>>;

/// Boxes a hook's future with its outcome made uniform.
pub(crate) fn boxed_hook<Fut>(future: Fut) -> HookFuture
where
    Fut: Future<Output: HookOutput> + Send + 'static,
{
    Box::pin(async move { future.await.into_hook_result() })
}

/// A handler declared with `#[on_commit]` and friends, listed on a function.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct DeclaredHook {
    pub(crate) phase: Phase,
    pub(crate) name: &'static str,
    pub(crate) run: fn(TxEvent) -> HookFuture,
}

impl DeclaredHook {
    /// What the `#[on_commit]`-style attributes generate.
    pub const fn new(phase: Phase, name: &'static str, run: fn(TxEvent) -> HookFuture) -> Self {
        DeclaredHook { phase, name, run }
    }
}

impl fmt::Debug for DeclaredHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeclaredHook")
            .field("phase", &self.phase)
            .field("name", &self.name)
            .finish()
    }
}
