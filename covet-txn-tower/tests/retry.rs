//! Retry, over real HTTP against PostgreSQL with real server errors: a
//! request whose first attempt hits a serialization failure runs again,
//! handler and body, and succeeds; only failures the runtime classifies as
//! retryable are retried; a body over the buffer limit is refused before
//! the handler runs; and without retry the body streams to the handler
//! unbuffered.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use common::{AppError, Client, insert, notes, notes_table, serialization_failure, serve};
use covet_txn::{TxOptions, transactional};
use covet_txn_tower::{HandlerFailure, TransactionLayer};
use http_body_util::BodyExt;
use tokio::sync::{Mutex, Notify};

#[derive(Clone, Default)]
struct App {
    table: &'static str,
    /// Attempts that reached the handler.
    attempts: Arc<AtomicU32>,
    /// The body each attempt read.
    bodies: Arc<Mutex<Vec<String>>>,
    /// Attempts (from 1) that fail with a serialization failure.
    failing: u32,
}

impl App {
    fn new(table: &'static str, failing: u32) -> Self {
        App {
            table,
            failing,
            ..App::default()
        }
    }

    async fn begin_attempt(&self, body: &str) -> u32 {
        self.bodies.lock().await.push(body.to_owned());
        self.attempts.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }
}

/// Records the note in a savepoint; fails with a real serialization
/// failure while `fail` is set.
#[transactional]
async fn record(table: &'static str, note: String, fail: bool) -> Result<(), AppError> {
    if fail {
        serialization_failure().await?;
    }
    insert(table, &note).await
}

/// The serialization failure happens inside a `#[transactional]` call; the
/// handler turns the error into a plain 500 and attaches nothing.
async fn through_a_nested_call(
    State(app): State<App>,
    note: String,
) -> Result<StatusCode, AppError> {
    let attempt = app.begin_attempt(&note).await;
    record(app.table, note, attempt <= app.failing).await?;
    Ok(StatusCode::CREATED)
}

/// The serialization failure happens in the handler's own query.
async fn in_the_handler(State(app): State<App>, note: String) -> Result<StatusCode, AttachedError> {
    let attempt = app.begin_attempt(&note).await;
    if attempt <= app.failing {
        serialization_failure().await?;
    }
    insert(app.table, &note).await?;
    Ok(StatusCode::CREATED)
}

/// An application error that hands itself to the layer for the retry
/// decision.
struct AttachedError(AppError);

impl From<AppError> for AttachedError {
    fn from(error: AppError) -> Self {
        AttachedError(error)
    }
}

impl IntoResponse for AttachedError {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::INTERNAL_SERVER_ERROR, "app error").into_response();
        response
            .extensions_mut()
            .insert(HandlerFailure::new(self.0));
        response
    }
}

/// The same failure, turned into a 500 with nothing attached.
async fn in_the_handler_unattached(
    State(app): State<App>,
    note: String,
) -> Result<StatusCode, AppError> {
    let attempt = app.begin_attempt(&note).await;
    if attempt <= app.failing {
        serialization_failure().await?;
    }
    insert(app.table, &note).await?;
    Ok(StatusCode::CREATED)
}

/// A refusal no retry fixes.
async fn refuse(State(app): State<App>, note: String) -> Result<StatusCode, AppError> {
    app.begin_attempt(&note).await;
    insert(app.table, &note).await?;
    Err(AppError::Refused("no"))
}

fn app(state: App, layer: TransactionLayer<sqlx::Postgres>) -> Router {
    Router::new()
        .route("/nested", post(through_a_nested_call))
        .route("/attached", post(in_the_handler))
        .route("/unattached", post(in_the_handler_unattached))
        .route("/refuse", post(refuse))
        .with_state(state)
        .layer(layer)
}

fn retrying(
    manager: &covet_txn::TxManager<sqlx::Postgres>,
    retries: u32,
) -> TransactionLayer<sqlx::Postgres> {
    TransactionLayer::new(manager.clone()).options(
        TxOptions::new()
            .retries(retries)
            .backoff(Duration::from_millis(1)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_a_nested_call_runs_the_request_again_with_its_body() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_retry_nested";
    notes_table(manager.pool(), table).await;
    let state = App::new(table, 1);
    let server = serve(app(state.clone(), retrying(&manager, 3))).await;

    let body = "order 42: ".repeat(1000); // several TCP reads, one buffer
    let reply = Client::connect(server.addr)
        .await
        .send("POST", "/nested", &body)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(state.attempts(), 2, "one failed attempt, one retry");
    assert_eq!(
        *state.bodies.lock().await,
        [body.clone(), body.clone()],
        "each attempt read the whole body"
    );
    assert_eq!(notes(manager.pool(), table).await, [body]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_handlers_own_query_is_retried_when_the_error_is_attached() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_retry_attached";
    notes_table(manager.pool(), table).await;
    let state = App::new(table, 2);
    let server = serve(app(state.clone(), retrying(&manager, 3))).await;

    let reply = Client::connect(server.addr)
        .await
        .send("POST", "/attached", "paid")
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(state.attempts(), 3);
    assert_eq!(notes(manager.pool(), table).await, ["paid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failures_the_runtime_classifies_as_retryable_are_retried() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_retry_classified";
    notes_table(manager.pool(), table).await;

    // A refusal: rolled back, answered as the handler said, run once.
    let state = App::new(table, 0);
    let server = serve(app(state.clone(), retrying(&manager, 3))).await;
    let reply = Client::connect(server.addr)
        .await
        .send("POST", "/refuse", "refused")
        .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::CONFLICT, "no")
    );
    assert_eq!(state.attempts(), 1);

    // A serialization failure the handler turned into a bare 500: the layer
    // cannot see it, so it does not retry.
    let state = App::new(table, 1);
    let server = serve(app(state.clone(), retrying(&manager, 3))).await;
    let reply = Client::connect(server.addr)
        .await
        .send("POST", "/unattached", "hidden")
        .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "app error")
    );
    assert_eq!(state.attempts(), 1);

    // Retryable every time: the retries run out and the client gets the
    // last attempt's own answer, with nothing committed.
    let state = App::new(table, u32::MAX);
    let server = serve(app(state.clone(), retrying(&manager, 2))).await;
    let reply = Client::connect(server.addr)
        .await
        .send("POST", "/nested", "never")
        .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "app error")
    );
    assert_eq!(state.attempts(), 3, "the first attempt and two retries");

    // Without retry, the same failure is answered as the handler said.
    let state = App::new(table, 1);
    let server = serve(app(state.clone(), TransactionLayer::new(manager.clone()))).await;
    let reply = Client::connect(server.addr)
        .await
        .send("POST", "/nested", "once")
        .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(state.attempts(), 1);

    assert!(notes(manager.pool(), table).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_retry_buffer_limit_is_refused_before_the_handler_runs() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let table = "tower_retry_limit";
    notes_table(manager.pool(), table).await;
    let state = App::new(table, 0);
    let server = serve(app(
        state.clone(),
        retrying(&manager, 3).retry_body_limit(16),
    ))
    .await;
    let mut client = Client::connect(server.addr).await;

    let reply = client.send("POST", "/nested", &"x".repeat(17)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n")
    );
    assert_eq!(state.attempts(), 0);
    let reply = client.send("POST", "/nested", &"x".repeat(16)).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(state.attempts(), 1);
}

/// Says it was called before it reads its body.
async fn announce_then_read(State(called): State<Arc<Notify>>, request: Request) -> String {
    called.notify_one();
    match axum::body::to_bytes(request.into_body(), 1024).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(error) => format!("unreadable: {error}"),
    }
}

/// Sends a request whose body is held back until the handler has been
/// called, or 500 ms have passed; says whether the handler was called first.
async fn handler_called_before_the_body_was_sent(
    layer: TransactionLayer<sqlx::Postgres>,
) -> (bool, String) {
    let called = Arc::new(Notify::new());
    let app = Router::new()
        .route("/stream", post(announce_then_read))
        .with_state(Arc::clone(&called))
        .layer(layer);
    let server = serve(app).await;

    let stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connects");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("a handshake");
    let connection = tokio::spawn(connection);
    let (mut body_tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let request = http::Request::post("/stream")
        .header("host", "covet.test")
        .body(body)
        .expect("a request");
    let response = tokio::spawn(sender.send_request(request));
    let called_first = tokio::time::timeout(Duration::from_millis(500), called.notified())
        .await
        .is_ok();
    body_tx
        .send_data(Bytes::from_static(b"streamed"))
        .await
        .expect("sends the body");
    drop(body_tx);
    let response = response.await.expect("no panic").expect("a response");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    connection.abort();
    (called_first, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retry_the_body_streams_to_the_handler_unbuffered() {
    let Some(manager) = common::postgres(2).await else {
        return;
    };
    let (called_first, body) =
        handler_called_before_the_body_was_sent(TransactionLayer::new(manager.clone())).await;
    assert!(called_first, "the handler waited for the whole body");
    assert_eq!(body, "streamed");

    // The contrast: with retry, the layer reads the body before BEGIN.
    let (called_first, body) = handler_called_before_the_body_was_sent(retrying(&manager, 1)).await;
    assert!(
        !called_first,
        "a retrying layer called the handler before buffering the body"
    );
    assert_eq!(body, "streamed");
}
