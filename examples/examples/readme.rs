//! The README's snippets, whole and runnable: every `rust` block of the
//! README appears here verbatim (a test checks it), so the README cannot
//! drift from code that compiles.
//!
//! Runs against PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`): `cargo run --example readme`;
//! `cargo test --example readme` runs its `#[covet_txn::test]`.

#[derive(Debug)]
enum AppError {
    Transaction(covet_txn::Error),
    Database(sqlx::Error),
    Refused(&'static str),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Transaction(error) => write!(f, "{error}"),
            AppError::Database(error) => write!(f, "{error}"),
            AppError::Refused(why) => write!(f, "refused: {why}"),
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

use std::borrow::Cow;

use covet_txn::dialect::{Begin, BeginRequest, Dialect, SavepointAction, SavepointName};
use covet_txn::postgres::PostgresDialect;
use covet_txn::{FailureKind, Isolation, TxManager};
use sqlx::Postgres;
use sqlx::error::DatabaseError;

use covet_txn::transactional;

#[transactional(isolation = "serializable")]
async fn transfer(from: i64, to: i64, amount: i64) -> Result<(), AppError> {
    for (account, delta) in [(from, -amount), (to, amount)] {
        sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
            .bind(delta)
            .bind(account)
            .execute(&mut *covet_txn::postgres::conn()?)
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
        .execute(&mut *covet_txn::postgres::conn()?)
        .await?;
    Ok(())
}

/// Two transfers touching an account take turns in this process before they
/// reach the database; a retry waits for the function's next turn.
#[transactional(isolation = "serializable", retry = 10, conflict_key = [from, to], contention = "adaptive")]
async fn transfer_between(from: i64, to: i64, amount: i64) -> Result<(), AppError> {
    transfer(from, to, amount).await
}

fn is_refusal(error: &AppError) -> bool {
    matches!(error, AppError::Refused(_))
}

#[transactional(commit_on = is_refusal)]
async fn withdraw(account: i64, amount: i64) -> Result<(), AppError> {
    sqlx::query("INSERT INTO withdrawals (account, amount) VALUES ($1, $2)") // kept either way
        .bind(account)
        .bind(amount)
        .execute(&mut *covet_txn::postgres::conn()?)
        .await?;
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1 FOR UPDATE")
        .bind(account)
        .fetch_one(&mut *covet_txn::postgres::conn()?)
        .await?;
    if balance < amount {
        return Err(AppError::Refused("insufficient funds")); // commits, then returns the refusal
    }
    sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
        .bind(amount)
        .bind(account)
        .execute(&mut *covet_txn::postgres::conn()?)
        .await?;
    Ok(())
}

#[transactional]
async fn total_after_interest(percent: i64) -> Result<i64, AppError> {
    sqlx::query("UPDATE accounts SET balance = balance * (100 + $1) / 100")
        .bind(percent)
        .execute(&mut *covet_txn::postgres::conn()?)
        .await?;
    let total = sqlx::query_scalar("SELECT sum(balance)::int8 FROM accounts")
        .fetch_one(&mut *covet_txn::postgres::conn()?)
        .await?;
    covet_txn::set_rollback_only()?; // a dry run: the answer is returned, nothing is kept
    Ok(total)
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order: i64,
    customer: i64,
}

#[transactional]
async fn place_order(customer: i64, total: i64) -> Result<i64, AppError> {
    let order: i64 =
        sqlx::query_scalar("INSERT INTO orders (customer, total) VALUES ($1, $2) RETURNING id")
            .bind(customer)
            .bind(total)
            .fetch_one(&mut *covet_txn::postgres::conn()?)
            .await?;
    covet_txn::outbox::enqueue("order-placed", &OrderPlaced { order, customer }).await?; // same transaction
    Ok(order)
}

async fn send_confirmation(
    id: i64,
    placed: OrderPlaced,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    println!(
        "message {id}: order {} placed by {}",
        placed.order, placed.customer
    );
    Ok(())
}

/// The tables the README's snippets use, created afresh.
async fn create_tables(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS transfers, withdrawals, accounts;
         CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL);
         CREATE TABLE transfers (source BIGINT, target BIGINT, amount BIGINT);
         CREATE TABLE withdrawals (account BIGINT, amount BIGINT);
         INSERT INTO accounts VALUES (1, 100), (2, 0);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The streaming replica the topology section's snippet reads from.
fn replica_url() -> String {
    std::env::var("REPLICA_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".to_owned())
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

// Used by the #[covet_txn::test] below, which exists only under `cargo test`.
#[cfg_attr(not(test), allow(dead_code))]
async fn test_db() -> covet_txn::TxManager<sqlx::Postgres> {
    let pool = sqlx::PgPool::connect(&database_url())
        .await
        .expect("the test database");
    create_tables(&pool).await.expect("the tables");
    covet_txn::TxManager::new(pool)
}

#[covet_txn::test(manager = test_db())]
async fn a_transfer_moves_the_money() -> Result<(), AppError> {
    transfer(1, 2, 30).await?; // a SAVEPOINT inside the test's transaction
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 2")
        .fetch_one(&mut *covet_txn::postgres::conn()?)
        .await?;
    assert_eq!(balance, 30);
    Ok(())
} // rolled back: the next test starts from the same rows

struct Restarting;

impl Dialect<Postgres> for Restarting {
    fn system(&self) -> &'static str {
        "cockroachdb"
    }

    fn default_isolation(&self) -> Isolation {
        Isolation::Serializable
    }

    fn begin(&self, request: &BeginRequest, probed: &[bool]) -> Begin {
        PostgresDialect.begin(request, probed)
    }

    fn savepoint(&self, action: SavepointAction, name: SavepointName<'_>) -> Cow<'static, str> {
        PostgresDialect.savepoint(action, name)
    }

    fn classify(&self, error: &(dyn DatabaseError + 'static)) -> Option<FailureKind> {
        match error.code().as_deref() {
            Some("40001") => Some(FailureKind::SerializationFailure), // "restart transaction"
            _ => PostgresDialect.classify(error),
        }
    }
}

/// An application's own state, beside which the dashboard is mounted.
#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

async fn home(axum::extract::State(app): axum::extract::State<AppState>) -> &'static str {
    app.greeting
}

/// A handler whose transfer nests in the request's transaction.
async fn create_transfer() -> axum::http::StatusCode {
    match transfer(2, 1, 5).await {
        Ok(()) => axum::http::StatusCode::CREATED,
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn health() -> &'static str {
    "ok"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use covet_txn::{Isolation, TxOptions};
    use std::time::Duration;

    let pool = sqlx::PgPool::connect(&database_url()).await?;
    let manager = covet_txn::TxManager::new(pool);
    manager.install_default()?;
    create_tables(manager.pool()).await?;

    transfer(1, 2, 30).await?;
    transfer_between(2, 1, 0).await?;

    let options = TxOptions::new().isolation(Isolation::Serializable);
    let total: i64 = manager
        .transaction(options, || async {
            let total = sqlx::query_scalar("SELECT sum(balance)::int8 FROM accounts")
                .fetch_one(&mut *covet_txn::postgres::conn()?)
                .await?;
            Ok::<_, covet_txn::Error>(total)
        })
        .await?;
    println!("moved 30 from account 1 to account 2; the total is still {total}");

    {
        let pool = manager.pool().clone();
        let manager = TxManager::builder(pool).dialect(Restarting).build();
        assert_eq!(manager.metrics().backend, "cockroachdb");
    }

    {
        use covet_txn::SessionToken;
        use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
        let primary = manager.pool().clone();
        let primary_hosts: Vec<PgConnectOptions> = vec![database_url().parse()?];
        let replica = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(1)) // a read whose replica is gone goes to the primary
            .connect_lazy(&replica_url())?;
        let manager = TxManager::builder(primary)
            .replica(replica) // one call per replica
            .max_replica_lag(Duration::from_secs(2))
            .primary_hosts(primary_hosts) // failover: every host the primary may run on
            .build();
        // After the request's writes: a cookie or header for the client.
        let token: Option<SessionToken> = manager.session_token().await?;
        // In the client's next request, before its reads, whichever process serves it.
        if let Some(token) = token {
            manager.read_after(token);
        }
        assert_eq!(manager.replicas().replicas.len(), 1);
    }

    let refused = withdraw(2, 500).await;
    assert!(matches!(refused, Err(AppError::Refused(_))), "{refused:?}");
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM withdrawals")
        .fetch_one(manager.pool())
        .await?;
    assert_eq!(attempts, 1, "the refused withdrawal's row was kept");
    let after_interest = total_after_interest(10).await?;
    let total_now: i64 = sqlx::query_scalar("SELECT sum(balance)::int8 FROM accounts")
        .fetch_one(manager.pool())
        .await?;
    println!("with 10% interest the total would be {after_interest}; it is still {total_now}");
    assert_eq!(total_now, total);

    use covet_txn::monitor::MonitorConfig;
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

    use covet_txn::RetryPolicy;
    use covet_txn::outbox::{Message, Outbox};
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS orders;
         CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, customer BIGINT, total BIGINT);",
    )
    .execute(manager.pool())
    .await?;
    let outbox = Outbox::default(); // the table covet_outbox; Outbox::new("name") for another
    outbox.migrate(manager.pool()).await?; // CREATE TABLE IF NOT EXISTS, per backend
    let relay = outbox
        .relay(&manager)
        .handler("order-placed", |message: Message| async move {
            let placed: OrderPlaced = message.payload()?;
            send_confirmation(message.id, placed).await // message.id names it if it comes twice
        })
        .concurrency(16)
        .retry_policy(
            RetryPolicy::new()
                .retries(9)
                .backoff(Duration::from_millis(100)),
        )
        .start()
        .await?;
    let order = place_order(7, 250).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.shutdown().await;
    println!("order {order} placed; its confirmation went through the outbox");

    use axum::Router;
    use axum::routing::get;
    let app_state = AppState { greeting: "hello" };
    let dashboard = Dashboard::new(manager.monitor());
    let app: Router = Router::new()
        .route("/", get(home)) // the application's own routes and state
        .nest_service("/covet", dashboard.router())
        .with_state(app_state);
    drop(app);

    use axum::routing::post;
    use covet_txn_tower::TransactionLayer;

    let per_request = TxOptions::new()
        .isolation(Isolation::Serializable)
        .retries(3);
    let app: Router = Router::new()
        .route("/transfers", post(create_transfer)) // calls transfer(...): a SAVEPOINT
        .route("/health", get(health))
        .layer(
            TransactionLayer::new(manager.clone())
                .options(per_request)
                .exclude_path_prefix("/health"),
        );
    drop(app);
    Ok(())
}
