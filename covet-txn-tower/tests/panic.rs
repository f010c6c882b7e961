//! A panicking handler, over real HTTP against PostgreSQL: its work is
//! rolled back, the client gets a 500 with a short body, and the same
//! connection (and so the server) goes on serving.

mod common;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::{Client, insert, notes, notes_table, serve};
use covet_txn_tower::TransactionLayer;

async fn write_then_panic(State(table): State<&'static str>, note: String) -> StatusCode {
    if let Err(error) = insert(table, &note).await {
        return error_status(error);
    }
    panic!("the handler broke after writing {note}");
}

async fn write(State(table): State<&'static str>, note: String) -> StatusCode {
    match insert(table, &note).await {
        Ok(()) => StatusCode::CREATED,
        Err(error) => error_status(error),
    }
}

fn error_status(error: common::AppError) -> StatusCode {
    eprintln!("the handler failed: {error}");
    StatusCode::INTERNAL_SERVER_ERROR
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_rolls_back_answers_500_and_the_connection_keeps_serving() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_panic";
    notes_table(manager.pool(), table).await;
    let app = Router::new()
        .route("/panic", post(write_then_panic))
        .route("/write", post(write))
        .with_state(table)
        .layer(TransactionLayer::new(manager.clone()));
    let server = serve(app).await;
    let mut client = Client::connect(server.addr).await;

    let panicked = client.send("POST", "/panic", "lost").await;
    assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(panicked.body, "internal server error\n");
    assert!(!panicked.body.contains("broke"), "the panic message leaked");

    // The same keep-alive connection: without the layer's catch, the
    // panic would have torn it down.
    let next = client.send("POST", "/write", "kept").await;
    assert_eq!(next.status, StatusCode::CREATED);
    assert_eq!(notes(manager.pool(), table).await, ["kept"]);

    // The panicking transaction gave its connection back: both requests
    // again, on a pool of two, with nothing left running.
    assert_eq!(client.send("POST", "/panic", "lost").await.status, 500);
    assert_eq!(client.send("POST", "/write", "kept too").await.status, 201);
    assert_eq!(notes(manager.pool(), table).await, ["kept", "kept too"]);
    assert!(manager.metrics().active.is_empty());
}
