//! A live web dashboard for [covet-txn](covet_txn): one page that updates
//! itself every second over a WebSocket or a server-sent event stream,
//! report downloads,
//! and the Prometheus exposition, over a [`Monitor`](covet_txn::monitor::Monitor).
//!
//! ```no_run
//! # async fn demo(manager: covet_txn::TxManager<sqlx::Sqlite>) -> Result<(), covet_txn_dashboard::Error> {
//! use covet_txn_dashboard::Dashboard;
//!
//! let running = Dashboard::new(manager.monitor())
//!     .bearer_token(std::env::var("DASHBOARD_TOKEN").unwrap_or_default())
//!     .start()
//!     .await?;
//! println!("dashboard at {}", running.url());
//! running.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! or, inside an axum application that has its own state and routes, mounted
//! under a path with [`Dashboard::router`]:
//!
//! ```no_run
//! # fn demo(monitor: covet_txn::monitor::Monitor) {
//! use axum::{Router, extract::State, routing::get};
//!
//! #[derive(Clone)]
//! struct AppState { greeting: &'static str }
//!
//! let dashboard = covet_txn_dashboard::Dashboard::new(monitor).bearer_token("s3cret");
//! let app: Router = Router::new()
//!     .route("/", get(|State(app): State<AppState>| async move { app.greeting }))
//!     .nest_service("/covet", dashboard.router())
//!     .with_state(AppState { greeting: "hello" });
//! # let _ = app; }
//! ```
//!
//! Modules, one per concept, each importing only those before it: leaves
//! `error`, `flag` (a raised-once signal), `settings` (limits and their
//! defaults), `update` (the figures one update carries) and `failures`
//! (slowing and logging failed authentication); then `events` (one update
//! per tick, shared by every event stream and WebSocket), `connection` (one
//! client connection: timeouts, eviction, a WebSocket's hold on it),
//! `state` (what handlers read), `access` (who may ask: Host, Origin, token,
//! cookie), `routes` (what each path answers), `server` (the listener,
//! connection cap and shutdown of [`Dashboard::start`]), and `dashboard`
//! (the builder).

#![warn(missing_docs)]

mod access;
mod connection;
mod dashboard;
mod error;
mod events;
mod failures;
mod flag;
mod routes;
mod server;
mod settings;
mod state;
mod update;

pub use dashboard::Dashboard;
pub use error::Error;
pub use server::RunningDashboard;
pub use settings::{
    DEFAULT_ADDR, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_EVENT_STREAMS, DEFAULT_REFRESH, DEFAULT_SHUTDOWN_TIMEOUT,
};
