//! What each path answers: the page (and its trade of `?token=` for a
//! cookie), its script and style, the state as JSON, as an event stream or
//! over a WebSocket, the reports, and `/metrics`; and the security headers
//! on every answer.
//! Who may ask is `access`'s business.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, OriginalUri, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use covet_txn::monitor::OPENMETRICS_CONTENT_TYPE;
use serde::Deserialize;

use crate::access;
use crate::connection::Client;
use crate::events::{self, Refused};
use crate::state::{Shared, Token};
use crate::update::{self, Level};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// The dashboard's routes over `shared`, for an application with state `S`.
pub(crate) fn router<S>(shared: Arc<Shared>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let data = Router::new()
        .route("/api/state", get(state_json))
        .route("/api/events", get(events))
        .route("/api/ws", get(websocket))
        .route("/export/report.json", get(report_json))
        .route("/export/metrics.csv", get(metrics_csv))
        .route("/export/history.csv", get(history_csv))
        .route("/export/alerts.csv", get(alerts_csv))
        .route("/metrics", get(prometheus))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            access::check_data_request,
        ));
    // The page checks the token itself (it trades `?token=` for a cookie);
    // its script and style hold no data and are public.
    Router::new()
        .route("/", get(page))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
        .merge(data)
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            access::check_host,
        ))
        .layer(middleware::from_fn(secure_headers))
        .with_state(shared)
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

/// The page. At a path without its final `/` (`/covet` when mounted at
/// `/covet`), a redirect there, since the page's links are relative. With
/// `?token=`, once the token is right, a cookie and a redirect to the same
/// address without it, so the token leaves the address bar and history.
async fn page(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().path(), |OriginalUri(uri)| uri.path());
    let query = request.uri().query().unwrap_or_default();
    if !path.ends_with('/') {
        let folder = path.rsplit('/').next().unwrap_or_default();
        let target = format!("{folder}/{}", with_query(query));
        return redirect(StatusCode::PERMANENT_REDIRECT, &target, None);
    }
    let (presented, rest) = split_token(query);
    // Only a dashboard that requires a token trades one for a cookie.
    if let Some(token) = presented.filter(|_| !matches!(shared.token, Token::Open)) {
        let client = request.extensions().get::<Client>().cloned();
        if let Err(refusal) = access::authorise(&shared, client, path, Some(&token)).await {
            return refusal;
        }
        let secure = shared.settings.secure_cookie || access::forwarded_https(request.headers());
        let cookie = access::token_cookie(&token, secure);
        let target = format!("./{}", with_query(&rest));
        return redirect(StatusCode::SEE_OTHER, &target, cookie);
    }
    let presented = access::presented_token(request.headers());
    let client = request.extensions().get::<Client>().cloned();
    match access::authorise(&shared, client, path, presented.as_deref()).await {
        Ok(()) => page_body(),
        Err(refusal) => refusal,
    }
}

/// `?token=` apart from the rest of a query.
fn split_token(query: &str) -> (Option<String>, String) {
    let mut token = None;
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "token" {
            token = Some(value.into_owned());
        } else {
            rest.append_pair(&key, &value);
        }
    }
    (token, rest.finish())
}

fn page_body() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

fn with_query(query: &str) -> String {
    if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    }
}

fn redirect(status: StatusCode, target: &str, cookie: Option<HeaderValue>) -> Response {
    let Ok(location) = HeaderValue::from_str(target) else {
        return (StatusCode::BAD_REQUEST, "malformed address").into_response();
    };
    let mut response = status.into_response();
    response.headers_mut().insert(header::LOCATION, location);
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
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

#[derive(Deserialize)]
struct AlertQuery {
    level: Option<String>,
}

impl AlertQuery {
    /// The level asked for, or the 400 that lists the accepted ones.
    fn level(&self) -> Result<Level, BadRequest> {
        update::parse_level(self.level.as_deref()).map_err(BadRequest)
    }
}

struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

fn failure(error: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response()
}

async fn state_json(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<AlertQuery>,
) -> Response {
    let level = match query.level() {
        Ok(level) => level,
        Err(refusal) => return refusal.into_response(),
    };
    match update::json(&shared.monitor, shared.settings.refresh, level) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => failure(error),
    }
}

async fn events(State(shared): State<Arc<Shared>>, Query(query): Query<AlertQuery>) -> Response {
    let level = match query.level() {
        Ok(level) => level,
        Err(refusal) => return refusal.into_response(),
    };
    match events::subscribe(&shared.events, &shared.monitor, &shared.settings, level) {
        Ok(subscription) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                ),
                // nginx and other proxies buffer responses unless told not to.
                (
                    HeaderName::from_static("x-accel-buffering"),
                    HeaderValue::from_static("no"),
                ),
            ],
            events::event_stream(subscription),
        )
            .into_response(),
        Err(refused) => refused_stream(refused),
    }
}

/// The same updates as `/api/events`, over a WebSocket: one text message
/// per update. The access checks (Host, Origin, token) ran before the
/// upgrade, and the stream counts against the same cap as event streams.
async fn websocket(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<AlertQuery>,
    client: Option<Extension<Client>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let level = match query.level() {
        Ok(level) => level,
        Err(refusal) => return refusal.into_response(),
    };
    let subscription =
        match events::subscribe(&shared.events, &shared.monitor, &shared.settings, level) {
            Ok(subscription) => subscription,
            Err(refused) => return refused_stream(refused),
        };
    // Taken now, while hyper still serves the connection: it must not let
    // go of the connection's slot when it hands the socket over.
    let hold = client
        .as_ref()
        .map(|Extension(client)| client.hold_upgrade());
    let closed = client.map(|Extension(client)| client.closed());
    upgrade
        // The page sends nothing but control frames.
        .max_message_size(4 * 1024)
        .max_frame_size(4 * 1024)
        .on_upgrade(move |socket| async move {
            let _hold = hold;
            match closed {
                Some(closed) => events::serve_socket(socket, subscription, closed).await,
                // Mounted: the application's server owns the connection.
                None => events::serve_socket(socket, subscription, std::future::pending()).await,
            }
        })
}

fn refused_stream(refused: Refused) -> Response {
    match refused {
        Refused::Full => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many open dashboard pages: close one, or raise Dashboard::max_event_streams",
        )
            .into_response(),
        Refused::Closing => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the dashboard is shutting down",
        )
            .into_response(),
    }
}

fn download(content_type: &'static str, file: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, file),
        ],
        body,
    )
        .into_response()
}

const CSV: &str = "text/csv; charset=utf-8";

/// A CSV report as a download. The monitor writes it safe for spreadsheets
/// (formulas neutralised, a header row even when empty).
fn csv_download(file: &'static str, csv: Result<String, covet_txn::Error>) -> Response {
    match csv {
        Ok(csv) => download(CSV, file, csv),
        Err(error) => failure(error),
    }
}

async fn report_json(State(shared): State<Arc<Shared>>) -> Response {
    match shared.monitor.report_json() {
        Ok(json) => download(
            "application/json",
            "attachment; filename=\"covet-txn-report.json\"",
            json,
        ),
        Err(error) => failure(error),
    }
}

async fn metrics_csv(State(shared): State<Arc<Shared>>) -> Response {
    csv_download(
        "attachment; filename=\"covet-txn-metrics.csv\"",
        shared.monitor.metrics_csv(),
    )
}

async fn history_csv(State(shared): State<Arc<Shared>>) -> Response {
    csv_download(
        "attachment; filename=\"covet-txn-history.csv\"",
        shared.monitor.history_csv(),
    )
}

async fn alerts_csv(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<AlertQuery>,
) -> Response {
    match query.level() {
        Ok(level) => csv_download(
            "attachment; filename=\"covet-txn-alerts.csv\"",
            shared.monitor.alerts_csv(update::filter(level)),
        ),
        Err(refusal) => refusal.into_response(),
    }
}

async fn prometheus(State(shared): State<Arc<Shared>>) -> Response {
    match shared.monitor.prometheus_text() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => failure(error),
    }
}
