//! The layer on embedded SQLite, over real HTTP: nothing in it depends on
//! PostgreSQL. A success commits its row and a nested call's, a failed
//! nested call rolls back alone, and a 4xx commits nothing.

mod common;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use common::{AppError, Client, serve};
use covet_txn::{TxManager, transactional};
use covet_txn_tower::TransactionLayer;
use sqlx::SqlitePool;

async fn insert(note: &str) -> Result<(), AppError> {
    sqlx::query("INSERT INTO notes (note) VALUES (?)")
        .bind(note)
        .execute(&mut *covet_txn::sqlite::conn()?)
        .await?;
    Ok(())
}

#[transactional]
async fn add_note(note: String) -> Result<(), AppError> {
    insert(&note).await
}

#[transactional]
async fn add_then_refuse(note: String) -> Result<(), AppError> {
    insert(&note).await?;
    Err(AppError::Refused("changed my mind"))
}

/// The request's row, a nested row kept, a nested row refused; then the
/// status the body asks for.
async fn order(status: String) -> Result<StatusCode, AppError> {
    insert(&format!("{status} outer")).await?;
    add_note(format!("{status} kept")).await?;
    let _refused = add_then_refuse(format!("{status} refused")).await;
    Ok(StatusCode::from_u16(status.parse().expect("a number")).expect("a status"))
}

async fn notes(pool: &SqlitePool) -> Vec<String> {
    sqlx::query_scalar("SELECT note FROM notes ORDER BY note")
        .fetch_all(pool)
        .await
        .expect("reads the notes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_success_commits_and_a_4xx_commits_nothing() {
    let Some(pool) = covet_txn_tests::sqlite("tower_sqlite", 2).await else {
        return;
    };
    sqlx::raw_sql("CREATE TABLE notes (note TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("creates the table");
    let manager = TxManager::new(pool.clone());
    let app = Router::new()
        .route("/order", post(order))
        .layer(TransactionLayer::new(manager));
    let server = serve(app).await;
    let mut client = Client::connect(server.addr).await;

    assert_eq!(
        client.send("POST", "/order", "201").await.status,
        StatusCode::CREATED
    );
    assert_eq!(notes(&pool).await, ["201 kept", "201 outer"]);
    assert_eq!(
        client.send("POST", "/order", "422").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(notes(&pool).await, ["201 kept", "201 outer"]);
}
