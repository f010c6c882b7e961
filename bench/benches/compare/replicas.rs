//! The `replicas` scenario: read-only throughput with one streaming replica
//! (`.ci/topology` puts it on 5433, `COVET_PG_REPLICA_URL` elsewhere)
//! against the primary alone, and what routing costs a transaction: a
//! manager with replicas against one without, on the same server (the
//! "replica" given is the primary itself, which the probe finds is no
//! replica, so every read is routed and then runs on the primary, and every
//! write is recorded for read-your-writes).

use std::time::{Duration, Instant};

use covet_txn::{Error, TxManager, TxOptions};
use covet_txn_bench::measure::{self, Comparison};
use sqlx::{Pool, Postgres};

/// Tasks reading at once in the throughput passes.
pub const READERS: usize = 8;
/// How long each throughput pass runs.
const PASS: Duration = Duration::from_secs(2);

const READ_ONLY: TxOptions = TxOptions::new().read_only(true);

async fn read(manager: &TxManager<Postgres>) {
    let read: Result<i64, Error> = manager
        .transaction(READ_ONLY, || async {
            let count = sqlx::query_scalar("SELECT count(*) FROM pg_class")
                .fetch_one(&mut *manager.conn()?)
                .await?;
            Ok(count)
        })
        .await;
    if let Err(error) = read {
        panic!("a read failed: {error}");
    }
}

async fn write(manager: &TxManager<Postgres>) {
    let written: Result<(), Error> = manager
        .transaction(TxOptions::new(), || async {
            sqlx::query("SELECT 1")
                .execute(&mut *manager.conn()?)
                .await?;
            Ok(())
        })
        .await;
    if let Err(error) = written {
        panic!("a write failed: {error}");
    }
}

/// Read-only transactions per second with `READERS` tasks for one pass.
async fn throughput(manager: &TxManager<Postgres>) -> f64 {
    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let manager = manager.clone();
        readers.push(tokio::spawn(async move {
            let mut done = 0_u64;
            while started.elapsed() < PASS {
                read(&manager).await;
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for reader in readers {
        total += reader.await.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Prints the scenario's two tables.
pub async fn run(primary: Pool<Postgres>) {
    println!(
        "\nReplicas: read-only transactions (`SELECT count(*) FROM pg_class`), {READERS} tasks, \
         {PASS:?} per pass, 3 passes per side alternating; pools of {READERS} per server\n"
    );
    println!("| setup | read-only tx/s (median of 3) |");
    println!("|---|---|");
    let replica = super::postgres_pool_at(
        "COVET_PG_REPLICA_URL",
        "postgres://postgres@127.0.0.1:5433/test",
        READERS as u32,
    );
    if let Some(replica) = replica.await {
        let alone = TxManager::new(primary.clone());
        let with_replica = TxManager::builder(primary.clone()).replica(replica).build();
        with_replica.refresh_replicas().await;
        let (mut alone_rates, mut replica_rates) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            alone_rates.push(throughput(&alone).await);
            replica_rates.push(throughput(&with_replica).await);
        }
        let report = with_replica.replicas();
        println!(
            "| the primary alone | {:.0} |",
            measure::median(&mut alone_rates)
        );
        println!(
            "| one replica (reads served by it: {}, on the primary: {}) | {:.0} |",
            report.replicas.first().map_or(0, |replica| replica.reads),
            report.reads_on_primary_unavailable + report.reads_on_primary_for_writes,
            measure::median(&mut replica_rates)
        );
    }

    // A manager whose "replica" is the primary: routed, never served.
    let plain = TxManager::new(primary.clone());
    let routing = TxManager::builder(primary.clone()).replica(primary).build();
    routing.refresh_replicas().await;
    println!(
        "\nThe cost of routing: a manager with replicas against one without, same server, \
         {} rounds x {} calls, interleaved\n",
        measure::rounds(),
        measure::PER_ROUND
    );
    println!("| transaction | µs without | µs with | ratio | CPU µs without | CPU µs with |");
    println!("|---|---|---|---|---|---|");
    let reads = measure::interleaved(|_| read(&plain), |_| read(&routing)).await;
    print_row("read-only (routed to the primary)", reads);
    let writes = measure::interleaved(|_| write(&plain), |_| write(&routing)).await;
    print_row("read-write (recorded for read-your-writes)", writes);
}

fn print_row(name: &str, mut comparison: Comparison) {
    let cpu = |side: &measure::Side| {
        side.cpu_per_call_us()
            .0
            .map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"))
    };
    println!(
        "| {name} | {:.1} | {:.1} | {:.3} | {} | {} |",
        comparison.hand.median_us(),
        comparison.covet.median_us(),
        comparison.ratio(),
        cpu(&comparison.hand),
        cpu(&comparison.covet),
    );
}
