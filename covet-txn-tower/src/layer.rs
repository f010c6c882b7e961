//! [`TransactionLayer`]: the builder a user configures (manager, options,
//! which statuses roll back, which requests are left out, how much body a
//! retry may buffer), and the [`Layer`] that hands each service it makes
//! the manager and the settings.
//!
//! The top of the crate: what happens to a request is `service`'s business,
//! what the settings mean is `settings`'.

use std::fmt;
use std::sync::Arc;

use covet_txn::{Backend, TxManager, TxOptions};
use http::StatusCode;
use http::request::Parts;
use tower_layer::Layer;

use crate::service::TransactionService;
use crate::settings::{
    DEFAULT_RETRY_BODY_LIMIT, DEFAULT_TRANSACTION_NAME, Settings, client_or_server_error,
    path_is_under,
};

/// A tower [`Layer`] that runs each request's handler in a transaction of
/// one [`TxManager`]: Django's `ATOMIC_REQUESTS`, Rails' `around_action`.
///
/// For each request that is not [excluded](Self::exclude) the service it
/// makes:
///
/// - makes the manager the task's default ([`TxManager::scope`]), so that
///   `#[transactional]` functions without `manager = ...` find it;
/// - begins a transaction with the layer's [`TxOptions`] and calls the inner
///   service inside it, so the handler's `#[transactional]` calls nest in it
///   as savepoints, and `covet_txn::conn()` reaches it;
/// - commits if the response's status is a success (anything
///   [`rollback_on`](Self::rollback_on) does not match; by default, below
///   400), rolls back otherwise, and returns the handler's response either
///   way;
/// - rolls back and answers `500` if the handler panics, as tower-http's
///   `CatchPanic` does, so the connection and the server keep serving;
/// - rolls back if the response future is dropped (the client went away, a
///   timeout layer fired): the runtime rolls back a dropped transaction;
/// - runs the transaction's `on_commit` hooks after COMMIT and before the
///   response is handed back to the server, so before it is sent;
/// - answers `500` (or `503` when no pooled connection came in time) with a
///   short body if the runtime fails (no connection, BEGIN or COMMIT failed,
///   a COMMIT whose outcome is unknown), and logs the error (target
///   `covet_txn_tower`);
/// - with retry on ([`TxOptions::retries`]), buffers the body up to
///   [`retry_body_limit`](Self::retry_body_limit) and runs the handler
///   again on a failure the runtime classifies as retryable.
///
/// ```
/// use axum::{Router, http::StatusCode, routing::{get, post}};
/// use covet_txn::{Isolation, TxManager, TxOptions};
/// use covet_txn_tower::TransactionLayer;
///
/// async fn create_order() -> StatusCode { StatusCode::CREATED }
/// async fn health() -> &'static str { "ok" }
///
/// # async fn demo() -> Result<(), sqlx::Error> {
/// let manager = TxManager::new(sqlx::SqlitePool::connect("sqlite::memory:").await?);
/// let app: Router = Router::new()
///     .route("/orders", post(create_order))
///     .route("/health", get(health))
///     .layer(
///         TransactionLayer::new(manager)
///             .options(TxOptions::new().isolation(Isolation::Serializable).retries(3))
///             .exclude_path_prefix("/health"),
///     );
/// # let _ = app; Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub struct TransactionLayer<DB: Backend> {
    manager: TxManager<DB>,
    settings: Arc<Settings>,
}

impl<DB: Backend> TransactionLayer<DB> {
    /// A layer running each request in a transaction of `manager`, with the
    /// default options, rolling back on 4xx and 5xx, excluding nothing, and
    /// not retrying.
    pub fn new(manager: TxManager<DB>) -> Self {
        TransactionLayer {
            manager,
            settings: Arc::new(Settings {
                options: TxOptions::new().name(DEFAULT_TRANSACTION_NAME),
                rollback_on: Arc::new(client_or_server_error),
                exclude: None,
                retry_body_limit: DEFAULT_RETRY_BODY_LIMIT,
            }),
        }
    }

    fn settings(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    /// The options of every request's transaction: isolation, read-only,
    /// timeout, retry (see [`TxOptions`]). Without a
    /// [`name`](TxOptions::name), the transactions are named
    /// [`DEFAULT_TRANSACTION_NAME`] in logs and metrics.
    ///
    /// With retry on ([`TxOptions::retries`] or [`TxOptions::retry`]), a
    /// request whose attempt fails in a way the runtime classifies as
    /// retryable (a deadlock, a serialization failure, a connection lost
    /// before COMMIT) runs again, handler and all, on a rebuilt request:
    /// the same method, URI, headers and extensions, and the same body,
    /// which the layer buffers first (see
    /// [`retry_body_limit`](Self::retry_body_limit)). Such a failure is seen
    /// when it happened inside a `#[transactional]` call (it dooms the
    /// transaction, whatever the handler then answers), or when the handler
    /// attaches its error to the response as a
    /// [`HandlerFailure`](crate::HandlerFailure). Without retry, the body
    /// streams to the handler unbuffered.
    ///
    /// ```
    /// use std::time::Duration;
    /// use covet_txn::{Isolation, TxOptions};
    /// # fn demo(manager: covet_txn::TxManager<sqlx::Sqlite>) {
    /// let layer = covet_txn_tower::TransactionLayer::new(manager).options(
    ///     TxOptions::new()
    ///         .isolation(Isolation::Serializable)
    ///         .timeout(Duration::from_secs(10))
    ///         .retries(3)
    ///         .name("checkout_request"),
    /// );
    /// # let _ = layer; }
    /// ```
    #[must_use]
    pub fn options(mut self, options: TxOptions) -> Self {
        let options = match options.given_name() {
            Some(_) => options,
            None => options.name(DEFAULT_TRANSACTION_NAME),
        };
        self.settings().options = options;
        self
    }

    /// Which response statuses roll the transaction back; the others commit.
    /// By default every client and server error (400 to 599).
    ///
    /// ```
    /// # fn demo(manager: covet_txn::TxManager<sqlx::Sqlite>) {
    /// // Keep the work of a request refused with a 4xx (an audit row, a
    /// // counter); roll back only on a server error.
    /// let layer = covet_txn_tower::TransactionLayer::new(manager)
    ///     .rollback_on(|status| status.is_server_error());
    /// # let _ = layer; }
    /// ```
    #[must_use]
    pub fn rollback_on(
        mut self,
        predicate: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings().rollback_on = Arc::new(predicate);
        self
    }

    /// Runs the requests `predicate` matches without a transaction: the
    /// inner service is called as it is, with the manager still the task's
    /// default, so a `#[transactional]` function there begins its own
    /// transaction. Added to any exclusion given before.
    ///
    /// ```
    /// # fn demo(manager: covet_txn::TxManager<sqlx::Sqlite>) {
    /// use axum::http::Method;
    ///
    /// // Reads need no transaction of the request's own.
    /// let layer = covet_txn_tower::TransactionLayer::new(manager)
    ///     .exclude(|request| request.method == Method::GET || request.method == Method::HEAD);
    /// # let _ = layer; }
    /// ```
    #[must_use]
    pub fn exclude(mut self, predicate: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        let settings = self.settings();
        settings.exclude = Some(match settings.exclude.take() {
            None => Arc::new(predicate),
            Some(before) => Arc::new(move |request: &Parts| before(request) || predicate(request)),
        });
        self
    }

    /// Runs the requests whose path is `prefix` or lies under it without a
    /// transaction: `"/health"` matches `/health` and `/health/db`, not
    /// `/healthy`. See [`exclude`](Self::exclude).
    ///
    /// ```
    /// # fn demo(manager: covet_txn::TxManager<sqlx::Sqlite>) {
    /// let layer = covet_txn_tower::TransactionLayer::new(manager)
    ///     .exclude_path_prefix("/health")
    ///     .exclude_path_prefix("/metrics");
    /// # let _ = layer; }
    /// ```
    #[must_use]
    pub fn exclude_path_prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let prefix = prefix.trim_end_matches('/').to_owned();
        self.exclude(move |request| path_is_under(request.uri.path(), &prefix))
    }

    /// The largest request body a retrying layer buffers, in bytes
    /// (default [`DEFAULT_RETRY_BODY_LIMIT`], 1 MiB). A larger body is
    /// answered `413 Payload Too Large` before any transaction begins,
    /// rather than run without retry: a route that needs large bodies is
    /// then found in testing, not when it first meets contention in
    /// production. Exclude such a route, or raise the limit. Without retry
    /// nothing is buffered and this limit does not apply.
    ///
    /// ```
    /// # fn demo(manager: covet_txn::TxManager<sqlx::Sqlite>) {
    /// use covet_txn::TxOptions;
    ///
    /// let layer = covet_txn_tower::TransactionLayer::new(manager)
    ///     .options(TxOptions::new().retries(3))
    ///     .retry_body_limit(64 * 1024);
    /// # let _ = layer; }
    /// ```
    #[must_use]
    pub fn retry_body_limit(mut self, bytes: usize) -> Self {
        self.settings().retry_body_limit = bytes;
        self
    }

    /// The manager the layer's transactions run on.
    pub fn manager(&self) -> &TxManager<DB> {
        &self.manager
    }

    /// The options of the layer's transactions.
    pub fn tx_options(&self) -> &TxOptions {
        &self.settings.options
    }
}

impl<DB: Backend> Clone for TransactionLayer<DB> {
    fn clone(&self) -> Self {
        TransactionLayer {
            manager: self.manager.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<DB: Backend> fmt::Debug for TransactionLayer<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionLayer")
            .field("manager", &self.manager)
            .field("options", &self.settings.options)
            .field("excludes", &self.settings.exclude.is_some())
            .field("retry_body_limit", &self.settings.retry_body_limit)
            .finish()
    }
}

impl<S, DB: Backend> Layer<S> for TransactionLayer<DB> {
    type Service = TransactionService<S, DB>;

    fn layer(&self, inner: S) -> Self::Service {
        TransactionService::new(inner, self.manager.clone(), Arc::clone(&self.settings))
    }
}
