//! The README's snippets, whole and runnable: every `rust` block of the
//! README appears here verbatim (a test checks it), so the README cannot
//! drift from code that compiles.
//!
//! Runs against PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`): `cargo run --example readme`.

#[derive(Debug)]
enum AppError {
    Transaction(covet_txn::Error),
    Database(sqlx::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Transaction(error) => write!(f, "{error}"),
            AppError::Database(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<covet_txn::Error> for AppError {
    fn from(error: covet_txn::Error) -> Self {
        AppError::Transaction(error)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        AppError::Database(error)
    }
}

use covet_txn::transactional;
use sqlx::Postgres;

#[transactional(isolation = "serializable")]
async fn transfer(from: i64, to: i64, amount: i64) -> Result<(), AppError> {
    for (account, delta) in [(from, -amount), (to, amount)] {
        sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
            .bind(delta)
            .bind(account)
            .execute(&mut *covet_txn::conn::<Postgres>()?)
            .await?;
    }
    record_transfer(from, to, amount).await // itself #[transactional]: runs in a SAVEPOINT
}

#[transactional]
async fn record_transfer(from: i64, to: i64, amount: i64) -> Result<(), AppError> {
    sqlx::query("INSERT INTO transfers (source, target, amount) VALUES ($1, $2, $3)")
        .bind(from)
        .bind(to)
        .bind(amount)
        .execute(&mut *covet_txn::conn::<Postgres>()?)
        .await?;
    Ok(())
}

/// An application's own state, beside which the dashboard is mounted.
#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

async fn home(axum::extract::State(app): axum::extract::State<AppState>) -> &'static str {
    app.greeting
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use covet_txn::{Isolation, TxOptions};

    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = sqlx::PgPool::connect(&database_url).await?;
    let manager = covet_txn::TxManager::new(pool);
    manager.install_default()?;

    sqlx::raw_sql(
        "DROP TABLE IF EXISTS transfers, accounts;
         CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL);
         CREATE TABLE transfers (source BIGINT, target BIGINT, amount BIGINT);
         INSERT INTO accounts VALUES (1, 100), (2, 0);",
    )
    .execute(manager.pool())
    .await?;

    transfer(1, 2, 30).await?;

    let options = TxOptions::new().isolation(Isolation::Serializable);
    let total: i64 = manager
        .transaction(options, || async {
            let total = sqlx::query_scalar("SELECT sum(balance)::int8 FROM accounts")
                .fetch_one(&mut *covet_txn::conn::<Postgres>()?)
                .await?;
            Ok::<_, covet_txn::Error>(total)
        })
        .await?;
    println!("moved 30 from account 1 to account 2; the total is still {total}");

    use covet_txn::monitor::MonitorConfig;
    use std::time::Duration;
    let dashboard_token =
        std::env::var("DASHBOARD_TOKEN").unwrap_or_else(|_| "change-me".to_owned());
    use covet_txn_dashboard::Dashboard;

    let monitor = manager.monitor_with(MonitorConfig::new().interval(Duration::from_secs(1)));
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:7777") // the default; off loopback a token is required
        .bearer_token(dashboard_token) // an empty one is refused
        .start()
        .await?;
    println!("dashboard at {}", running.url()); // open it once with ?token=...
    running.shutdown().await;

    use covet_txn::monitor::MetricsStore;
    let metrics_db = sqlx::SqlitePool::connect("sqlite:metrics.db?mode=rwc").await?;
    let store = MetricsStore::sqlite(metrics_db) // or ::postgres(pool), ::mysql(pool)
        .create_schema() // CREATE TABLE IF NOT EXISTS, when the monitor starts
        .keep_for(Duration::from_secs(7 * 24 * 3600)) // retention by age
        .keep_samples(100_000); // and by rows, per manager
    let monitor = manager.monitor_with(MonitorConfig::new().store(store));
    let restored = monitor.restored().await?; // history, alerts, alert windows
    println!("{} samples restored", restored.samples);
    monitor.flush().await?; // before a planned exit: what waits is written now

    use axum::Router;
    use axum::routing::get;
    let app_state = AppState { greeting: "hello" };
    let dashboard = Dashboard::new(manager.monitor());
    let app: Router = Router::new()
        .route("/", get(home)) // the application's own routes and state
        .nest_service("/covet", dashboard.router())
        .with_state(app_state);
    drop(app);
    Ok(())
}
