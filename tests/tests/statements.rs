//! No extra round trips: the exact statements each backend is sent, captured
//! from sqlx's own statement log.

use std::sync::{Mutex, OnceLock};

use covet_txn::transactional;
use covet_txn_tests::{AppError, each_backend};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records the SQL of every `sqlx::query` event in the process.
struct StatementLog;

static STATEMENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Sql {
    summary: String,
    statement: String,
}

impl Visit for Sql {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.to_owned(),
            "db.statement" => self.statement = value.trim().to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl Subscriber for StatementLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut sql = Sql::default();
        event.record(&mut sql);
        let text = if sql.statement.is_empty() {
            sql.summary
        } else {
            sql.statement
        };
        STATEMENTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(text);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Installs the log once; holding the returned guard keeps the other tests
/// of this file from writing into it meanwhile.
async fn capture() -> tokio::sync::MutexGuard<'static, ()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(StatementLog).expect("no other subscriber");
    });
    SERIAL.lock().await
}

/// The statements logged while `work` ran.
async fn statements_of<F: std::future::Future>(work: F) -> (F::Output, Vec<String>) {
    STATEMENTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clear();
    let output = work.await;
    let logged = std::mem::take(
        &mut *STATEMENTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    (output, logged)
}

each_backend! {
    /// What each backend sends to begin: plain, serializable, read-only; and
    /// to commit. PostgreSQL and SQLite begin, commit and nest through sqlx's
    /// transaction manager, as a hand-written `pool.begin()` does: sqlx does
    /// not log the BEGIN and SAVEPOINT it queues on PostgreSQL, nor SQLite's
    /// worker-thread commands, so there only the statements in between show.
    /// `isolation.rs` shows which level and access mode each BEGIN set.
    fn begins() -> [Option<&'static str>; 3] {
        match BACKEND {
            "mysql" => [
                Some("START TRANSACTION"),
                Some("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION"),
                Some("START TRANSACTION READ ONLY"),
            ],
            _ => [None, None, None],
        }
    }

    fn commit() -> Option<&'static str> {
        logged("COMMIT")
    }

    /// A statement SQLite sends as a worker command (unlogged): BEGIN,
    /// COMMIT, and nested scopes' savepoints.
    fn logged(statement: &'static str) -> Option<&'static str> {
        (BACKEND != "sqlite").then_some(statement)
    }

    /// A nested scope's savepoint statements (create at depth 2, create at
    /// 3, release 3, roll back 2), as each backend logs them: MariaDB runs
    /// covet-txn's own; PostgreSQL queues sqlx's numbered SAVEPOINT
    /// (unlogged), then releases and rolls back with logged statements.
    fn savepoint_statements() -> [Option<&'static str>; 4] {
        match BACKEND {
            "mysql" => [
                Some("SAVEPOINT covet_sp_2"),
                Some("SAVEPOINT covet_sp_3"),
                Some("RELEASE SAVEPOINT covet_sp_3"),
                Some("ROLLBACK TO SAVEPOINT covet_sp_2; RELEASE SAVEPOINT covet_sp_2"),
            ],
            "postgresql" => [
                None,
                None,
                Some("RELEASE SAVEPOINT _sqlx_savepoint_2"),
                Some("ROLLBACK TO SAVEPOINT _sqlx_savepoint_1"),
            ],
            _ => [None, None, None, None],
        }
    }

    /// `statements` without the ones this backend does not log.
    fn expected(statements: &[Option<&str>]) -> Vec<String> {
        statements.iter().flatten().map(|statement| (*statement).to_owned()).collect()
    }

    #[transactional]
    async fn plain(table: &str) -> Result<(), AppError> {
        exec(format!("UPDATE {table} SET v = v + 1 WHERE id = 1")).await?;
        Ok(())
    }

    #[transactional(isolation = "serializable")]
    async fn serializable(table: &str) -> Result<(), AppError> {
        exec(format!("UPDATE {table} SET v = v + 1 WHERE id = 1")).await?;
        Ok(())
    }

    #[transactional(read_only = true)]
    async fn read_only(table: &str) -> Result<i64, AppError> {
        Ok(scalar(format!("SELECT v FROM {table} WHERE id = 1")).await?)
    }

    #[transactional]
    async fn level_1(table: &str) -> Result<(), AppError> {
        exec(format!("UPDATE {table} SET v = 1 WHERE id = 1")).await?;
        let middle = level_2(table).await;
        assert!(middle.is_err());
        Ok(())
    }

    #[transactional]
    async fn level_2(table: &str) -> Result<(), AppError> {
        exec(format!("UPDATE {table} SET v = 2 WHERE id = 1")).await?;
        level_3(table).await?;
        Err(AppError::Refused("level 2"))
    }

    #[transactional]
    async fn level_3(table: &str) -> Result<(), AppError> {
        exec(format!("UPDATE {table} SET v = 3 WHERE id = 1")).await?;
        Ok(())
    }

    #[tokio::test]
    async fn each_transaction_shape_sends_exactly_the_statements_a_careful_hand_would() {
        let _serial = capture().await;
        let table = format!("stmts_{BACKEND}");
        let Some(manager) = manager(&table, 1).await else { return };
        reset_table(manager.pool(), &table, "id BIGINT PRIMARY KEY, v BIGINT NOT NULL").await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("INSERT INTO {table} VALUES (1, 0)")))
            .execute(manager.pool())
            .await
            .expect("setup");
        let [begin, begin_serializable, begin_read_only] = begins();
        let update = format!("UPDATE {table} SET v = v + 1 WHERE id = 1");

        let (result, sent) = statements_of(manager.scope(plain(&table))).await;
        result.expect("commits");
        assert_eq!(sent, expected(&[begin, Some(&update), commit()]));

        let (result, sent) = statements_of(manager.scope(serializable(&table))).await;
        result.expect("commits");
        assert_eq!(sent, expected(&[begin_serializable, Some(&update), commit()]));

        let (result, sent) = statements_of(manager.scope(read_only(&table))).await;
        result.expect("commits");
        let select = format!("SELECT v FROM {table} WHERE id = 1");
        // SQLite's read-only mode is connection state the pool may have set
        // itself: it is read by the manager's first read-only transaction,
        // and switched back off only if it was off.
        let read_pragmas = (BACKEND == "sqlite").then_some(
            "SELECT (SELECT query_only FROM pragma_query_only()), (SELECT read_uncommitted FROM pragma_read_uncommitted())",
        );
        let restore = (BACKEND == "sqlite").then_some("PRAGMA query_only = OFF");
        assert_eq!(sent, expected(&[read_pragmas, begin_read_only, Some(&select), commit(), restore]));
        let (result, sent) = statements_of(manager.scope(read_only(&table))).await;
        result.expect("commits");
        assert_eq!(
            sent,
            expected(&[begin_read_only, Some(&select), commit(), restore]),
            "the pool's pragmas are known: no second read"
        );

        let (result, sent) = statements_of(manager.scope(level_1(&table))).await;
        result.expect("commits");
        let set = |v: i64| format!("UPDATE {table} SET v = {v} WHERE id = 1");
        let (one, two, three) = (set(1), set(2), set(3));
        let [create_2, create_3, release_3, roll_back_2] = savepoint_statements();
        assert_eq!(
            sent,
            expected(&[
                begin,
                Some(&one),
                create_2,
                Some(&two),
                create_3,
                Some(&three),
                release_3,
                roll_back_2,
                commit(),
            ])
        );
        assert_eq!(pool_scalar(manager.pool(), format!("SELECT v FROM {table} WHERE id = 1")).await, 1);
    }
}
