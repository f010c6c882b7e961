//! [`HandlerFailure`]: the error behind a handler's failed response, handed
//! to the layer in the response's extensions so that the runtime can tell a
//! failure a retry fixes (a deadlock, a serialization failure) from any
//! other.
//!
//! A leaf. Why it is needed: a handler turns its error into a response
//! before the layer sees it, so all the layer has is a status code. A
//! failure inside a `#[transactional]` function that the handler called is
//! seen by the runtime anyway (it dooms the transaction, and the layer
//! retries it); a query the handler ran itself is not, unless the handler
//! attaches its error here.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// The error behind a handler's failed response, for the retry decision.
///
/// Put it in the response's extensions, typically in the application
/// error's `IntoResponse`; the layer walks its `source()` chain as
/// `#[transactional(retry)]` walks a function's error, and runs the request
/// again if it finds a failure a new attempt can fix. Without it, a
/// response with a rollback status is rolled back and returned, not retried
/// (unless a `#[transactional]` call inside already doomed the transaction).
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::{IntoResponse, Response};
/// use covet_txn_tower::HandlerFailure;
///
/// #[derive(Debug, thiserror::Error)]
/// enum AppError {
///     #[error(transparent)]
///     Database(#[from] sqlx::Error),
///     #[error(transparent)]
///     Transaction(#[from] covet_txn::Error),
/// }
///
/// impl IntoResponse for AppError {
///     fn into_response(self) -> Response {
///         let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
///         response.extensions_mut().insert(HandlerFailure::new(self));
///         response
///     }
/// }
/// ```
#[derive(Clone)]
pub struct HandlerFailure(Arc<dyn StdError + Send + Sync + 'static>);

impl HandlerFailure {
    /// Wraps the handler's error.
    pub fn new(error: impl StdError + Send + Sync + 'static) -> Self {
        HandlerFailure(Arc::new(error))
    }

    /// The handler's error.
    pub fn error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for HandlerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HandlerFailure").field(&self.0).finish()
    }
}
