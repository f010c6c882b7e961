//! `on_commit` hooks registered by a handler, over real HTTP against
//! PostgreSQL: they run after COMMIT (the row is visible to another
//! connection) and before the response reaches the client.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::{AppError, Client, insert, notes_table, serve};
use covet_txn_tower::TransactionLayer;
use sqlx::{AssertSqlSafe, PgPool};

#[derive(Clone)]
struct App {
    table: &'static str,
    pool: PgPool,
    /// What happened, in order, on the server and on the client.
    log: Arc<Mutex<Vec<String>>>,
}

impl App {
    fn record(&self, line: String) {
        self.log.lock().expect("not poisoned").push(line);
    }
}

async fn create(State(app): State<App>, note: String) -> Result<StatusCode, AppError> {
    insert(app.table, &note).await?;
    let hook_app = app.clone();
    covet_txn::on_commit(move || async move {
        // Slow on purpose: a response sent before the hooks ran would
        // reach the client long before this line is written.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sql = format!("SELECT count(*) FROM {}", hook_app.table);
        let visible: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&hook_app.pool)
            .await
            .unwrap_or(-1);
        hook_app.record(format!("on_commit saw {visible} row(s)"));
    })
    .await;
    Ok(StatusCode::CREATED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_commit_hooks_run_after_commit_and_before_the_response_arrives() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_hooks";
    notes_table(manager.pool(), table).await;
    let app = App {
        table,
        pool: manager.pool().clone(),
        log: Arc::default(),
    };
    let router = Router::new()
        .route("/create", post(create))
        .with_state(app.clone())
        .layer(TransactionLayer::new(manager.clone()));
    let server = serve(router).await;
    let mut client = Client::connect(server.addr).await;

    let reply = client.send("POST", "/create", "hooked").await;
    app.record(format!("client got {}", reply.status.as_u16()));

    assert_eq!(
        *app.log.lock().expect("not poisoned"),
        ["on_commit saw 1 row(s)", "client got 201"]
    );
}
