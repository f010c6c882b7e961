//! The outbox scenario, on PostgreSQL: what `enqueue` adds to a
//! transaction (one statement), how many messages a relay delivers per
//! second, and the time from a COMMIT returning to the handler starting,
//! woken in-process or by LISTEN/NOTIFY.

use std::time::{Duration, Instant};

use covet_txn::outbox::{Message, Outbox};
use covet_txn::{Error, TxManager, TxOptions};
use covet_txn_bench::measure::{self, interleaved, percentile};
use sqlx::{Pool, Postgres};
use tokio::sync::mpsc;

const TABLE: &str = "outbox_bench";
const ACCOUNTS: &str = "outbox_bench_accounts";
/// Messages delivered in the throughput pass.
const THROUGHPUT_MESSAGES: usize = 4000;
/// Commits timed in each latency pass.
const LATENCY_SAMPLES: usize = 300;

async fn setup(pool: &Pool<Postgres>) -> Outbox {
    let sql = format!(
        "DROP TABLE IF EXISTS {TABLE}; DROP TABLE IF EXISTS {ACCOUNTS}; \
         CREATE TABLE {ACCOUNTS} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL); \
         INSERT INTO {ACCOUNTS} SELECT g, 0 FROM generate_series(1, 100) AS g"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .expect("creates the bench tables");
    let outbox = Outbox::new(TABLE).expect("a valid name");
    outbox.migrate(pool).await.expect("creates the outbox");
    outbox
}

async fn update(id: i64) -> Result<(), Error> {
    sqlx::query("UPDATE outbox_bench_accounts SET balance = balance + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *covet_txn::postgres::conn()?)
        .await?;
    Ok(())
}

async fn enqueue_cost(manager: &TxManager<Postgres>, outbox: &Outbox) {
    let plain = |id: i64| async move {
        let done: Result<(), Error> = manager.transaction(TxOptions::new(), || update(id)).await;
        done.expect("commits");
    };
    let with_message = |id: i64| async move {
        let done: Result<(), Error> = manager
            .transaction(TxOptions::new(), || async move {
                update(id).await?;
                outbox.enqueue("bench", &id).await
            })
            .await;
        done.expect("commits");
    };
    let mut comparison = interleaved(plain, with_message).await;
    println!(
        "| begin + UPDATE + commit, without and with one enqueue | {:.1} | {:.1} | {:.3} |",
        comparison.hand.median_us(),
        comparison.covet.median_us(),
        comparison.ratio()
    );
    clear(manager.pool()).await;
}

async fn clear(pool: &Pool<Postgres>) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("TRUNCATE {TABLE}")))
        .execute(pool)
        .await
        .expect("empties the outbox");
}

/// Messages per second delivered from a full table by one relay.
async fn throughput(manager: &TxManager<Postgres>, outbox: &Outbox) -> f64 {
    for batch in 0..THROUGHPUT_MESSAGES / 100 {
        let done: Result<(), Error> = manager
            .transaction(TxOptions::new(), || async move {
                for n in 0..100 {
                    outbox.enqueue("bench", &(batch * 100 + n)).await?;
                }
                Ok(())
            })
            .await;
        done.expect("commits");
    }
    let (delivered, mut arrivals) = mpsc::unbounded_channel::<()>();
    let started = Instant::now();
    let relay = outbox
        .relay(manager)
        .concurrency(32)
        .batch_size(64)
        .handler("bench", move |_message: Message| {
            std::future::ready(delivered.send(()).map_err(|_| "the bench stopped"))
        })
        .start()
        .await
        .expect("starts");
    for _ in 0..THROUGHPUT_MESSAGES {
        arrivals.recv().await.expect("a delivery");
    }
    let elapsed = started.elapsed();
    relay.shutdown().await;
    THROUGHPUT_MESSAGES as f64 / elapsed.as_secs_f64()
}

/// Commit-to-handler latencies, one message at a time.
async fn latency(
    manager: &TxManager<Postgres>,
    outbox: &Outbox,
    in_process: bool,
) -> Vec<Duration> {
    let (arrived, mut arrivals) = mpsc::unbounded_channel::<Instant>();
    let relay = outbox
        .relay(manager)
        .in_process_wake(in_process)
        .listen(!in_process)
        .poll_interval(Duration::from_secs(30))
        .handler("bench", move |_message: Message| {
            std::future::ready(
                arrived
                    .send(Instant::now())
                    .map_err(|_| "the bench stopped"),
            )
        })
        .start()
        .await
        .expect("starts");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut latencies = Vec::with_capacity(LATENCY_SAMPLES);
    for n in 0..LATENCY_SAMPLES {
        let done: Result<(), Error> = manager
            .transaction(TxOptions::new(), || outbox.enqueue("bench", &n))
            .await;
        done.expect("commits");
        let committed = Instant::now();
        let handled = arrivals.recv().await.expect("a delivery");
        latencies.push(handled.saturating_duration_since(committed));
    }
    relay.shutdown().await;
    latencies
}

/// Runs the scenario and prints its tables.
pub async fn run(pool: Pool<Postgres>) {
    let outbox = setup(&pool).await;
    let manager = TxManager::new(pool);
    println!(
        "\nOutbox on PostgreSQL: a transaction without and with one enqueue ({} rounds x {} calls per side, interleaved; medians)\n",
        measure::rounds(),
        measure::PER_ROUND
    );
    println!("| scenario | without µs | with µs | ratio |");
    println!("|---|---|---|---|");
    enqueue_cost(&manager, &outbox).await;

    let rate = throughput(&manager, &outbox).await;
    println!(
        "\nDelivery: {THROUGHPUT_MESSAGES} messages from a full table, one relay (32 handlers, batches of 64): {rate:.0} messages/s"
    );
    println!(
        "\nCommit-to-handler latency, {LATENCY_SAMPLES} messages one at a time (COMMIT returned → handler started)\n"
    );
    println!("| woken by | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for (name, in_process) in [("in-process wake-up", true), ("LISTEN/NOTIFY", false)] {
        let mut latencies = latency(&manager, &outbox, in_process).await;
        println!(
            "| {name} | {:.2} | {:.2} |",
            percentile(&mut latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&mut latencies, 0.99).as_secs_f64() * 1e3
        );
    }
    clear(manager.pool()).await;
}
