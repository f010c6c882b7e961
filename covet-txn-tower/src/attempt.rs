//! One attempt of a request inside its transaction: call the inner service,
//! keep its response, and tell the runtime whether to commit; then, once
//! the runtime is done, the response the client gets.
//!
//! The runtime's closure API decides commit or rollback from `Ok` or `Err`
//! and drops an `Ok` value whose COMMIT fails; the handler's response must
//! outlive both, so the attempt keeps it in a [`Slot`] beside the call and
//! returns only the decision.

use std::error::Error as StdError;
use std::fmt;
use std::future::poll_fn;
use std::sync::Mutex;

use http::{Request, Response};
use tower_service::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::handler_failure::HandlerFailure;
use crate::reply::{self, RequestLine, TARGET};
use crate::settings::Settings;

/// Why an attempt did not commit, as the runtime's closure API sees it.
pub(crate) enum Abort<E> {
    /// The runtime failed (BEGIN, COMMIT, a deadline, a refused commit).
    Runtime(covet_txn::Error),
    /// The handler answered with a rollback status; the error it attached,
    /// if any, is the `source()` the runtime classifies for a retry.
    Rejected(Option<HandlerFailure>),
    /// The inner service itself failed (not a response: tower's error).
    Service(E),
}

impl<E> From<covet_txn::Error> for Abort<E> {
    fn from(error: covet_txn::Error) -> Self {
        Abort::Runtime(error)
    }
}

impl<E> fmt::Debug for Abort<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abort::Runtime(error) => f.debug_tuple("Runtime").field(error).finish(),
            Abort::Rejected(cause) => f.debug_tuple("Rejected").field(cause).finish(),
            Abort::Service(_) => f.write_str("Service(..)"),
        }
    }
}

impl<E> fmt::Display for Abort<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abort::Runtime(error) => write!(f, "{error}"),
            Abort::Rejected(_) => f.write_str("the handler answered with a rollback status"),
            Abort::Service(_) => f.write_str("the inner service failed"),
        }
    }
}

impl<E> StdError for Abort<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Abort::Runtime(error) => Some(error),
            Abort::Rejected(cause) => cause
                .as_ref()
                .map(|cause| cause.error() as &(dyn StdError + 'static)),
            // Tower's error type need not be a `std::error::Error`.
            Abort::Service(_) => None,
        }
    }
}

/// The latest attempt's response, kept outside the runtime's call.
pub(crate) struct Slot<R>(Mutex<Option<R>>);

impl<R> Slot<R> {
    pub(crate) fn new() -> Self {
        Slot(Mutex::new(None))
    }

    fn replace(&self, value: Option<R>) {
        // Never held across an await, so uncontended; a panic while it was
        // held cannot leave a half-written `Option`.
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = value;
    }

    fn into_inner(self) -> Option<R> {
        self.0
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One attempt: calls `inner` with `request` in the transaction's scope,
/// keeps the response in `slot`, and decides.
pub(crate) async fn run<S, B, R>(
    slot: &Slot<Response<R>>,
    settings: &Settings,
    mut inner: S,
    request: Request<RequestBody<B>>,
) -> Result<(), Abort<S::Error>>
where
    S: Service<Request<RequestBody<B>>, Response = Response<R>>,
{
    // A retry must not return an earlier attempt's response if this one
    // never produces its own (a deadline, a panic).
    slot.replace(None);
    poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Abort::Service)?;
    let response = inner.call(request).await.map_err(Abort::Service)?;
    let rolls_back = settings.rolls_back(response.status());
    let cause = rolls_back
        .then(|| response.extensions().get::<HandlerFailure>().cloned())
        .flatten();
    slot.replace(Some(response));
    if !rolls_back {
        return Ok(());
    }
    if covet_txn::is_rollback_only() {
        // The transaction cannot commit whatever this returns: a nested
        // `#[transactional]` call hit a failure and doomed it, or marked it
        // rollback-only, or the handler called `set_rollback_only()`. `Ok`
        // lets the runtime refuse the COMMIT with its own reason, and a
        // doomed transaction's reason (`Error::Doomed`) is one it retries.
        return Ok(());
    }
    Err(Abort::Rejected(cause))
}

/// The response the client gets once the runtime's call is over.
pub(crate) fn finish<R, E>(
    result: Result<(), Abort<E>>,
    slot: Slot<Response<R>>,
    settings: &Settings,
    request: &RequestLine,
) -> Result<Response<ResponseBody<R>>, E> {
    let kept = slot.into_inner();
    match (result, kept) {
        (Err(Abort::Service(error)), _) => Err(error),
        // Committed, or rolled back as the status (or the handler) asked.
        (Ok(()) | Err(Abort::Rejected(_)), Some(response)) => Ok(response.map(ResponseBody::inner)),
        // The handler answered with a failure and the transaction rolled
        // back: the runtime's error (a refused commit, retries run out) only
        // says why, and the handler's answer is the better one to give.
        (Err(Abort::Runtime(error)), Some(response)) if settings.rolls_back(response.status()) => {
            tracing::debug!(
                target: TARGET,
                method = %request.method,
                path = request.uri.path(),
                status = response.status().as_u16(),
                error = %error,
                "the request's transaction rolled back"
            );
            Ok(response.map(ResponseBody::inner))
        }
        // A success the database did not confirm must never reach the
        // client as one.
        (Err(Abort::Runtime(error)), _) => Ok(reply::runtime_failure(request, &error)),
        // `Ok` and `Rejected` are only returned after the slot is filled.
        (Ok(()) | Err(Abort::Rejected(_)), None) => {
            Ok(reply::plain(http::StatusCode::INTERNAL_SERVER_ERROR))
        }
    }
}
