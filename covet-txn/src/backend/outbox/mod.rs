//! The outbox's SQL on each backend (feature `outbox`): the table and its
//! indexes, the INSERT an enqueue sends through the running transaction,
//! the relay's claim (a leased batch, `FOR UPDATE SKIP LOCKED` on
//! PostgreSQL and MariaDB, `BEGIN IMMEDIATE` on SQLite's single writer), and
//! the statements that settle, reschedule, dead-letter and re-drive a
//! message. The outbox module above decides when each runs; this one only
//! knows how each database spells it.
//!
//! Every time is a count of Unix milliseconds the caller binds, so that the
//! same statement runs unchanged on every backend.

use std::future::Future;
use std::sync::Arc;

use sqlx::{AssertSqlSafe, Row};
use tokio::sync::Notify;

pub use self::statements::Statements;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
use self::statements::plain_insert_sql;
use self::statements::schema;
pub(crate) use self::statements::valid_table_name;

mod statements;

/// A message as the relay claimed it.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub(crate) id: i64,
    pub(crate) topic: String,
    pub(crate) ordering_key: Option<String>,
    pub(crate) payload: String,
    /// Including the delivery this claim starts.
    pub(crate) attempts: i64,
    pub(crate) created_at_ms: i64,
    /// Only dead letters carry it.
    pub(crate) last_error: Option<String>,
}

/// What a claim asks for.
pub struct ClaimRequest<'a> {
    pub(crate) now_ms: i64,
    pub(crate) lease_until_ms: i64,
    pub(crate) owner: &'a str,
    pub(crate) topics: &'a [String],
    pub(crate) limit: i64,
}

/// What becomes of a claimed message once its handler returned.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Delivered, and deleted at once.
    Delete,
    /// Delivered, and kept as delivered at this time, for a retention
    /// cleanup to delete.
    Archive(i64),
    /// Failed: to be delivered again at this time.
    Retry(i64, String),
    /// Failed for the last time: a dead letter, from this time.
    Dead(i64, String),
}

/// A backend's outbox SQL and how it runs. Implemented for the three
/// drivers; the relay and `enqueue` are written once against it.
pub trait OutboxDriver: sqlx::Database + Sized {
    /// The statements for `table`.
    #[doc(hidden)]
    fn outbox_statements(table: &str) -> Statements;

    /// Runs the enqueue INSERT on a transaction's connection.
    #[doc(hidden)]
    fn outbox_insert<'c>(
        conn: &'c mut Self::Connection,
        statements: &'c Statements,
        row: (&'c str, Option<&'c str>, String, i64),
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;

    /// Claims up to `limit` deliverable messages and leases them.
    #[doc(hidden)]
    fn outbox_claim(
        pool: &sqlx::Pool<Self>,
        statements: &Statements,
        request: ClaimRequest<'_>,
    ) -> impl Future<Output = Result<Vec<ClaimedRow>, sqlx::Error>> + Send;

    /// Settles a message this owner holds the lease of.
    #[doc(hidden)]
    fn outbox_finish(
        pool: &sqlx::Pool<Self>,
        statements: &Statements,
        leased: (i64, &str),
        finish: Finish,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Runs statements that bind at most one integer and return nothing:
    /// the schema, re-drives, the retention cleanup. Returns the rows
    /// changed.
    #[doc(hidden)]
    fn outbox_execute(
        pool: &sqlx::Pool<Self>,
        statements: &Statements,
        work: Maintenance,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// The dead letters, oldest first.
    #[doc(hidden)]
    fn outbox_dead_letters(
        pool: &sqlx::Pool<Self>,
        statements: &Statements,
    ) -> impl Future<Output = Result<Vec<ClaimedRow>, sqlx::Error>> + Send;

    /// The creation time of the oldest undelivered message.
    #[doc(hidden)]
    fn outbox_oldest_pending(
        pool: &sqlx::Pool<Self>,
        statements: &Statements,
    ) -> impl Future<Output = Result<Option<i64>, sqlx::Error>> + Send;

    /// Wakes `wake` whenever another process commits a message to `table`,
    /// where the database can tell (PostgreSQL's LISTEN); `None` elsewhere,
    /// where relays poll.
    #[doc(hidden)]
    fn outbox_listen(
        pool: &sqlx::Pool<Self>,
        table: &str,
        wake: Arc<Notify>,
    ) -> impl Future<Output = Result<Option<tokio::task::JoinHandle<()>>, sqlx::Error>> + Send {
        let _ = (pool, table, wake);
        async { Ok(None) }
    }
}

/// The outbox's upkeep statements.
#[derive(Debug, Clone, Copy)]
pub enum Maintenance {
    CreateSchema,
    /// Re-drives one dead letter (`Some(id)`) or all, due at this time.
    Redrive(Option<i64>, i64),
    /// Deletes archived messages delivered before this time.
    PurgeArchived(i64),
}

fn claimed<R: Row>(row: &R) -> Result<ClaimedRow, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'s> &'s str: sqlx::ColumnIndex<R>,
{
    Ok(ClaimedRow {
        id: row.try_get("id")?,
        topic: row.try_get("topic")?,
        ordering_key: row.try_get("ordering_key")?,
        payload: row.try_get("payload")?,
        attempts: row.try_get("attempts")?,
        created_at_ms: row.try_get("created_at_ms")?,
        last_error: row.try_get("last_error")?,
    })
}

/// The parts of [`OutboxDriver`] whose text is the same on every backend,
/// compiled once per driver type.
macro_rules! shared_outbox_impl {
    () => {
        fn outbox_claim(
            pool: &sqlx::Pool<Self>,
            statements: &Statements,
            request: ClaimRequest<'_>,
        ) -> impl Future<Output = Result<Vec<ClaimedRow>, sqlx::Error>> + Send {
            let select = statements.claimable(request.topics.len());
            async move {
                let mut tx = pool.begin_with(statements.begin_claim).await?;
                let mut query = sqlx::query(AssertSqlSafe(select))
                    .bind(request.now_ms)
                    .bind(request.now_ms);
                for topic in request.topics {
                    query = query.bind(topic.as_str());
                }
                let rows = query.bind(request.limit).fetch_all(&mut *tx).await?;
                let mut claimed = rows.iter().map(claimed).collect::<Result<Vec<_>, _>>()?;
                if claimed.is_empty() {
                    tx.commit().await?;
                    return Ok(claimed);
                }
                let ids: Vec<i64> = claimed.iter().map(|row| row.id).collect();
                sqlx::query(AssertSqlSafe(statements.lease(&ids)))
                    .persistent(false)
                    .bind(request.owner)
                    .bind(request.lease_until_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                for row in &mut claimed {
                    row.attempts += 1;
                }
                Ok(claimed)
            }
        }

        fn outbox_finish(
            pool: &sqlx::Pool<Self>,
            statements: &Statements,
            (id, owner): (i64, &str),
            finish: Finish,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
            let mut query = sqlx::query(AssertSqlSafe(statements.finish(&finish)));
            match finish {
                Finish::Delete => {}
                Finish::Archive(at) => query = query.bind(at),
                Finish::Retry(at, error) | Finish::Dead(at, error) => {
                    query = query.bind(at).bind(error)
                }
            }
            let query = query.bind(id).bind(owner.to_owned());
            async move { query.execute(pool).await.map(drop) }
        }

        fn outbox_execute(
            pool: &sqlx::Pool<Self>,
            statements: &Statements,
            work: Maintenance,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send {
            let statements = statements.clone();
            async move {
                let (sql, first, second) = match work {
                    Maintenance::CreateSchema => {
                        for statement in &statements.schema {
                            sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                                .execute(pool)
                                .await?;
                        }
                        return Ok(0);
                    }
                    Maintenance::Redrive(id, now) => (statements.redrive(id.is_none()), now, id),
                    Maintenance::PurgeArchived(before) => {
                        (statements.purge_archived(), before, None)
                    }
                };
                let mut query = sqlx::query(AssertSqlSafe(sql)).bind(first);
                if let Some(second) = second {
                    query = query.bind(second);
                }
                Ok(query.execute(pool).await?.rows_affected())
            }
        }

        fn outbox_dead_letters(
            pool: &sqlx::Pool<Self>,
            statements: &Statements,
        ) -> impl Future<Output = Result<Vec<ClaimedRow>, sqlx::Error>> + Send {
            let sql = statements.dead_letters();
            async move {
                let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await?;
                rows.iter().map(claimed).collect()
            }
        }

        fn outbox_oldest_pending(
            pool: &sqlx::Pool<Self>,
            statements: &Statements,
        ) -> impl Future<Output = Result<Option<i64>, sqlx::Error>> + Send {
            let sql = statements.oldest_pending();
            async move {
                sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
            }
        }
    };
}

/// Runs the backend's INSERT with the row's five values.
macro_rules! insert_row {
    () => {
        fn outbox_insert<'c>(
            conn: &'c mut Self::Connection,
            statements: &'c Statements,
            (topic, key, payload, now): (&'c str, Option<&'c str>, String, i64),
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
            let query = sqlx::query(AssertSqlSafe(statements.insert.as_str()))
                .bind(topic)
                .bind(key)
                .bind(payload)
                .bind(now)
                .bind(now);
            async move { query.execute(conn).await.map(drop) }
        }
    };
}

#[cfg(feature = "postgres")]
impl OutboxDriver for sqlx::Postgres {
    fn outbox_statements(table: &str) -> Statements {
        // One statement: a keyed message first takes a transaction-scoped
        // advisory lock on its key, so that messages of one key get their
        // ids in commit order; the NOTIFY is sent with the transaction's
        // COMMIT, never for one that rolls back.
        let insert = format!(
            "WITH key_lock AS (\
                 SELECT pg_advisory_xact_lock(hashtext('{table}'), hashtext(wanted.k)) \
                 FROM (SELECT CAST($2 AS TEXT) AS k) AS wanted WHERE wanted.k IS NOT NULL), \
             inserted AS (\
                 INSERT INTO {table} (topic, ordering_key, payload, created_at_ms, next_attempt_at_ms) \
                 SELECT $1, $2, $3, $4, $5 WHERE (SELECT count(*) FROM key_lock) >= 0 \
                 RETURNING id) \
             SELECT pg_notify('{table}', '') FROM inserted"
        );
        Statements {
            schema: schema(table, "id BIGSERIAL PRIMARY KEY", "TEXT", "BIGINT"),
            insert,
            begin_claim: "BEGIN",
            table: table.to_owned(),
            lock_clause: " FOR UPDATE SKIP LOCKED",
            numbered: true,
        }
    }

    insert_row!();
    shared_outbox_impl!();

    fn outbox_listen(
        pool: &sqlx::Pool<Self>,
        table: &str,
        wake: Arc<Notify>,
    ) -> impl Future<Output = Result<Option<tokio::task::JoinHandle<()>>, sqlx::Error>> + Send {
        let table = table.to_owned();
        async move {
            let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
            listener.listen(&table).await?;
            Ok(Some(tokio::spawn(async move {
                loop {
                    // `None` is a lost connection, now listening again:
                    // messages may have committed meanwhile, so look.
                    if listener.try_recv().await.is_err() {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    wake.notify_one();
                }
            })))
        }
    }
}

#[cfg(feature = "mysql")]
impl OutboxDriver for sqlx::MySql {
    fn outbox_statements(table: &str) -> Statements {
        Statements {
            schema: schema(
                table,
                "id BIGINT AUTO_INCREMENT PRIMARY KEY",
                "LONGTEXT",
                "BIGINT",
            ),
            insert: plain_insert_sql(table),
            // At REPEATABLE READ a claim that scans past the last pending
            // row holds a gap lock, and producers' INSERTs wait for it.
            begin_claim: "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION",
            table: table.to_owned(),
            lock_clause: " FOR UPDATE SKIP LOCKED",
            numbered: false,
        }
    }

    insert_row!();
    shared_outbox_impl!();
}

#[cfg(feature = "sqlite")]
impl OutboxDriver for sqlx::Sqlite {
    fn outbox_statements(table: &str) -> Statements {
        Statements {
            // AUTOINCREMENT: an id is never reused after a delete, so a
            // duplicate delivery is always recognisable by its id.
            schema: schema(
                table,
                "id INTEGER PRIMARY KEY AUTOINCREMENT",
                "TEXT",
                "INTEGER",
            ),
            insert: plain_insert_sql(table),
            // One writer: claims queue for the write lock instead of failing
            // with SQLITE_BUSY on a deferred upgrade.
            begin_claim: "BEGIN IMMEDIATE",
            table: table.to_owned(),
            lock_clause: "",
            numbered: false,
        }
    }

    insert_row!();
    shared_outbox_impl!();
}
