//! A live dashboard over HTTP: one page that updates itself every second
//! from a server-sent event stream, export downloads, and the Prometheus
//! exposition. Feature `dashboard`.
//!
//! Everything is read-only (GET only) and embedded in the binary: no CDN,
//! no file on disk. Values from the application (function names, alert
//! texts) are put into the page as text, never as markup, and the page's
//! content security policy forbids inline scripts besides. covet-txn never
//! records SQL text or bound values, so the dashboard cannot show them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::monitor::{
    Alert, AlertFilter, AlertLevel, Health, Monitor, OPENMETRICS_CONTENT_TYPE, Sample,
};
use crate::observe::metrics::MetricsSnapshot;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// How many samples and alerts one update carries at most.
const HISTORY_SHOWN: usize = 300;
const ALERTS_SHOWN: usize = 200;

/// The address a dashboard binds to unless told otherwise: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7777";

/// A dashboard over a [`Monitor`].
///
/// ```no_run
/// # async fn demo(manager: covet_txn::TxManager<sqlx::Postgres>) -> Result<(), covet_txn::Error> {
/// use covet_txn::dashboard::Dashboard;
/// let running = Dashboard::new(manager.monitor()).bearer_token("s3cret").start().await?;
/// println!("dashboard at {}", running.url());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dashboard {
    monitor: Monitor,
    token: Option<Arc<str>>,
    refresh: Duration,
    addr: String,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("addr", &self.addr)
            .field("refresh", &self.refresh)
            .field("protected", &self.token.is_some())
            .finish()
    }
}

impl Dashboard {
    /// A dashboard over `monitor`, on [`DEFAULT_ADDR`], refreshing every second,
    /// open to anyone who can reach the address.
    pub fn new(monitor: Monitor) -> Self {
        Dashboard {
            monitor,
            token: None,
            refresh: Duration::from_secs(1),
            addr: DEFAULT_ADDR.to_owned(),
        }
    }

    /// Requires `Authorization: Bearer <token>` on every request (or
    /// `?token=<token>`, which the page passes on to its own requests).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Arc::from(token.into()));
        self
    }

    /// Where [`start`](Self::start) binds, for example `"127.0.0.1:8080"` or
    /// `"127.0.0.1:0"` for any free port.
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// How often the page is sent new figures (at least 100 ms).
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(100));
        self
    }

    /// The dashboard as a router, to mount in your own axum app, for
    /// example with `Router::new().nest("/covet", dashboard.router())`. The
    /// page uses relative links: serve it at a path ending in `/`.
    pub fn router(&self) -> Router {
        let state = Arc::new(self.clone());
        // The page's script and style hold no data and load before the page
        // can pass its token on: they are public. Everything else is not.
        let assets = Router::new()
            .route("/assets/app.js", get(script))
            .route("/assets/app.css", get(style));
        Router::new()
            .route("/", get(page))
            .route("/api/state", get(state_json))
            .route("/api/events", get(events))
            .route("/export/report.json", get(report_json))
            .route("/export/metrics.csv", get(metrics_csv))
            .route("/export/history.csv", get(history_csv))
            .route("/export/alerts.csv", get(alerts_csv))
            .route("/metrics", get(prometheus))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(&state),
                require_token,
            ))
            .merge(assets)
            .layer(middleware::from_fn(secure_headers))
            .with_state(state)
    }

    /// Binds and serves the dashboard in the background.
    pub async fn start(self) -> Result<RunningDashboard, Error> {
        let listener = tokio::net::TcpListener::bind(&self.addr)
            .await
            .map_err(|error| {
                Error::InvalidOption(format!(
                    "cannot bind the dashboard to {}: {error}",
                    self.addr
                ))
            })?;
        let addr = listener.local_addr().map_err(|error| {
            Error::InvalidOption(format!("the dashboard's address is unknown: {error}"))
        })?;
        let router = self.router();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(target: "covet_txn::dashboard", %error, "the dashboard stopped");
            }
        });
        tracing::info!(target: "covet_txn::dashboard", %addr, "dashboard listening");
        Ok(RunningDashboard {
            addr,
            stop: Some(stop),
            task,
        })
    }
}

/// A dashboard being served. Dropping it leaves it running; call
/// [`shutdown`](Self::shutdown) to stop it.
#[derive(Debug)]
pub struct RunningDashboard {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningDashboard {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops serving, letting requests in progress finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

type Shared = Arc<Dashboard>;

/// Rejects requests without the token, when one is required.
async fn require_token(State(dashboard): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(token) = &dashboard.token {
        let presented = bearer(request.headers()).or_else(|| query_token(request.uri().query()));
        if !presented.is_some_and(|presented| same(presented.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required: add `Authorization: Bearer <token>` or `?token=<token>`",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Sets the security headers on every answer: no script or style but the
/// dashboard's own, no framing, no caching of figures.
async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "token").then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match (bytes[index], bytes.get(index + 1..index + 3)) {
            (b'%', Some(hex)) => match std::str::from_utf8(hex)
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    index += 3;
                }
                None => {
                    out.push(b'%');
                    index += 1;
                }
            },
            (b'+', _) => {
                out.push(b' ');
                index += 1;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares without stopping at the first difference, so that the time
/// taken does not tell how much of a guess was right.
fn same(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0_u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// One point of the charts.
#[derive(Serialize)]
struct Point {
    at_ms: u64,
    seconds: f64,
    committed: u64,
    rolled_back: u64,
    failed: u64,
    retries: u64,
    deadlocks: u64,
    serialization_failures: u64,
    /// Busy databases, lock wait timeouts and snapshot conflicts: how
    /// SQLite and MySQL report most collisions.
    lock_conflicts: u64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    active: usize,
    health: u8,
}

/// Everything the page shows, in one update.
#[derive(Serialize)]
struct Update {
    metrics: MetricsSnapshot,
    health: Health,
    history: Vec<Point>,
    alerts: Vec<Alert>,
    /// Active transactions older than this are shown as long.
    long_transaction_ms: u128,
    refresh_ms: u128,
}

#[derive(Deserialize, Default)]
struct AlertQuery {
    level: Option<String>,
}

impl AlertQuery {
    fn filter(&self) -> AlertFilter {
        let level = match self
            .level
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("INFO") => Some(AlertLevel::Info),
            Some("WARNING") => Some(AlertLevel::Warning),
            Some("ERROR") => Some(AlertLevel::Error),
            Some("CRITICAL") => Some(AlertLevel::Critical),
            _ => None,
        };
        level.map_or_else(AlertFilter::new, |level| AlertFilter::new().at_least(level))
    }
}

fn update(dashboard: &Dashboard, filter: &AlertFilter) -> Result<Update, Error> {
    let monitor = &dashboard.monitor;
    let metrics = monitor.metrics()?;
    let health = monitor.health()?;
    let samples = monitor.history();
    let mut previous_at = None;
    let mut history: Vec<Point> = samples
        .iter()
        .map(|sample: &Sample| {
            let seconds = previous_at.map_or(0.0, |at: u64| {
                sample.taken_at_ms.saturating_sub(at) as f64 / 1000.0
            });
            previous_at = Some(sample.taken_at_ms);
            let interval = &sample.interval;
            Point {
                at_ms: sample.taken_at_ms,
                seconds,
                committed: interval.committed,
                rolled_back: interval.rolled_back,
                failed: interval.failed,
                retries: interval.retries,
                deadlocks: interval.deadlocks,
                serialization_failures: interval.serialization_failures,
                lock_conflicts: interval.busy
                    + interval.lock_timeouts
                    + interval.snapshot_conflicts,
                p50_ms: interval.duration.p50_ms,
                p95_ms: interval.duration.p95_ms,
                p99_ms: interval.duration.p99_ms,
                active: sample.active,
                health: sample.health,
            }
        })
        .collect();
    if history.len() > HISTORY_SHOWN {
        history.drain(..history.len() - HISTORY_SHOWN);
    }
    let mut alerts = monitor.alerts(*filter);
    if alerts.len() > ALERTS_SHOWN {
        alerts.drain(..alerts.len() - ALERTS_SHOWN);
    }
    alerts.reverse();
    Ok(Update {
        metrics,
        health,
        history,
        alerts,
        long_transaction_ms: monitor.thresholds().long_transaction.as_millis(),
        refresh_ms: dashboard.refresh.as_millis(),
    })
}

/// One line of JSON: an event's data must not span lines.
fn compact_json(update: &Update) -> Result<String, Error> {
    serde_json::to_string(update)
        .map_err(|error| Error::InvalidOption(format!("cannot write JSON: {error}")))
}

fn failure(error: Error) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response()
}

fn json_response(body: Result<String, Error>) -> Response {
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => failure(error),
    }
}

async fn state_json(State(dashboard): State<Shared>, Query(query): Query<AlertQuery>) -> Response {
    json_response(update(&dashboard, &query.filter()).and_then(|update| compact_json(&update)))
}

async fn events(
    State(dashboard): State<Shared>,
    Query(query): Query<AlertQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let filter = query.filter();
    let mut ticks = tokio::time::interval(dashboard.refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stream = futures_util::stream::unfold(
        (dashboard, ticks),
        move |(dashboard, mut ticks)| async move {
            ticks.tick().await;
            let event = match update(&dashboard, &filter).and_then(|update| compact_json(&update)) {
                Ok(body) => Event::default().event("state").data(body),
                Err(error) => Event::default().event("failure").data(error.to_string()),
            };
            Some((Ok(event), (dashboard, ticks)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn download(
    content_type: &'static str,
    file: &'static str,
    body: Result<String, Error>,
) -> Response {
    match body {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_DISPOSITION, file),
            ],
            body,
        )
            .into_response(),
        Err(error) => failure(error),
    }
}

async fn report_json(State(dashboard): State<Shared>) -> Response {
    download(
        "application/json",
        "attachment; filename=\"covet-txn-report.json\"",
        dashboard.monitor.report_json(),
    )
}

async fn metrics_csv(State(dashboard): State<Shared>) -> Response {
    download(
        "text/csv; charset=utf-8",
        "attachment; filename=\"covet-txn-metrics.csv\"",
        dashboard.monitor.metrics_csv(),
    )
}

async fn history_csv(State(dashboard): State<Shared>) -> Response {
    download(
        "text/csv; charset=utf-8",
        "attachment; filename=\"covet-txn-history.csv\"",
        dashboard.monitor.history_csv(),
    )
}

async fn alerts_csv(State(dashboard): State<Shared>, Query(query): Query<AlertQuery>) -> Response {
    download(
        "text/csv; charset=utf-8",
        "attachment; filename=\"covet-txn-alerts.csv\"",
        dashboard.monitor.alerts_csv(query.filter()),
    )
}

async fn prometheus(State(dashboard): State<Shared>) -> Response {
    match dashboard.monitor.prometheus_text() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => failure(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_the_header_or_the_query() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers).as_deref(), Some("abc"));
        assert_eq!(
            query_token(Some("level=ERROR&token=a%2Bb%3D")).as_deref(),
            Some("a+b=")
        );
        assert_eq!(query_token(Some("level=ERROR")), None);
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secre", b"secret"));
    }
}
