//! The dashboard, served for real over a SQLite workload, on its own
//! address and mounted under `/covet/` in an axum application with its own
//! state and routes: its HTTP surface (authentication, security headers,
//! exports, /metrics) checked here, and the page itself driven in a
//! headless Chromium by `tests/browser/dashboard.mjs`. The hardening of
//! issue 17 (limits, timeouts, rebinding, shutdown) is tested in
//! `covet-txn-dashboard/tests`.
//!
//! The browser part needs Node.js, Chromium and `npm ci` in
//! `tests/browser`; without them it is skipped with a notice, unless
//! `COVET_REQUIRE_BROWSER=1` (as in CI) makes that a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use covet_txn::monitor::{AlertFilter, AlertRule, MetricsStore, MonitorConfig};
use covet_txn::{Failure, TxManager, transactional};
use covet_txn_dashboard::{Dashboard, RunningDashboard};
use covet_txn_tests::{AppError, http_get};
use sqlx::Sqlite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "t0ken+with/odd=chars";

fn always(_: &Failure<'_>) -> bool {
    true
}

#[transactional]
async fn deposit() -> Result<(), AppError> {
    sqlx::query("UPDATE ledger SET total = total + 1")
        .execute(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    Ok(())
}

#[transactional(name = "<script>alert(1)</script>")]
async fn script_named() -> Result<(), AppError> {
    Ok(())
}

#[transactional(name = "<img src=x onerror=alert(2)>")]
async fn markup_named() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = "20ms")]
async fn too_slow() -> Result<(), AppError> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

#[transactional(retry = 1, backoff = "1ms", retry_if = always)]
async fn never_succeeds() -> Result<(), AppError> {
    Err(AppError::Refused("refused every time"))
}

#[transactional]
async fn held_open(until: tokio::sync::oneshot::Receiver<()>) -> Result<(), AppError> {
    let _ = until.await;
    Ok(())
}

/// A metrics store in a SQLite file of its own: the page shows where its
/// history is kept.
async fn metrics_store(test: &str) -> MetricsStore {
    let Some(pool) = covet_txn_tests::sqlite(&format!("{test}_metrics"), 1).await else {
        panic!("SQLite is embedded and always available");
    };
    MetricsStore::sqlite(pool).create_schema()
}

/// A manager with a fast monitor, the alerts the page must show, a
/// transaction held open, and deposits running until `stop` is set.
struct Workload {
    manager: TxManager<Sqlite>,
    dashboard: RunningDashboard,
    stop: Arc<AtomicBool>,
    release: tokio::sync::oneshot::Sender<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn workload(test: &str) -> Workload {
    let Some(pool) = covet_txn_tests::sqlite(test, 4).await else {
        panic!("SQLite is embedded and always available");
    };
    sqlx::raw_sql("CREATE TABLE ledger (total INTEGER NOT NULL); INSERT INTO ledger VALUES (0)")
        .execute(&pool)
        .await
        .expect("the ledger table");
    let manager = TxManager::builder(pool).name("dashboard-test").build();
    let monitor = manager.monitor_with(
        MonitorConfig::new()
            .interval(Duration::from_millis(200))
            .store(metrics_store(test).await),
    );

    manager.scope(script_named()).await.expect("commits");
    manager.scope(markup_named()).await.expect("commits");
    assert!(matches!(
        manager.scope(too_slow()).await,
        Err(AppError::Tx(covet_txn::Error::Timeout { .. }))
    ));
    assert!(manager.scope(never_succeeds()).await.is_err());

    let stop = Arc::new(AtomicBool::new(false));
    let (release, until) = tokio::sync::oneshot::channel();
    let mut tasks = vec![tokio::spawn({
        let manager = manager.clone();
        async move {
            let _ = manager.scope(held_open(until)).await;
        }
    })];
    tasks.push(tokio::spawn({
        let manager = manager.clone();
        let stop = Arc::clone(&stop);
        async move {
            while !stop.load(Ordering::Relaxed) {
                if let Err(error) = manager.scope(deposit()).await {
                    panic!("a deposit failed: {error}");
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    }));

    // Two samples at least, so that the alerts are raised and the charts
    // have a line to draw.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let raised: Vec<AlertRule> = monitor
        .alerts(AlertFilter::new())
        .iter()
        .map(|alert| alert.rule)
        .collect();
    assert!(raised.contains(&AlertRule::Timeouts), "{raised:?}");
    assert!(raised.contains(&AlertRule::RetriesExhausted), "{raised:?}");

    let dashboard = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .refresh(Duration::from_millis(250))
        .start()
        .await
        .expect("the dashboard starts");
    Workload {
        manager,
        dashboard,
        stop,
        release,
        tasks,
    }
}

impl Workload {
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.release.send(());
        for task in self.tasks {
            task.await.expect("the workload does not panic");
        }
        self.dashboard.shutdown().await;
        assert!(self.manager.metrics().active.is_empty());
    }
}

/// One HTTP/1.1 GET: status, headers (names lowercased) and body.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_surface_is_guarded_and_serves_every_export() {
    let workload = workload("dashboard_http").await;
    let addr = workload.dashboard.addr();
    let bearer = format!("Bearer {TOKEN}");

    for path in [
        "/",
        "/api/state",
        "/api/events",
        "/export/report.json",
        "/export/alerts.csv",
        "/metrics",
    ] {
        let (status, headers, _) = http_get(addr, path, None).await;
        assert_eq!(status, 401, "{path} without a token");
        assert_eq!(
            header(&headers, "www-authenticate"),
            Some("Bearer realm=\"covet-txn dashboard\"")
        );
        let (status, _, _) = http_get(addr, path, Some("Bearer wrong")).await;
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    for asset in ["/assets/app.js", "/assets/app.css"] {
        let (status, headers, _) = http_get(addr, asset, None).await;
        assert_eq!(
            status, 200,
            "{asset} holds no data and loads without the token"
        );
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    }
    let (status, _, _) = http_get(addr, "/api/state?token=t0ken%2Bwith%2Fodd%3Dchars", None).await;
    assert_eq!(
        status, 401,
        "data paths never take the token from the address"
    );
    let (status, headers, _) = http_get(addr, "/?token=t0ken%2Bwith%2Fodd%3Dchars", None).await;
    assert_eq!(
        status, 303,
        "the page trades the token in its address for a cookie"
    );
    assert!(header(&headers, "set-cookie").is_some_and(|cookie| cookie.contains("HttpOnly")));

    let (status, headers, page) = http_get(addr, "/", Some(&bearer)).await;
    assert_eq!(status, 200);
    let policy = header(&headers, "content-security-policy").expect("a CSP");
    assert!(
        policy.contains("script-src 'self'") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    assert!(
        page.contains("src=\"assets/app.js\""),
        "relative asset links"
    );
    assert!(!page.contains("<script>"), "no inline script");

    let (status, _, state) = http_get(addr, "/api/state", Some(&bearer)).await;
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
    assert_eq!(state["metrics"]["manager"], "dashboard-test");
    let names: Vec<&str> = state["metrics"]["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .filter_map(|function| function["function"].as_str())
        .collect();
    assert!(names.contains(&"<script>alert(1)</script>"), "{names:?}");
    assert!(
        state["history"]
            .as_array()
            .is_some_and(|history| history.len() >= 2)
    );
    let active = state["metrics"]["active"].as_array().expect("active");
    assert!(active.iter().any(|transaction| {
        transaction["function"]
            .as_str()
            .is_some_and(|name| name.ends_with("held_open"))
    }));

    let (_, _, errors_only) = http_get(addr, "/api/state?level=error", Some(&bearer)).await;
    let errors_only: serde_json::Value = serde_json::from_str(&errors_only).expect("JSON");
    let levels: Vec<&str> = errors_only["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|alert| alert["level"].as_str())
        .collect();
    assert!(
        !levels.is_empty()
            && levels
                .iter()
                .all(|level| *level == "ERROR" || *level == "CRITICAL"),
        "{levels:?}"
    );

    let (status, headers, report) = http_get(addr, "/export/report.json", Some(&bearer)).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-disposition"),
        Some("attachment; filename=\"covet-txn-report.json\"")
    );
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON");
    assert!(
        report["alerts"]
            .as_array()
            .is_some_and(|alerts| alerts.iter().any(|alert| alert["level"] == "WARNING"))
    );

    let (status, _, alerts) = http_get(addr, "/export/alerts.csv?level=ERROR", Some(&bearer)).await;
    assert_eq!(status, 200);
    let mut reader = csv::Reader::from_reader(alerts.as_bytes());
    let level = reader
        .headers()
        .expect("a header row")
        .iter()
        .position(|column| column == "level")
        .expect("a level column");
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .map(|row| row.expect("a CSV row"))
        .collect();
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .all(|row| &row[level] == "ERROR" || &row[level] == "CRITICAL")
    );

    for path in ["/export/metrics.csv", "/export/history.csv"] {
        let (status, headers, body) = http_get(addr, path, Some(&bearer)).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            header(&headers, "content-type").is_some_and(|value| value.starts_with("text/csv"))
        );
        assert!(body.lines().count() >= 2, "{path}: {body}");
    }

    let (status, headers, exposition) = http_get(addr, "/metrics", Some(&bearer)).await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .is_some_and(|value| value.starts_with("application/openmetrics-text"))
    );
    assert!(
        exposition.contains("covet_txn_transactions_committed_total{"),
        "{exposition}"
    );
    assert!(exposition.trim_end().ends_with("# EOF"));

    let stream = first_event(addr, "/api/events", &bearer).await;
    assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
    assert!(
        stream
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{stream}"
    );

    workload.finish().await;
}

/// Reads the event stream until its first `state` event has arrived whole.
async fn first_event(addr: SocketAddr, target: &str, authorization: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut received = Vec::new();
    let mut buffer = [0_u8; 16 * 1024];
    let arrived = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let read = stream.read(&mut buffer).await.expect("reads");
            assert!(read > 0, "the stream ended");
            received.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&received);
            if let Some(start) = text.find("event: state\ndata: ")
                && text[start..].contains("\n\n")
            {
                break;
            }
        }
    })
    .await;
    assert!(arrived.is_ok(), "no state event within 10 s");
    let text = String::from_utf8_lossy(&received).into_owned();
    let data = text
        .split("data: ")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("an event's data");
    let state: serde_json::Value = serde_json::from_str(data).expect("the event carries JSON");
    assert_eq!(state["metrics"]["manager"], "dashboard-test");
    text
}

/// What the browser test needs, or why it cannot run.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    if !chromium.exists() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    match Command::new("node").arg("--version").output() {
        Ok(output) if output.status.success() => {}
        _ => return Err("no `node` on the PATH".to_owned()),
    }
    if !browser_dir.join("node_modules/playwright-core").exists() {
        return Err(format!(
            "playwright-core is not installed: run `npm ci` in {}",
            browser_dir.display()
        ));
    }
    Ok((browser_dir, chromium))
}

/// Whether the browser test can run here: if not, a notice says why, or
/// the test fails when `COVET_REQUIRE_BROWSER=1`.
fn browser_available() -> bool {
    match browser_tools() {
        Ok(_) => true,
        Err(reason) => {
            assert!(
                std::env::var("COVET_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "{reason}, and COVET_REQUIRE_BROWSER=1"
            );
            eprintln!(
                "notice: skipping the browser test: {reason}; set COVET_REQUIRE_BROWSER=1 to fail instead"
            );
            false
        }
    }
}

/// How the page must get its updates.
#[derive(Clone, Copy)]
enum Transport {
    WebSocket,
    /// Server-sent events: what the page falls back to when the WebSocket
    /// upgrade is refused.
    Events,
}

/// The width and height of a PNG, from its header.
fn png_size(png: &[u8]) -> (u32, u32) {
    let number = |at: usize| {
        png.get(at..at + 4)
            .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
            .map_or(0, u32::from_be_bytes)
    };
    (number(16), number(20))
}

/// Runs `tests/browser/dashboard.mjs` against the page at `url` and checks
/// the screenshots it saved: the desktop one, and the phone one (390 px
/// wide).
async fn run_browser(url: String, screenshot_name: &str, transport: Transport) {
    let (browser_dir, chromium) = browser_tools().expect("checked by browser_available");
    let screenshot = std::env::temp_dir().join(screenshot_name);
    let phone = std::env::temp_dir().join(format!("phone-{screenshot_name}"));
    let _ = std::fs::remove_file(&screenshot);
    let _ = std::fs::remove_file(&phone);
    let saved_to = screenshot.clone();
    let phone_to = phone.clone();
    let transport = match transport {
        Transport::WebSocket => "websocket",
        Transport::Events => "events",
    };
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(&browser_dir)
            .env("CHROMIUM", chromium)
            .arg("dashboard.mjs")
            .arg(url)
            .arg(TOKEN)
            .arg(saved_to)
            .arg(transport)
            .arg(phone_to)
            .output()
    })
    .await
    .expect("the runner does not panic")
    .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all dashboard checks passed"), "{stdout}");
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real PNG, {} bytes",
        png.len()
    );
    let png = std::fs::read(&phone).expect("the phone screenshot was saved");
    let (width, height) = png_size(&png);
    assert!(
        png.starts_with(b"\x89PNG") && width == 390 && height >= 844,
        "a phone-sized PNG: {width}×{height}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_figures_safely_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let workload = workload("dashboard_browser").await;
    let url = workload.dashboard.url();
    run_browser(url, "covet-txn-dashboard-test.png", Transport::WebSocket).await;
    workload.finish().await;
}

/// The state of an application the dashboard is mounted in.
#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

/// An axum application with its own state and routes, the dashboard
/// mounted under `/covet`, served by axum on loopback. Its shutdown signal
/// ends the dashboard's event streams, as the README says to do. It refuses
/// WebSocket upgrades to the dashboard, as some proxies do, so that the
/// page must fall back to server-sent events.
struct App {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

async fn app(dashboard: Dashboard) -> App {
    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;

    let app = Router::new()
        .route("/", get(|| async { "the application's home" }))
        .route(
            "/hello",
            get(|State(app): State<AppState>| async move { app.greeting }),
        )
        .route(
            "/covet/api/ws",
            get(|| async { (StatusCode::FORBIDDEN, "upgrades are refused here") }),
        )
        .nest_service("/covet", dashboard.router())
        .with_state(AppState {
            greeting: "hello from the application",
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
            dashboard.close_event_streams();
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .expect("serves");
    });
    App { addr, stop, served }
}

impl App {
    /// Shuts the application down, which must not wait for open pages.
    async fn shutdown(self) {
        let _ = self.stop.send(());
        let stopped = tokio::time::timeout(Duration::from_secs(5), self.served).await;
        assert!(
            stopped.is_ok(),
            "the application's graceful shutdown waited on the dashboard's streams"
        );
    }
}

async fn mounted(workload: &Workload, test: &str) -> Dashboard {
    Dashboard::new(
        workload.manager.monitor_with(
            MonitorConfig::new()
                .interval(Duration::from_millis(200))
                .store(metrics_store(test).await),
        ),
    )
    .bearer_token(TOKEN)
    .refresh(Duration::from_millis(250))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_in_an_application_it_lives_under_its_path_beside_the_app_s_routes() {
    let workload = workload("dashboard_mounted_http").await;
    let app = app(mounted(&workload, "dashboard_mounted_http_app").await).await;
    let addr = app.addr;
    let bearer = format!("Bearer {TOKEN}");

    let (status, _, home) = http_get(addr, "/", None).await;
    assert_eq!((status, home.as_str()), (200, "the application's home"));
    let (status, _, hello) = http_get(addr, "/hello", None).await;
    assert_eq!(
        (status, hello.as_str()),
        (200, "hello from the application")
    );

    let (status, headers, _) = http_get(addr, "/covet?level=ERROR", None).await;
    assert_eq!(status, 308, "/covet redirects to the page's folder");
    assert_eq!(header(&headers, "location"), Some("covet/?level=ERROR"));
    let (status, _, page) = http_get(addr, "/covet/", Some(&bearer)).await;
    assert_eq!(status, 200);
    assert!(page.contains("src=\"assets/app.js\""));
    for path in ["/covet/assets/app.js", "/covet/assets/app.css"] {
        let (status, _, _) = http_get(addr, path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _, _) = http_get(addr, "/covet/api/state", None).await;
    assert_eq!(status, 401, "the token guards the mounted data paths");
    let (status, _, state) = http_get(addr, "/covet/api/state", Some(&bearer)).await;
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
    assert_eq!(state["metrics"]["manager"], "dashboard-test");
    let (status, _, _) = http_get(addr, "/covet/api/nothing", Some(&bearer)).await;
    assert_eq!(status, 404);

    // A page left open must not hold the application's shutdown.
    let stream = first_event(addr, "/covet/api/events", &bearer).await;
    assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
    let mut open = TcpStream::connect(addr).await.expect("connects");
    let request = format!(
        "GET /covet/api/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {bearer}\r\n\r\n"
    );
    open.write_all(request.as_bytes()).await.expect("sends");
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.shutdown().await;
    workload.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_in_an_application_the_page_goes_live_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let workload = workload("dashboard_mounted_browser").await;
    let app = app(mounted(&workload, "dashboard_mounted_browser_app").await).await;
    let url = format!("http://{}/covet/", app.addr);
    run_browser(
        url,
        "covet-txn-dashboard-mounted-test.png",
        Transport::Events,
    )
    .await;
    app.shutdown().await;
    workload.finish().await;
}
