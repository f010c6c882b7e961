//! The [`Dashboard`] builder, the crate's front door: what to serve, who may
//! see it, the limits, and the two ways to serve it, on its own address
//! ([`Dashboard::start`]) or mounted in an application
//! ([`Dashboard::router`]). It checks the settings and hands them down; it
//! serves nothing itself.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use covet_txn::monitor::Monitor;

use crate::error::Error;
use crate::events::Hub;
use crate::failures::Failures;
use crate::routes;
use crate::server::{self, RunningDashboard};
use crate::settings::{MINIMUM_TIMEOUT, Settings};
use crate::state::{Shared, Token};

/// A dashboard over a [`Monitor`]: configure it, then [`start`](Self::start)
/// it on its own address or mount its [`router`](Self::router) in an axum
/// application.
///
/// Clones share their event streams and their count of failed
/// authentications: [`close_event_streams`](Self::close_event_streams) on one
/// ends the streams of routers made from any of them.
///
/// ```no_run
/// # async fn demo(manager: covet_txn::TxManager<sqlx::Sqlite>) -> Result<(), covet_txn_dashboard::Error> {
/// use std::time::Duration;
/// use covet_txn_dashboard::Dashboard;
///
/// let running = Dashboard::new(manager.monitor())
///     .bind("0.0.0.0:7777")
///     .bearer_token("a long random secret")
///     .allow_host("dashboard.example.com")
///     .max_connections(64)
///     .header_read_timeout(Duration::from_secs(5))
///     .start()
///     .await?;
/// # let _ = running; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dashboard {
    monitor: Monitor,
    settings: Settings,
    events: Arc<Hub>,
    failures: Arc<Failures>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.settings;
        // Never the token itself: Debug output ends up in logs.
        f.debug_struct("Dashboard")
            .field("addr", &s.addr)
            .field("protected", &s.token.is_some())
            .field("refresh", &s.refresh)
            .field("allowed_hosts", &s.allowed_hosts)
            .field("header_read_timeout", &s.header_read_timeout)
            .field("idle_timeout", &s.idle_timeout)
            .field("max_connections", &s.max_connections)
            .field("max_event_streams", &s.max_event_streams)
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard over `monitor` with every default: [`DEFAULT_ADDR`](crate::DEFAULT_ADDR), no
    /// token, and the `DEFAULT_*` limits.
    ///
    /// Without a token, anyone who can reach the address sees the figures
    /// (names of functions, alert texts, the pool). Loopback is not a
    /// boundary against web pages: the Host and Origin checks stop DNS
    /// rebinding, but any local process or user can read it. Set a token
    /// unless the machine is yours alone.
    pub fn new(monitor: Monitor) -> Self {
        Dashboard {
            monitor,
            settings: Settings::new(),
            events: Arc::new(Hub::new()),
            failures: Arc::new(Failures::new()),
        }
    }

    /// Requires the token on every request but the page's script and style:
    /// `Authorization: Bearer <token>` (scheme in any case), or the cookie
    /// the page sets after it was opened once with `?token=<token>`.
    ///
    /// An empty or blank token is refused by [`start`](Self::start), and a
    /// [`router`](Self::router) made with one refuses every request: an
    /// unset environment variable must not open the dashboard.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.settings.token = Some(Arc::from(token.into()));
        self
    }

    /// Where [`start`](Self::start) listens, for example `"127.0.0.1:8080"`,
    /// or `"127.0.0.1:0"` for any free port. An address off loopback is
    /// refused without a [`bearer_token`](Self::bearer_token), unless
    /// [`allow_remote_without_token`](Self::allow_remote_without_token).
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.settings.addr = addr.into();
        self
    }

    /// Serves an address off loopback without a token: for a network where
    /// something else (a VPN, an authenticating proxy) decides who gets in.
    pub fn allow_remote_without_token(mut self) -> Self {
        self.settings.remote_without_token = true;
        self
    }

    /// Accepts requests whose `Host` is this name (any port), besides IP
    /// addresses and `localhost`, which are always accepted. Needed when
    /// the dashboard is reached by a name, for example behind a reverse
    /// proxy that passes the client's `Host` on. Any other name is refused,
    /// which is what stops DNS rebinding.
    pub fn allow_host(mut self, name: impl Into<String>) -> Self {
        let name = name.into().trim_end_matches('.').to_ascii_lowercase();
        if !self.settings.allowed_hosts.contains(&name) {
            self.settings.allowed_hosts.push(name);
        }
        self
    }

    /// Marks the token cookie `Secure` on every answer, not only on those to
    /// requests a proxy marked as HTTPS (`X-Forwarded-Proto: https` or
    /// `Forwarded: proto=https`).
    pub fn secure_cookie(mut self) -> Self {
        self.settings.secure_cookie = true;
        self
    }

    /// How often the page is sent new figures (at least 100 ms; default
    /// [`DEFAULT_REFRESH`](crate::DEFAULT_REFRESH)).
    pub fn refresh(mut self, every: Duration) -> Self {
        self.settings.refresh = every.max(MINIMUM_TIMEOUT);
        self
    }

    /// How long a client has to send a complete request head, from the
    /// moment it connects or its previous response ends (at least 100 ms;
    /// default [`DEFAULT_HEADER_READ_TIMEOUT`](crate::DEFAULT_HEADER_READ_TIMEOUT)). It closes slow-header
    /// ("slowloris") and idle keep-alive connections.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.settings.header_read_timeout = timeout.max(MINIMUM_TIMEOUT);
        self
    }

    /// How long a connection may go without a byte read or written while a
    /// response is on its way (at least 100 ms; default
    /// [`DEFAULT_IDLE_TIMEOUT`](crate::DEFAULT_IDLE_TIMEOUT)): it drops clients that stopped reading.
    /// Event streams send a comment when no update came for half of it.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.settings.idle_timeout = timeout.max(MINIMUM_TIMEOUT);
        self
    }

    /// How many connections [`start`](Self::start) serves at once (at least
    /// 1; default [`DEFAULT_MAX_CONNECTIONS`](crate::DEFAULT_MAX_CONNECTIONS)). When all are taken, a new
    /// connection closes the oldest one that has not yet shown the token,
    /// or is answered 503 if every one has.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.settings.max_connections = max.max(1);
        self
    }

    /// How many event streams are served at once (default
    /// [`DEFAULT_MAX_EVENT_STREAMS`](crate::DEFAULT_MAX_EVENT_STREAMS)); one more is answered 503.
    pub fn max_event_streams(mut self, max: usize) -> Self {
        self.settings.max_event_streams = max;
        self
    }

    /// How long [`RunningDashboard::shutdown`](crate::RunningDashboard::shutdown)
    /// lets requests in progress finish before it closes their connections
    /// (default [`DEFAULT_SHUTDOWN_TIMEOUT`](crate::DEFAULT_SHUTDOWN_TIMEOUT)). Event streams end at once.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// Ends every open event stream, and refuses new ones with 503, so that
    /// a server the dashboard is mounted in can shut down gracefully: call
    /// it when that server's shutdown signal fires. [`start`](Self::start)ed
    /// dashboards do this themselves.
    pub fn close_event_streams(&self) {
        self.events.close();
    }

    /// The dashboard as a router, to mount in an axum application with
    /// state of any type:
    /// `Router::new().nest_service("/covet", dashboard.router())` serves the
    /// page at `/covet/` and redirects `/covet` there (the page uses
    /// relative links). `merge(dashboard.router())` serves it at the root.
    ///
    /// Prefer `nest_service` to `nest`: axum 0.8's `nest("/covet", ..)`
    /// routes `/covet` to a nested router but never `/covet/`, where the
    /// page must be.
    ///
    /// The router checks `Host`, `Origin` and the token, caps event
    /// streams, and ends them on
    /// [`close_event_streams`](Self::close_event_streams). The connection
    /// limits (header and idle timeouts, the connection cap, closing a
    /// connection after a refusal) belong to the server: [`start`](Self::start)
    /// applies them; inside your application, your server's settings do.
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let token = match self.settings.checked_token() {
            Ok(Some(token)) => Token::Required(Arc::clone(token)),
            Ok(None) => Token::Open,
            Err(error) => {
                tracing::error!(target: "covet_txn_dashboard", %error, "the dashboard refuses every request");
                Token::Locked
            }
        };
        routes::router(Arc::new(Shared {
            monitor: self.monitor.clone(),
            settings: self.settings.clone(),
            events: Arc::clone(&self.events),
            failures: Arc::clone(&self.failures),
            token,
        }))
    }

    /// Binds and serves the dashboard in the background, with every limit
    /// above. Refuses an empty token, and an address off loopback without
    /// a token unless [`allow_remote_without_token`](Self::allow_remote_without_token).
    pub async fn start(self) -> Result<RunningDashboard, Error> {
        let protected = self.settings.checked_token()?.is_some();
        server::start(self.router(), self.settings, self.events, protected).await
    }
}
