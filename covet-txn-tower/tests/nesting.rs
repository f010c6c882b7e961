//! The handler's own `#[transactional]` calls, over real HTTP against
//! PostgreSQL: they nest in the request's transaction as savepoints (a
//! failed one rolls back alone, the rest commits; a rolled-back request
//! takes the nested work with it), they find the layer's manager without
//! naming one, and an excluded route runs outside any transaction.

mod common;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::{AppError, Client, insert, notes, notes_table, serve};
use covet_txn::transactional;
use covet_txn_tower::TransactionLayer;

/// Inserts a note in a savepoint of the running transaction (no `manager`:
/// the layer's is the task's default), and says at which depth it ran.
#[transactional]
async fn add_note(table: &'static str, note: String) -> Result<u32, AppError> {
    insert(table, &note).await?;
    Ok(covet_txn::current().map_or(0, |scope| scope.depth))
}

/// Inserts a note, then refuses: its savepoint rolls back.
#[transactional]
async fn add_then_refuse(table: &'static str, note: String) -> Result<(), AppError> {
    insert(table, &note).await?;
    Err(AppError::Refused("changed my mind"))
}

/// The request's own row, a nested row that is kept, one that is refused,
/// then the status asked for.
async fn order(
    State(table): State<&'static str>,
    status: String,
) -> Result<(StatusCode, String), AppError> {
    insert(table, &format!("{status} outer")).await?;
    let depth = add_note(table, format!("{status} kept")).await?;
    let refused = add_then_refuse(table, format!("{status} refused")).await;
    assert!(matches!(refused, Err(AppError::Refused(_))));
    let status = StatusCode::from_u16(status.parse().expect("a number")).expect("a status");
    Ok((status, format!("nested depth {depth}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_calls_are_savepoints_of_the_requests_transaction() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_nesting";
    notes_table(manager.pool(), table).await;
    let app = Router::new()
        .route("/order", post(order))
        .with_state(table)
        .layer(TransactionLayer::new(manager.clone()));
    let server = serve(app).await;
    let mut client = Client::connect(server.addr).await;

    let created = client.send("POST", "/order", "201").await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        created.body, "nested depth 2",
        "a savepoint under the request's transaction"
    );
    assert_eq!(
        notes(manager.pool(), table).await,
        ["201 kept", "201 outer"],
        "the refused savepoint rolled back alone"
    );

    // The request rolls back: the nested work that had been released into
    // it goes too, which it would not if it had committed on its own.
    let refused = client.send("POST", "/order", "409").await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(
        notes(manager.pool(), table).await,
        ["201 kept", "201 outer"]
    );
}

/// Describes the transaction the handler runs in, then begins one of its
/// own through a `#[transactional]` call that names no manager.
async fn describe(State(table): State<&'static str>) -> Result<String, AppError> {
    let scope = covet_txn::current().map(|scope| (scope.depth, scope.transaction_name));
    let depth = add_note(table, format!("from {scope:?}")).await?;
    Ok(format!("{scope:?} then depth {depth}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excluded_route_runs_outside_a_transaction_with_the_manager_still_found() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_excluded";
    notes_table(manager.pool(), table).await;
    let app = Router::new()
        .route("/health", get(describe))
        .route("/health/db", get(describe))
        .route("/healthy", get(describe))
        .with_state(table)
        .layer(TransactionLayer::new(manager.clone()).exclude_path_prefix("/health"));
    let server = serve(app).await;
    let mut client = Client::connect(server.addr).await;

    for path in ["/health", "/health/db"] {
        let reply = client.send("GET", path, "").await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        // No transaction around the handler; its #[transactional] call
        // found the layer's manager (no default is installed in this
        // process) and began a transaction of its own.
        assert_eq!(reply.body, "None then depth 1", "{path}");
    }
    let reply = client.send("GET", "/healthy", "").await;
    assert_eq!(
        reply.body, "Some((1, \"http_request\")) then depth 2",
        "/healthy is not under /health"
    );
    assert_eq!(notes(manager.pool(), table).await.len(), 3);
}
