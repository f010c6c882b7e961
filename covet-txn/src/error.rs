//! The runtime's one error type.
//!
//! Each variant says what happened and, in its message, what to do about it.
//! Errors of the user's own statements never pass through here: they reach the
//! user's error type unchanged. This type carries only what the runtime itself
//! decided or what failed in a statement the runtime sent. Which database
//! errors a new attempt can fix is the dialects' business, not this module's.

use std::fmt;
use std::time::Duration;

use crate::failure::{self, CommitOutcome, FailureKind, LastFailure};
use crate::options::{Isolation, Propagation, UnknownName};
use crate::state::RollbackOnlyCause;

/// A statement the runtime sends on its own account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Taking a connection from the pool.
    Acquire,
    /// `BEGIN` or `START TRANSACTION`, with its isolation and access mode.
    Begin,
    /// `SAVEPOINT`.
    Savepoint,
    /// `RELEASE SAVEPOINT`.
    ReleaseSavepoint,
    /// `ROLLBACK TO SAVEPOINT`.
    RollbackToSavepoint,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK`.
    Rollback,
    /// Phase one of a two-phase commit: `PREPARE TRANSACTION` or
    /// `XA PREPARE`.
    Prepare,
    /// Phase two: `COMMIT PREPARED`, `ROLLBACK PREPARED`, `XA COMMIT` or
    /// `XA ROLLBACK`.
    FinishPrepared,
    /// Reading or writing the two-phase coordinator's decision log.
    DecisionLog,
    /// Reading a replication position, or whether a server is writable.
    Replication,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Acquire => "acquiring a connection",
            Operation::Begin => "BEGIN",
            Operation::Savepoint => "SAVEPOINT",
            Operation::ReleaseSavepoint => "RELEASE SAVEPOINT",
            Operation::RollbackToSavepoint => "ROLLBACK TO SAVEPOINT",
            Operation::Commit => "COMMIT",
            Operation::Rollback => "ROLLBACK",
            Operation::Prepare => "PREPARE",
            Operation::FinishPrepared => "finishing a prepared transaction",
            Operation::DecisionLog => "the two-phase decision log",
            Operation::Replication => "reading a replication position",
        })
    }
}

/// What went wrong in covet-txn.
///
/// User functions return `Result<T, E>` with `E: From<covet_txn::Error>`, so
/// `?` carries these into the user's own error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement the runtime sent failed, or no connection could be had.
    #[error("{operation} failed: {source}")]
    Database {
        /// Which statement failed.
        operation: Operation,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A statement of the user's own failed. Lets functions that return
    /// `covet_txn::Error` use `?` on sqlx calls; the driver's error is kept
    /// as it is.
    #[error(transparent)]
    Query(#[from] sqlx::Error),

    /// The transaction's connection was needed while no transaction is open in
    /// this task.
    #[error(
        "no transaction is active in this task: call this from inside a #[transactional] \
         function or a `transaction(...)` closure"
    )]
    NoTransaction,

    /// `propagation = "never"` was called while a transaction is running.
    #[error(
        "`{0}` propagation forbids a running transaction, but this task is inside one: \
         call the function outside the transaction or choose another propagation"
    )]
    TransactionActive(Propagation),

    /// The connection is lent out to a [`TxConn`](crate::TxConn) guard that is
    /// still alive.
    #[error(
        "the transaction's connection is already borrowed: drop the `TxConn` guard (for \
         example `let c = conn()?` held across this call) before running another \
         statement or calling a nested transactional function"
    )]
    ConnectionBorrowed,

    /// Two scopes tried to use one transaction at the same time, for example
    /// two nested transactional calls polled together with `join!`.
    #[error(
        "a nested transactional scope of this transaction is running concurrently: one \
         connection runs one statement at a time, so await nested calls one after another \
         instead of joining them"
    )]
    ConcurrentScope,

    /// The transaction was taken from its owner and can no longer be used.
    #[error("the transaction can no longer be used: {0}")]
    TransactionAborted(&'static str),

    /// A statement was asked for on one backend while the running transaction
    /// is on another.
    #[error(
        "no {requested} transaction is active in this task (the running transaction is \
         on {running}): ask for the backend the transaction runs on"
    )]
    WrongBackend {
        /// The backend asked for.
        requested: &'static str,
        /// The backend of the innermost running transaction.
        running: &'static str,
    },

    /// A nested call asked for a stronger isolation level than the running
    /// transaction has: the server fixed the level at BEGIN. A weaker or
    /// equal level joins. Raised before the call's body runs.
    #[error(
        "`{call}` asks for isolation {requested} but runs inside `{transaction}`, which runs at \
         {effective}{}: a level is fixed when a transaction begins, so ask for {requested} on \
         `{transaction}`, or give `{call}` `propagation = \"requires_new\"`",
        if running.is_none() { " (the server's default)" } else { "" }
    )]
    IsolationMismatch {
        /// The nested call.
        call: &'static str,
        /// The running transaction.
        transaction: &'static str,
        /// The level the nested call asked for.
        requested: Isolation,
        /// The level the running transaction asked for (`None`: it asked
        /// for none and runs at the server's default).
        running: Option<Isolation>,
        /// The level the running transaction runs at.
        effective: Isolation,
    },

    /// A nested call asked for a read-write transaction but the running one
    /// is read-only. A read-only request joins a read-write transaction.
    /// Raised before the call's body runs.
    #[error(
        "`{call}` asks for a read-write transaction but runs inside `{transaction}`, which is \
         read-only: make `{transaction}` read-write, or give `{call}` \
         `propagation = \"requires_new\"`"
    )]
    AccessModeMismatch {
        /// The nested call.
        call: &'static str,
        /// The running, read-only transaction.
        transaction: &'static str,
    },

    /// A `durable` call ran inside a transaction, where its commit would not
    /// be its own: the transaction around it could still roll it back.
    #[error(
        "`{scope}` is durable, so it must be the outermost transaction, but it runs inside \
         `{running}`: call it outside any transaction, or drop `durable`"
    )]
    NotOutermost {
        /// The durable call.
        scope: &'static str,
        /// The transaction it ran in.
        running: &'static str,
    },

    /// A call inside a test transaction would write outside it (`{0}`), and
    /// what it wrote would outlive the test.
    #[error(
        "`{0}` propagation inside a test transaction would commit outside it, so the test \
         would leave data behind: use the default `nested` propagation in code under test, \
         or run this test without a test transaction"
    )]
    EscapesTestTransaction(Propagation),

    /// The transaction was marked rollback-only, so it was rolled back
    /// instead of committed; the cause says by what.
    #[error("the transaction was rolled back, not committed: {0}")]
    RollbackOnly(RollbackOnlyCause),

    /// `requires_new` needs another connection, but transactions waiting
    /// for one (this task's among them) already hold every connection the
    /// pool may open, so none would ever be given back.
    #[error(
        "`requires_new` needs another connection, but transactions waiting for one already hold \
         {held} of the pool's {max} connections, so none would ever be given back: make the \
         pool larger than the number of transactions that run a `requires_new` call at the \
         same time, or use the default `nested` propagation"
    )]
    PoolExhaustedByNesting {
        /// Connections held by transactions waiting for a `requires_new`
        /// connection, this one's included.
        held: u32,
        /// The pool's `max_connections`.
        max: u32,
    },

    /// A `#[transactional]` function without a `manager` argument ran, but no
    /// default manager is installed and no transaction is running.
    #[error(
        "no default transaction manager: call `TxManager::install_default()` once at start-up, \
         run inside `TxManager::scope(...)`, or name one with `#[transactional(manager = ...)]`"
    )]
    NoDefaultManager,

    /// A default manager was already installed for this process.
    #[error(
        "a default transaction manager is already installed: install it once at start-up, or \
         use `TxManager::scope(...)` for a task-scoped default"
    )]
    DefaultManagerAlreadySet,

    /// A savepoint name is not a plain identifier, or uses a reserved prefix.
    #[error(
        "invalid savepoint name `{0}`: use 1 to 63 ASCII letters, digits or underscores, \
         starting with a letter or underscore, and not starting with `covet_`"
    )]
    InvalidSavepointName(String),

    /// A [`Savepoint`](crate::Savepoint) was used outside the transaction that
    /// created it.
    #[error(
        "savepoint `{0}` belongs to another transaction, or its transaction has ended: roll \
         back or release it inside the transaction that created it"
    )]
    ForeignSavepoint(String),

    /// An option given as text could not be understood.
    #[error("{0}")]
    InvalidOption(String),

    /// The call's deadline passed: the body was stopped and the transaction
    /// rolled back.
    #[error(
        "the transaction timed out after {timeout:?} ({attempts} attempt(s)) and was rolled \
         back: make it shorter, or give it a longer `timeout`"
    )]
    Timeout {
        /// The time the call had: its own `timeout`, or what was left of an
        /// enclosing call's deadline when it began, whichever was shorter.
        timeout: Duration,
        /// Attempts started before the deadline.
        attempts: u32,
    },

    /// Every attempt failed with a retryable error.
    #[error(
        "gave up after {attempts} attempts; the last failed with {last}: lower the contention \
         (shorter transactions, rows touched in a consistent order) or allow more `retry`"
    )]
    RetriesExhausted {
        /// Attempts made, the first included.
        attempts: u32,
        /// The last attempt's database failure.
        #[source]
        last: LastFailure,
    },

    /// The connection failed while COMMIT was in flight: the transaction may
    /// or may not have committed. Never retried automatically.
    #[error(
        "the connection failed while COMMIT was in flight; outcome: {outcome}{}: check \
         the data before running it again",
        transaction_id.as_deref().map(|id| format!(" (transaction {id})")).unwrap_or_default()
    )]
    AmbiguousCommit {
        /// What could be found out afterwards.
        outcome: CommitOutcome,
        /// The server's transaction id, when it was taken before COMMIT.
        transaction_id: Option<String>,
    },

    /// A `before_commit` hook failed or panicked; the transaction was rolled
    /// back. The hook's error is the `source()`: a database failure in it
    /// (a deadlock, a serialization failure, a lost connection) is retried
    /// like one in the function's body.
    #[error(
        "the transaction was rolled back because its before_commit hook `{hook}` failed: {source}"
    )]
    HookFailed {
        /// The hook's name (the function that declared or registered it).
        hook: &'static str,
        /// What it returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A nested scope hit a failure that only a retry of the whole
    /// transaction can fix; the transaction was rolled back.
    #[error(
        "the transaction was rolled back because a nested scope hit a {0}, which only running \
         the whole transaction again can fix: let the error propagate, or add `retry` to the \
         outermost function"
    )]
    Doomed(FailureKind),

    /// A manager's database cannot take part in a two-phase commit.
    #[error(
        "{system} cannot hold a prepared transaction, so it cannot take part in a two-phase \
         commit: use PostgreSQL or MySQL/MariaDB participants"
    )]
    TwoPhaseUnsupported {
        /// The database's `db.system` name.
        system: &'static str,
    },

    /// A participant's server is not set up for two-phase commit.
    #[error("participant `{participant}` cannot take part in a two-phase commit: {reason}")]
    TwoPhaseNotReady {
        /// The participant's (manager's) name.
        participant: String,
        /// What the server said, and what to change.
        reason: String,
    },

    /// Every branch was prepared, but whether the decision to commit was
    /// recorded is not known: the branches stay prepared, holding their
    /// locks, until recovery reads the decision log and finishes them all
    /// the same way. Never retried automatically.
    #[error(
        "the two-phase transaction {global_id} is in doubt: its decision could not be confirmed \
         ({reason}); recovery will commit or roll back every branch as the decision log says, \
         so check the data after it has run"
    )]
    TwoPhaseInDoubt {
        /// The distributed transaction's global id.
        global_id: String,
        /// What failed.
        reason: String,
    },
    /// An outbox message's payload could not be serialised; nothing was
    /// written.
    #[cfg(feature = "outbox")]
    #[error("the outbox message could not be serialised: {0}")]
    Payload(#[source] serde_json::Error),

    /// The manager was given replicas or several primary hosts, but its
    /// dialect cannot follow replication.
    #[error(
        "{system} replication is not supported: replicas and primary hosts need a dialect \
         with replication queries (PostgreSQL's, MariaDB's)"
    )]
    ReplicationUnsupported {
        /// The database's `db.system` name.
        system: &'static str,
    },

    /// A replica's probe found a server that has not replayed anything: it
    /// is not a replica (or the dialect's query answered no number).
    #[error("the server given as a replica is not one: it is not replaying a primary's log")]
    NotAReplica,

    /// A server answered a replication position the dialect cannot order
    /// (MariaDB: several GTID domains; MySQL's GTID sets): no replica serves
    /// reads by it.
    #[error("the replication position could not be read: {0}")]
    ReplicationPosition(String),

    /// None of the primary hosts accepted writes within the failover wait.
    #[error(
        "none of the {hosts} primary hosts accepted writes within {waited:?}: the failover \
         has not finished, or every host is down"
    )]
    NoWritablePrimary {
        /// How many hosts were tried.
        hosts: usize,
        /// How long they were tried for.
        waited: Duration,
    },
}

impl Error {
    pub(crate) fn database(operation: Operation, source: sqlx::Error) -> Self {
        Error::Database { operation, source }
    }

    /// The retryable failure this error stands for that no database code
    /// says (a nested scope's doom, a commit resolved as not committed).
    pub(crate) fn own_failure_kind(&self) -> Option<FailureKind> {
        match self {
            Error::Doomed(kind) => Some(*kind),
            Error::AmbiguousCommit {
                outcome: CommitOutcome::Aborted,
                ..
            } => Some(FailureKind::ConnectionLost),
            _ => None,
        }
    }

    /// The driver's error, if a statement (the runtime's or the user's) failed.
    pub fn as_sqlx_error(&self) -> Option<&sqlx::Error> {
        match self {
            Error::Database { source, .. } | Error::Query(source) => Some(source),
            _ => None,
        }
    }
}

impl From<UnknownName> for Error {
    fn from(error: UnknownName) -> Self {
        Error::InvalidOption(error.to_string())
    }
}

/// Whether running the call again is ruled out whatever a predicate says:
/// after a COMMIT that may have gone through (a retry could commit twice),
/// or once the call's deadline has passed.
pub(crate) fn never_retried(error: &(dyn std::error::Error + 'static)) -> bool {
    failure::chain(error).any(|error| {
        matches!(
            error.downcast_ref::<Error>(),
            Some(Error::Timeout { .. })
                | Some(Error::AmbiguousCommit {
                    outcome: CommitOutcome::Unknown | CommitOutcome::Committed,
                    ..
                })
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_both_sides_and_say_what_to_do() {
        let message = Error::IsolationMismatch {
            call: "shop::price",
            transaction: "shop::checkout",
            requested: Isolation::Serializable,
            running: None,
            effective: Isolation::ReadCommitted,
        }
        .to_string();
        for part in [
            "`shop::price` asks for isolation serializable",
            "inside `shop::checkout`, which runs at read_committed (the server's default)",
            "requires_new",
        ] {
            assert!(message.contains(part), "{message}");
        }
        let message = Error::AccessModeMismatch {
            call: "shop::restock",
            transaction: "shop::report",
        }
        .to_string();
        assert!(
            message.contains("`shop::restock` asks for a read-write transaction but runs inside `shop::report`, which is read-only"),
            "{message}"
        );
    }
}
