//! One database transaction per HTTP request, for [covet-txn](covet_txn):
//! a tower [`Layer`](tower_layer::Layer) that runs each request's handler
//! in a transaction, as Django's `ATOMIC_REQUESTS` and Rails'
//! `around_action` do. It works in any tower stack: axum, tonic, hyper
//! services.
//!
//! ```
//! use axum::{Router, http::StatusCode, routing::post};
//! use covet_txn::{TxManager, transactional};
//! use covet_txn_tower::TransactionLayer;
//!
//! #[transactional] // nests in the request's transaction as a SAVEPOINT
//! async fn add_item(name: String) -> Result<(), covet_txn::Error> {
//!     sqlx::query("INSERT INTO items (name) VALUES (?)")
//!         .bind(name)
//!         .execute(&mut *covet_txn::sqlite::conn()?)
//!         .await?;
//!     Ok(())
//! }
//!
//! async fn create(name: String) -> StatusCode {
//!     match add_item(name).await {
//!         Ok(()) => StatusCode::CREATED, // commits
//!         Err(_) => StatusCode::INTERNAL_SERVER_ERROR, // rolls back
//!     }
//! }
//!
//! # async fn demo() -> Result<(), sqlx::Error> {
//! let manager = TxManager::new(sqlx::SqlitePool::connect("sqlite::memory:").await?);
//! let app: Router = Router::new()
//!     .route("/items", post(create))
//!     .layer(TransactionLayer::new(manager));
//! # let _ = app; Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! What the layer does with each request, and what can be configured, is
//! on [`TransactionLayer`].
//!
//! # How the crate is built
//!
//! Modules, one per concept, each importing only those before it in this
//! list: leaves `body` ([`RequestBody`], [`ResponseBody`]),
//! `handler_failure` ([`HandlerFailure`]), `settings` (what a layer's
//! services share, and the defaults) and `reply` (the layer's own responses
//! and log lines); `buffer` (a body read whole for retries); `attempt` (one
//! attempt inside the transaction, and the response it leads to); `service`
//! (what happens to a request); `layer` (the builder). It reaches covet-txn
//! through its public closure API only.

#![warn(missing_docs)]

mod attempt;
mod body;
mod buffer;
mod handler_failure;
mod layer;
mod reply;
mod service;
mod settings;

pub use body::{RequestBody, ResponseBody};
pub use handler_failure::HandlerFailure;
pub use layer::TransactionLayer;
pub use service::{ResponseFuture, TransactionService};
pub use settings::{DEFAULT_RETRY_BODY_LIMIT, DEFAULT_TRANSACTION_NAME};
