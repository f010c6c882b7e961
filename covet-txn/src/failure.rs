//! What a failed attempt is, as data: the kinds of failure a new attempt can
//! fix, what became of a COMMIT that was cut off, and the view of a failure
//! that a `retry_if` predicate gets.
//!
//! A leaf. Which database codes mean which kind is each dialect's business
//! (`dialect` and `backend/`); this module only names the kinds and walks an
//! error's `source()` chain.

use std::error::Error as StdError;
use std::fmt;

use sqlx::error::DatabaseError;

/// Why a transaction failed in a way that running it again can fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The server could not serialize the transaction (PostgreSQL 40001).
    SerializationFailure,
    /// The server chose this transaction as a deadlock victim (PostgreSQL
    /// 40P01, MySQL 1213).
    Deadlock,
    /// A lock wait timed out (MySQL 1205).
    LockTimeout,
    /// A row changed after the transaction's snapshot was taken (MariaDB 1020
    /// with `innodb_snapshot_isolation`).
    SnapshotConflict,
    /// The database was busy or locked (SQLite `SQLITE_BUSY`, `SQLITE_LOCKED`
    /// and their extended codes).
    Busy,
    /// The connection was lost before COMMIT was sent, so nothing committed.
    ConnectionLost,
    /// The server refused a read-write transaction's write because it is no
    /// longer the primary (a demoted primary still up: PostgreSQL 25006,
    /// MariaDB 1290 under `read_only`): nothing committed. Only a manager
    /// with several primary hosts reports it, which finds the new primary
    /// before the next attempt; a `read_only` transaction's own write is the
    /// caller's error, never this kind.
    NotPrimary,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 7] = [
        FailureKind::SerializationFailure,
        FailureKind::Deadlock,
        FailureKind::LockTimeout,
        FailureKind::SnapshotConflict,
        FailureKind::Busy,
        FailureKind::ConnectionLost,
        FailureKind::NotPrimary,
    ];

    /// The kind's lower-case name, as metrics and logs write it.
    pub const fn name(self) -> &'static str {
        match self {
            FailureKind::SerializationFailure => "serialization_failure",
            FailureKind::Deadlock => "deadlock",
            FailureKind::LockTimeout => "lock_timeout",
            FailureKind::SnapshotConflict => "snapshot_conflict",
            FailureKind::Busy => "busy",
            FailureKind::ConnectionLost => "connection_lost",
            FailureKind::NotPrimary => "not_primary",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What became of a transaction whose COMMIT was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitOutcome {
    /// The server committed it.
    Committed,
    /// The server did not commit it.
    Aborted,
    /// It could not be found out.
    Unknown,
}

impl CommitOutcome {
    /// Every outcome.
    pub const ALL: [CommitOutcome; 3] = [
        CommitOutcome::Committed,
        CommitOutcome::Aborted,
        CommitOutcome::Unknown,
    ];

    /// The outcome as metrics and logs write it: `committed`,
    /// `rolled_back`, `unknown`.
    pub const fn name(self) -> &'static str {
        match self {
            CommitOutcome::Committed => "committed",
            CommitOutcome::Aborted => "rolled_back",
            CommitOutcome::Unknown => "unknown",
        }
    }
}

impl fmt::Display for CommitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommitOutcome::Committed => "committed",
            CommitOutcome::Aborted => "not committed",
            CommitOutcome::Unknown => "unknown",
        })
    }
}

/// A failed attempt, as a [`RetryPolicy::retry_if`](crate::RetryPolicy::retry_if)
/// predicate sees it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub(crate) error: &'a (dyn StdError + 'static),
    pub(crate) kind: Option<FailureKind>,
    pub(crate) database: Option<&'a (dyn DatabaseError + 'static)>,
    pub(crate) attempt: u32,
}

impl<'a> Failure<'a> {
    /// The error the function returned.
    pub fn error(&self) -> &'a (dyn StdError + 'static) {
        self.error
    }

    /// What the built-in classification found, if it is a retryable failure.
    pub fn kind(&self) -> Option<FailureKind> {
        self.kind
    }

    /// Whether covet-txn would retry it without a predicate.
    pub fn retryable_by_default(&self) -> bool {
        self.kind.is_some()
    }

    /// The attempt that failed, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The database's error, found anywhere in the error's `source()` chain.
    pub fn database_error(&self) -> Option<&'a (dyn DatabaseError + 'static)> {
        self.database
    }

    /// Whether the database reported a unique-key violation.
    pub fn is_unique_violation(&self) -> bool {
        self.database
            .is_some_and(|database| database.is_unique_violation())
    }
}

/// The database failure of the last attempt, kept when retries run out.
#[derive(Debug, Clone)]
pub struct LastFailure {
    kind: Option<FailureKind>,
    code: Option<String>,
    message: String,
}

impl LastFailure {
    pub(crate) fn new(failure: &Failure<'_>) -> Self {
        LastFailure {
            kind: failure.kind,
            code: failure
                .database
                .and_then(|database| database.code().map(|code| code.into_owned())),
            message: failure.database.map_or_else(
                || failure.error.to_string(),
                |database| database.message().to_owned(),
            ),
        }
    }

    /// The classification of the failure.
    pub fn kind(&self) -> Option<FailureKind> {
        self.kind
    }

    /// The database's error code (SQLSTATE on PostgreSQL).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The database's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for LastFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(kind) => write!(f, "{kind}")?,
            None => f.write_str("an error")?,
        }
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl StdError for LastFailure {}

/// An error and its sources, outermost first.
pub(crate) fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |error| {
        let error: &'a (dyn StdError + 'static) = *error;
        error.source()
    })
}

/// An error type whose `source()` chain the runtime can walk to find a
/// database failure in it: any `std::error::Error` (a `thiserror` enum,
/// `covet_txn::Error`, `sqlx::Error`), and the error types that dereference
/// to one: `anyhow::Error`, `Box<dyn Error + Send + Sync>`,
/// `Box<dyn Error>`. The marker `M` tells the three kinds apart and is
/// always inferred.
pub trait ErrorSource<M> {
    /// The error, as the start of its `source()` chain.
    fn error_source(&self) -> &(dyn StdError + 'static);
}

/// The marker of [`ErrorSource`] for `std::error::Error` types.
#[doc(hidden)]
pub enum ViaError {}

/// The marker of [`ErrorSource`] for types that dereference to a
/// thread-safe `dyn Error` (`anyhow::Error`, `Box<dyn Error + Send + Sync>`).
#[doc(hidden)]
pub enum ViaThreadSafeDeref {}

/// The marker of [`ErrorSource`] for types that dereference to a plain
/// `dyn Error` (`Box<dyn Error>`).
#[doc(hidden)]
pub enum ViaDeref {}

impl<E: StdError + 'static> ErrorSource<ViaError> for E {
    fn error_source(&self) -> &(dyn StdError + 'static) {
        self
    }
}

impl<E> ErrorSource<ViaThreadSafeDeref> for E
where
    E: std::ops::Deref<Target = dyn StdError + Send + Sync + 'static>,
{
    fn error_source(&self) -> &(dyn StdError + 'static) {
        &**self
    }
}

impl<E> ErrorSource<ViaDeref> for E
where
    E: std::ops::Deref<Target = dyn StdError + 'static>,
{
    fn error_source(&self) -> &(dyn StdError + 'static) {
        &**self
    }
}

/// The inspection of a closure's error, for the retry classification.
pub(crate) fn inspect_source<E: ErrorSource<M>, M>(error: &E) -> Option<&(dyn StdError + 'static)> {
    Some(error.error_source())
}
