//! The responses the layer gives by itself, and the log lines that go with
//! them (target `covet_txn_tower`): a runtime failure (500, or 503 when no
//! pooled connection came in time), a panic (500), a body too large to
//! retry (413), a body that could not be read (400).
//!
//! A leaf above `body`. Bodies are short fixed texts: what went wrong goes
//! to the log, never to the client, which could learn table names, SQL or
//! server addresses from an error message.

use std::any::Any;
use std::error::Error as StdError;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode, Uri};

use crate::body::ResponseBody;

pub(crate) const TARGET: &str = "covet_txn_tower";

/// What the log says about the request a line is about: its method and
/// path, never its query string, which may carry a token.
#[derive(Debug, Clone)]
pub(crate) struct RequestLine {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
}

/// A response of the layer's own, with a short plain-text body.
pub(crate) fn plain<B>(status: StatusCode) -> Response<ResponseBody<B>> {
    let text = match status {
        StatusCode::SERVICE_UNAVAILABLE => "service unavailable\n",
        StatusCode::PAYLOAD_TOO_LARGE => "payload too large\n",
        StatusCode::BAD_REQUEST => "bad request\n",
        _ => "internal server error\n",
    };
    let mut response = Response::new(ResponseBody::message(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The status for a runtime failure: 503 when the pool gave no connection in
/// time (the database is saturated; the client may try again later), 500
/// for anything else.
pub(crate) fn runtime_status(error: &covet_txn::Error) -> StatusCode {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(error) = source {
        if matches!(
            error.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::PoolTimedOut)
        ) {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        source = error.source();
    }
    StatusCode::INTERNAL_SERVER_ERROR
}

/// The runtime failed where the handler had not answered with a failure
/// (BEGIN, COMMIT, a deadline, retries run out): logged, answered 500/503.
pub(crate) fn runtime_failure<B>(
    request: &RequestLine,
    error: &covet_txn::Error,
) -> Response<ResponseBody<B>> {
    let status = runtime_status(error);
    tracing::error!(
        target: TARGET,
        method = %request.method,
        path = request.uri.path(),
        status = status.as_u16(),
        error = %error,
        "the request's transaction failed; answered without the handler's response"
    );
    plain(status)
}

/// The handler panicked; the runtime rolled the transaction back.
pub(crate) fn panicked<B>(
    request: &RequestLine,
    payload: &(dyn Any + Send),
) -> Response<ResponseBody<B>> {
    let message = payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    tracing::error!(
        target: TARGET,
        method = %request.method,
        path = request.uri.path(),
        panic = message,
        "the handler panicked; the transaction was rolled back and 500 answered"
    );
    plain(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The body is longer than a retrying layer buffers.
pub(crate) fn too_large<B>(request: &RequestLine, limit: usize) -> Response<ResponseBody<B>> {
    tracing::warn!(
        target: TARGET,
        method = %request.method,
        path = request.uri.path(),
        limit,
        "request body over the retry buffer limit; answered 413 without running the handler \
         (raise `retry_body_limit` or exclude the route)"
    );
    plain(StatusCode::PAYLOAD_TOO_LARGE)
}

/// The client's body could not be read whole.
pub(crate) fn unreadable<B>(
    request: &RequestLine,
    error: &dyn std::fmt::Display,
) -> Response<ResponseBody<B>> {
    tracing::debug!(
        target: TARGET,
        method = %request.method,
        path = request.uri.path(),
        error = %error,
        "the request body could not be read; answered 400 without running the handler"
    );
    plain(StatusCode::BAD_REQUEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_time_out_is_503_and_other_failures_500() {
        let timed_out = covet_txn::Error::Database {
            operation: covet_txn::Operation::Acquire,
            source: sqlx::Error::PoolTimedOut,
        };
        assert_eq!(runtime_status(&timed_out), StatusCode::SERVICE_UNAVAILABLE);
        let closed = covet_txn::Error::Database {
            operation: covet_txn::Operation::Acquire,
            source: sqlx::Error::PoolClosed,
        };
        assert_eq!(runtime_status(&closed), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            runtime_status(&covet_txn::Error::NoTransaction),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
