//! The transactional outbox: an order and its "order placed" message
//! committed together, a rolled-back order whose message never leaves, a
//! relay that delivers the committed ones at least once, and a handler that
//! keeps failing until its message is dead-lettered and then re-driven.
//!
//! Compare with `on_commit` (the `orders` example): a hook runs in memory
//! after COMMIT and is lost if the process dies first; an outbox message is
//! a row written in the transaction, so it survives a crash and is
//! delivered by whichever relay runs next. Runs on an embedded SQLite file.
//!
//! ```sh
//! cargo run --example outbox
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use covet_txn::outbox::{Message, Outbox};
use covet_txn::{RetryPolicy, TxManager, transactional};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order: i64,
    customer: String,
}

/// Inserts the order and enqueues its message in the same transaction.
#[transactional]
async fn place_order(order: i64, customer: &str) -> Result<(), covet_txn::Error> {
    sqlx::query("INSERT INTO orders (id, customer) VALUES (?, ?)")
        .bind(order)
        .bind(customer)
        .execute(&mut *covet_txn::sqlite::conn()?)
        .await?;
    let placed = OrderPlaced {
        order,
        customer: customer.to_owned(),
    };
    covet_txn::outbox::enqueue("order-placed", &placed).await?;
    if customer == "mallory" {
        // The order and its message go together.
        covet_txn::set_rollback_only()?;
    }
    Ok(())
}

/// An invoice service that is down until it is told otherwise.
#[transactional]
async fn request_invoice(order: i64) -> Result<(), covet_txn::Error> {
    covet_txn::outbox::enqueue("invoice", &order).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("covet-txn-outbox-example.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS orders; DROP TABLE IF EXISTS covet_outbox; \
         CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let manager = TxManager::new(pool);
    manager.install_default()?;

    let outbox = Outbox::default();
    outbox.migrate(manager.pool()).await?; // CREATE TABLE IF NOT EXISTS covet_outbox ...
    println!(
        "the outbox table on SQLite:\n{}",
        outbox.schema_sql::<sqlx::Sqlite>()
    );

    let invoicing_up = Arc::new(AtomicBool::new(false));
    let up = Arc::clone(&invoicing_up);
    let relay = outbox
        .relay(&manager)
        .handler("order-placed", |message: Message| async move {
            let placed: OrderPlaced = message.payload()?;
            // A real handler must be idempotent: the same id may come twice.
            println!(
                "  mail: order {} for {} (message {}, delivery {})",
                placed.order, placed.customer, message.id, message.attempt
            );
            Ok::<_, serde_json::Error>(())
        })
        .handler("invoice", move |message: Message| {
            let up = up.load(Ordering::SeqCst);
            async move {
                if up {
                    println!("  invoice sent for order {}", message.payload_text());
                    Ok(())
                } else {
                    Err(format!("invoicing is down (delivery {})", message.attempt))
                }
            }
        })
        .retry_policy(
            RetryPolicy::new()
                .retries(2)
                .backoff(Duration::from_millis(50)),
        )
        .start()
        .await?;

    println!("placing orders 1 (alice) and 2 (mallory, rolled back)");
    place_order(1, "alice").await?;
    place_order(2, "mallory").await?;
    request_invoice(1).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;

    for letter in outbox.dead_letters(manager.pool()).await? {
        println!(
            "dead letter {} ({}) after {} deliveries: {}",
            letter.id,
            letter.topic,
            letter.attempt,
            letter.last_error.as_deref().unwrap_or("")
        );
        invoicing_up.store(true, Ordering::SeqCst);
        outbox.redrive(manager.pool(), letter.id).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.shutdown().await;

    let counts = outbox.metrics();
    for (topic, counts) in &counts.topics {
        println!("{topic}: {counts:?}");
    }
    Ok(())
}
