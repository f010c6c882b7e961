//! Two-phase commit across PostgreSQL and MariaDB, and across two
//! PostgreSQL databases: commit and rollback with nested scopes, retry after
//! a lost connection, the timeout, a coordinator killed with SIGKILL at every
//! step of the protocol and recovered by a new process, and a bank split
//! between two databases under concurrent serializable transfers.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use covet_txn::two_phase::{TwoPhase, TwoPhaseOptions};
use covet_txn::{Error, Isolation, RetryPolicy, TxManager, TxOptions};
use covet_txn_tests as support;
use sqlx::{MySql, Postgres};

/// The second PostgreSQL database of the two-database tests.
const SECOND_DATABASE: &str = "covet_two_phase_b";

async fn orders() -> Option<TxManager<Postgres>> {
    let pool = support::postgres(6).await?;
    Some(TxManager::builder(pool).name("orders").build())
}

async fn ledger() -> Option<TxManager<MySql>> {
    let pool = support::mysql(6).await?;
    Some(TxManager::builder(pool).name("ledger").build())
}

async fn second_postgres() -> Option<TxManager<Postgres>> {
    let admin = support::postgres(1).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(SECOND_DATABASE)
        .fetch_optional(&admin)
        .await
        .expect("reads pg_database");
    if exists.is_none() {
        // Two test binaries may race to create it.
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {SECOND_DATABASE}"
        )))
        .execute(&admin)
        .await;
    }
    let pool =
        support::postgres_with(support::postgres_options().database(SECOND_DATABASE), 6).await?;
    Some(TxManager::builder(pool).name("archive").build())
}

async fn pg_exec(manager: &TxManager<Postgres>, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(manager.pool())
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

async fn my_exec(manager: &TxManager<MySql>, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(manager.pool())
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

async fn pg_count(manager: &TxManager<Postgres>, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(manager.pool())
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

async fn my_count(manager: &TxManager<MySql>, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(manager.pool())
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// Prepared branches of `coordinator` left on the PostgreSQL server and the
/// MariaDB server.
async fn branches_left(
    postgres: &TxManager<Postgres>,
    mysql: &TxManager<MySql>,
    coordinator: &str,
) -> usize {
    let pg: Vec<String> = sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts")
        .fetch_all(postgres.pool())
        .await
        .expect("lists prepared transactions");
    let my = sqlx::raw_sql("XA RECOVER")
        .fetch_all(mysql.pool())
        .await
        .expect("XA RECOVER");
    let prefix = format!("{coordinator}:");
    let mysql_left = my
        .iter()
        .filter(|row| {
            let data: Vec<u8> = sqlx::Row::try_get_unchecked(*row, 3).unwrap_or_default();
            data.starts_with(prefix.as_bytes())
        })
        .count();
    pg.iter().filter(|gid| gid.starts_with(&prefix)).count() + mysql_left
}

/// A coordinator of the tests over the orders and ledger managers, its
/// decisions in `tp_decisions`.
fn test_coordinator(
    name: &str,
    orders: &TxManager<Postgres>,
    ledger: &TxManager<MySql>,
) -> covet_txn::two_phase::TwoPhaseBuilder {
    TwoPhase::builder(name)
        .participant(orders)
        .participant(ledger)
        .log_table("tp_decisions")
}

/// The two participants, with stale branches of killed runs cleared and
/// each one's tables made afresh by its statements; `None` (after a notice)
/// when a server is unreachable.
async fn participants(
    postgres_setup: &str,
    mysql_setup: &str,
) -> Option<(TxManager<Postgres>, TxManager<MySql>)> {
    let (orders, ledger) = (orders().await?, ledger().await?);
    clear_stale_branches(&orders, &ledger).await;
    pg_exec(&orders, postgres_setup).await;
    my_exec(&ledger, mysql_setup).await;
    Some((orders, ledger))
}

/// A coordinator name of this test and process: runs elsewhere on the same
/// servers never touch its branches.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Rolls back the branches an earlier run of these tests left prepared when
/// it was killed (their process is gone): they would hold locks on the
/// tables the tests drop and create again.
async fn clear_stale_branches(postgres: &TxManager<Postgres>, mysql: &TxManager<MySql>) {
    let stale = |global: &str| {
        let coordinator = global.split(':').next().unwrap_or_default();
        coordinator
            .rsplit_once('-')
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    let pg: Vec<String> = sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts")
        .fetch_all(postgres.pool())
        .await
        .expect("lists prepared transactions");
    for gid in pg.iter().filter(|gid| stale(gid)) {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ROLLBACK PREPARED '{gid}'")))
            .execute(postgres.pool())
            .await;
    }
    let rows = sqlx::raw_sql("XA RECOVER")
        .fetch_all(mysql.pool())
        .await
        .expect("XA RECOVER");
    for row in rows {
        let length: i64 = sqlx::Row::try_get_unchecked(&row, 1).unwrap_or_default();
        let data: Vec<u8> = sqlx::Row::try_get_unchecked(&row, 3).unwrap_or_default();
        let split = usize::try_from(length).unwrap_or_default().min(data.len());
        let (global, branch) = data.split_at(split);
        let (global, branch) = (
            String::from_utf8_lossy(global),
            String::from_utf8_lossy(branch),
        );
        if stale(&global) {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "XA ROLLBACK '{global}','{branch}'"
            )))
            .execute(mysql.pool())
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_and_rolls_back_across_postgres_and_mariadb_with_nested_scopes() {
    let Some((orders, ledger)) = participants("DROP TABLE IF EXISTS tp_orders; CREATE TABLE tp_orders (id BIGINT PRIMARY KEY)", "DROP TABLE IF EXISTS tp_ledger; CREATE TABLE tp_ledger (id BIGINT PRIMARY KEY) ENGINE = InnoDB").await else {
        return;
    };
    let coordinator = unique("nested");
    let two_phase = test_coordinator(&coordinator, &orders, &ledger)
        .recover_every(None)
        .build()
        .await
        .expect("builds");

    let committed = two_phase
        .transaction(
            TwoPhaseOptions::new().isolation(Isolation::Serializable),
            || async {
                sqlx::query("INSERT INTO tp_orders VALUES (1)")
                    .execute(&mut *orders.conn()?)
                    .await?;
                sqlx::query("INSERT INTO tp_ledger VALUES (1)")
                    .execute(&mut *ledger.conn()?)
                    .await?;
                // A nested scope of each participant's manager runs in a
                // savepoint of its branch; a failed one rolls back alone.
                let nested: Result<(), Error> = orders
                    .transaction(TxOptions::new(), || async {
                        sqlx::query("INSERT INTO tp_orders VALUES (2)")
                            .execute(&mut *orders.conn()?)
                            .await?;
                        Err(Error::InvalidOption("refused".to_owned()))
                    })
                    .await;
                assert!(nested.is_err());
                ledger
                    .transaction(TxOptions::new(), || async {
                        sqlx::query("INSERT INTO tp_ledger VALUES (3)")
                            .execute(&mut *ledger.conn()?)
                            .await?;
                        Ok::<_, Error>(())
                    })
                    .await?;
                Ok::<_, Error>("placed")
            },
        )
        .await;
    assert_eq!(committed.expect("commits"), "placed");
    assert_eq!(pg_count(&orders, "SELECT COUNT(*) FROM tp_orders").await, 1);
    assert_eq!(my_count(&ledger, "SELECT COUNT(*) FROM tp_ledger").await, 2);
    assert_eq!(two_phase.stats().committed, 1);

    let failed: Result<(), Error> = two_phase
        .transaction(TwoPhaseOptions::new(), || async {
            sqlx::query("INSERT INTO tp_orders VALUES (10)")
                .execute(&mut *orders.conn()?)
                .await?;
            sqlx::query("INSERT INTO tp_ledger VALUES (10)")
                .execute(&mut *ledger.conn()?)
                .await?;
            Err(Error::InvalidOption("the order was refused".to_owned()))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(pg_count(&orders, "SELECT COUNT(*) FROM tp_orders").await, 1);
    assert_eq!(my_count(&ledger, "SELECT COUNT(*) FROM tp_ledger").await, 2);
    assert_eq!(two_phase.stats().rolled_back, 1);
    assert_eq!(branches_left(&orders, &ledger, &coordinator).await, 0);
    let text = two_phase.prometheus_text();
    assert!(text.contains("outcome=\"committed\"} 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_across_two_postgres_databases_of_one_server() {
    let (Some(orders), Some(archive)) = (orders().await, second_postgres().await) else {
        return;
    };
    pg_exec(
        &orders,
        "DROP TABLE IF EXISTS tp_pg_a; CREATE TABLE tp_pg_a (id BIGINT PRIMARY KEY)",
    )
    .await;
    pg_exec(
        &archive,
        "DROP TABLE IF EXISTS tp_pg_b; CREATE TABLE tp_pg_b (id BIGINT PRIMARY KEY)",
    )
    .await;
    let two_phase = TwoPhase::builder(&unique("twopg"))
        .participant(&orders)
        .participant(&archive)
        .log_table("tp_decisions")
        .recover_every(None)
        .build()
        .await
        .expect("builds");
    let (orders, archive) = (&orders, &archive);
    for (id, fail) in [(1, false), (2, true)] {
        let result: Result<(), Error> = two_phase
            .transaction(TwoPhaseOptions::new(), || async move {
                sqlx::query("INSERT INTO tp_pg_a VALUES ($1)")
                    .bind(id)
                    .execute(&mut *orders.conn()?)
                    .await?;
                sqlx::query("INSERT INTO tp_pg_b VALUES ($1)")
                    .bind(id)
                    .execute(&mut *archive.conn()?)
                    .await?;
                if fail {
                    return Err(Error::InvalidOption("refused".to_owned()));
                }
                Ok(())
            })
            .await;
        assert_eq!(result.is_ok(), !fail);
    }
    assert_eq!(
        pg_count(orders, "SELECT COALESCE(SUM(id), 0)::BIGINT FROM tp_pg_a").await,
        1
    );
    assert_eq!(
        pg_count(archive, "SELECT COALESCE(SUM(id), 0)::BIGINT FROM tp_pg_b").await,
        1
    );
}

#[tokio::test]
async fn sqlite_cannot_be_a_participant() {
    let Some(pool) = support::sqlite("two_phase_refused", 1).await else {
        return;
    };
    let manager = TxManager::builder(pool).name("local").build();
    let refused = TwoPhase::builder("refuses")
        .participant(&manager)
        .build()
        .await;
    match refused {
        Err(Error::TwoPhaseUnsupported { system }) => assert_eq!(system, "sqlite"),
        Err(other) => panic!("expected TwoPhaseUnsupported, got {other}"),
        Ok(_) => panic!("a SQLite participant was accepted"),
    }
    let bad_name = TwoPhase::builder("no'quotes")
        .participant(&manager)
        .build()
        .await;
    assert!(matches!(bad_name, Err(Error::InvalidOption(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_retries_the_whole_call_and_a_timeout_rolls_back_every_branch() {
    let Some((orders, ledger)) = participants("DROP TABLE IF EXISTS tp_retry_a; CREATE TABLE tp_retry_a (id BIGINT PRIMARY KEY)", "DROP TABLE IF EXISTS tp_retry_b; CREATE TABLE tp_retry_b (id BIGINT PRIMARY KEY) ENGINE = InnoDB").await else {
        return;
    };
    let coordinator = unique("retry");
    let two_phase = test_coordinator(&coordinator, &orders, &ledger)
        .recover_every(None)
        .build()
        .await
        .expect("builds");
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let options = TwoPhaseOptions::new().retry(RetryPolicy::new().retries(2));
    two_phase
        .transaction(options, || async {
            let attempt = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            sqlx::query("INSERT INTO tp_retry_b VALUES (1)")
                .execute(&mut *ledger.conn()?)
                .await?;
            if attempt == 1 {
                // The server ends this branch's connection mid-transaction.
                sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
                    .execute(&mut *orders.conn()?)
                    .await?;
            }
            sqlx::query("INSERT INTO tp_retry_a VALUES (1)")
                .execute(&mut *orders.conn()?)
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .expect("the second attempt commits");
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(
        pg_count(&orders, "SELECT COUNT(*) FROM tp_retry_a").await,
        1
    );
    assert_eq!(
        my_count(&ledger, "SELECT COUNT(*) FROM tp_retry_b").await,
        1
    );

    let timed_out: Result<(), Error> = two_phase
        .transaction(
            TwoPhaseOptions::new().timeout(Duration::from_millis(300)),
            || async {
                sqlx::query("UPDATE tp_retry_a SET id = 2")
                    .execute(&mut *orders.conn()?)
                    .await?;
                sqlx::query("UPDATE tp_retry_b SET id = 2")
                    .execute(&mut *ledger.conn()?)
                    .await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            },
        )
        .await;
    assert!(
        matches!(timed_out, Err(Error::Timeout { .. })),
        "{timed_out:?}"
    );
    assert_eq!(branches_left(&orders, &ledger, &coordinator).await, 0);
    // The rows' locks are gone: another transaction updates them at once.
    pg_exec(
        &orders,
        "SET lock_timeout = '2s'; UPDATE tp_retry_a SET id = 1",
    )
    .await;
    my_exec(
        &ledger,
        "SET SESSION innodb_lock_wait_timeout = 2; UPDATE tp_retry_b SET id = 1",
    )
    .await;
    assert_eq!(
        pg_count(&orders, "SELECT SUM(id)::BIGINT FROM tp_retry_a").await,
        1
    );
}

/// Where a child's stderr goes: read back when it fails.
fn child_log(test: &str) -> (std::fs::File, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("covet-{test}-{}.log", std::process::id()));
    let file = std::fs::File::create(&path).expect("creates the child's log");
    (file, path)
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Reads the child's output until `PAUSED`, for at most a minute, waits
/// `after`, and kills the child (SIGKILL) either way. `false`: it never got
/// there.
fn kill_when_paused(child: &mut std::process::Child, after: Duration) -> bool {
    // stdout is read here; stderr goes to `child_log()`.
    let stdout = child.stdout.take().expect("piped");
    let (paused, reached) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let found = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains(PAUSED));
        let _ = paused.send(found);
    });
    let reached = reached
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or(false);
    if reached {
        std::thread::sleep(after);
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    reached
}

/// Where the child stops, as `step:branch`, and the id of its rows.
const CHILD_STEP: &str = "COVET_TWO_PHASE_CHILD_STEP";
const CHILD_ID: &str = "COVET_TWO_PHASE_CHILD_ID";
const CHILD_COORDINATOR: &str = "COVET_TWO_PHASE_CHILD_COORDINATOR";
const PAUSED: &str = "covet-two-phase-child-paused";

fn pause_at_requested_step(step: &'static str, branch: usize) {
    let requested = std::env::var(CHILD_STEP).unwrap_or_default();
    if requested == format!("{step}:{branch}") {
        println!("{PAUSED}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // The parent kills this process with SIGKILL while it waits here.
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

/// The coordinator that the crash test kills: run in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_coordinator_killed_at_every_step_is_recovered_by_a_new_process"]
async fn two_phase_crash_child() {
    let (Ok(coordinator), Ok(id)) = (std::env::var(CHILD_COORDINATOR), std::env::var(CHILD_ID))
    else {
        return;
    };
    let id: i64 = id.parse().expect("a numeric id");
    let (Some(orders), Some(ledger)) = (orders().await, ledger().await) else {
        return;
    };
    let two_phase = test_coordinator(&coordinator, &orders, &ledger)
        .recover_every(None)
        .step_hook(pause_at_requested_step)
        .build()
        .await
        .expect("builds");
    two_phase
        .transaction(TwoPhaseOptions::new(), || async {
            sqlx::query("INSERT INTO tp_crash_a VALUES ($1, 0)")
                .bind(id)
                .execute(&mut *orders.conn()?)
                .await?;
            sqlx::query("INSERT INTO tp_crash_b VALUES (?, 0)")
                .bind(id)
                .execute(&mut *ledger.conn()?)
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .expect("commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_at_every_step_is_recovered_by_a_new_process() {
    let Some((orders, ledger)) = participants("DROP TABLE IF EXISTS tp_crash_a; CREATE TABLE tp_crash_a (id BIGINT PRIMARY KEY, touched INT)", "DROP TABLE IF EXISTS tp_crash_b; CREATE TABLE tp_crash_b (id BIGINT PRIMARY KEY, touched INT) ENGINE = InnoDB").await else {
        return;
    };
    let coordinator = unique("crash");
    // After the first PREPARE and after both, the decision is not recorded:
    // recovery rolls both back. After the decision, and between the two
    // COMMIT PREPAREDs, it is: recovery commits both.
    let steps = [
        ("prepared:0", false),
        ("prepared:1", false),
        ("decided:0", true),
        ("committed:0", true),
    ];
    for (id, (step, committed)) in (1_i64..).zip(steps) {
        let (log, log_path) = child_log("two-phase-crash");
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--ignored",
                "--exact",
                "two_phase_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_STEP, step)
            .env(CHILD_ID, id.to_string())
            .env(CHILD_COORDINATOR, &coordinator)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starts the child");
        assert!(
            kill_when_paused(&mut child, Duration::ZERO),
            "the child never reached {step}; its log:\n{}",
            tail(&log_path)
        );

        // Two recoveries at once, as from two new processes: the log's
        // first record decides, and both finish the same way.
        let recovering = || {
            test_coordinator(&coordinator, &orders, &ledger)
                .recovery_grace(Duration::ZERO)
                .recover_every(None)
                .build()
        };
        let (first, second) = tokio::join!(recovering(), recovering());
        let (first, second) = (first.expect("recovers"), second.expect("recovers"));
        // MariaDB frees a dead client's XA branch once it sees the
        // disconnect: a pass after that finishes whatever was left.
        for _ in 0..50 {
            if branches_left(&orders, &ledger, &coordinator).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            first.recover().await.expect("recovers");
        }
        second.recover().await.expect("recovers");
        assert_eq!(
            branches_left(&orders, &ledger, &coordinator).await,
            0,
            "after {step}"
        );
        let expected = i64::from(committed);
        let in_orders = pg_count(
            &orders,
            &format!("SELECT COUNT(*) FROM tp_crash_a WHERE id = {id}"),
        )
        .await;
        let in_ledger = my_count(
            &ledger,
            &format!("SELECT COUNT(*) FROM tp_crash_b WHERE id = {id}"),
        )
        .await;
        assert_eq!((in_orders, in_ledger), (expected, expected), "after {step}");
        // No lock is left behind.
        pg_exec(
            &orders,
            "SET lock_timeout = '2s'; UPDATE tp_crash_a SET touched = touched + 1",
        )
        .await;
        my_exec(
            &ledger,
            "SET SESSION innodb_lock_wait_timeout = 2; UPDATE tp_crash_b SET touched = touched + 1",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_split_between_two_databases_keeps_its_total_under_concurrent_transfers() {
    let (Some(orders), Some(ledger)) = (orders().await, ledger().await) else {
        return;
    };
    const ACCOUNTS: i64 = 4;
    const OPENING: i64 = 1_000;
    pg_exec(&orders, "DROP TABLE IF EXISTS tp_bank_a; CREATE TABLE tp_bank_a (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)").await;
    my_exec(&ledger, "DROP TABLE IF EXISTS tp_bank_b; CREATE TABLE tp_bank_b (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE = InnoDB").await;
    for id in 0..ACCOUNTS {
        pg_exec(
            &orders,
            &format!("INSERT INTO tp_bank_a VALUES ({id}, {OPENING})"),
        )
        .await;
        my_exec(
            &ledger,
            &format!("INSERT INTO tp_bank_b VALUES ({id}, {OPENING})"),
        )
        .await;
    }
    let two_phase = TwoPhase::builder(&unique("bank"))
        .participant(&orders)
        .participant(&ledger)
        .log_table("tp_decisions")
        .recover_every(None)
        .build()
        .await
        .expect("builds");
    let options = TwoPhaseOptions::new()
        .isolation(Isolation::Serializable)
        .timeout(Duration::from_secs(60))
        .retry(
            RetryPolicy::new()
                .retries(50)
                .max_backoff(Duration::from_millis(50)),
        );
    let tasks = (0..8).map(|task| {
        let (two_phase, orders, ledger) = (two_phase.clone(), orders.clone(), ledger.clone());
        tokio::spawn(async move {
            for round in 0..10_i64 {
                let (from, to, amount) = (
                    (task + round) % ACCOUNTS,
                    (task * 3 + round) % ACCOUNTS,
                    1 + round,
                );
                let moved: Result<(), Error> = two_phase
                    .transaction(options, || async {
                        sqlx::query("UPDATE tp_bank_a SET balance = balance - $1 WHERE id = $2")
                            .bind(amount)
                            .bind(from)
                            .execute(&mut *orders.conn()?)
                            .await?;
                        sqlx::query("UPDATE tp_bank_b SET balance = balance + ? WHERE id = ?")
                            .bind(amount)
                            .bind(to)
                            .execute(&mut *ledger.conn()?)
                            .await?;
                        Ok(())
                    })
                    .await;
                moved.expect("a transfer commits within its retries");
            }
        })
    });
    for task in tasks.collect::<Vec<_>>() {
        task.await.expect("a transfer task");
    }
    let in_orders = pg_count(&orders, "SELECT SUM(balance)::BIGINT FROM tp_bank_a").await;
    let in_ledger = my_count(
        &ledger,
        "SELECT CAST(SUM(balance) AS SIGNED) FROM tp_bank_b",
    )
    .await;
    assert_eq!(in_orders + in_ledger, 2 * ACCOUNTS * OPENING);
    let moved: i64 = (0..8).map(|_| (1..=10).sum::<i64>()).sum();
    assert_eq!(in_ledger - ACCOUNTS * OPENING, moved);
    assert_eq!(two_phase.stats().committed, 80);
}

/// The MariaDB connection of the running branch, and the step at which the
/// next test call has it killed (`KILL`, as an administrator or a network
/// failure would end it).
static LEDGER_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static KILL_LEDGER_AT: std::sync::Mutex<Option<(&'static str, usize)>> =
    std::sync::Mutex::new(None);

fn kill_ledger_at_step(step: &'static str, branch: usize) {
    let mut armed = KILL_LEDGER_AT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *armed != Some((step, branch)) {
        return;
    }
    *armed = None;
    let id = LEDGER_CONNECTION.load(std::sync::atomic::Ordering::SeqCst);
    let url = support::mysql_options();
    let killed = Command::new("mariadb")
        .args([
            "-h",
            url.get_host(),
            "-P",
            &url.get_port().to_string(),
            "-u",
            "root",
        ])
        .args(["-e", &format!("KILL {id}")])
        .status()
        .expect("runs the mariadb client");
    assert!(killed.success(), "KILL {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_connection_killed_during_each_phase() {
    let Some((orders, ledger)) = participants("DROP TABLE IF EXISTS tp_kill_a; CREATE TABLE tp_kill_a (id BIGINT PRIMARY KEY)", "DROP TABLE IF EXISTS tp_kill_b; CREATE TABLE tp_kill_b (id BIGINT PRIMARY KEY) ENGINE = InnoDB").await else {
        return;
    };
    let coordinator = unique("kill");
    let two_phase = test_coordinator(&coordinator, &orders, &ledger)
        .recovery_grace(Duration::ZERO)
        .recover_every(None)
        .step_hook(kill_ledger_at_step)
        .build()
        .await
        .expect("builds");
    let place = |id: i64, retries: u32| {
        let (two_phase, orders, ledger) = (&two_phase, &orders, &ledger);
        async move {
            let attempts = std::sync::atomic::AtomicU32::new(0);
            let placed = two_phase
                .transaction(
                    TwoPhaseOptions::new().retry(RetryPolicy::new().retries(retries)),
                    || async {
                        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        sqlx::query("INSERT INTO tp_kill_a VALUES ($1)")
                            .bind(id)
                            .execute(&mut *orders.conn()?)
                            .await?;
                        let mut ledger_conn = ledger.conn()?;
                        let connection: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                            .fetch_one(&mut *ledger_conn)
                            .await?;
                        LEDGER_CONNECTION.store(connection, std::sync::atomic::Ordering::SeqCst);
                        sqlx::query("INSERT INTO tp_kill_b VALUES (?)")
                            .bind(id)
                            .execute(&mut *ledger_conn)
                            .await?;
                        Ok::<_, Error>(())
                    },
                )
                .await;
            (placed, attempts.load(std::sync::atomic::Ordering::SeqCst))
        }
    };
    let rows = |id: i64| {
        let (orders, ledger) = (&orders, &ledger);
        async move {
            (
                pg_count(
                    orders,
                    &format!("SELECT COUNT(*) FROM tp_kill_a WHERE id = {id}"),
                )
                .await,
                my_count(
                    ledger,
                    &format!("SELECT COUNT(*) FROM tp_kill_b WHERE id = {id}"),
                )
                .await,
            )
        }
    };

    // Phase one: the ledger's connection dies after the orders branch is
    // prepared, before its own XA PREPARE. Every branch rolls back; with
    // retry, the next attempt commits.
    *KILL_LEDGER_AT.lock().expect("unpoisoned") = Some(("prepared", 0));
    let (placed, attempts) = place(1, 0).await;
    assert!(placed.is_err(), "without retry the call fails");
    assert_eq!((attempts, rows(1).await), (1, (0, 0)));
    *KILL_LEDGER_AT.lock().expect("unpoisoned") = Some(("prepared", 0));
    let (placed, attempts) = place(2, 2).await;
    placed.expect("the retry commits");
    assert_eq!((attempts, rows(2).await), (2, (1, 1)));

    // Phase two: the orders branch is committed, then the ledger's
    // connection dies before its XA COMMIT. The decision is durable, so the
    // call succeeds and recovery commits the ledger's branch once the server
    // has seen the disconnect.
    *KILL_LEDGER_AT.lock().expect("unpoisoned") = Some(("committed", 0));
    let (placed, _) = place(3, 0).await;
    placed.expect("the decision was durable");
    assert_eq!(two_phase.stats().committed_pending_recovery, 1);
    for _ in 0..50 {
        if rows(3).await == (1, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        two_phase.recover().await.expect("recovers");
    }
    assert_eq!(rows(3).await, (1, 1));
    assert!(two_phase.stats().recovered_committed >= 1);
    assert_eq!(branches_left(&orders, &ledger, &coordinator).await, 0);
}

const BANK_ACCOUNTS: i64 = 4;
const BANK_OPENING: i64 = 1_000;

/// The bank the crash test kills: 8 tasks of transfers until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_bank_split_between_two_databases_survives_coordinator_crashes"]
async fn two_phase_bank_child() {
    let Ok(coordinator) = std::env::var(CHILD_COORDINATOR) else {
        return;
    };
    let (Some(orders), Some(ledger)) = (orders().await, ledger().await) else {
        return;
    };
    // The killed child before this one left branches prepared, holding
    // locks these transfers wait for: recovery finishes them once they are
    // older than the grace, which no live call of this child reaches.
    let two_phase = test_coordinator(&coordinator, &orders, &ledger)
        .recovery_grace(Duration::from_secs(2))
        .recover_every(Some(Duration::from_millis(250)))
        .build()
        .await
        .expect("builds");
    let options = TwoPhaseOptions::new()
        .isolation(Isolation::Serializable)
        .retry(
            RetryPolicy::new()
                .retries(100)
                .max_backoff(Duration::from_millis(20)),
        );
    let tasks = (0..8_i64).map(|task| {
        let (two_phase, orders, ledger) = (two_phase.clone(), orders.clone(), ledger.clone());
        tokio::spawn(async move {
            for round in 0_i64.. {
                let (from, to) = (
                    (task + round) % BANK_ACCOUNTS,
                    (task * 3 + round) % BANK_ACCOUNTS,
                );
                // Money moves both ways between the databases.
                let to_ledger = (task + round) % 2 == 0;
                let _ = two_phase
                    .transaction(options, || async {
                        let (out, into) = if to_ledger { (-1_i64, 1_i64) } else { (1, -1) };
                        sqlx::query(
                            "UPDATE tp_crash_bank_a SET balance = balance + $1 WHERE id = $2",
                        )
                        .bind(out)
                        .bind(from)
                        .execute(&mut *orders.conn()?)
                        .await?;
                        sqlx::query(
                            "UPDATE tp_crash_bank_b SET balance = balance + ? WHERE id = ?",
                        )
                        .bind(into)
                        .bind(to)
                        .execute(&mut *ledger.conn()?)
                        .await?;
                        // The journal is on the orders side: its sum must match what
                        // the ledger side received, branch for branch.
                        sqlx::query("INSERT INTO tp_crash_bank_journal (amount) VALUES ($1)")
                            .bind(into)
                            .execute(&mut *orders.conn()?)
                            .await?;
                        Ok::<_, Error>(())
                    })
                    .await;
                if task == 0 && round == 0 {
                    println!("{PAUSED}");
                }
            }
        })
    });
    for task in tasks.collect::<Vec<_>>() {
        let _ = task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_split_between_two_databases_survives_coordinator_crashes() {
    let Some((orders, ledger)) = participants(
        "DROP TABLE IF EXISTS tp_crash_bank_journal; \
         CREATE TABLE tp_crash_bank_journal (id BIGSERIAL PRIMARY KEY, amount BIGINT NOT NULL); \
         DROP TABLE IF EXISTS tp_crash_bank_a; \
         CREATE TABLE tp_crash_bank_a (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
        "DROP TABLE IF EXISTS tp_crash_bank_b; \
         CREATE TABLE tp_crash_bank_b (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE = InnoDB",
    )
    .await
    else {
        return;
    };
    for id in 0..BANK_ACCOUNTS {
        pg_exec(
            &orders,
            &format!("INSERT INTO tp_crash_bank_a VALUES ({id}, {BANK_OPENING})"),
        )
        .await;
        my_exec(
            &ledger,
            &format!("INSERT INTO tp_crash_bank_b VALUES ({id}, {BANK_OPENING})"),
        )
        .await;
    }
    let coordinator = unique("crashbank");
    for crash in 0..3_u64 {
        let (log, log_path) = child_log("two-phase-bank");
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--ignored",
                "--exact",
                "two_phase_bank_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_COORDINATOR, &coordinator)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starts the child");
        // Killed somewhere in the middle of many calls, in any phase.
        let after = Duration::from_millis(150 + 170 * crash);
        assert!(
            kill_when_paused(&mut child, after),
            "the bank child never committed a transfer; its log:\n{}",
            tail(&log_path)
        );
    }
    let recovering = test_coordinator(&coordinator, &orders, &ledger)
        .recovery_grace(Duration::ZERO)
        .recover_every(None)
        .build()
        .await
        .expect("recovers");
    for _ in 0..50 {
        if branches_left(&orders, &ledger, &coordinator).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        recovering.recover().await.expect("recovers");
    }
    assert_eq!(branches_left(&orders, &ledger, &coordinator).await, 0);
    let in_orders = pg_count(&orders, "SELECT SUM(balance)::BIGINT FROM tp_crash_bank_a").await;
    let in_ledger = my_count(
        &ledger,
        "SELECT CAST(SUM(balance) AS SIGNED) FROM tp_crash_bank_b",
    )
    .await;
    assert_eq!(in_orders + in_ledger, 2 * BANK_ACCOUNTS * BANK_OPENING);
    let (transfers, to_ledger) = (
        pg_count(&orders, "SELECT COUNT(*) FROM tp_crash_bank_journal").await,
        pg_count(
            &orders,
            "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM tp_crash_bank_journal",
        )
        .await,
    );
    assert!(transfers > 0, "some transfers committed");
    assert_eq!(in_ledger - BANK_ACCOUNTS * BANK_OPENING, to_ledger);
}

/// The coordinator and participants of the attribute test: built at run
/// time, so held in `OnceLock`s.
static SHOP: std::sync::OnceLock<TwoPhase> = std::sync::OnceLock::new();
static SHOP_ORDERS: std::sync::OnceLock<TxManager<Postgres>> = std::sync::OnceLock::new();
static SHOP_LEDGER: std::sync::OnceLock<TxManager<MySql>> = std::sync::OnceLock::new();
static SHOP_ATTEMPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn shop_orders() -> Result<&'static TxManager<Postgres>, Error> {
    SHOP_ORDERS
        .get()
        .ok_or_else(|| Error::InvalidOption("no orders manager".to_owned()))
}

fn shop_ledger() -> Result<&'static TxManager<MySql>, Error> {
    SHOP_LEDGER
        .get()
        .ok_or_else(|| Error::InvalidOption("no ledger manager".to_owned()))
}

#[covet_txn::transactional(two_phase = SHOP, isolation = "serializable", retry = 2, timeout = "10s")]
async fn place_order(id: i64, amount: i64, cut_first_attempt: bool) -> Result<i64, Error> {
    let attempt = SHOP_ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    sqlx::query("INSERT INTO tp_attr_orders VALUES ($1, $2)")
        .bind(id)
        .bind(amount)
        .execute(&mut *shop_orders()?.conn()?)
        .await?;
    if cut_first_attempt && attempt == 1 {
        sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
            .execute(&mut *shop_orders()?.conn()?)
            .await?;
    }
    sqlx::query("INSERT INTO tp_attr_ledger VALUES (?, ?)")
        .bind(id)
        .bind(amount)
        .execute(&mut *shop_ledger()?.conn()?)
        .await?;
    if amount > 1_000 {
        return Err(Error::InvalidOption("over the limit".to_owned()));
    }
    Ok(id)
}

#[covet_txn::transactional(two_phase = SHOP)]
async fn record_once(id: i64) -> Result<(), Error> {
    sqlx::query("INSERT INTO tp_attr_orders VALUES ($1, 0)")
        .bind(id)
        .execute(&mut *shop_orders()?.conn()?)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attribute_runs_a_function_as_a_two_phase_call() {
    let Some((orders, ledger)) = participants("DROP TABLE IF EXISTS tp_attr_orders; CREATE TABLE tp_attr_orders (id BIGINT PRIMARY KEY, amount BIGINT)", "DROP TABLE IF EXISTS tp_attr_ledger; CREATE TABLE tp_attr_ledger (id BIGINT PRIMARY KEY, amount BIGINT) ENGINE = InnoDB").await else {
        return;
    };
    let (_, _) = (
        SHOP_ORDERS.set(orders.clone()),
        SHOP_LEDGER.set(ledger.clone()),
    );

    let unset = record_once(1).await;
    assert!(
        matches!(&unset, Err(Error::InvalidOption(message)) if message.contains("not built yet")),
        "{unset:?}"
    );
    let coordinator = TwoPhase::builder(&unique("attr"))
        .participant(&orders)
        .participant(&ledger)
        .log_table("tp_decisions")
        .recover_every(None)
        .build()
        .await
        .expect("builds");
    assert!(SHOP.set(coordinator).is_ok());

    assert_eq!(place_order(1, 10, false).await.expect("commits"), 1);
    SHOP_ATTEMPTS.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        place_order(2, 20, true).await.expect("the retry commits"),
        2
    );
    assert_eq!(SHOP_ATTEMPTS.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(place_order(3, 5_000, false).await.is_err());
    record_once(4).await.expect("commits");
    let orders_rows = pg_count(&orders, "SELECT COUNT(*) FROM tp_attr_orders").await;
    let ledger_rows = my_count(&ledger, "SELECT COUNT(*) FROM tp_attr_ledger").await;
    assert_eq!((orders_rows, ledger_rows), (3, 2));
    let stats = SHOP.get().expect("set").stats();
    assert_eq!((stats.committed, stats.rolled_back), (3, 2));
}

/// The alert rules in ops/ parse, and the coordinator's exposition is valid
/// Prometheus text with the series those rules read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_phase_rules_and_exposition_pass_promtool() {
    if !covet_txn_tests::promtool_checks_rules("covet-txn-two-phase.rules.yml") {
        return;
    }

    let (Some(orders), Some(ledger)) = (orders().await, ledger().await) else {
        return;
    };
    let two_phase = TwoPhase::builder(&unique("promtool"))
        .participant(&orders)
        .participant(&ledger)
        .log_table("tp_decisions")
        .recover_every(None)
        .build()
        .await
        .expect("builds");
    let text = two_phase.prometheus_text();
    for series in [
        "covet_txn_two_phase_total{",
        "covet_txn_two_phase_in_doubt_oldest_seconds{",
        "covet_txn_two_phase_in_doubt{",
        "covet_txn_two_phase_recovered_total{",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    covet_txn_tests::assert_promtool_accepts_metrics(&text);
}

/// Each participant's metrics (and so its monitor's dashboard) show the
/// coordinators it takes part in, with their counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_metrics_and_the_dashboard_show_the_coordinator() {
    let (Some(orders), Some(ledger)) = (orders().await, ledger().await) else {
        return;
    };
    clear_stale_branches(&orders, &ledger).await;
    pg_exec(
        &orders,
        "DROP TABLE IF EXISTS tp_shown; CREATE TABLE tp_shown (id BIGINT PRIMARY KEY)",
    )
    .await;
    let name = unique("shown");
    let two_phase = test_coordinator(&name, &orders, &ledger)
        .recover_every(None)
        .build()
        .await
        .expect("builds");
    two_phase
        .transaction(TwoPhaseOptions::new(), || async {
            sqlx::query("INSERT INTO tp_shown VALUES (1)")
                .execute(&mut *orders.conn()?)
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .expect("commits");
    for metrics in [orders.metrics(), ledger.metrics()] {
        let shown = metrics
            .two_phase
            .iter()
            .find(|stats| stats.coordinator == name)
            .unwrap_or_else(|| panic!("{name} is not in {:?}", metrics.two_phase));
        assert_eq!(shown.committed, 1);
    }
    let running = covet_txn_dashboard::Dashboard::new(orders.monitor())
        .bind("127.0.0.1:0")
        .bearer_token("two-phase-t0ken")
        .start()
        .await
        .expect("the dashboard");
    let (status, _, state) =
        support::http_get(running.addr(), "/api/state", Some("Bearer two-phase-t0ken")).await;
    running.shutdown().await;
    assert_eq!(status, 200, "{state}");
    let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
    let shown = state["metrics"]["two_phase"]
        .as_array()
        .and_then(|coordinators| {
            coordinators
                .iter()
                .find(|coordinator| coordinator["coordinator"] == name.as_str())
        })
        .unwrap_or_else(|| panic!("{name} is not on the dashboard: {state}"));
    assert_eq!(shown["committed"], 1, "{state}");
    assert_eq!(shown["in_doubt_branches"], 0, "{state}");
    // Dropped, the coordinator drops out once its last phase-two task ends.
    drop(two_phase);
    let mut gone = false;
    for _ in 0..40 {
        gone = orders
            .metrics()
            .two_phase
            .iter()
            .all(|stats| stats.coordinator != name);
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "a dropped coordinator drops out");
}
