//! Orders: an order whose items are each added in their own SAVEPOINT, one
//! item failing and rolled back alone, and a receipt sent only once the
//! order has committed.
//!
//! Shows the hooks: a per-call `covet_txn::on_commit` registered from the
//! body (the receipt, capturing the order id), handlers declared with
//! `#[on_commit]` / `#[on_rollback]` and listed on the function, and an
//! `on_rollback` registered inside the item that fails, which runs when its
//! savepoint rolls back. Runs on an embedded SQLite file.
//!
//! ```sh
//! cargo run --example orders
//! ```

use covet_txn::{TxEvent, TxManager, transactional};
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

#[derive(Debug)]
enum ShopError {
    Transaction(covet_txn::Error),
    Database(sqlx::Error),
    OutOfStock(&'static str),
    NothingToOrder,
}

impl std::fmt::Display for ShopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShopError::Transaction(error) => write!(f, "{error}"),
            ShopError::Database(error) => write!(f, "{error}"),
            ShopError::OutOfStock(product) => write!(f, "{product} is out of stock"),
            ShopError::NothingToOrder => f.write_str("no item could be ordered"),
        }
    }
}

impl std::error::Error for ShopError {}

impl From<covet_txn::Error> for ShopError {
    fn from(error: covet_txn::Error) -> Self {
        ShopError::Transaction(error)
    }
}

impl From<sqlx::Error> for ShopError {
    fn from(error: sqlx::Error) -> Self {
        ShopError::Database(error)
    }
}

/// Runs after every committed order, wherever it was placed.
#[covet_txn::on_commit]
fn audit(event: &TxEvent) {
    println!(
        "  [audit] {} committed after {:?}",
        event.id, event.duration
    );
}

/// Runs when an order rolls back, with the cause.
#[covet_txn::on_rollback]
fn alert(event: &TxEvent) {
    if let Some(cause) = &event.cause {
        println!("  [alert] {} rolled back: {cause}", event.id);
    }
}

#[transactional(on_commit = [audit], on_rollback = [alert])]
async fn place_order(customer: &str, items: &[(&'static str, i64)]) -> Result<i64, ShopError> {
    let order: i64 = sqlx::query_scalar("INSERT INTO orders (customer) VALUES (?) RETURNING id")
        .bind(customer)
        .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    let mut added = 0;
    for (product, quantity) in items {
        match add_item(order, product, *quantity).await {
            Ok(()) => {
                added += 1;
                println!("  added {quantity} x {product}");
            }
            Err(error) => {
                println!("  skipped {product}: {error} (its savepoint rolled back alone)")
            }
        }
    }
    if added == 0 {
        // The whole order rolls back: no receipt, and the alert runs.
        return Err(ShopError::NothingToOrder);
    }

    let customer = customer.to_owned();
    covet_txn::on_commit(move || async move {
        // After COMMIT, with the connection back in the pool: the order is
        // durable, so the receipt can go out.
        println!("  [receipt] order {order} confirmed for {customer}");
    })
    .await;
    Ok(order)
}

/// Adds one line to an order; nested, it runs in a SAVEPOINT.
#[transactional]
async fn add_item(order: i64, product: &'static str, quantity: i64) -> Result<(), ShopError> {
    covet_txn::on_rollback(move || async move {
        println!("  [stock] released the reservation of {product}");
    })
    .await;
    let left: i64 =
        sqlx::query_scalar("UPDATE stock SET left = left - ? WHERE product = ? RETURNING left")
            .bind(quantity)
            .bind(product)
            .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
            .await?;
    sqlx::query("INSERT INTO order_lines (order_id, product, quantity) VALUES (?, ?, ?)")
        .bind(order)
        .bind(product)
        .bind(quantity)
        .execute(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    if left < 0 {
        return Err(ShopError::OutOfStock(product));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("covet-orders.db");
    let _ = std::fs::remove_file(&path);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL);
         CREATE TABLE order_lines (order_id INTEGER NOT NULL, product TEXT NOT NULL, quantity INTEGER NOT NULL);
         CREATE TABLE stock (product TEXT PRIMARY KEY, left INTEGER NOT NULL);
         INSERT INTO stock VALUES ('tea', 10), ('cups', 2), ('honey', 5);",
    )
    .execute(&pool)
    .await?;
    TxManager::new(pool.clone()).install_default()?;

    println!("an order of tea, cups and honey (only 2 cups in stock):");
    let order = place_order("ada", &[("tea", 2), ("cups", 6), ("honey", 1)]).await?;

    println!("\nan order whose only item is out of stock:");
    if let Err(error) = place_order("bob", &[("cups", 5)]).await {
        println!("  not placed: {error}");
    }

    let lines: Vec<(String, i64)> =
        sqlx::query_as("SELECT product, quantity FROM order_lines WHERE order_id = ?")
            .bind(order)
            .fetch_all(&pool)
            .await?;
    let stock: Vec<(String, i64)> =
        sqlx::query_as("SELECT product, left FROM stock ORDER BY product")
            .fetch_all(&pool)
            .await?;
    println!("\norder {order} holds {lines:?}");
    println!("stock now {stock:?}");
    Ok(())
}
