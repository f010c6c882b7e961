//! The cost of two-phase commit: one call that updates a row in PostgreSQL
//! and a row in MariaDB through a `TwoPhase` coordinator (decision log in
//! PostgreSQL), against the unsafe alternative a service writes by hand
//! today, two independent transactions committed one after the other. Timed
//! interleaved round by round; the statements each side sends to each server
//! are counted through a proxy in a separate pass.

use std::time::Duration;

use covet_txn::two_phase::{TwoPhase, TwoPhaseOptions};
use covet_txn::{Error, TxManager};
use covet_txn_bench::measure::{self, interleaved};
use covet_txn_bench::proxy::{Protocol, QueryCounter, resolve};
use sqlx::{Connection, MySql, Pool, Postgres};

struct Servers {
    postgres: Pool<Postgres>,
    mariadb: Pool<MySql>,
}

async fn connect(
    postgres: sqlx::postgres::PgConnectOptions,
    mariadb: sqlx::mysql::MySqlConnectOptions,
) -> Servers {
    Servers {
        postgres: sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(postgres)
            .await
            .expect("connects to PostgreSQL"),
        mariadb: sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(2)
            .connect_with(mariadb)
            .await
            .expect("connects to MariaDB"),
    }
}

async fn hand(servers: &Servers, id: i64) {
    let mut orders = servers.postgres.begin().await.expect("BEGIN");
    sqlx::query("UPDATE bench_tp_orders SET v = v + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *orders)
        .await
        .expect("UPDATE");
    orders.commit().await.expect("COMMIT");
    let mut ledger = servers.mariadb.begin().await.expect("BEGIN");
    sqlx::query("UPDATE bench_tp_ledger SET v = v + 1 WHERE id = ?")
        .bind(id)
        .execute(&mut *ledger)
        .await
        .expect("UPDATE");
    ledger.commit().await.expect("COMMIT");
}

struct Coordinated {
    orders: TxManager<Postgres>,
    ledger: TxManager<MySql>,
    two_phase: TwoPhase,
}

async fn coordinated(servers: &Servers, name: &str) -> Coordinated {
    let orders = TxManager::builder(servers.postgres.clone())
        .name("orders")
        .build();
    let ledger = TxManager::builder(servers.mariadb.clone())
        .name("ledger")
        .build();
    let two_phase = TwoPhase::builder(name)
        .participant(&orders)
        .participant(&ledger)
        .log_table("bench_tp_decisions")
        .recover_every(None)
        .build()
        .await
        .expect("builds the coordinator");
    Coordinated {
        orders,
        ledger,
        two_phase,
    }
}

async fn covet(side: &Coordinated, id: i64) {
    side.two_phase
        .transaction(TwoPhaseOptions::new(), || async {
            sqlx::query("UPDATE bench_tp_orders SET v = v + 1 WHERE id = $1")
                .bind(id)
                .execute(&mut *side.orders.conn()?)
                .await?;
            sqlx::query("UPDATE bench_tp_ledger SET v = v + 1 WHERE id = ?")
                .bind(id)
                .execute(&mut *side.ledger.conn()?)
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .expect("a two-phase call commits");
}

async fn run() {
    let postgres_url = std::env::var("COVET_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mariadb_url = std::env::var("COVET_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let (Ok(postgres), Ok(mariadb)) = (
        postgres_url.parse::<sqlx::postgres::PgConnectOptions>(),
        mariadb_url.parse::<sqlx::mysql::MySqlConnectOptions>(),
    ) else {
        eprintln!("notice: COVET_PG_URL or COVET_MYSQL_URL is not a URL; skipping");
        return;
    };
    let Ok(mut probe) = sqlx::PgConnection::connect_with(&postgres).await else {
        eprintln!("notice: PostgreSQL is unreachable at {postgres_url}; skipping");
        return;
    };
    let prepared: String = sqlx::query_scalar("SHOW max_prepared_transactions")
        .fetch_one(&mut probe)
        .await
        .expect("reads max_prepared_transactions");
    if prepared == "0" {
        eprintln!("notice: max_prepared_transactions is 0 on PostgreSQL; skipping");
        return;
    }
    let servers = connect(postgres.clone(), mariadb.clone()).await;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_tp_orders; \
         CREATE TABLE bench_tp_orders (id BIGINT PRIMARY KEY, v BIGINT NOT NULL); \
         INSERT INTO bench_tp_orders SELECT g, 0 FROM generate_series(1, 100) AS g",
    )
    .execute(&servers.postgres)
    .await
    .expect("creates the orders table");
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_tp_ledger; \
         CREATE TABLE bench_tp_ledger (id BIGINT PRIMARY KEY, v BIGINT NOT NULL) ENGINE = InnoDB; \
         INSERT INTO bench_tp_ledger SELECT seq, 0 FROM seq_1_to_100",
    )
    .execute(&servers.mariadb)
    .await
    .expect("creates the ledger table");
    let side = coordinated(&servers, "bench").await;

    println!(
        "\nTwo-phase commit, PostgreSQL + MariaDB on loopback: one UPDATE on each, {} rounds of {} calls per side, interleaved\n",
        measure::rounds(),
        measure::PER_ROUND
    );
    let (servers, side) = (&servers, &side);
    let mut comparison = interleaved(
        |id| async move { hand(servers, id).await },
        |id| async move { covet(side, id).await },
    )
    .await;
    let hand_p99 = measure::percentile(&mut comparison.hand.times, 0.99);
    let covet_p99 = measure::percentile(&mut comparison.covet.times, 0.99);
    println!("| side | median µs | p99 µs |");
    println!("|---|---|---|");
    println!(
        "| two independent commits (hand-written sqlx) | {:.0} | {:.0} |",
        comparison.hand.median_us(),
        hand_p99.as_secs_f64() * 1e6
    );
    println!(
        "| two-phase commit (covet-txn) | {:.0} | {:.0} |",
        comparison.covet.median_us(),
        covet_p99.as_secs_f64() * 1e6
    );
    println!(
        "\nratio (two-phase / independent): {:.2}",
        comparison.ratio()
    );

    // What each side sends to each server, through counting proxies.
    let postgres_counter = QueryCounter::start(
        resolve(postgres.get_host(), postgres.get_port()),
        Protocol::Postgres,
    )
    .await;
    let mariadb_counter = QueryCounter::start(
        resolve(mariadb.get_host(), mariadb.get_port()),
        Protocol::MySql,
    )
    .await;
    let counted = connect(
        postgres
            .clone()
            .host("127.0.0.1")
            .port(postgres_counter.port),
        mariadb.clone().host("127.0.0.1").port(mariadb_counter.port),
    )
    .await;
    let counted_side = coordinated(&counted, "benchcount").await;
    let counted = &counted;
    let counted_side = &counted_side;
    let mut sent = Vec::new();
    for counter in [&postgres_counter, &mariadb_counter] {
        let hand = counter
            .per_call(|id| async move { hand(counted, 1 + id % 100).await })
            .await;
        let covet = counter
            .per_call(|id| async move { covet(counted_side, 1 + id % 100).await })
            .await;
        sent.push((hand, covet));
    }
    // The decision is forgotten in a task after the call returns: let the
    // last ones land before the counts are read.
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("\n| server | statements per call, independent | statements per call, two-phase |");
    println!("|---|---|---|");
    println!("| PostgreSQL | {:.1} | {:.1} |", sent[0].0, sent[0].1);
    println!("| MariaDB | {:.1} | {:.1} |", sent[1].0, sent[1].1);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}
