//! [`TransactionService`]: what the layer wraps around the inner service.
//! For each request: leave it out, or run it once in a transaction (the
//! body streams through), or buffer its body and run it with retry; and
//! catch a panic from any of it.
//!
//! The transaction itself is the runtime's closure API
//! ([`TxManager::transaction`], [`TxManager::transaction_with_retry`]);
//! what one attempt does is `attempt`'s business.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use covet_txn::{Backend, TxManager};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::attempt::{self, Slot};
use crate::body::{RequestBody, ResponseBody};
use crate::buffer::{self, BufferError};
use crate::reply::{self, RequestLine};
use crate::settings::Settings;

/// The service a [`TransactionLayer`](crate::TransactionLayer) makes: runs
/// each request to `S` in a transaction of the layer's manager.
///
/// Its future is boxed: the runtime's closure API is an `async fn`, whose
/// future has no name to put in an associated type. axum boxes every
/// route's future as well.
pub struct TransactionService<S, DB: Backend> {
    inner: S,
    manager: TxManager<DB>,
    settings: Arc<Settings>,
}

/// The future of a [`TransactionService`].
pub type ResponseFuture<R, E> = BoxFuture<'static, Result<R, E>>;

impl<S, DB: Backend> TransactionService<S, DB> {
    pub(crate) fn new(inner: S, manager: TxManager<DB>, settings: Arc<Settings>) -> Self {
        TransactionService {
            inner,
            manager,
            settings,
        }
    }
}

impl<S: Clone, DB: Backend> Clone for TransactionService<S, DB> {
    fn clone(&self) -> Self {
        TransactionService {
            inner: self.inner.clone(),
            manager: self.manager.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<S: fmt::Debug, DB: Backend> fmt::Debug for TransactionService<S, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionService")
            .field("inner", &self.inner)
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

impl<S, DB, ReqBody, ResBody> Service<Request<ReqBody>> for TransactionService<S, DB>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    DB: Backend,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: fmt::Display + Send,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready serves this request; the clone
        // left behind waits for the next `poll_ready` (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let manager = self.manager.clone();
        let settings = Arc::clone(&self.settings);
        let (parts, body) = request.into_parts();

        if settings.excludes(&parts) {
            let request = Request::from_parts(parts, RequestBody::streaming(body));
            return Box::pin(manager.scope(async move {
                let mut inner = inner;
                let response = inner.call(request).await?;
                Ok(response.map(ResponseBody::inner))
            }));
        }

        let line = RequestLine {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
        };
        let run = handle(inner, manager.clone(), settings, line.clone(), parts, body);
        Box::pin(async move {
            // The runtime rolls back before the panic reaches here; what is
            // left is to answer instead of tearing down the connection.
            match AssertUnwindSafe(manager.scope(run)).catch_unwind().await {
                Ok(result) => result,
                Err(payload) => Ok(reply::panicked(&line, &*payload)),
            }
        })
    }
}

/// Runs one request in a transaction: once, or with retry on a buffered
/// body.
async fn handle<S, DB, ReqBody, ResBody>(
    inner: S,
    manager: TxManager<DB>,
    settings: Arc<Settings>,
    line: RequestLine,
    parts: http::request::Parts,
    body: ReqBody,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    S::Error: 'static,
    DB: Backend,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: fmt::Display,
{
    let options = settings.options;
    let slot = Slot::new();
    // The closures below take these by reference and the service by value,
    // so that the service need not be `Sync` for the future to be `Send`.
    let (slot_ref, settings_ref): (&Slot<_>, &Settings) = (&slot, &settings);
    let result = if settings.retries() {
        let buffered = match buffer::read_to_limit(body, settings.retry_body_limit).await {
            Ok(buffered) => buffered,
            Err(BufferError::TooLarge) => {
                return Ok(reply::too_large(&line, settings.retry_body_limit));
            }
            Err(BufferError::Read(error)) => return Ok(reply::unreadable(&line, &error)),
        };
        manager
            .transaction_with_retry(options, move || {
                // Each attempt gets a request rebuilt from the same parts
                // and bytes, and a clone of the service, polled ready anew.
                let request = Request::from_parts(parts.clone(), buffered.body());
                attempt::run(slot_ref, settings_ref, inner.clone(), request)
            })
            .await
    } else {
        let request = Request::from_parts(parts, RequestBody::streaming(body));
        manager
            .transaction(options, move || {
                attempt::run(slot_ref, settings_ref, inner, request)
            })
            .await
    };
    attempt::finish(result, slot, &settings, &line)
}
