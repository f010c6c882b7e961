//! What a database needs for read replicas and failover: the queries that
//! read how far the primary has written, how far a replica has replayed,
//! and whether a server accepts writes; how to read their positions; and
//! which error says a server refused a write because it is not the primary.
//! Part of a dialect, for databases with streaming replication the runtime
//! knows how to read (PostgreSQL, MariaDB); the routing that uses the
//! answers is backend-agnostic (`replicas`).

use sqlx::error::DatabaseError;

/// The replication queries of one database. Positions are integers that
/// grow with the primary's log (PostgreSQL: the WAL position in bytes;
/// MariaDB: the sequence number of its one GTID domain), so that "has this
/// replica replayed past that write" is a comparison of two numbers. Each
/// query returns one row whose first column is text, which
/// [`parse_position`](Self::parse_position) reads.
pub trait Replication: Send + Sync + 'static {
    /// On the primary: the position of its log, at or past every COMMIT
    /// that has returned to a client, even with asynchronous commit.
    fn write_position(&self) -> &'static str;

    /// On a replica: the position it has replayed up to; `NULL` on a
    /// server that is not a replica.
    fn replay_position(&self) -> &'static str;

    /// `true` on a server that accepts writes (a primary), `false` on one
    /// that does not (a standby).
    fn writable(&self) -> &'static str;

    /// A position query's answer as a number, or why it is none: the
    /// default reads a decimal number. A database whose positions are not
    /// plain numbers reduces them here, and refuses (rather than guess) a
    /// position it cannot order: a replica whose position is refused serves
    /// no reads.
    fn parse_position(&self, text: &str) -> Result<u64, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a position"))
    }

    /// Whether `error` is a server's refusal to write because it does not
    /// accept writes: a primary demoted while still up. The runtime asks
    /// only about read-write transactions' errors (a `read_only`
    /// transaction's refused write is the caller's own); `true` makes a
    /// manager with several primary hosts find the writable one and, with
    /// `retry`, run the call again there. The default: never.
    fn refuses_writes(&self, _error: &(dyn DatabaseError + 'static)) -> bool {
        false
    }
}
