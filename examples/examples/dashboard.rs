//! The live dashboard over a small bank running on an embedded SQLite file:
//! transfers that commit, withdrawals that are refused and roll back,
//! writers that collide and retry, a slow report that stays open for
//! seconds, and an export that sometimes runs out of time.
//!
//! Run it with `cargo run --example dashboard` and open the URL it prints.
//! `COVET_DASHBOARD_ADDR` changes where it listens (default
//! `127.0.0.1:7777`; an address off loopback needs a token),
//! `COVET_DASHBOARD_TOKEN` requires a bearer token (open the page once with
//! `?token=<it>`; the example never prints it), `COVET_DASHBOARD_SECONDS`
//! stops it after that many seconds, and `COVET_DASHBOARD_STORE` keeps the
//! monitor's history and alerts in that SQLite file: run it twice with the
//! same file and the charts start with the first run's history.

use std::time::Duration;

use covet_txn::monitor::{MetricsStore, MonitorConfig};
use covet_txn::{TxManager, transactional};
use covet_txn_dashboard::Dashboard;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

const ACCOUNTS: i64 = 20;

/// What can go wrong in this bank.
#[derive(Debug)]
enum BankError {
    Transaction(covet_txn::Error),
    Database(sqlx::Error),
    InsufficientFunds { account: i64, balance: i64 },
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BankError::Transaction(error) => write!(f, "{error}"),
            BankError::Database(error) => write!(f, "{error}"),
            BankError::InsufficientFunds { account, balance } => {
                write!(f, "account {account} holds only {balance}")
            }
        }
    }
}

impl std::error::Error for BankError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BankError::Transaction(error) => Some(error),
            BankError::Database(error) => Some(error),
            BankError::InsufficientFunds { .. } => None,
        }
    }
}

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

async fn add(account: i64, amount: i64) -> Result<i64, BankError> {
    let balance = sqlx::query_scalar(
        "UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING balance",
    )
    .bind(amount)
    .bind(account)
    .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
    .await?;
    Ok(balance)
}

/// Moves money; writers collide on SQLite's single write lock and retry.
#[transactional(isolation = "serializable", retry = 4, backoff = "2ms")]
async fn transfer(from: i64, to: i64, amount: i64) -> Result<(), BankError> {
    let balance = add(from, -amount).await?;
    if balance < 0 {
        return Err(BankError::InsufficientFunds {
            account: from,
            balance: balance + amount,
        });
    }
    add(to, amount).await?;
    Ok(())
}

/// Reads every balance slowly, holding its transaction open for seconds.
#[transactional(read_only)]
async fn nightly_report(hold: Duration) -> Result<i64, BankError> {
    let total = sqlx::query_scalar("SELECT SUM(balance) FROM accounts")
        .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    tokio::time::sleep(hold).await;
    Ok(total)
}

/// An export with a deadline it sometimes misses.
#[transactional(read_only, timeout = "150ms")]
async fn export_statements(work: Duration) -> Result<(), BankError> {
    sqlx::query("SELECT id, balance FROM accounts")
        .fetch_all(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    tokio::time::sleep(work).await;
    Ok(())
}

/// A tiny pseudo-random sequence, so that the workload varies without a
/// dependency.
struct Dice(u64);

impl Dice {
    /// A number from 0 to `sides - 1`.
    fn roll(&mut self, sides: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides.unsigned_abs().max(1)) as i64
    }
}

async fn teller(seed: u64) {
    let mut dice = Dice(seed);
    loop {
        let from = 1 + dice.roll(ACCOUNTS);
        let to = 1 + (from + dice.roll(ACCOUNTS - 1)) % ACCOUNTS;
        let amount = 1 + dice.roll(80);
        // Refusals and exhausted retries are part of the show.
        let _ = transfer(from, to, amount).await;
        tokio::time::sleep(Duration::from_millis(10 + dice.roll(50).unsigned_abs())).await;
    }
}

async fn back_office() {
    let mut dice = Dice(0x5eed);
    loop {
        let _ = nightly_report(Duration::from_millis(
            1_000 + 300 * dice.roll(10).unsigned_abs(),
        ))
        .await;
        let _ = export_statements(Duration::from_millis(60 + dice.roll(140).unsigned_abs())).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("covet-dashboard.db");
    let _ = std::fs::remove_file(&path);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        // Readers do not block writers in WAL mode: only writers collide.
        .journal_mode(SqliteJournalMode::Wal)
        // Short, so that colliding writers fail fast and are retried.
        .busy_timeout(Duration::from_millis(1));
    let pool = SqlitePoolOptions::new()
        .max_connections(6)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    for _ in 0..ACCOUNTS {
        sqlx::query("INSERT INTO accounts (balance) VALUES (500)")
            .execute(&pool)
            .await?;
    }

    let manager = TxManager::builder(pool).name("bank").build();
    manager.install_default()?;
    let mut config = MonitorConfig::new().interval(Duration::from_secs(1));
    if let Ok(file) = std::env::var("COVET_DASHBOARD_STORE") {
        // A file of its own: the bank's SQLite file has one writer already.
        let metrics_db = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&file)
                    .create_if_missing(true),
            )
            .await?;
        config = config.store(MetricsStore::sqlite(metrics_db).create_schema());
    }
    let monitor = manager.monitor_with(config);
    if let Ok(restored) = monitor.restored().await {
        println!(
            "monitor history restored: {} samples, {} alerts",
            restored.samples, restored.alerts
        );
    }

    let mut dashboard = Dashboard::new(monitor.clone());
    if let Ok(addr) = std::env::var("COVET_DASHBOARD_ADDR") {
        dashboard = dashboard.bind(addr);
    }
    let token = std::env::var("COVET_DASHBOARD_TOKEN").ok();
    if let Some(token) = &token {
        dashboard = dashboard.bearer_token(token);
    }
    let running = dashboard.start().await?;
    // Never the token itself: terminals end up in logs and screenshots.
    match &token {
        Some(_) => println!(
            "covet-txn dashboard at {} (open it once with ?token=<COVET_DASHBOARD_TOKEN>)",
            running.url()
        ),
        None => println!("covet-txn dashboard at {}", running.url()),
    }

    for seed in 1..=4 {
        tokio::spawn(teller(seed * 0x9e37_79b9));
    }
    tokio::spawn(back_office());

    match std::env::var("COVET_DASHBOARD_SECONDS") {
        Ok(seconds) => tokio::time::sleep(Duration::from_secs(seconds.parse()?)).await,
        Err(_) => std::future::pending().await,
    }
    running.shutdown().await;
    if monitor.store_status().is_some() {
        monitor.flush().await?;
    }
    Ok(())
}
