//! Cancellation: a transaction's future dropped at any await point (while
//! BEGIN, a statement, a savepoint or COMMIT is in flight) never leaves its
//! connection in the pool inside a transaction, and none of its work shows
//! unless COMMIT had already been sent; with contention management and a
//! declared key on, it also leaves no turn or key behind (at SERIALIZABLE,
//! where MariaDB's keys go on as the COMMIT goes out).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use covet_txn::transactional;
use covet_txn_tests::{AppError, each_backend};

/// Polls a future at most `polls` times, then gives up on it (the caller
/// drops it). With `at_once`, it gives up right after the last poll, when the
/// request just sent cannot have been answered; otherwise only when woken,
/// when the answer may be waiting unread.
struct CancelAfterPolls<F> {
    inner: Pin<Box<F>>,
    polls_left: u32,
    at_once: bool,
}

impl<F: Future> Future for CancelAfterPolls<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls_left == 0 {
            return Poll::Ready(None);
        }
        self.polls_left -= 1;
        match self.inner.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending => {
                if self.polls_left == 0 && self.at_once {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

/// A small deterministic generator; the seed is printed so a failure can be
/// replayed with `COVET_CANCEL_SEED`.
struct Random(u64);

impl Random {
    fn seeded() -> Self {
        let seed = std::env::var("COVET_CANCEL_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |now| now.as_nanos() as u64)
                    | 1
            });
        eprintln!("COVET_CANCEL_SEED={seed}");
        Random(seed)
    }

    fn below(&mut self, bound: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(bound)) as u32
    }
}

/// Where the cancelled transactions were when they were dropped.
#[derive(Debug, Default)]
struct Tally {
    committed: u32,
    before_body: u32,
    in_body: u32,
    during_commit: u32,
}

each_backend! {
    const ITERATIONS: u32 = 500;

    #[transactional]
    async fn nested_update(table: &str, id: i64) -> Result<(), AppError> {
        exec(format!("UPDATE {table} SET v = v + 1 WHERE id = {id}")).await?;
        Ok(())
    }

    #[transactional(isolation = "repeatable_read")]
    async fn work(table: &str, id: i64, began: &AtomicBool, finished: &AtomicBool) -> Result<(), AppError> {
        insert_and_update(table, id, began, finished).await
    }

    /// `work`, admitted: its function's limit, a key every iteration shares,
    /// and on SQLite the file's writer turn.
    #[transactional(isolation = "serializable", contention = "adaptive", conflict_key = table)]
    async fn work_managed(table: &str, id: i64, began: &AtomicBool, finished: &AtomicBool) -> Result<(), AppError> {
        insert_and_update(table, id, began, finished).await
    }

    /// A row inserted, then updated twice (once in a nested scope): `v` is 2
    /// in a transaction that committed whole.
    async fn insert_and_update(table: &str, id: i64, began: &AtomicBool, finished: &AtomicBool) -> Result<(), AppError> {
        began.store(true, Ordering::SeqCst);
        exec(format!("INSERT INTO {table} (id, v) VALUES ({id}, 0)")).await?;
        nested_update(table, id).await?;
        exec(format!("UPDATE {table} SET v = v + 1 WHERE id = {id}")).await?;
        finished.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the connection is outside any transaction, asked the way each
    /// server can answer truthfully.
    async fn idle(conn: &mut <Db as sqlx::Database>::Connection) -> bool {
        use sqlx::Row;
        match BACKEND {
            // Over the simple protocol the probe starts its own implicit
            // transaction, so it started with the query unless one was open.
            "postgresql" => sqlx::raw_sql(
                "SELECT CASE WHEN xact_start = query_start THEN 1 ELSE 0 END::int8 FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            )
            .fetch_one(&mut *conn)
            .await
            .map(|row| row.get::<i64, _>(0) == 1)
            .expect("asks pg_stat_activity"),
            "mysql" => sqlx::raw_sql("SELECT CAST(@@in_transaction AS SIGNED)")
                .fetch_one(&mut *conn)
                .await
                .map(|row| row.get::<i64, _>(0) == 0)
                .expect("asks @@in_transaction"),
            // SQLite refuses BEGIN inside a transaction.
            _ => sqlx::raw_sql("BEGIN; ROLLBACK").execute(&mut *conn).await.is_ok(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_cancelled_at_any_point_leaves_a_clean_connection_and_no_work() {
        cancel_at_random(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_admitted_transaction_cancelled_at_any_point_leaves_no_turn_behind() {
        cancel_at_random(true).await;
    }

    async fn cancel_at_random(managed: bool) {
        let table = format!("cancel_{BACKEND}_{}", if managed { "managed" } else { "default" });
        let (options, opened) = covet_txn_tests::counting_connections(covet_txn_tests::pool_options(1));
        let Some(pool) = pool_from(&table, options).await else { return };
        let manager = covet_txn_tests::manager_on(pool);
        reset_table(manager.pool(), &table, "id BIGINT PRIMARY KEY, v BIGINT NOT NULL").await;
        let mut random = Random::seeded();
        let mut tally = Tally::default();
        let mut ambiguous = Vec::new();

        for id in 0..i64::from(ITERATIONS) {
            let began = AtomicBool::new(false);
            let finished = AtomicBool::new(false);
            let call = async {
                if managed {
                    work_managed(&table, id, &began, &finished).await
                } else {
                    work(&table, id, &began, &finished).await
                }
            };
            let attempt = CancelAfterPolls {
                inner: Box::pin(manager.scope(call)),
                polls_left: 1 + random.below(9),
                at_once: random.below(2) == 0,
            };
            let outcome = attempt.await;
            let (began, finished) = (began.load(Ordering::SeqCst), finished.load(Ordering::SeqCst));
            match outcome {
                Some(Ok(())) => tally.committed += 1,
                Some(Err(error)) => panic!("transaction {id} failed instead of running: {error}"),
                None if finished => {
                    tally.during_commit += 1;
                    ambiguous.push(id);
                }
                None if began => tally.in_body += 1,
                None => tally.before_body += 1,
            }

            let mut next_user = manager.pool().acquire().await.expect("the pool hands out a connection");
            assert!(idle(&mut next_user).await, "iteration {id}: the next user got a connection inside a transaction ({tally:?})");
            let visible: Vec<i64> = covet_txn_tests::column(&mut *next_user, format!("SELECT COUNT(*) FROM {table} WHERE id = {id}"))
                .await
                .expect("reads");
            let visible = visible[0];
            match outcome {
                Some(_) => assert_eq!(visible, 1, "iteration {id} committed"),
                None if finished => {}
                None => assert_eq!(visible, 0, "iteration {id} was cancelled before COMMIT, yet its work shows"),
            }
        }

        // A cancelled connection keeps its pool slot while the server's answer
        // to what was in flight is read; it is closed (and a new one opened)
        // only when that fails.
        let reconnects = opened.load(Ordering::SeqCst).saturating_sub(1);
        let per_thousand = reconnects * 1000 / u64::from(ITERATIONS);
        eprintln!(
            "{BACKEND}: {tally:?}; {} cancelled while COMMIT was in flight; {reconnects} reconnects \
             ({per_thousand} per 1,000 cancellations)",
            ambiguous.len()
        );
        assert!(per_thousand < 300, "{per_thousand} reconnects per 1,000 cancellations");
        let total = manager.metrics().total;
        let cancelled = (
            total.cancelled_commits_committed,
            total.cancelled_commits_rolled_back,
            total.cancelled_commits_unknown,
        );
        assert_eq!(
            cancelled.0 + cancelled.1 + cancelled.2,
            tally.during_commit as u64,
            "every COMMIT cut off is accounted for: {cancelled:?}"
        );
        assert!(tally.before_body > 0 && tally.in_body > 0 && tally.during_commit > 0 && tally.committed > 0, "{tally:?}");
        let rows = pool_scalar(manager.pool(), format!("SELECT COUNT(*) FROM {table}")).await;
        let committed = i64::from(tally.committed);
        assert!(rows >= committed && rows <= committed + ambiguous.len() as i64, "{rows} rows for {tally:?}");
        let torn = pool_scalar(manager.pool(), format!("SELECT COUNT(*) FROM {table} WHERE v <> 2")).await;
        assert_eq!(torn, 0, "every committed transaction is whole");
        if managed {
            // Had a cancelled call kept the key, its function's turn or the
            // writer's turn, this one would wait for ever.
            let (began, finished) = (AtomicBool::new(false), AtomicBool::new(false));
            let next = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                manager.scope(work_managed(&table, i64::from(ITERATIONS), &began, &finished)),
            )
            .await;
            assert!(matches!(next, Ok(Ok(()))), "the call after the cancellations: {next:?}");
        }
    }
}

/// A call cancelled while its COMMIT waits on the server: the server still
/// commits, and the pool's next borrower must not get in before it does. A
/// pool of one connection makes the next borrower wait for the answer.
mod slow_commit {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use covet_txn::{TxManager, transactional};
    use covet_txn_tests::AppError;
    use sqlx::{MySql, Postgres};

    #[transactional(manager = manager)]
    async fn insert_postgres(manager: &TxManager<Postgres>) -> Result<(), AppError> {
        sqlx::raw_sql("INSERT INTO slow_commit_pg (id) VALUES (1)")
            .execute(&mut *manager.conn()?)
            .await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_commit_cut_off_shows_before_the_next_borrower_or_never() {
        let (options, opened) =
            covet_txn_tests::counting_connections(covet_txn_tests::pool_options(1));
        let Some(pool) =
            covet_txn_tests::postgres_pool(options, covet_txn_tests::postgres_options()).await
        else {
            return;
        };
        // A deferred constraint trigger runs at COMMIT: this one makes
        // COMMIT take half a second.
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS slow_commit_pg; CREATE TABLE slow_commit_pg (id BIGINT PRIMARY KEY);
             CREATE OR REPLACE FUNCTION slow_commit_pg_sleep() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER slow_commit_pg_trigger AFTER INSERT ON slow_commit_pg
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit_pg_sleep();",
        )
        .execute(&pool)
        .await
        .expect("setup");
        let manager = covet_txn_tests::manager_on(pool);
        let cut = tokio::time::timeout(Duration::from_millis(200), insert_postgres(&manager)).await;
        assert!(
            cut.is_err(),
            "the call was cancelled during its COMMIT: {cut:?}"
        );
        let seen_next: Vec<i64> =
            covet_txn_tests::column(manager.pool(), "SELECT COUNT(*) FROM slow_commit_pg".into())
                .await
                .expect("the next borrower reads");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let seen_later: Vec<i64> =
            covet_txn_tests::column(manager.pool(), "SELECT COUNT(*) FROM slow_commit_pg".into())
                .await
                .expect("reads");
        assert_eq!(
            seen_next, seen_later,
            "the cut-off COMMIT became visible after the next borrower began"
        );
        assert_eq!(seen_next, [1], "the server committed what it received");
        assert_eq!(
            opened.load(Ordering::SeqCst),
            1,
            "the connection went back to the pool, not closed"
        );
        let total = manager.metrics().total;
        let cancelled = (
            total.cancelled_commits_committed,
            total.cancelled_commits_rolled_back,
            total.cancelled_commits_unknown,
        );
        assert_eq!(cancelled, (1, 0, 0));
    }

    #[transactional(manager = manager)]
    async fn insert_mariadb(manager: &TxManager<MySql>) -> Result<(), AppError> {
        sqlx::raw_sql("INSERT INTO slow_commit_my (id) VALUES (1)")
            .execute(&mut *manager.conn()?)
            .await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb_a_commit_cut_off_shows_before_the_next_borrower_or_never() {
        let (options, opened) =
            covet_txn_tests::counting_connections(covet_txn_tests::pool_options(1));
        let Some(pool) =
            covet_txn_tests::mysql_pool(options, covet_txn_tests::mysql_options()).await
        else {
            return;
        };
        let Some(admin) = covet_txn_tests::mysql(1).await else {
            return;
        };
        sqlx::raw_sql("DROP TABLE IF EXISTS slow_commit_my; CREATE TABLE slow_commit_my (id BIGINT PRIMARY KEY)")
            .execute(&admin)
            .await
            .expect("setup");
        let manager = covet_txn_tests::manager_on(pool);
        // MariaDB's backup lock holds every COMMIT until it is released.
        let mut locker = admin.acquire().await.expect("a connection");
        sqlx::raw_sql("BACKUP STAGE START; BACKUP STAGE BLOCK_COMMIT")
            .execute(&mut *locker)
            .await
            .expect("blocks commits");
        let cut = tokio::time::timeout(Duration::from_millis(300), insert_mariadb(&manager)).await;
        assert!(
            cut.is_err(),
            "the call was cancelled during its COMMIT: {cut:?}"
        );
        let released = Arc::new(tokio::sync::Notify::new());
        let release = Arc::clone(&released);
        let unlocker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sqlx::raw_sql("BACKUP STAGE END")
                .execute(&mut *locker)
                .await
                .expect("releases the lock");
            release.notify_one();
        });
        let seen_next: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM slow_commit_my")
            .fetch_one(manager.pool())
            .await
            .expect("the next borrower reads");
        released.notified().await;
        unlocker.await.expect("the unlocker ran");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen_later: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM slow_commit_my")
            .fetch_one(manager.pool())
            .await
            .expect("reads");
        assert_eq!(
            seen_next, seen_later,
            "the cut-off COMMIT became visible after the next borrower began"
        );
        assert_eq!(seen_next, 1, "the server committed what it received");
        assert_eq!(
            opened.load(Ordering::SeqCst),
            1,
            "the connection went back to the pool, not closed"
        );
        let total = manager.metrics().total;
        let cancelled = (
            total.cancelled_commits_committed,
            total.cancelled_commits_rolled_back,
            total.cancelled_commits_unknown,
        );
        assert_eq!(cancelled, (1, 0, 0));
    }
}
