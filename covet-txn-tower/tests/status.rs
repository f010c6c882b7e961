//! Commit or roll back by the response's status, over real HTTP against
//! PostgreSQL: a success commits exactly the handler's row, a 4xx and a 5xx
//! commit nothing, and the rule is the layer's to change.

mod common;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use common::{Client, insert, notes, notes_table, serve};
use covet_txn_tower::TransactionLayer;

/// Inserts the note, then answers with the status in the path.
async fn answer(
    State(table): State<&'static str>,
    Path(status): Path<u16>,
    note: String,
) -> Result<StatusCode, common::AppError> {
    insert(table, &note).await?;
    Ok(StatusCode::from_u16(status).expect("a status"))
}

/// Inserts the note, asks for a rollback, and answers 200.
async fn dry_run(
    State(table): State<&'static str>,
    note: String,
) -> Result<StatusCode, common::AppError> {
    insert(table, &note).await?;
    covet_txn::set_rollback_only()?;
    Ok(StatusCode::OK)
}

fn app(table: &'static str) -> Router<()> {
    Router::new()
        .route("/answer/{status}", post(answer))
        .route("/dry-run", post(dry_run))
        .with_state(table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_commits_exactly_the_handlers_row_and_failures_commit_none() {
    let Some(manager) = common::postgres(4).await else {
        return;
    };
    let table = "tower_status_default";
    notes_table(manager.pool(), table).await;
    let server = serve(app(table).layer(TransactionLayer::new(manager.clone()))).await;
    let mut client = Client::connect(server.addr).await;

    let created = client.send("POST", "/answer/201", "created").await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(notes(manager.pool(), table).await, ["created"]);

    for (status, note) in [
        (422, "unprocessable"),
        (404, "not found"),
        (500, "server error"),
        (503, "unavailable"),
    ] {
        let reply = client
            .send("POST", &format!("/answer/{status}"), note)
            .await;
        assert_eq!(reply.status.as_u16(), status, "the handler's own status");
        assert_eq!(
            notes(manager.pool(), table).await,
            ["created"],
            "a {status} committed its row"
        );
    }

    // A redirect is a success: it commits.
    let redirected = client.send("POST", "/answer/303", "redirected").await;
    assert_eq!(redirected.status, StatusCode::SEE_OTHER);
    assert_eq!(
        notes(manager.pool(), table).await,
        ["created", "redirected"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_rule_is_the_layers_to_change() {
    let Some(manager) = common::postgres(4).await else {
        return;
    };
    let table = "tower_status_custom";
    notes_table(manager.pool(), table).await;
    // Keep the work of a refused request; roll back on server errors only.
    let layer =
        TransactionLayer::new(manager.clone()).rollback_on(|status| status.is_server_error());
    let server = serve(app(table).layer(layer)).await;
    let mut client = Client::connect(server.addr).await;

    assert_eq!(
        client.send("POST", "/answer/409", "refused").await.status,
        409
    );
    assert_eq!(
        client.send("POST", "/answer/500", "failed").await.status,
        500
    );
    assert_eq!(notes(manager.pool(), table).await, ["refused"]);
}
