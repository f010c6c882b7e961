//! Quickstart: covet-txn on an embedded SQLite file, no server needed.
//!
//! Opens an account in a serializable transaction; inside it, two nested
//! `#[transactional]` calls add bonuses, each in its own SAVEPOINT. The second
//! bonus is refused and rolled back alone, while the account and the first
//! bonus commit. Then a whole transaction fails and leaves nothing behind.
//!
//! Run it with `cargo run --example quickstart`.

use covet_txn::{TxManager, transactional};
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// What can go wrong in this little bank.
#[derive(Debug)]
enum BankError {
    Transaction(covet_txn::Error),
    Database(sqlx::Error),
    BonusTooLarge(i64),
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BankError::Transaction(error) => write!(f, "{error}"),
            BankError::Database(error) => write!(f, "{error}"),
            BankError::BonusTooLarge(amount) => write!(f, "a bonus of {amount} is too large"),
        }
    }
}

impl std::error::Error for BankError {}

impl From<covet_txn::Error> for BankError {
    fn from(error: covet_txn::Error) -> Self {
        BankError::Transaction(error)
    }
}

impl From<sqlx::Error> for BankError {
    fn from(error: sqlx::Error) -> Self {
        BankError::Database(error)
    }
}

/// Opens an account; runs at SERIALIZABLE (on SQLite: `BEGIN IMMEDIATE`).
#[transactional(isolation = "serializable")]
async fn open_account(owner: &str, deposit: i64) -> Result<i64, BankError> {
    let id: i64 =
        sqlx::query_scalar("INSERT INTO accounts (owner, balance) VALUES (?, ?) RETURNING id")
            .bind(owner)
            .bind(deposit)
            .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
            .await?;
    report("opened the account");

    add_bonus(id, 10).await?;
    match add_bonus(id, 500).await {
        Ok(()) => println!("  the large bonus was added"),
        Err(error) => {
            println!("  nested call failed ({error}); only its savepoint was rolled back")
        }
    }
    Ok(id)
}

/// Adds a bonus; nested inside a running transaction, it runs in a SAVEPOINT.
#[transactional]
async fn add_bonus(account: i64, amount: i64) -> Result<(), BankError> {
    sqlx::query("UPDATE accounts SET balance = balance + ? WHERE id = ?")
        .bind(amount)
        .bind(account)
        .execute(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    report(&format!("added a bonus of {amount}"));
    if amount > 100 {
        return Err(BankError::BonusTooLarge(amount));
    }
    Ok(())
}

/// Prints where the current code runs.
fn report(what: &str) {
    if let Some(info) = covet_txn::current() {
        let isolation = info
            .isolation
            .map_or("default".to_owned(), |level| level.to_string());
        println!("  {what}: {} depth {} ({isolation})", info.id, info.depth);
    }
}

async fn balances(pool: &sqlx::SqlitePool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT owner, balance FROM accounts ORDER BY id")
        .fetch_all(pool)
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("covet-quickstart.db");
    let _ = std::fs::remove_file(&path);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL)")
        .execute(&pool)
        .await?;

    // One manager per database, installed once as the default.
    TxManager::new(pool.clone()).install_default()?;
    println!("covet-txn quickstart on {}", path.display());

    println!("\n1. open an account with a deposit of 100 and two bonuses");
    let id = open_account("ada", 100).await?;
    println!("  committed account {id}");

    println!("\n2. a bonus for an account that does not exist, in its own transaction");
    let outcome = add_bonus(999, 1_000).await;
    println!(
        "  {}",
        match outcome {
            Ok(()) => "committed".to_owned(),
            Err(error) => format!("rolled back: {error}"),
        }
    );

    println!("\nbalances now:");
    for (owner, balance) in balances(&pool).await? {
        println!("  {owner}: {balance}");
    }
    println!("(100 deposited + 10 bonus; the bonus of 500 was rolled back at its savepoint)");
    Ok(())
}
