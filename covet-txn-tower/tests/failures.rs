//! When the runtime, not the handler, fails, over real HTTP against
//! PostgreSQL: a COMMIT the server refuses turns the handler's 201 into a
//! 500 whose body says nothing of the database, logged under
//! `covet_txn_tower`; a pool with no connection to give answers 503; and a
//! client that goes away mid-request leaves nothing committed and no
//! transaction open.

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::{AppError, Client, insert, notes, notes_table, send, serve};
use covet_txn::TxManager;
use covet_txn_tower::TransactionLayer;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Every event, as `LEVEL target: field=value ...`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Subscriber for Captured {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut line = format!("{} {}:", metadata.level(), metadata.target());
        event.record(&mut Line(&mut line));
        if let Ok(mut lines) = self.0.lock() {
            lines.push(line);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

async fn add_child(State(parent): State<i32>) -> Result<StatusCode, AppError> {
    sqlx::query("INSERT INTO tower_commit_child (parent_id) VALUES ($1)")
        .bind(parent)
        .execute(&mut *covet_txn::postgres::conn()?)
        .await?;
    Ok(StatusCode::CREATED)
}

// Current-thread: the server runs on this thread, so the thread's
// subscriber sees its events.
#[tokio::test]
async fn a_commit_the_server_refuses_is_a_500_that_leaks_nothing_and_is_logged() {
    let captured = Captured::default();
    let _subscriber = tracing::subscriber::set_default(captured.clone());
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    // The foreign key is checked at COMMIT, after the handler answered 201.
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS tower_commit_child, tower_commit_parent;
         CREATE TABLE tower_commit_parent (id INT PRIMARY KEY);
         CREATE TABLE tower_commit_child (parent_id INT NOT NULL
             REFERENCES tower_commit_parent DEFERRABLE INITIALLY DEFERRED);
         INSERT INTO tower_commit_parent VALUES (1);",
    )
    .execute(manager.pool())
    .await
    .expect("creates the tables");
    let app = |parent: i32| {
        Router::new()
            .route("/child", post(add_child))
            .with_state(parent)
            .layer(TransactionLayer::new(manager.clone()))
    };

    let server = serve(app(999)).await;
    let reply = send(server.addr, "POST", "/child?token=s3cret", "").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, "internal server error\n");
    let lines = captured.0.lock().expect("not poisoned").clone();
    let logged: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("ERROR covet_txn_tower:"))
        .collect();
    assert_eq!(logged.len(), 1, "{lines:#?}");
    assert!(logged[0].contains("tower_commit_child"), "{}", logged[0]);
    assert!(logged[0].contains("path=\"/child\""), "{}", logged[0]);
    assert!(
        lines.iter().all(|line| !line.contains("s3cret")),
        "a query string reached the log: {lines:#?}"
    );

    // The same handler with a parent that exists commits: the 500 above
    // was COMMIT's doing.
    let server = serve(app(1)).await;
    assert_eq!(
        send(server.addr, "POST", "/child", "").await.status,
        StatusCode::CREATED
    );
    let children: i64 = sqlx::query_scalar("SELECT count(*) FROM tower_commit_child")
        .fetch_one(manager.pool())
        .await
        .expect("counts");
    assert_eq!(children, 1);
}

async fn write(State(table): State<&'static str>, note: String) -> Result<StatusCode, AppError> {
    insert(table, &note).await?;
    Ok(StatusCode::CREATED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pooled_connection_in_time_is_a_503() {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300));
    let Some(pool) =
        covet_txn_tests::postgres_pool(pool, covet_txn_tests::postgres_options()).await
    else {
        return;
    };
    let manager = TxManager::new(pool);
    let table = "tower_pool_timeout";
    notes_table(manager.pool(), table).await;
    let app = Router::new()
        .route("/write", post(write))
        .with_state(table)
        .layer(TransactionLayer::new(manager.clone()));
    let server = serve(app).await;

    let held = manager.pool().acquire().await.expect("the only connection");
    let reply = send(server.addr, "POST", "/write", "waited").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "service unavailable\n")
    );
    drop(held);
    assert_eq!(
        send(server.addr, "POST", "/write", "served").await.status,
        StatusCode::CREATED
    );
    assert_eq!(notes(manager.pool(), table).await, ["served"]);
}

/// Writes, then takes longer than the layer's timeout allows.
async fn write_slowly(
    State(table): State<&'static str>,
    note: String,
) -> Result<StatusCode, AppError> {
    insert(table, &note).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(StatusCode::CREATED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_layers_timeout_is_cut_off_rolled_back_and_answered_500() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_timeout";
    notes_table(manager.pool(), table).await;
    let app = Router::new()
        .route("/slow", post(write_slowly))
        .with_state(table)
        .layer(
            TransactionLayer::new(manager.clone())
                .options(covet_txn::TxOptions::new().timeout(Duration::from_millis(300))),
        );
    let server = serve(app).await;

    let started = Instant::now();
    let reply = send(server.addr, "POST", "/slow", "late").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(notes(manager.pool(), table).await.is_empty());
}

#[derive(Clone)]
struct Stuck {
    table: &'static str,
    written: Arc<Notify>,
}

/// Writes, says so, and never answers.
async fn write_then_hang(State(stuck): State<Stuck>, note: String) -> Result<StatusCode, AppError> {
    insert(stuck.table, &note).await?;
    stuck.written.notify_one();
    std::future::pending::<()>().await;
    Ok(StatusCode::CREATED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_request_leaves_nothing_committed_or_open() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_dropped";
    notes_table(manager.pool(), table).await;
    let stuck = Stuck {
        table,
        written: Arc::new(Notify::new()),
    };
    let app = Router::new()
        .route("/hang", post(write_then_hang))
        .with_state(stuck.clone())
        .layer(TransactionLayer::new(manager.clone()));
    let server = serve(app).await;

    let mut client = Client::connect(server.addr).await;
    let pending = client.start("POST", "/hang", "abandoned");
    let _pending = tokio::spawn(pending);
    tokio::time::timeout(Duration::from_secs(10), stuck.written.notified())
        .await
        .expect("the handler wrote its row");
    assert_eq!(
        manager.metrics().active.len(),
        1,
        "the request's transaction is open"
    );

    // The client closes its socket; hyper drops the request's future.
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !manager.metrics().active.is_empty() {
        assert!(Instant::now() < deadline, "the transaction is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(notes(manager.pool(), table).await.is_empty());
    // No server session is left inside the abandoned transaction.
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE state LIKE 'idle in transaction%' AND query LIKE 'INSERT INTO tower_dropped%'",
    )
    .fetch_one(manager.pool())
    .await
    .expect("reads pg_stat_activity");
    assert_eq!(open, 0);
}
