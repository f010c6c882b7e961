//! What differs between databases that speak the same wire protocol: the
//! SQL a transaction is begun, nested and ended with, the session settings
//! it changes, which errors a new attempt can fix, and how long a connection
//! left mid-statement may take to come back.
//!
//! A [`Dialect`] is chosen per manager. The built-in ones
//! ([`PostgresDialect`](crate::postgres::PostgresDialect),
//! [`MySqlDialect`](crate::mysql::MySqlDialect),
//! [`SqliteDialect`](crate::sqlite::SqliteDialect)) are the defaults; a
//! database that reuses a driver with rules of its own (CockroachDB,
//! YugabyteDB or Aurora over the PostgreSQL protocol, TiDB over MySQL's)
//! gets a dialect of its own in one file, given to
//! [`TxManagerBuilder::dialect`](crate::TxManagerBuilder::dialect). Sending
//! the SQL over the wire stays with the driver.
//!
//! ```
//! use std::borrow::Cow;
//! use covet_txn::dialect::{Begin, BeginRequest, Dialect, SavepointAction, SavepointName};
//! use covet_txn::postgres::PostgresDialect;
//! use covet_txn::{FailureKind, Isolation};
//! use sqlx::error::DatabaseError;
//!
//! /// A PostgreSQL-protocol database that also reports write conflicts as
//! /// SQLSTATE `CR000`, which a new attempt can fix.
//! struct Cockroachish;
//!
//! impl Dialect<sqlx::Postgres> for Cockroachish {
//!     fn system(&self) -> &'static str {
//!         "cockroachdb"
//!     }
//!     fn default_isolation(&self) -> Isolation {
//!         Isolation::Serializable
//!     }
//!     fn begin(&self, request: &BeginRequest, probed: &[bool]) -> Begin {
//!         PostgresDialect.begin(request, probed)
//!     }
//!     fn savepoint(&self, action: SavepointAction, name: SavepointName<'_>) -> Cow<'static, str> {
//!         PostgresDialect.savepoint(action, name)
//!     }
//!     fn classify(&self, error: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
//!         match error.code().as_deref() {
//!             Some("CR000") => Some(FailureKind::SerializationFailure),
//!             _ => PostgresDialect.classify(error),
//!         }
//!     }
//! }
//! ```

mod prepared;
mod replication;

use std::borrow::Cow;
use std::time::Duration;

use sqlx::error::DatabaseError;

use crate::failure::FailureKind;
use crate::options::{Access, Isolation};

pub use self::prepared::{BranchId, Decision, PreparedTransactions};
pub use self::replication::Replication;

/// What a transaction begins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BeginRequest {
    /// The isolation level and access mode asked for.
    pub access: Access,
    /// Bound the server's statements and lock waits by this time, if set:
    /// the call's deadline, plus a grace so that the client gives up first.
    pub server_timeout: Option<Duration>,
}

/// How to begin a transaction: one request, and what undoes the session
/// settings it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Begin {
    /// The statement, or several sent as one request.
    pub statement: Cow<'static, str>,
    /// The statement that puts back the session settings `statement`
    /// changed, run when the transaction ends (joined to the COMMIT or
    /// ROLLBACK request where the driver can), even if the BEGIN failed
    /// part-way.
    pub restore: Option<&'static str>,
}

impl Begin {
    /// A BEGIN that changes no session setting.
    pub fn plain(statement: impl Into<Cow<'static, str>>) -> Self {
        Begin {
            statement: statement.into(),
            restore: None,
        }
    }

    /// A BEGIN whose session settings `restore` puts back.
    pub fn restoring(statement: impl Into<Cow<'static, str>>, restore: &'static str) -> Self {
        Begin {
            statement: statement.into(),
            restore: Some(restore),
        }
    }
}

/// Which savepoint a statement is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SavepointName<'a> {
    /// The savepoint of the nested scope at this depth (2 for the first).
    Scope(u32),
    /// A savepoint the user created by hand, by its checked name.
    Named(&'a str),
}

/// What a savepoint statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SavepointAction {
    /// `SAVEPOINT`.
    Create,
    /// `RELEASE SAVEPOINT`.
    Release,
    /// Roll back and keep the savepoint for another rollback.
    RollbackTo,
    /// Roll back and free the savepoint, as a scope does when it fails.
    RollbackAndRelease,
}

/// The SQL and the rules of one database, for the driver `DB` speaks.
///
/// Object-safe: a manager holds its dialect as `Arc<dyn Dialect<DB>>`. The
/// methods without a default are the ones every database answers
/// differently; the rest default to what PostgreSQL, MySQL and SQLite
/// share.
pub trait Dialect<DB: sqlx::Database>: Send + Sync + 'static {
    /// The database's OpenTelemetry `db.system` name, for spans and metrics.
    fn system(&self) -> &'static str;

    /// The isolation level a transaction that asks for none runs at. A
    /// nested call asking for this level or a weaker one joins such a
    /// transaction.
    fn default_isolation(&self) -> Isolation;

    /// A query, run before BEGIN, whose one row of booleans `begin` needs to
    /// know: the session settings the BEGIN would change, so that it changes
    /// (and later restores) only those that differ. `None`: nothing to read.
    /// The runtime runs it once per manager and keeps the answer: the
    /// connections of one pool share their settings.
    fn probe(&self, _request: &BeginRequest) -> Option<&'static str> {
        None
    }

    /// How to begin a transaction; `probed` is the row `probe` read (empty
    /// without one).
    fn begin(&self, request: &BeginRequest, probed: &[bool]) -> Begin;

    /// The statement for a savepoint action. A scope's savepoint names its
    /// depth; a named one is a checked identifier, never raw user input.
    /// The PostgreSQL and SQLite drivers nest scopes through sqlx's own
    /// numbered savepoints, as hand-written sqlx does, and use this for
    /// named savepoints only.
    fn savepoint(&self, action: SavepointAction, name: SavepointName<'_>) -> Cow<'static, str>;

    /// The statement that commits. The PostgreSQL and SQLite drivers commit
    /// through sqlx's transaction manager (a plain `COMMIT`), which keeps
    /// sqlx's count of open levels right; they use this statement only for
    /// a transaction sqlx does not count.
    fn commit(&self) -> &'static str {
        "COMMIT"
    }

    /// The statement that rolls back, and succeeds when nothing is open.
    fn rollback(&self) -> &'static str {
        "ROLLBACK"
    }

    /// The retryable failure a database error stands for, if it is one.
    fn classify(&self, error: &(dyn DatabaseError + 'static)) -> Option<FailureKind>;

    /// Whether a COMMIT answered with an error has always ended the
    /// transaction, so that no ROLLBACK needs to follow.
    fn failed_commit_ends_transaction(&self) -> bool {
        false
    }

    /// Whether a statement that failed with `kind` has already ended the
    /// whole transaction on the server, its work undone and its locks
    /// released, so that the ROLLBACK after it only tells the server that
    /// the client knows: then the runtime sends it without waiting for the
    /// answer (as sqlx does when a `Transaction` is dropped). By default a
    /// serialization failure, a deadlock and a snapshot conflict, which
    /// PostgreSQL, MySQL and MariaDB all end the transaction for; a lock
    /// wait timeout is not among them (MySQL undoes only the statement).
    fn failure_ends_transaction(&self, kind: FailureKind) -> bool {
        matches!(
            kind,
            FailureKind::SerializationFailure
                | FailureKind::Deadlock
                | FailureKind::SnapshotConflict
        )
    }

    /// Whether every read of a read-write transaction at `isolation` waits
    /// for the row locks of a transaction whose COMMIT is in flight, so that
    /// a transaction begun meanwhile sees what that one committed, as if it
    /// had begun after the COMMIT's answer. Then read-write calls at that
    /// level that take turns in admission (equal conflict keys, a
    /// function's contention limit) take them by the COMMIT going out
    /// rather than by its answer: the next one's BEGIN overlaps the
    /// commit's flush. By
    /// default no: on PostgreSQL a read does not wait for a writer, so a
    /// transaction begun before the answer may read what came before (and
    /// at REPEATABLE READ and above fail where it writes the same row).
    fn reads_wait_for_commit(&self, isolation: Isolation) -> bool {
        let _ = isolation;
        false
    }

    /// A query returning the transaction's server-side id as text, run just
    /// before COMMIT when a call asks to resolve ambiguous commits.
    fn commit_token(&self) -> Option<&'static str> {
        None
    }

    /// A query taking that id as its one parameter and returning
    /// `committed`, `aborted` or another status as text.
    fn commit_status(&self) -> Option<&'static str> {
        None
    }

    /// How long the background recovery of a connection whose future was
    /// dropped mid-statement waits for the server before closing it.
    fn recovery_deadline(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// The SQL of two-phase commit, for a database that can hold a prepared
    /// transaction; `None` (the default) for one that cannot, which then
    /// cannot take part in a two-phase commit.
    fn prepared_transactions(&self) -> Option<&dyn PreparedTransactions> {
        None
    }

    /// The queries of streaming replication, for a database whose replicas
    /// and failover the runtime can follow; `None` (the default) for one
    /// whose manager then takes no replicas and no other primary hosts.
    fn replication(&self) -> Option<&dyn Replication> {
        None
    }
}

/// The SQL PostgreSQL, MySQL and SQLite share for savepoints.
pub(crate) fn standard_savepoint(
    action: SavepointAction,
    name: SavepointName<'_>,
) -> Cow<'static, str> {
    let name: Cow<'_, str> = match name {
        SavepointName::Scope(depth) => return scope_savepoint(action, depth),
        SavepointName::Named(name) => Cow::Borrowed(name),
    };
    Cow::Owned(match action {
        SavepointAction::Create => format!("SAVEPOINT {name}"),
        SavepointAction::Release => format!("RELEASE SAVEPOINT {name}"),
        SavepointAction::RollbackTo => format!("ROLLBACK TO SAVEPOINT {name}"),
        // Rolling back keeps the savepoint alive on every server; releasing
        // it in the same request frees it without another round trip.
        SavepointAction::RollbackAndRelease => {
            format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
        }
    })
}

/// How deep nested scopes get their savepoint statements without building
/// a string per statement.
const PREBUILT_DEPTHS: u32 = 32;

/// A nested scope's savepoint statement: built once per depth and action for
/// the first depths, since every nested scope runs two of them.
fn scope_savepoint(action: SavepointAction, depth: u32) -> Cow<'static, str> {
    use std::sync::LazyLock;
    static PREBUILT: LazyLock<Vec<[String; 4]>> = LazyLock::new(|| {
        (0..PREBUILT_DEPTHS)
            .map(|depth| {
                let name = format!("covet_sp_{depth}");
                [
                    format!("SAVEPOINT {name}"),
                    format!("RELEASE SAVEPOINT {name}"),
                    format!("ROLLBACK TO SAVEPOINT {name}"),
                    format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
                ]
            })
            .collect()
    });
    let index = match action {
        SavepointAction::Create => 0,
        SavepointAction::Release => 1,
        SavepointAction::RollbackTo => 2,
        SavepointAction::RollbackAndRelease => 3,
    };
    match PREBUILT.get(depth as usize) {
        Some(statements) => Cow::Borrowed(statements[index].as_str()),
        None => {
            let name = format!("covet_sp_{depth}");
            standard_savepoint(action, SavepointName::Named(&name))
                .into_owned()
                .into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_savepoints_are_named_by_depth_at_any_depth() {
        for depth in [2, 31, 32, 500] {
            let name = format!("covet_sp_{depth}");
            assert_eq!(
                standard_savepoint(SavepointAction::Create, SavepointName::Scope(depth)),
                format!("SAVEPOINT {name}")
            );
            assert_eq!(
                standard_savepoint(
                    SavepointAction::RollbackAndRelease,
                    SavepointName::Scope(depth)
                ),
                format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
            );
        }
        assert!(matches!(
            standard_savepoint(SavepointAction::Release, SavepointName::Scope(3)),
            Cow::Borrowed(_)
        ));
    }
}
