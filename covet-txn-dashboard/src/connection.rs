//! One client connection of a dashboard that serves itself: HTTP/1 through
//! hyper with a timer, so that a client that sends its request head too
//! slowly (or nothing, on an idle keep-alive connection) is cut off; an idle
//! timeout on the socket itself, so that a client that stopped reading is
//! dropped; and the handle the server uses to evict the connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower_service::Service;

use crate::flag::raised;
use crate::settings::Settings;

/// The most a connection buffers, reading a request head or writing a
/// response: a longer head is refused with 431, and a client that does not
/// read stops the response from being produced once this much waits.
const MAX_BUFFER: usize = 64 * 1024;

/// A connection as the server and the request handlers see it; handlers
/// find it among a request's extensions.
#[derive(Clone)]
pub(crate) struct Client(Arc<Slot>);

struct Slot {
    id: u64,
    peer: SocketAddr,
    /// Set once a request on it showed the token (or needed none): such a
    /// connection is never evicted to make room for another.
    trusted: AtomicBool,
    evict: Notify,
}

impl Client {
    pub(crate) fn new(id: u64, peer: SocketAddr) -> Self {
        Client(Arc::new(Slot {
            id,
            peer,
            trusted: AtomicBool::new(false),
            evict: Notify::new(),
        }))
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    pub(crate) fn trust(&self) {
        self.0.trusted.store(true, Ordering::Release);
    }

    pub(crate) fn is_trusted(&self) -> bool {
        self.0.trusted.load(Ordering::Acquire)
    }

    /// Closes the connection at once, whatever it is doing.
    pub(crate) fn evict(&self) {
        self.0.evict.notify_one();
    }
}

/// Serves `stream` until the client leaves, a timeout fires, the server
/// evicts it, or (after `shutdown` turns true) its requests in progress
/// end.
pub(crate) async fn serve(
    stream: TcpStream,
    client: Client,
    router: Router,
    settings: Arc<Settings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = hyper::service::service_fn({
        let client = client.clone();
        move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(client.clone());
            let mut router = router.clone();
            async move { router.call(request).await }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(MAX_BUFFER)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        let deadline = activity.last() + settings.idle_timeout;
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    // Timeouts and clients that hang up: routine, not errors.
                    tracing::debug!(target: "covet_txn_dashboard", %error, peer = %client.peer(), "connection ended");
                }
                return;
            }
            () = client.0.evict.notified() => {
                tracing::debug!(target: "covet_txn_dashboard", peer = %client.peer(), "connection evicted");
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.last() + settings.idle_timeout <= Instant::now() {
                    tracing::debug!(target: "covet_txn_dashboard", peer = %client.peer(), "idle connection closed");
                    return;
                }
            }
            () = raised(&mut shutdown), if !stopping => {
                // Closes it now if idle, or after the response in progress.
                connection.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// When a byte last moved on a connection, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A socket that notes when bytes move through it.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
