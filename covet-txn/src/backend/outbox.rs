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

/// The statements of one outbox table on one backend, written once per
/// relay or enqueue site. `?` placeholders; PostgreSQL's are numbered.
#[derive(Debug, Clone)]
pub struct Statements {
    pub(crate) schema: Vec<String>,
    /// Binds topic, key, payload, created-at, next-attempt-at.
    pub(crate) insert: String,
    pub(crate) begin_claim: &'static str,
    table: String,
    lock_clause: &'static str,
    numbered: bool,
}

/// A table name covet-txn accepts: an SQL identifier, so that it can be put
/// into statements as it is, and short enough for the index names built
/// from it.
pub(crate) fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

impl Statements {
    fn sql(&self, text: String) -> String {
        if !self.numbered {
            return text;
        }
        let mut numbered = String::with_capacity(text.len() + 8);
        let mut index = 0;
        for c in text.chars() {
            if c == '?' {
                index += 1;
                numbered.push('$');
                numbered.push_str(&index.to_string());
            } else {
                numbered.push(c);
            }
        }
        numbered
    }

    /// The first deliverable messages, each the first undelivered one of
    /// its key. The key check is an OR arm, not a join: it runs only for
    /// keyed rows, through the `(ordering_key, state, id)` index, whatever
    /// plan a prepared statement settles on (as an anti join, a generic
    /// plan scanned every pending row once per candidate).
    fn claimable(&self, topics: usize) -> String {
        let table = &self.table;
        let topic_list = vec!["?"; topics].join(", ");
        self.sql(format!(
            "SELECT id, topic, ordering_key, payload, attempts, created_at_ms, last_error \
             FROM {table} AS pending \
             WHERE state = 0 AND next_attempt_at_ms <= ? \
             AND (lease_until_ms IS NULL OR lease_until_ms < ?) \
             AND topic IN ({topic_list}) \
             AND (pending.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM {table} AS earlier \
                 WHERE earlier.ordering_key = pending.ordering_key \
                 AND earlier.state = 0 AND earlier.id < pending.id)) \
             ORDER BY id LIMIT ?{}",
            self.lock_clause
        ))
    }

    fn lease(&self, ids: &[i64]) -> String {
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        self.sql(format!(
            "UPDATE {} SET lease_owner = ?, lease_until_ms = ?, attempts = attempts + 1 \
             WHERE id IN ({})",
            self.table,
            ids.join(", ")
        ))
    }

    /// The statement of a finish, guarded by the lease owner: a relay whose
    /// lease expired and was taken over changes nothing.
    fn finish(&self, finish: &Finish) -> String {
        let table = &self.table;
        let change = match finish {
            Finish::Delete => {
                return self.sql(format!(
                    "DELETE FROM {table} WHERE id = ? AND lease_owner = ?"
                ));
            }
            Finish::Archive(_) => "state = 1, delivered_at_ms = ?",
            Finish::Retry(..) => "next_attempt_at_ms = ?, last_error = ?",
            Finish::Dead(..) => "state = 2, next_attempt_at_ms = ?, last_error = ?",
        };
        self.sql(format!(
            "UPDATE {table} SET {change}, lease_owner = NULL, lease_until_ms = NULL \
             WHERE id = ? AND lease_owner = ?"
        ))
    }

    fn dead_letters(&self) -> String {
        format!(
            "SELECT id, topic, ordering_key, payload, attempts, created_at_ms, last_error \
             FROM {} WHERE state = 2 ORDER BY id",
            self.table
        )
    }

    fn redrive(&self, all: bool) -> String {
        let which = if all { "" } else { " AND id = ?" };
        self.sql(format!(
            "UPDATE {} SET state = 0, attempts = 0, next_attempt_at_ms = ?, last_error = NULL \
             WHERE state = 2{which}",
            self.table
        ))
    }

    fn oldest_pending(&self) -> String {
        format!(
            "SELECT MIN(created_at_ms) FROM {} WHERE state = 0",
            self.table
        )
    }

    fn purge_archived(&self) -> String {
        self.sql(format!(
            "DELETE FROM {} WHERE state = 1 AND delivered_at_ms < ?",
            self.table
        ))
    }
}

/// The columns every backend shares, after the id.
fn columns(text: &str, integer: &str) -> String {
    format!(
        "topic VARCHAR(255) NOT NULL, ordering_key VARCHAR(255), payload {text} NOT NULL, \
         created_at_ms {integer} NOT NULL, state {integer} NOT NULL DEFAULT 0, \
         attempts {integer} NOT NULL DEFAULT 0, next_attempt_at_ms {integer} NOT NULL, \
         lease_owner VARCHAR(100), lease_until_ms {integer}, last_error {text}, \
         delivered_at_ms {integer}"
    )
}

/// The table and the indexes the claim and the per-key check use.
fn schema(table: &str, id_column: &str, text: &str, integer: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {table} ({id_column}, {})",
            columns(text, integer)
        ),
        format!("CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (state, id)"),
        format!("CREATE INDEX IF NOT EXISTS {table}_by_key ON {table} (ordering_key, state, id)"),
    ]
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

#[cfg(any(feature = "mysql", feature = "sqlite"))]
fn plain_insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (topic, ordering_key, payload, created_at_ms, next_attempt_at_ms) \
         VALUES (?, ?, ?, ?, ?)"
    )
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
