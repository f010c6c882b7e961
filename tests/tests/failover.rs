//! Failover on a pair of its own (`.ci/topology`: 5434 and 5435, with
//! synchronous replication): eight tasks run transfers with retry while the
//! standby is promoted and the old primary stopped. Every call either
//! committed exactly once (a log row written in the same transaction says
//! so) or failed with an error that says what is known; calls after the
//! failover run on the new primary. The old primary is then rebuilt as the
//! new one's standby, so the pair has swapped roles for the next run.
//!
//! A primary demoted while still up (made read-only, its standby promoted)
//! refuses writes: a read-write call finds the new primary and runs again
//! there, and the pool lends no connection to the old host after that.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use covet_txn::{CommitOutcome, Error, TxManager, TxOptions};
use covet_txn_tests::topology::{self, PAIR_URLS};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

const ACCOUNTS: i64 = 10;
const OPENING_BALANCE: i64 = 1_000;
const TASKS: i64 = 8;

/// How a call ended.
#[derive(Debug)]
enum Ended {
    Committed,
    /// Failed, and certainly did not commit.
    NotCommitted(String),
    /// Failed during COMMIT, outcome unknown.
    Ambiguous,
}

struct Call {
    id: i64,
    from: i64,
    to: i64,
    amount: i64,
    started: Instant,
    ended: Ended,
}

/// Rebuilds the old primary as the new one's standby when the test ends,
/// passed or failed.
struct Rebuild {
    old: &'static str,
    new: &'static str,
}

impl Rebuild {
    /// Promotes the pair's standby on port `new`; the old primary on `old`
    /// is rebuilt as its standby when the guard goes, even if promoting
    /// fails.
    async fn promote(old: &'static str, new: &'static str) -> Rebuild {
        let rebuild = Rebuild { old, new };
        tokio::task::spawn_blocking(move || topology::run(&["promote", new]))
            .await
            .expect("promoting");
        rebuild
    }
}

impl Drop for Rebuild {
    fn drop(&mut self) {
        topology::run(&["rebuild", self.old, self.new]);
    }
}

async fn transfer(manager: &TxManager<Postgres>, call: (i64, i64, i64, i64)) -> Ended {
    let (id, from, to, amount) = call;
    let options = TxOptions::new()
        .retries(100)
        .backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(100))
        .resolve_ambiguous_commit(true);
    let result = manager
        .transaction_with_retry(options, || async {
            // In id order, so that two transfers never deadlock.
            for (account, delta) in [(from.min(to), 0), (from, -amount), (to, amount)] {
                sqlx::query("UPDATE replica_failover_accounts SET balance = balance + $1 WHERE id = $2")
                    .bind(delta)
                    .bind(account)
                    .execute(&mut *manager.conn()?)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO replica_failover_log (call_id, from_id, to_id, amount) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(from)
            .bind(to)
            .bind(amount)
            .execute(&mut *manager.conn()?)
            .await?;
            Ok::<_, Error>(())
        })
        .await;
    match result {
        Ok(()) => Ended::Committed,
        Err(Error::AmbiguousCommit {
            outcome: CommitOutcome::Unknown,
            ..
        }) => Ended::Ambiguous,
        Err(error @ Error::AmbiguousCommit { .. }) => {
            panic!("a COMMIT across the failover was resolved: {error}")
        }
        Err(error) => Ended::NotCommitted(error.to_string()),
    }
}

async fn standby(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(pool)
        .await
        .expect("pg_is_in_recovery()")
}

/// The tests change which host of the pair is the primary: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_through_a_failover_commit_once_or_say_they_may_have() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(((old_primary, old_url, old_port), (_, new_url, new_port))) = roles().await else {
        return;
    };
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS replica_failover_accounts, replica_failover_log;
         CREATE TABLE replica_failover_accounts (id int8 PRIMARY KEY, balance int8 NOT NULL);
         CREATE TABLE replica_failover_log (call_id int8 PRIMARY KEY, from_id int8 NOT NULL,
                                            to_id int8 NOT NULL, amount int8 NOT NULL);",
    )
    .execute(&old_primary)
    .await
    .expect("the tables");
    sqlx::query(
        "INSERT INTO replica_failover_accounts SELECT id, $1 FROM generate_series(1, $2) AS id",
    )
    .bind(OPENING_BALANCE)
    .bind(ACCOUNTS)
    .execute(&old_primary)
    .await
    .expect("the accounts");
    drop(old_primary);

    let pool = covet_txn_tests::pool_options(TASKS as u32).acquire_timeout(Duration::from_secs(30));
    let manager = pair_manager(pool, old_url).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let manager = manager.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = task * 1_000_000 + n;
                let from = 1 + (id * 7 + task) % ACCOUNTS;
                let to = 1 + (from + 1 + n % (ACCOUNTS - 1)) % ACCOUNTS;
                let amount = 1 + n % 5;
                let started = Instant::now();
                let ended = transfer(&manager, (id, from, to, amount)).await;
                calls.push(Call {
                    id,
                    from,
                    to,
                    amount,
                    started,
                    ended,
                });
            }
            calls
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rebuild = Rebuild::promote(old_port, new_port).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::spawn_blocking(move || topology::run(&["stop", old_port]))
        .await
        .expect("stopping the old primary");
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for task in tasks {
        calls.extend(task.await.expect("a transfer task"));
    }

    let new_primary = topology::pool::<Postgres>(new_url, 1)
        .await
        .expect("the new primary");
    let logged: Vec<i64> = sqlx::query_scalar("SELECT call_id FROM replica_failover_log")
        .fetch_all(&new_primary)
        .await
        .expect("the log");
    let logged: std::collections::HashSet<i64> = logged.into_iter().collect();
    let mut expected = vec![OPENING_BALANCE; ACCOUNTS as usize];
    let (mut committed, mut after_failover, mut ambiguous, mut failed) = (0, 0, 0, 0);
    for call in &calls {
        let in_log = logged.contains(&call.id);
        match &call.ended {
            Ended::Committed => {
                assert!(
                    in_log,
                    "call {} returned Ok but is not on the new primary",
                    call.id
                );
                committed += 1;
                after_failover += usize::from(call.started > stopped);
            }
            Ended::NotCommitted(error) => {
                assert!(!in_log, "call {} failed ({error}) but committed", call.id);
                failed += 1;
            }
            Ended::Ambiguous => ambiguous += 1,
        }
        if in_log {
            expected[(call.from - 1) as usize] -= call.amount;
            expected[(call.to - 1) as usize] += call.amount;
        }
    }
    assert_eq!(
        logged.len(),
        calls
            .iter()
            .filter(|call| logged.contains(&call.id))
            .count()
    );
    let balances: Vec<i64> =
        sqlx::query_scalar("SELECT balance FROM replica_failover_accounts ORDER BY id")
            .fetch_all(&new_primary)
            .await
            .expect("the balances");
    assert_eq!(
        balances, expected,
        "the balances do not match the logged transfers"
    );
    eprintln!(
        "failover: {} calls, {committed} committed ({after_failover} begun after the old primary \
         stopped), {ambiguous} ambiguous, {failed} failed; {} primary changes",
        calls.len(),
        manager.replicas().primary_changes
    );
    assert!(after_failover > 0, "no call committed on the new primary");
    assert!(manager.replicas().primary_changes >= 1);
    drop(rebuild);
}

#[tokio::test]
async fn a_pool_pointed_at_a_dead_host_finds_the_primary_after_its_first_failure() {
    let _turn = ONE_AT_A_TIME.lock().await;
    if topology::pool::<Postgres>(PAIR_URLS[0], 1).await.is_none() {
        return;
    }
    // Nothing listens on 5436.
    let dead: PgConnectOptions = topology::options("postgres://postgres@127.0.0.1:5436/test");
    let pool = covet_txn_tests::pool_options::<Postgres>(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(dead.clone());
    let manager = TxManager::builder(pool)
        .primary_hosts([
            dead,
            topology::options(PAIR_URLS[0]),
            topology::options(PAIR_URLS[1]),
        ])
        .build();
    let writable = || async {
        manager
            .transaction(TxOptions::new(), || async {
                let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut *manager.conn()?)
                    .await?;
                Ok::<_, Error>(!standby)
            })
            .await
    };
    let first = writable().await;
    assert!(
        matches!(
            first,
            Err(Error::Database {
                operation: covet_txn::Operation::Acquire,
                ..
            })
        ),
        "{first:?}"
    );
    assert!(writable().await.expect("the second call, on the primary"));
    assert_eq!(manager.replicas().primary_changes, 1);
}

/// A manager whose pool is built from `pool` on the pair's host at
/// `primary_url`, and which knows both hosts.
async fn pair_manager(pool: PgPoolOptions, primary_url: &str) -> TxManager<Postgres> {
    let pool = pool
        .connect_with(topology::options(primary_url))
        .await
        .expect("a pool on the primary");
    TxManager::builder(pool)
        .primary_hosts(PAIR_URLS.map(topology::options))
        .failover_wait(Duration::from_secs(20))
        .build()
}

/// The pair's primary and standby now, as (pool, URL, port) each.
async fn roles() -> Option<(
    (PgPool, &'static str, &'static str),
    (PgPool, &'static str, &'static str),
)> {
    let first = topology::pool(PAIR_URLS[0], 1).await?;
    let second = topology::pool(PAIR_URLS[1], 1).await?;
    Some(if standby(&first).await {
        (
            (second, PAIR_URLS[1], "5435"),
            (first, PAIR_URLS[0], "5434"),
        )
    } else {
        (
            (first, PAIR_URLS[0], "5434"),
            (second, PAIR_URLS[1], "5435"),
        )
    })
}

/// Inserts a row with `retry`, counting attempts; returns the port of the
/// server the last attempt ran on.
async fn write_counted(manager: &TxManager<Postgres>, attempts: &AtomicU32) -> Result<i32, Error> {
    manager
        .transaction_with_retry(TxOptions::new().retries(3), || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let port: i32 = sqlx::query_scalar(
                "INSERT INTO mdbrep_demoted (port) VALUES (inet_server_port()) RETURNING port",
            )
            .fetch_one(&mut *manager.conn()?)
            .await?;
            Ok::<_, Error>(port)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_by_a_primary_demoted_in_place_runs_again_on_the_new_one() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(((old_primary, old_url, old_port), (_, _, new_port))) = roles().await else {
        return;
    };
    sqlx::raw_sql("DROP TABLE IF EXISTS mdbrep_demoted; CREATE TABLE mdbrep_demoted (port int4)")
        .execute(&old_primary)
        .await
        .expect("the table");
    let manager = pair_manager(covet_txn_tests::pool_options(4), old_url).await;
    let attempts = AtomicU32::new(0);
    let before = write_counted(&manager, &attempts).await;
    assert_eq!(
        before.expect("a write before the demotion").to_string(),
        old_port
    );

    // Demoted in place: still up, its pooled connections still open, but
    // every new transaction read-only; its standby becomes the primary. The
    // rebuild makes it the new primary's standby again (and drops the
    // setting with its data folder).
    // One statement a request: ALTER SYSTEM runs outside any transaction.
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(sql)
            .execute(&old_primary)
            .await
            .expect("demoting the primary");
    }
    let rebuild = Rebuild::promote(old_port, new_port).await;

    attempts.store(0, Ordering::Relaxed);
    let after = write_counted(&manager, &attempts).await;
    assert_eq!(after.expect("the write, run again").to_string(), new_port);
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
    assert!(manager.replicas().primary_changes >= 1);
    for _ in 0..4 {
        attempts.store(0, Ordering::Relaxed);
        let next = write_counted(&manager, &attempts).await;
        assert_eq!(next.expect("a later write").to_string(), new_port);
        assert_eq!(
            attempts.load(Ordering::Relaxed),
            1,
            "a connection to the old host was lent"
        );
    }
    drop(old_primary);
    tokio::task::spawn_blocking(move || drop(rebuild))
        .await
        .expect("rebuilding the pair");
}
