//! A live web dashboard for [covet-txn](covet_txn): one page that updates
//! itself every second from a server-sent event stream, report downloads,
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
//! Modules, one per concept: `settings` (the [`Dashboard`] builder, its
//! limits and their defaults), `routes` (what each path answers), `access`
//! (who may ask: Host, Origin, token, cookie), `failures` (slowing and
//! logging failed authentication), `update` (the figures one update
//! carries), `events` (one update per tick, shared by every event stream),
//! `safe_csv` (spreadsheet-safe exports), `server` (the listener, connection cap
//! and shutdown of [`Dashboard::start`]), `connection` (one client
//! connection: timeouts and eviction).

#![warn(missing_docs)]

mod access;
mod connection;
mod events;
mod failures;
mod routes;
mod safe_csv;
mod server;
mod settings;
mod update;

pub use server::RunningDashboard;
pub use settings::{
    DEFAULT_ADDR, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_EVENT_STREAMS, DEFAULT_REFRESH, DEFAULT_SHUTDOWN_TIMEOUT, Dashboard,
};

/// Why a dashboard could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting would leave the dashboard open or unusable: an empty
    /// token, or an address off loopback without a token.
    #[error("{0}")]
    Refused(String),
    /// The address could not be resolved or bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}
