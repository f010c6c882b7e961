//! What a database needs to take part in a two-phase commit: the SQL that
//! begins a branch of a distributed transaction, prepares it, finishes it
//! once the coordinator has decided, lists the branches left prepared, and
//! keeps the coordinator's decisions in a table. Part of a dialect, for the
//! databases that can hold a prepared transaction (PostgreSQL, MySQL and
//! MariaDB; SQLite cannot).

use sqlx::error::DatabaseError;

use super::{Begin, BeginRequest};

/// One participant's branch of a distributed transaction: the global id
/// every participant shares, and the participant's name.
///
/// Both parts are checked when they are made: the global id is
/// `coordinator:unix-millis:random`, and names hold only ASCII letters,
/// digits, `_` and `-`, so the ids can be written into SQL as literals.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BranchId {
    global: String,
    participant: String,
}

impl BranchId {
    pub(crate) fn new(global: String, participant: String) -> Self {
        BranchId {
            global,
            participant,
        }
    }

    /// The id every participant of the distributed transaction shares.
    pub fn global(&self) -> &str {
        &self.global
    }

    /// The participant this branch runs on (its manager's name).
    pub fn participant(&self) -> &str {
        &self.participant
    }
}

/// A decision kept in the coordinator's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every branch commits.
    Commit,
    /// Every branch rolls back.
    Abort,
}

impl Decision {
    /// The word kept in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Commit => "commit",
            Decision::Abort => "abort",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Decision> {
        match text {
            "commit" => Some(Decision::Commit),
            "abort" => Some(Decision::Abort),
            _ => None,
        }
    }
}

/// The SQL of prepared transactions and of the coordinator's decision log,
/// for one database. A [`Dialect`](crate::dialect::Dialect) that supports
/// two-phase commit returns one from
/// [`prepared_transactions`](crate::dialect::Dialect::prepared_transactions).
///
/// `table` arguments are checked identifiers; the log's parameters are all
/// text, in the order each method names.
pub trait PreparedTransactions: Send + Sync + 'static {
    /// How to begin `branch` with the isolation and access of `request`.
    fn begin(&self, request: &BeginRequest, probed: &[bool], branch: &BranchId) -> Begin;

    /// Ends phase one: the branch's work is kept, prepared, and the
    /// connection is free for other work.
    fn prepare(&self, branch: &BranchId) -> String;

    /// Rolls back a branch that was not prepared, if the plain ROLLBACK
    /// cannot (MySQL's XA branches need their own).
    fn rollback_unprepared(&self, _branch: &BranchId) -> Option<String> {
        None
    }

    /// Commits (`commit`) or rolls back a prepared branch: on the connection
    /// that prepared it, or (in recovery) on any other once that one is gone.
    fn finish(&self, branch: &BranchId, commit: bool) -> String;

    /// Whether finishing a branch failed because this connection cannot
    /// reach it: no such prepared branch exists (someone finished it), or
    /// another session holds it (is finishing it, or on MySQL, still owns
    /// it).
    fn is_out_of_reach(&self, error: &(dyn DatabaseError + 'static)) -> bool;

    /// Lists the prepared branches this database holds, for the driver to
    /// read.
    fn list(&self) -> &'static str;

    /// A query answering, as text, why this server cannot hold prepared
    /// transactions, or NULL when it can.
    fn readiness(&self) -> Option<&'static str> {
        None
    }

    /// Creates the decision log if it does not exist.
    fn create_log(&self, table: &str) -> String;

    /// Records a decision: parameters global id, coordinator, decision,
    /// decided-at in Unix milliseconds. Fails with a unique violation if the
    /// id already has one.
    fn record(&self, table: &str) -> String;

    /// Reads the decision of a global id: parameter global id; one row of
    /// one column, or none.
    fn read(&self, table: &str) -> String;

    /// Lists a coordinator's decisions: parameter coordinator; rows of
    /// global id, decision.
    fn decisions(&self, table: &str) -> String;

    /// Forgets a decision once every branch is finished: parameter global
    /// id.
    fn forget(&self, table: &str) -> String;
}
