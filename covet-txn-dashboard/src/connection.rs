//! One client connection of a dashboard that serves itself: HTTP/1 through
//! hyper with a timer, so that a client that sends its request head too
//! slowly (or nothing, on an idle keep-alive connection) is cut off; an idle
//! timeout on the socket itself, so that a client that stopped reading is
//! dropped; and the handle the server uses to evict the connection. A
//! connection upgraded to a WebSocket keeps its place under the cap, its
//! idle timeout and its eviction until the WebSocket session ends.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// Upgraded protocols (a WebSocket session) still using the socket.
    upgrades: AtomicUsize,
    released: Notify,
    /// Raised when the server closes the connection: an upgraded session
    /// ends then.
    close: watch::Sender<bool>,
}

impl Client {
    pub(crate) fn new(id: u64, peer: SocketAddr) -> Self {
        Client(Arc::new(Slot {
            id,
            peer,
            trusted: AtomicBool::new(false),
            evict: Notify::new(),
            upgrades: AtomicUsize::new(0),
            released: Notify::new(),
            close: watch::Sender::new(false),
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

    /// Keeps the connection open, counted and watched after hyper hands its
    /// socket to an upgraded protocol, until the guard is dropped. Taken
    /// before the upgrade's response is sent.
    pub(crate) fn hold_upgrade(&self) -> UpgradeHold {
        self.0.upgrades.fetch_add(1, Ordering::AcqRel);
        UpgradeHold(self.clone())
    }

    /// Resolves when the server closes the connection (idle, evicted, shut
    /// down): what an upgraded session must end on.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut close = self.0.close.subscribe();
        async move { raised(&mut close).await }
    }
}

/// An upgraded protocol's claim on its connection.
pub(crate) struct UpgradeHold(Client);

impl Drop for UpgradeHold {
    fn drop(&mut self) {
        let slot = &(self.0).0;
        if slot.upgrades.fetch_sub(1, Ordering::AcqRel) == 1 {
            slot.released.notify_one();
        }
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
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let mut stopping = false;
    // Once hyper has handed the socket to a WebSocket session, the session
    // owns it; this loop keeps its timeouts and its place until it ends.
    let mut upgraded = false;
    loop {
        let deadline = activity.last() + settings.idle_timeout;
        tokio::select! {
            result = connection.as_mut(), if !upgraded => {
                if let Err(error) = result {
                    // Timeouts and clients that hang up: routine, not errors.
                    tracing::debug!(target: "covet_txn_dashboard", %error, peer = %client.peer(), "connection ended");
                }
                if client.0.upgrades.load(Ordering::Acquire) == 0 {
                    return;
                }
                upgraded = true;
            }
            () = client.0.released.notified(), if upgraded => {
                if client.0.upgrades.load(Ordering::Acquire) == 0 {
                    return;
                }
            }
            () = client.0.evict.notified() => {
                tracing::debug!(target: "covet_txn_dashboard", peer = %client.peer(), "connection evicted");
                break;
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.last() + settings.idle_timeout <= Instant::now() {
                    tracing::debug!(target: "covet_txn_dashboard", peer = %client.peer(), "idle connection closed");
                    break;
                }
            }
            () = raised(&mut shutdown), if !stopping => {
                if upgraded {
                    break;
                }
                // Closes it now if idle, or after the response in progress.
                connection.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
    // Closed by the server: an upgraded session lets go of the socket.
    client.0.close.send_replace(true);
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
