//! Helpers shared by the integration tests: connecting to the real servers
//! (or skipping when one is unreachable), per-test tables, and
//! [`each_backend!`], which writes a test once and runs it on PostgreSQL,
//! MariaDB and SQLite.

pub mod proxy;
pub mod replica_scenarios;
pub mod topology;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::pool::PoolOptions;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{MySqlPool, PgPool, SqlitePool};

/// Where PostgreSQL is, unless `COVET_PG_URL` says otherwise.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Where MariaDB is, unless `COVET_MYSQL_URL` says otherwise.
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// What each on_rollback hook of a [`rollback_watcher`] manager saw of the
/// ROLLBACK's failure: its message, or `None` when it did not fail.
pub type RollbacksSeen = Arc<std::sync::Mutex<Vec<Option<String>>>>;

/// A manager on `pool` whose on_rollback hook records what it saw of each
/// ROLLBACK's failure.
pub fn rollback_watcher<DB: covet_txn::Backend>(
    pool: sqlx::Pool<DB>,
) -> (covet_txn::TxManager<DB>, RollbacksSeen) {
    let seen = RollbacksSeen::default();
    let recorded = Arc::clone(&seen);
    let manager = covet_txn::TxManager::builder(pool)
        .on_rollback(move |event| {
            let recorded = Arc::clone(&recorded);
            async move {
                let failure = event.rollback_error.as_ref().map(|error| error.to_string());
                recorded
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(failure);
            }
        })
        .build();
    (manager, seen)
}

/// What the hooks of a [`rollback_watcher`] manager have seen so far.
pub fn rollbacks_seen(seen: &RollbacksSeen) -> Vec<Option<String>> {
    seen.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Ends, from `admin`, the PostgreSQL backend `pid`, and gives the server a
/// moment to close its connection.
pub async fn kill_postgres_backend(admin: &PgPool, pid: i32) -> Result<(), AppError> {
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(admin)
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// Kills, from `admin`, the PostgreSQL backend of the transaction running
/// on `manager`, and gives the server a moment to close it.
pub async fn kill_postgres_session(
    manager: &covet_txn::TxManager<sqlx::Postgres>,
    admin: &PgPool,
) -> Result<(), AppError> {
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *manager.conn()?)
        .await?;
    kill_postgres_backend(admin, pid).await
}

/// Kills, from `admin`, the MySQL connection of the transaction running on
/// `manager`, and gives the server a moment to close it.
pub async fn kill_mysql_session(
    manager: &covet_txn::TxManager<sqlx::MySql>,
    admin: &MySqlPool,
) -> Result<(), AppError> {
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut *manager.conn()?)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
        .execute(admin)
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// A manager on `pool`, with contention management on when
/// `COVET_CONTENTION=adaptive` (CI runs the bank and cancellation tests
/// once more that way).
pub fn manager_on<DB: covet_txn::Backend>(pool: sqlx::Pool<DB>) -> covet_txn::TxManager<DB> {
    let contention = match std::env::var("COVET_CONTENTION").as_deref() {
        Ok("adaptive") => covet_txn::Contention::Adaptive,
        _ => covet_txn::Contention::Off,
    };
    covet_txn::TxManager::builder(pool)
        .contention(contention)
        .build()
}

/// Whether an unreachable server fails the test (`COVET_REQUIRE_BACKENDS=1`)
/// instead of skipping it.
pub fn backends_required() -> bool {
    std::env::var("COVET_REQUIRE_BACKENDS").is_ok_and(|value| value == "1")
}

fn unreachable(server: &str, url: &str, error: &sqlx::Error) {
    assert!(
        !backends_required(),
        "{server} at {url} is unreachable ({error}) and COVET_REQUIRE_BACKENDS=1"
    );
    eprintln!(
        "notice: skipping: {server} at {url} is unreachable ({error}); set \
         COVET_REQUIRE_BACKENDS=1 to fail instead"
    );
}

/// How long a test waits for a pooled connection before failing: long
/// enough for a loaded CI machine, short enough that a leaked connection
/// fails the test instead of hanging it.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(20);

/// The test PostgreSQL server's URL.
pub fn postgres_url() -> String {
    std::env::var("COVET_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// The test MariaDB server's URL.
pub fn mysql_url() -> String {
    std::env::var("COVET_MYSQL_URL").unwrap_or_else(|_| DEFAULT_MYSQL_URL.to_owned())
}

/// Connect options for the test PostgreSQL server.
pub fn postgres_options() -> PgConnectOptions {
    let url = postgres_url();
    match PgConnectOptions::from_str(&url) {
        Ok(options) => options,
        Err(error) => panic!("COVET_PG_URL `{url}` is not a PostgreSQL URL: {error}"),
    }
}

/// Connect options for the test MariaDB server.
pub fn mysql_options() -> MySqlConnectOptions {
    let url = mysql_url();
    match MySqlConnectOptions::from_str(&url) {
        Ok(options) => options,
        Err(error) => panic!("COVET_MYSQL_URL `{url}` is not a MySQL URL: {error}"),
    }
}

/// A pool on the test PostgreSQL server, or `None` (after a notice) when it
/// is unreachable.
pub async fn postgres(max_connections: u32) -> Option<PgPool> {
    postgres_with(postgres_options(), max_connections).await
}

/// A pool with these options on the test PostgreSQL server, or `None` (after
/// a notice) when it is unreachable.
pub async fn postgres_with(options: PgConnectOptions, max_connections: u32) -> Option<PgPool> {
    postgres_pool(pool_options(max_connections), options).await
}

/// The pool settings every test pool starts from.
pub fn pool_options<DB: sqlx::Database>(max_connections: u32) -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

/// Counts the connections a pool opens, through its `after_connect`.
pub fn counting_connections<DB: sqlx::Database>(
    options: PoolOptions<DB>,
) -> (PoolOptions<DB>, Arc<AtomicU64>) {
    let opened = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&opened);
    let options = options.after_connect(move |_, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    });
    (options, opened)
}

/// A pool built from `pool` on the test PostgreSQL server, or `None` (after
/// a notice) when it is unreachable.
pub async fn postgres_pool(pool: PgPoolOptions, options: PgConnectOptions) -> Option<PgPool> {
    let url = postgres_url();
    let connected = pool.connect_with(options).await;
    match connected {
        Ok(pool) => Some(pool),
        Err(error) => {
            unreachable("PostgreSQL", &url, &error);
            None
        }
    }
}

/// A pool on the test MariaDB/MySQL server, or `None` (after a notice) when
/// it is unreachable.
pub async fn mysql(max_connections: u32) -> Option<MySqlPool> {
    mysql_with(mysql_options(), max_connections).await
}

/// A pool with these options on the test MariaDB server, or `None` (after a
/// notice) when it is unreachable.
pub async fn mysql_with(options: MySqlConnectOptions, max_connections: u32) -> Option<MySqlPool> {
    mysql_pool(pool_options(max_connections), options).await
}

/// A pool built from `pool` on the test MariaDB server, or `None` (after a
/// notice) when it is unreachable.
pub async fn mysql_pool(pool: MySqlPoolOptions, options: MySqlConnectOptions) -> Option<MySqlPool> {
    let url = mysql_url();
    let connected = pool.connect_with(options).await;
    match connected {
        Ok(pool) => Some(pool),
        Err(error) => {
            unreachable("MariaDB", &url, &error);
            None
        }
    }
}

/// A fresh SQLite database file for one test (WAL, 10 s busy timeout).
pub async fn sqlite(test: &str, max_connections: u32) -> Option<SqlitePool> {
    sqlite_pool(test, pool_options(max_connections)).await
}

/// A fresh SQLite database file for one test, with a pool built from `pool`.
pub async fn sqlite_pool(test: &str, pool: SqlitePoolOptions) -> Option<SqlitePool> {
    let path = sqlite_path(test);
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = pool.connect_with(options).await;
    match pool {
        Ok(pool) => Some(pool),
        Err(error) => panic!("cannot open SQLite file {}: {error}", path.display()),
    }
}

/// An SQLite database file shared by tests that run at the same time (WAL,
/// 10 s busy timeout): created if missing, never deleted.
pub async fn sqlite_shared(test: &str, max_connections: u32) -> Option<SqlitePool> {
    let path = sqlite_path(test);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    match pool_options(max_connections).connect_with(options).await {
        Ok(pool) => Some(pool),
        Err(error) => panic!("cannot open SQLite file {}: {error}", path.display()),
    }
}

/// The SQLite file a test uses.
pub fn sqlite_path(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("covet-txn-tests");
    if let Err(error) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {error}", dir.display());
    }
    dir.join(format!("{test}.db"))
}

/// Writes the enclosed tests once and runs them on every backend: it expands
/// them into modules `postgres`, `mysql` and `sqlite`, each with
///
/// - `Db`, the backend's sqlx database type;
/// - `pool(test, max_connections)`, a pool or `None` to skip;
/// - `pool_from(test, pool_options)`, the same built from sqlx pool options
///   (see [`pool_options`] and [`counting_connections`]);
/// - `shared_pool(test, max_connections)`, a pool on a database that tests
///   running at the same time share (SQLite: a file that is not reset);
/// - `manager(test, max_connections)`, a `TxManager` or `None` to skip;
/// - `conn()`, the current transaction's connection;
/// - `exec(sql)` and `scalar(sql)`, running SQL in the current transaction;
/// - `reset_table(pool, name, columns)`, a fresh table;
/// - `pool_scalar(pool, sql)`, a query outside any transaction;
/// - `FailOnce`, which makes the first attempt of a call fail with a real
///   retryable error of the server (PostgreSQL raises the SQLSTATE asked
///   for, MariaDB signals a 1213 deadlock, SQLite reports `SQLITE_BUSY`
///   because a second connection of a pool of two holds the write lock);
/// - `BACKEND`, the backend's name.
///
/// SQL in the tests is written to run unchanged on all three servers.
#[macro_export]
macro_rules! each_backend {
    ($($body:tt)*) => {
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            pub type Db = ::sqlx::Postgres;
            pub const BACKEND: &str = "postgresql";
            pub async fn pool(_test: &str, max_connections: u32) -> Option<::sqlx::Pool<Db>> {
                $crate::postgres(max_connections).await
            }
            #[allow(dead_code)]
            pub async fn pool_from(_test: &str, options: ::sqlx::pool::PoolOptions<Db>) -> Option<::sqlx::Pool<Db>> {
                $crate::postgres_pool(options, $crate::postgres_options()).await
            }
            #[allow(dead_code)]
            pub async fn shared_pool(_test: &str, max_connections: u32) -> Option<::sqlx::Pool<Db>> {
                $crate::postgres(max_connections).await
            }
            $crate::__backend_helpers!();
            $($body)*
        }
        mod mysql {
            #[allow(unused_imports)]
            use super::*;
            pub type Db = ::sqlx::MySql;
            pub const BACKEND: &str = "mysql";
            pub async fn pool(_test: &str, max_connections: u32) -> Option<::sqlx::Pool<Db>> {
                $crate::mysql(max_connections).await
            }
            #[allow(dead_code)]
            pub async fn pool_from(_test: &str, options: ::sqlx::pool::PoolOptions<Db>) -> Option<::sqlx::Pool<Db>> {
                $crate::mysql_pool(options, $crate::mysql_options()).await
            }
            #[allow(dead_code)]
            pub async fn shared_pool(_test: &str, max_connections: u32) -> Option<::sqlx::Pool<Db>> {
                $crate::mysql(max_connections).await
            }
            $crate::__backend_helpers!();
            $($body)*
        }
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            pub type Db = ::sqlx::Sqlite;
            pub const BACKEND: &str = "sqlite";
            pub async fn pool(test: &str, max_connections: u32) -> Option<::sqlx::Pool<Db>> {
                $crate::sqlite(test, max_connections).await
            }
            #[allow(dead_code)]
            pub async fn pool_from(test: &str, options: ::sqlx::pool::PoolOptions<Db>) -> Option<::sqlx::Pool<Db>> {
                $crate::sqlite_pool(test, options).await
            }
            #[allow(dead_code)]
            pub async fn shared_pool(test: &str, max_connections: u32) -> Option<::sqlx::Pool<Db>> {
                $crate::sqlite_shared(test, max_connections).await
            }
            $crate::__backend_helpers!();
            $($body)*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __backend_helpers {
    () => {
        #[allow(dead_code)]
        pub async fn manager(
            test: &str,
            max_connections: u32,
        ) -> Option<::covet_txn::TxManager<Db>> {
            pool(test, max_connections)
                .await
                .map($crate::manager_on)
        }

        #[allow(dead_code)]
        pub fn conn() -> Result<::covet_txn::TxConn<Db>, ::covet_txn::Error> {
            ::covet_txn::conn::<Db>()
        }

        #[allow(dead_code)]
        pub async fn exec(sql: impl Into<String>) -> Result<(), ::covet_txn::Error> {
            ::sqlx::raw_sql(::sqlx::AssertSqlSafe(sql.into()))
                .execute(&mut *conn()?)
                .await?;
            Ok(())
        }

        #[allow(dead_code)]
        pub async fn scalar(sql: impl Into<String>) -> Result<i64, ::covet_txn::Error> {
            let value: i64 = ::sqlx::query_scalar(::sqlx::AssertSqlSafe(sql.into()))
                .fetch_one(&mut *conn()?)
                .await?;
            Ok(value)
        }

        /// Over the simple protocol, which PgBouncer's transaction pooling
        /// allows outside a transaction (see [`column`]).
        #[allow(dead_code)]
        pub async fn pool_scalar(pool: &::sqlx::Pool<Db>, sql: impl Into<String>) -> i64 {
            let sql = sql.into();
            match $crate::column::<_, _, i64>(pool, sql.clone()).await.as_deref() {
                Ok([value]) => *value,
                Ok(other) => panic!("`{sql}` returned {other:?}, not one row"),
                Err(error) => panic!("`{sql}` failed: {error}"),
            }
        }

        /// Makes the first attempt of a call fail with a real retryable error,
        /// and lets the next one through.
        #[allow(dead_code)]
        pub struct FailOnce {
            table: String,
            /// PostgreSQL's SQLSTATE to raise.
            code: &'static str,
            pub attempts: ::std::sync::atomic::AtomicU32,
            /// SQLite: a second connection holding the write lock until the
            /// second attempt.
            lock: ::tokio::sync::Mutex<Option<::sqlx::pool::PoolConnection<Db>>>,
        }

        #[allow(dead_code)]
        impl FailOnce {
            pub async fn arm(manager: &::covet_txn::TxManager<Db>, table: &str, code: &'static str) -> FailOnce {
                reset_table(manager.pool(), table, "id BIGINT PRIMARY KEY, v BIGINT NOT NULL").await;
                let insert = format!("INSERT INTO {table} (id, v) VALUES (1, 0)");
                ::sqlx::raw_sql(::sqlx::AssertSqlSafe(insert)).execute(manager.pool()).await.expect("seeds");
                let lock = if BACKEND == "sqlite" {
                    // Both connections give up on a lock at once: SQLITE_BUSY.
                    let mut locker = manager.pool().acquire().await.expect("a second connection");
                    let mut worker = manager.pool().acquire().await.expect("a first connection");
                    for conn in [&mut locker, &mut worker] {
                        ::sqlx::raw_sql("PRAGMA busy_timeout = 0").execute(&mut **conn).await.expect("sets busy_timeout");
                    }
                    drop(worker);
                    ::sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *locker).await.expect("takes the write lock");
                    Some(locker)
                } else {
                    None
                };
                FailOnce {
                    table: table.to_owned(), code, attempts: ::std::sync::atomic::AtomicU32::new(0), lock: ::tokio::sync::Mutex::new(lock) }
            }

            /// One attempt's work: a real retryable failure the first time.
            pub async fn step(&self) -> Result<(), ::sqlx::Error> {
                let table = &self.table;
                if self.attempts.fetch_add(1, ::std::sync::atomic::Ordering::SeqCst) == 0 {
                    let failing = match BACKEND {
                        "postgresql" => format!("DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '{}'; END $$", self.code),
                        "mysql" => "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'forced deadlock'".to_owned(),
                        _ => format!("UPDATE {table} SET v = v + 1 WHERE id = 1"),
                    };
                    ::sqlx::raw_sql(::sqlx::AssertSqlSafe(failing)).execute(&mut *conn().map_err(to_sqlx)?).await?;
                    panic!("the forced failure did not fail");
                }
                if let Some(mut locker) = self.lock.lock().await.take() {
                    ::sqlx::raw_sql("ROLLBACK").execute(&mut *locker).await?;
                }
                let update = format!("UPDATE {table} SET v = v + 1 WHERE id = 1");
                ::sqlx::raw_sql(::sqlx::AssertSqlSafe(update)).execute(&mut *conn().map_err(to_sqlx)?).await?;
                Ok(())
            }

            pub fn kind(&self) -> ::covet_txn::FailureKind {
                match (BACKEND, self.code) {
                    ("postgresql", "40P01") | ("mysql", _) => ::covet_txn::FailureKind::Deadlock,
                    ("postgresql", _) => ::covet_txn::FailureKind::SerializationFailure,
                    _ => ::covet_txn::FailureKind::Busy,
                }
            }
        }

        #[allow(dead_code)]
        fn to_sqlx(error: covet_txn::Error) -> ::sqlx::Error {
            ::sqlx::Error::InvalidArgument(error.to_string())
        }

        #[allow(dead_code)]
        pub async fn reset_table(pool: &::sqlx::Pool<Db>, name: &str, columns: &str) {
            let sql = format!("DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns})");
            if let Err(error) = ::sqlx::raw_sql(::sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await
            {
                panic!("cannot create table {name}: {error}");
            }
        }
    };
}

/// An application error type as users write them: the runtime's errors, the
/// driver's errors, and the application's own refusals.
#[derive(Debug)]
pub enum AppError {
    /// From covet-txn.
    Tx(covet_txn::Error),
    /// From sqlx, unchanged.
    Db(sqlx::Error),
    /// The application said no.
    Refused(&'static str),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Tx(error) => write!(f, "transaction: {error}"),
            AppError::Db(error) => write!(f, "database: {error}"),
            AppError::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppError::Tx(error) => Some(error),
            AppError::Db(error) => Some(error),
            AppError::Refused(_) => None,
        }
    }
}

impl From<covet_txn::Error> for AppError {
    fn from(error: covet_txn::Error) -> Self {
        AppError::Tx(error)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        AppError::Db(error)
    }
}

/// The first column of every row `sql` returns, read over the simple
/// protocol. Outside a transaction behind PgBouncer's transaction pooling a
/// prepared statement does not outlive its Sync (sqlx prepares, syncs, then
/// binds), so the suite's checks outside transactions read this way.
pub async fn column<'e, DB, E, T>(executor: E, sql: String) -> Result<Vec<T>, sqlx::Error>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'e, Database = DB>,
    T: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .fetch_all(executor)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect()
}

/// A plain HTTP/1.1 GET on loopback, with an optional `Authorization`
/// value: the status, the headers (names in lower case) and the body.
pub async fn http_get(
    addr: std::net::SocketAddr,
    target: &str,
    authorization: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("reads");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Checks a rules file of `ops/prometheus/` with `promtool check rules`;
/// `false` (after a notice) when promtool is not installed and
/// `COVET_REQUIRE_PROMETHEUS=1` is not set, which fails instead.
pub fn promtool_checks_rules(file: &str) -> bool {
    let required = std::env::var("COVET_REQUIRE_PROMETHEUS").is_ok_and(|value| value == "1");
    let rules = format!("{}/../ops/prometheus/{file}", env!("CARGO_MANIFEST_DIR"));
    let Ok(checked) = std::process::Command::new("promtool")
        .args(["check", "rules", &rules])
        .output()
    else {
        assert!(
            !required,
            "promtool is missing and COVET_REQUIRE_PROMETHEUS=1"
        );
        eprintln!("notice: skipping: promtool is not installed");
        return false;
    };
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    true
}

/// Fails unless `promtool check metrics` accepts `text` as a Prometheus
/// exposition (promtool must be installed; callers check first).
pub fn assert_promtool_accepts_metrics(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    if let Some(mut stdin) = lint.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .expect("writes the exposition");
    }
    let linted = lint.wait_with_output().expect("promtool answers");
    assert!(
        linted.status.success(),
        "{}{}\n{text}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
}
