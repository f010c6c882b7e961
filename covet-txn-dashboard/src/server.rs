//! A dashboard serving itself: the listener, the cap on connections (and
//! which connection gives way when it is reached), and a shutdown that ends
//! within its bound even with pages open or clients that stopped reading.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::connection::{self, Client};
use crate::error::Error;
use crate::events::Hub;
use crate::flag::raised;
use crate::settings::Settings;

/// The kernel's send buffer for each connection, set on the listener and
/// inherited by every accepted socket: what a client that stopped reading
/// can hold in the kernel (Linux doubles it), instead of megabytes once the
/// buffer has grown itself.
const SEND_BUFFER: u32 = 64 * 1024;
/// Connections waiting to be accepted.
const BACKLOG: u32 = 1024;
/// The answer to a connection over the cap, written without waiting.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 5\r\ncontent-length: 0\r\n\r\n";

/// A dashboard being served, from [`Dashboard::start`](crate::Dashboard::start).
///
/// Dropping it stops the dashboard, as [`shutdown`](Self::shutdown) does,
/// in the background; keep it for as long as the dashboard should run.
#[must_use = "dropping a RunningDashboard stops the dashboard: keep it, or call shutdown()"]
#[derive(Debug)]
pub struct RunningDashboard {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

impl RunningDashboard {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL (without the token).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops accepting connections, ends every event stream, lets other
    /// requests in progress finish for up to the shutdown timeout, then
    /// closes whatever connection is left. Returns once all are closed.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            // The server task bounds itself; this bound only guards against
            // a task that cannot be polled (a blocked runtime thread).
            let bound = self.shutdown_timeout + Duration::from_secs(1);
            let abort = task.abort_handle();
            if tokio::time::timeout(bound, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for RunningDashboard {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Serves `router` as `settings` say, in the background. `protected`: a
/// token is required, so an address off loopback is acceptable.
pub(crate) async fn start(
    router: Router,
    settings: Settings,
    events: Arc<Hub>,
    protected: bool,
) -> Result<RunningDashboard, Error> {
    let listener = listen(&settings, protected).await?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: settings.addr.clone(),
        source,
    })?;
    let settings = Arc::new(settings);
    let (stop, stopped) = watch::channel(false);
    let shutdown_timeout = settings.shutdown_timeout;
    let task = tokio::spawn(serve(listener, router, settings, events, stopped));
    tracing::info!(target: "covet_txn_dashboard", %addr, protected, "dashboard listening");
    Ok(RunningDashboard {
        addr,
        stop,
        task: Some(task),
        shutdown_timeout,
    })
}

/// Resolves and binds the address, refusing one off loopback without a
/// token unless that was allowed.
async fn listen(settings: &Settings, protected: bool) -> Result<TcpListener, Error> {
    let bind_error = |source| Error::Bind {
        addr: settings.addr.clone(),
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&settings.addr)
        .await
        .map_err(bind_error)?
        .collect();
    if !protected
        && !settings.remote_without_token
        && let Some(remote) = addrs.iter().find(|addr| !addr.ip().is_loopback())
    {
        return Err(Error::Refused(format!(
            "the dashboard would listen on {remote}, off loopback, without a bearer token: \
             set Dashboard::bearer_token, or call Dashboard::allow_remote_without_token if \
             something else guards the network"
        )));
    }
    let mut last_error = std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "the address resolved to nothing",
    );
    for addr in addrs {
        match bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = error,
        }
    }
    Err(bind_error(last_error))
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(SEND_BUFFER)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The open connections, oldest first.
#[derive(Default)]
struct Registry {
    open: Mutex<BTreeMap<u64, Client>>,
}

impl Registry {
    /// Makes room for one more connection: `false` if every open one is
    /// trusted. The one evicted is the oldest that never showed the token:
    /// a slow or idle client that holds a place, not a page in use.
    fn admit(&self, client: &Client, max: usize) -> bool {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.len() >= max {
            let oldest = open
                .iter()
                .find(|(_, open)| !open.is_trusted())
                .map(|(id, _)| *id);
            match oldest.and_then(|id| open.remove(&id)) {
                Some(evicted) => evicted.evict(),
                None => return false,
            }
        }
        open.insert(client.id(), client.clone());
        true
    }

    fn leave(&self, client: &Client) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.remove(&client.id());
    }
}

async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Arc<Settings>,
    events: Arc<Hub>,
    mut stop: watch::Receiver<bool>,
) {
    let registry = Arc::new(Registry::default());
    let (shutdown, shutting_down) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut next_id = 0_u64;
    loop {
        tokio::select! {
            () = raised(&mut stop) => break,
            // Reap finished connections as they end, so the set stays as
            // small as the number open.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    next_id += 1;
                    let client = Client::new(next_id, peer);
                    if !registry.admit(&client, settings.max_connections) {
                        refuse_full(stream);
                        continue;
                    }
                    let registry = Arc::clone(&registry);
                    let serving = connection::serve(
                        stream,
                        client.clone(),
                        router.clone(),
                        Arc::clone(&settings),
                        shutting_down.clone(),
                    );
                    connections.spawn(async move {
                        serving.await;
                        registry.leave(&client);
                    });
                }
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to
                    // free up rather than spin.
                    tracing::warn!(target: "covet_txn_dashboard", %error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    events.close();
    shutdown.send_replace(true);
    let drained = tokio::time::timeout(settings.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            target: "covet_txn_dashboard",
            left = connections.len(),
            "closing the connections still busy at the shutdown timeout"
        );
        connections.shutdown().await;
    }
    tracing::info!(target: "covet_txn_dashboard", "dashboard stopped");
}

/// Tells a connection over the cap so, if its socket takes the few bytes at
/// once, and closes it either way: nothing waits on a client here.
fn refuse_full(stream: TcpStream) {
    let _ = stream.try_write(FULL);
    tracing::debug!(target: "covet_txn_dashboard", "connection refused: the dashboard is at its connection cap");
}
