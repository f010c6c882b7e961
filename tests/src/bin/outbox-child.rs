//! A process for the outbox crash tests (`tests/tests/outbox_crash.rs`) to
//! kill: `outbox-child <mode> <backend> <table>`, where the backend is
//! `postgresql`, `mysql` or `sqlite` (the file of that name that the test
//! created) and the mode one of
//!
//! - `produce`: enqueues one message, commits, prints `committed`, and
//!   waits to be killed before any relay runs;
//! - `hang`: runs a relay (1 s lease) whose handler prints `handling <id>`
//!   and never returns;
//! - `relay`: runs a relay (30 s lease) that records each delivery in
//!   `<table>_delivered`;
//! - `churn`: the same relay with a 1 s lease, plus transactions that
//!   enqueue as fast as they can, a fifth of them rolled back, each
//!   recording its message in `<table>_produced` when it commits.
//!
//! It prints `ready` once its relay runs.

use std::io::Write;
use std::time::Duration;

use covet_txn::outbox::{Message, Outbox};
use covet_txn::{Error, TxManager, TxOptions};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;

/// The payload of the crash tests' messages.
#[derive(Debug, Serialize, Deserialize)]
struct Churn {
    seq: i64,
    rolled_back: bool,
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(why: &str) -> ! {
    eprintln!("outbox-child: {why}");
    std::process::exit(2)
}

/// Runs `$body` with `$manager` on the backend named `$backend`.
macro_rules! on_backend {
    ($backend:expr, $table:expr, |$manager:ident, $Db:ident| $body:expr) => {
        match $backend {
            "postgresql" => {
                type $Db = sqlx::Postgres;
                let pool = covet_txn_tests::postgres(8).await;
                let $manager = TxManager::new(pool.unwrap_or_else(|| fail("no PostgreSQL")));
                $body
            }
            "mysql" => {
                type $Db = sqlx::MySql;
                let pool = covet_txn_tests::mysql(8).await;
                let $manager = TxManager::new(pool.unwrap_or_else(|| fail("no MariaDB")));
                $body
            }
            "sqlite" => {
                type $Db = sqlx::Sqlite;
                let pool = covet_txn_tests::sqlite_shared($table, 8).await;
                let $manager = TxManager::new(pool.unwrap_or_else(|| fail("no SQLite file")));
                $body
            }
            other => fail(&format!("unknown backend {other}")),
        }
    };
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, backend, table] = args.as_slice() else {
        fail("usage: outbox-child <produce|hang|relay|churn> <backend> <table>")
    };
    let outbox = Outbox::new(table).unwrap_or_else(|error| fail(&error.to_string()));
    on_backend!(backend.as_str(), table, |manager, Db| {
        match mode.as_str() {
            "produce" => {
                let committed: Result<(), Error> = manager
                    .transaction(TxOptions::new(), || async {
                        let payload = Churn {
                            seq: 1,
                            rolled_back: false,
                        };
                        outbox.enqueue("crash", &payload).await
                    })
                    .await;
                committed.unwrap_or_else(|error| fail(&error.to_string()));
                say("committed");
                std::future::pending::<()>().await
            }
            "hang" => {
                let _relay = outbox
                    .relay(&manager)
                    .lease(Duration::from_secs(1))
                    .handler("crash", |message: Message| async move {
                        say(&format!("handling {}", message.id));
                        std::future::pending::<Result<(), Error>>().await
                    })
                    .start()
                    .await
                    .unwrap_or_else(|error| fail(&error.to_string()));
                say("ready");
                std::future::pending::<()>().await
            }
            "relay" | "churn" => {
                let pool = manager.pool().clone();
                let (delivered, owner) = (format!("{table}_delivered"), std::process::id());
                // Churn: a short lease, so that the test's relay takes over
                // the killed ones' claims soon. Relay: the default, so that
                // two live relays never take each other's messages, however
                // long SQLite keeps a write waiting.
                let lease = if mode == "churn" {
                    Duration::from_secs(1)
                } else {
                    Duration::from_secs(30)
                };
                let _relay = outbox
                    .relay(&manager)
                    .lease(lease)
                    .poll_interval(Duration::from_millis(100))
                    .concurrency(4)
                    .handler("crash", move |message: Message| {
                        let (pool, delivered) = (pool.clone(), delivered.clone());
                        async move {
                            let churn: Churn =
                                message.payload().map_err(|error| error.to_string())?;
                            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..3))).await;
                            let record = format!(
                                "INSERT INTO {delivered} (message_id, seq, rolled_back, owner) \
                                 VALUES ({}, {}, {}, {owner})",
                                message.id,
                                churn.seq,
                                i64::from(churn.rolled_back)
                            );
                            sqlx::raw_sql(AssertSqlSafe(record))
                                .execute(&pool)
                                .await
                                .map_err(|error| error.to_string())?;
                            Ok::<_, String>(())
                        }
                    })
                    .start()
                    .await
                    .unwrap_or_else(|error| fail(&error.to_string()));
                say("ready");
                if mode == "churn" {
                    churn::<Db>(&manager, &outbox, table).await;
                }
                std::future::pending::<()>().await
            }
            other => fail(&format!("unknown mode {other}")),
        }
    })
}

/// Enqueues in transactions until killed; a fifth roll back.
async fn churn<Db: covet_txn::Backend>(manager: &TxManager<Db>, outbox: &Outbox, table: &str)
where
    for<'c> &'c mut Db::Connection: sqlx::Executor<'c, Database = Db>,
{
    loop {
        let seq = i64::try_from(fastrand::u64(..) >> 1).unwrap_or(0);
        let rolled_back = fastrand::u8(..5) == 0;
        let produced = format!("INSERT INTO {table}_produced (seq) VALUES ({seq})");
        let outcome: Result<(), Error> = manager
            .transaction(TxOptions::new(), || async {
                sqlx::raw_sql(AssertSqlSafe(produced.clone()))
                    .execute(&mut *covet_txn::conn::<Db>()?)
                    .await?;
                outbox.enqueue("crash", &Churn { seq, rolled_back }).await?;
                if rolled_back {
                    covet_txn::set_rollback_only()?;
                }
                Ok(())
            })
            .await;
        if let Err(error) = outcome {
            eprintln!("outbox-child: a churn transaction failed: {error}");
        }
    }
}
