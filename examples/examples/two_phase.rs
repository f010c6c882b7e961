//! Two-phase commit: an order written to PostgreSQL and its ledger entry
//! written to MariaDB commit together or not at all.
//!
//! PostgreSQL needs `max_prepared_transactions` above 0 (it is 0 by
//! default, and changing it takes a restart):
//!
//! ```sh
//! psql -U postgres -c "ALTER SYSTEM SET max_prepared_transactions = 64"   # then restart
//! cargo run --example two_phase -- postgres://postgres@127.0.0.1/test mysql://root@127.0.0.1/test
//! ```

use std::time::Duration;

use covet_txn::two_phase::{TwoPhase, TwoPhaseOptions};
use covet_txn::{Isolation, RetryPolicy, TxManager};

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Transaction(#[from] covet_txn::Error),
    #[error("order {0} is over the credit limit")]
    OverLimit(i64),
}

#[tokio::main]
async fn main() -> Result<(), ShopError> {
    let mut urls = std::env::args().skip(1);
    let postgres_url = urls
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1/test".to_owned());
    let mysql_url = urls
        .next()
        .unwrap_or_else(|| "mysql://root@127.0.0.1/test".to_owned());

    // Each participant is a manager with a name of its own: the name tells
    // its branches apart and must stay the same across restarts.
    let orders = TxManager::builder(sqlx::PgPool::connect(&postgres_url).await?)
        .name("orders")
        .build();
    let ledger = TxManager::builder(sqlx::MySqlPool::connect(&mysql_url).await?)
        .name("ledger")
        .build();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS example_orders (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL)",
    )
    .execute(orders.pool())
    .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS example_ledger (order_id BIGINT PRIMARY KEY, \
         amount BIGINT NOT NULL) ENGINE = InnoDB",
    )
    .execute(ledger.pool())
    .await?;

    // The coordinator keeps its decisions in a table of the orders database
    // (created if missing) and recovers what a crash left prepared, at
    // start-up and every 30 s.
    let shop = TwoPhase::builder("example-shop")
        .participant(&orders)
        .participant(&ledger)
        .decision_log(&orders)
        .build()
        .await?;

    let options = TwoPhaseOptions::new()
        .isolation(Isolation::Serializable)
        .timeout(Duration::from_secs(10))
        .retry(RetryPolicy::new().retries(3));
    let order_id = i64::from(std::process::id());
    for (id, amount) in [(order_id, 40), (order_id + 1, 5_000)] {
        let placed = shop
            .transaction(options, || async {
                sqlx::query("INSERT INTO example_orders VALUES ($1, $2)")
                    .bind(id)
                    .bind(amount)
                    .execute(&mut *orders.conn()?)
                    .await?;
                sqlx::query("INSERT INTO example_ledger VALUES (?, ?)")
                    .bind(id)
                    .bind(amount)
                    .execute(&mut *ledger.conn()?)
                    .await?;
                if amount > 1_000 {
                    // Both inserts roll back: neither database keeps a trace.
                    return Err(ShopError::OverLimit(id));
                }
                Ok(())
            })
            .await;
        match placed {
            Ok(()) => println!("order {id}: committed in both databases"),
            Err(error) => println!("order {id}: rolled back in both databases ({error})"),
        }
    }
    let stats = shop.stats();
    println!(
        "two-phase calls: {} committed, {} rolled back",
        stats.committed, stats.rolled_back
    );
    Ok(())
}
