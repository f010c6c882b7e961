//! Instructions per transaction, for callgrind: one task makes `count`
//! transfers one after another (the contended scenario's transfer at
//! SERIALIZABLE, on rows nobody else touches), hand-written or through
//! covet-txn. Wall and CPU time on a shared virtual machine swing by more
//! than covet-txn's own cost; the instructions a run executes do not, so
//! two runs of different lengths, subtracted, give each side's cost per
//! transaction to within a few instructions (README, "Performance").
//!
//! ```sh
//! cargo build --profile bench -p covet-txn-bench --example instructions
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/instructions postgres covet 1500
//! ```
//!
//! Arguments: `postgres` or `mariadb`; `hand`, `covet` or `adaptive`
//! (covet-txn with `contention = "adaptive"`); how many transfers; and
//! optionally how many tasks share them evenly (1 by default), each on rows of
//! its own, on a pool of that many connections: run under `perf stat`
//! rather than callgrind, this shows what a transfer costs the CPU,
//! kernel included, when several run side by side. The servers are at
//! `COVET_PG_URL` and `COVET_MYSQL_URL`, as for the benchmark.

use covet_txn::{Error, TxManager, transactional};
use sqlx::{Executor, Pool};

/// One side's transfers on one backend.
macro_rules! backend {
    ($module:ident, $db:ty, $conn:path, $begin:literal, $p1:literal, $p2:literal) => {
        mod $module {
            use super::*;

            const READ: &str = concat!("SELECT balance FROM instructions_accounts WHERE id = ", $p1);
            const MOVE: &str =
                concat!("UPDATE instructions_accounts SET balance = balance + ", $p1, " WHERE id = ", $p2);

            async fn hand(pool: &Pool<$db>, from: i64, to: i64) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin_with($begin).await?;
                let balance: i64 = sqlx::query_scalar(READ).bind(from).fetch_one(&mut *tx).await?;
                let amount = (balance % 7) + 1;
                sqlx::query(MOVE).bind(-amount).bind(from).execute(&mut *tx).await?;
                sqlx::query(MOVE).bind(amount).bind(to).execute(&mut *tx).await?;
                tx.commit().await
            }

            async fn work(from: i64, to: i64) -> Result<(), Error> {
                let balance: i64 = sqlx::query_scalar(READ).bind(from).fetch_one(&mut *$conn()?).await?;
                let amount = (balance % 7) + 1;
                sqlx::query(MOVE).bind(-amount).bind(from).execute(&mut *$conn()?).await?;
                sqlx::query(MOVE).bind(amount).bind(to).execute(&mut *$conn()?).await?;
                Ok(())
            }

            #[transactional(isolation = "serializable", retry = 10, backoff = "1ms", max_backoff = "50ms")]
            async fn covet(from: i64, to: i64) -> Result<(), Error> {
                work(from, to).await
            }

            #[transactional(isolation = "serializable", retry = 10, backoff = "1ms", max_backoff = "50ms", contention = "adaptive")]
            async fn adaptive(from: i64, to: i64) -> Result<(), Error> {
                work(from, to).await
            }

            pub async fn run(url: &str, side: &str, count: i64, tasks: i64) -> Result<(), Box<dyn std::error::Error>> {
                let pool = sqlx::pool::PoolOptions::<$db>::new().max_connections(tasks as u32).connect(url).await?;
                pool.execute("DROP TABLE IF EXISTS instructions_accounts").await?;
                pool.execute("CREATE TABLE instructions_accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)")
                    .await?;
                let rows: Vec<String> = (1..=1000).map(|id| format!("({id}, 1000000)")).collect();
                let fill = format!("INSERT INTO instructions_accounts (id, balance) VALUES {}", rows.join(", "));
                pool.execute(sqlx::AssertSqlSafe(fill)).await?;
                let manager = TxManager::new(pool.clone());
                let per_task = count / tasks;
                let mut running = Vec::new();
                for task in 0..tasks {
                    let (pool, side) = (pool.clone(), side.to_owned());
                    running.push(tokio::spawn(manager.scope(async move {
                        // Each task on rows of its own: no conflicts, only
                        // the cost of running side by side.
                        let rows = 500 / tasks;
                        for n in 0..per_task {
                            let (from, to) = (1 + task * rows + n % rows, 501 + task * rows + n % rows);
                            match side.as_str() {
                                "hand" => hand(&pool, from, to).await.map_err(|error| error.to_string())?,
                                "covet" => covet(from, to).await.map_err(|error| error.to_string())?,
                                "adaptive" => adaptive(from, to).await.map_err(|error| error.to_string())?,
                                other => return Err(format!("unknown side {other:?}: hand, covet or adaptive")),
                            }
                        }
                        Ok(())
                    })));
                }
                for task in running {
                    task.await??;
                }
                Ok(())
            }
        }
    };
}

backend!(
    postgres,
    sqlx::Postgres,
    covet_txn::postgres::conn,
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "$1",
    "$2"
);
backend!(
    mariadb,
    sqlx::MySql,
    covet_txn::mysql::conn,
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION",
    "?",
    "?"
);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let (backend, side, count, tasks) = match arguments.as_slice() {
        [backend, side, count] => (backend, side, count, "1"),
        [backend, side, count, tasks] => (backend, side, count, tasks.as_str()),
        _ => {
            return Err(
                "usage: instructions <postgres|mariadb> <hand|covet|adaptive> <transfers> [tasks]"
                    .into(),
            );
        }
    };
    let count: i64 = count.parse()?;
    let tasks: i64 = tasks.parse()?;
    if !(1..=500).contains(&tasks) {
        return Err("tasks: 1 to 500 (each task needs rows of its own)".into());
    }
    let url = |variable: &str, default: &str| {
        std::env::var(variable).unwrap_or_else(|_| default.to_owned())
    };
    match backend.as_str() {
        "postgres" => {
            postgres::run(
                &url("COVET_PG_URL", "postgres://postgres@127.0.0.1:5432/test"),
                side,
                count,
                tasks,
            )
            .await
        }
        "mariadb" => {
            mariadb::run(
                &url("COVET_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
                side,
                count,
                tasks,
            )
            .await
        }
        other => Err(format!("unknown backend {other:?}: postgres or mariadb").into()),
    }
}
