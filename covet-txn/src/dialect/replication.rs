//! What a database needs for read replicas and failover: the queries that
//! read how far the primary has written, how far a replica has replayed,
//! and whether a server accepts writes. Part of a dialect, for databases
//! with streaming replication the runtime knows how to read (PostgreSQL);
//! the routing that uses the answers is backend-agnostic (`replicas`).

/// The replication queries of one database. Positions are integers that
/// grow with the primary's log (PostgreSQL: the WAL position in bytes), so
/// that "has this replica replayed past that write" is a comparison of two
/// numbers. Each query returns one row of one text column.
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
}
