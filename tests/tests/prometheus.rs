//! The shipped Prometheus rules and Grafana dashboard (`ops/`) against a
//! real Prometheus: `promtool check rules` accepts the rules; a Prometheus
//! on a free loopback port scrapes a dashboard's `/metrics` (with its
//! bearer token, as the README says to configure it) over a PostgreSQL
//! workload; every recording rule, every alerting rule's expression and
//! every Grafana panel's query parse and return data through Prometheus's
//! HTTP API; and a burst of real deadlocks makes `CovetTxnDeadlocks` fire.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on the
//! PATH) and PostgreSQL; without Prometheus the test is skipped with a
//! notice, unless `COVET_REQUIRE_PROMETHEUS=1` (as in CI) makes that a
//! failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use covet_txn::monitor::MonitorConfig;
use covet_txn::{TxManager, TxOptions};
use covet_txn_dashboard::Dashboard;
use serde_json::Value;
use sqlx::Postgres;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "prometheus-scrapes-with-this";

fn ops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

/// Whether Prometheus is installed: if not, a notice says so, or the test
/// fails when `COVET_REQUIRE_PROMETHEUS=1`.
fn prometheus_available() -> bool {
    let found = ["prometheus", "promtool"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if !found {
        assert!(
            std::env::var("COVET_REQUIRE_PROMETHEUS").as_deref() != Ok("1"),
            "prometheus and promtool are not installed, and COVET_REQUIRE_PROMETHEUS=1"
        );
        eprintln!(
            "notice: skipping the Prometheus test: install Debian's `prometheus` package; set \
             COVET_REQUIRE_PROMETHEUS=1 to fail instead"
        );
    }
    found
}

/// A Prometheus server of this test's own, killed (and its data removed)
/// when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second, with the shipped
    /// rules evaluated every second, and waits until it is ready.
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("covet-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("a data folder");
        let rules = ops().join("prometheus/covet-txn.rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: covet-txn\n    metrics_path: /metrics\n    \
             authorization:\n      type: Bearer\n      credentials: {TOKEN}\n    \
             static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("writes the configuration");
        let checked = Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(&config_file)
            .output()
            .expect("promtool runs");
        assert!(
            checked.status.success(),
            "promtool check config: {}",
            String::from_utf8_lossy(&checked.stdout)
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = get(addr, "/-/ready").await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus was not ready within 30 s: {}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: `Err` with Prometheus's error if it does not parse.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = get(self.addr, &path).await?;
        let answer: Value = serde_json::from_str(&body).map_err(|error| error.to_string())?;
        if status != 200 || answer["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// `promql` must parse and return at least one series.
    async fn has_data(&self, promql: &str) -> Result<(), String> {
        match self.query(promql).await {
            Ok(result) if !result.is_empty() => Ok(()),
            Ok(_) => Err(format!("no data for `{promql}`")),
            Err(error) => Err(format!("`{promql}` failed: {error}")),
        }
    }

    async fn api(&self, path: &str) -> Value {
        let (status, body) = get(self.addr, path).await.expect("Prometheus answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 GET: the status and the (de-chunked) body.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|error| error.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| error.to_string())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|error| error.to_string())?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no header block")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or("no status")?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Ok((
            status,
            if chunked {
                dechunk(body)
            } else {
                body.to_owned()
            },
        ))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// An alerting rule's expression with every comparison made a `bool` one:
/// it then returns a series (0 or 1) whether or not the alert fires, which
/// proves every name and label it reads exists.
fn as_bool(expr: &str) -> String {
    let mut out = String::new();
    let tokens: Vec<&str> = expr.split_whitespace().collect();
    for (index, token) in tokens.iter().enumerate() {
        out.push_str(token);
        out.push(' ');
        if matches!(*token, ">" | "<" | ">=" | "<=" | "==" | "!=")
            && tokens.get(index + 1) != Some(&"bool")
        {
            out.push_str("bool ");
        }
    }
    out
}

/// A Grafana panel query with the dashboard's variables filled in.
fn grafana_query(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$__range", "5m")
        .replace("$manager", ".*")
}

/// Two transactions that lock two rows in opposite orders, at the same
/// time: PostgreSQL picks one as the deadlock victim, whose retry commits.
async fn deadlock(manager: &TxManager<Postgres>, first: i32, second: i32) {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let pair = [(first, second), (second, first)].map(|(a, b)| {
        let manager = manager.clone();
        let barrier = Arc::clone(&barrier);
        tokio::spawn(async move {
            let waiting = Arc::new(AtomicBool::new(true));
            manager
                .transaction_with_retry(
                    TxOptions::new().name("bank::transfer").retries(5),
                    move || {
                        let barrier = Arc::clone(&barrier);
                        let waiting = Arc::clone(&waiting);
                        async move {
                            let mut conn = covet_txn::conn::<Postgres>()?;
                            sqlx::query(
                                "UPDATE prom_accounts SET balance = balance - 1 WHERE id = $1",
                            )
                            .bind(a)
                            .execute(&mut *conn)
                            .await?;
                            // Only the first attempts meet: a retry goes on alone.
                            if waiting.swap(false, Ordering::SeqCst) {
                                barrier.wait().await;
                            }
                            sqlx::query(
                                "UPDATE prom_accounts SET balance = balance + 1 WHERE id = $1",
                            )
                            .bind(b)
                            .execute(&mut *conn)
                            .await?;
                            Ok::<_, covet_txn::Error>(())
                        }
                    },
                )
                .await
        })
    });
    for transaction in pair {
        transaction
            .await
            .expect("no panic")
            .expect("the victim's retry commits");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rules_and_grafana_queries_work_in_a_real_prometheus() {
    if !prometheus_available() {
        return;
    }
    let started = Instant::now();
    let rules = ops().join("prometheus/covet-txn.rules.yml");
    let checked = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool runs");
    let said = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(
        checked.status.success() && said.contains("SUCCESS"),
        "promtool check rules: {said}{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // A PostgreSQL workload that detects deadlocks in 100 ms, not 1 s.
    let options = covet_txn_tests::postgres_options().options([("deadlock_timeout", "100ms")]);
    let Some(pool) = covet_txn_tests::postgres_with(options, 30).await else {
        return;
    };
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS prom_accounts;
         CREATE TABLE prom_accounts (id INT PRIMARY KEY, balance INT NOT NULL);
         INSERT INTO prom_accounts SELECT id, 1000 FROM generate_series(1, 40) AS id;",
    )
    .execute(&pool)
    .await
    .expect("the accounts");
    let manager = TxManager::builder(pool).name("prometheus-test").build();
    let monitor = manager.monitor_with(MonitorConfig::new().interval(Duration::from_secs(1)));
    let dashboard = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .start()
        .await
        .expect("the dashboard starts");

    // Steady traffic: deposits, a refused call now and then, a timeout.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let manager = manager.clone();
        let stop = Arc::clone(&stop);
        async move {
            let mut round = 0_u32;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let refused = round.is_multiple_of(10);
                let _ = manager
                    .transaction(TxOptions::new().name("bank::deposit"), || async move {
                        sqlx::query("UPDATE prom_accounts SET balance = balance + 1 WHERE id = 40")
                            .execute(&mut *covet_txn::conn::<Postgres>()?)
                            .await?;
                        if refused {
                            return Err(covet_txn::Error::InvalidOption("refused".to_owned()));
                        }
                        Ok(())
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let timed_out = manager
        .transaction(
            TxOptions::new()
                .name("bank::report")
                .timeout(Duration::from_millis(10)),
            || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, covet_txn::Error>(())
            },
        )
        .await;
    assert!(timed_out.is_err());
    // One pair before Prometheus starts: every failure kind's series exists.
    deadlock(&manager, 1, 2).await;

    let prometheus = Prometheus::start(dashboard.addr()).await;
    // Scrapes arrive, and enough of them for rates over a few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scraped = prometheus
            .query(r#"count_over_time(up{job="covet-txn"}[1m]) >= 5 and up{job="covet-txn"} == 1"#)
            .await;
        if scraped.is_ok_and(|result| !result.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape /metrics 5 times within 60 s: {}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every rule is loaded and evaluates.
    let loaded = prometheus.api("/api/v1/rules").await;
    let rules: Vec<Value> = loaded["data"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(rules.len() >= 19, "{} rules loaded", rules.len());
    let mut problems = Vec::new();
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or_default();
        let query = rule["query"].as_str().unwrap_or_default();
        if rule["health"] == "err" {
            problems.push(format!("{name}: {}", rule["lastError"]));
        }
        let checked = match rule["type"].as_str() {
            Some("recording") => prometheus.has_data(name).await,
            _ => prometheus.has_data(&as_bool(query)).await,
        };
        if let Err(problem) = checked {
            problems.push(format!("{name}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "rules: {problems:#?}");

    // Every Grafana panel's query.
    let dashboard_json: Value = serde_json::from_str(
        &std::fs::read_to_string(ops().join("grafana/covet-txn.json")).expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard_json["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut queries = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            queries += 1;
            if let Err(problem) = prometheus.has_data(&grafana_query(expr)).await {
                problems.push(format!("panel `{}`: {problem}", panel["title"]));
            }
        }
    }
    assert!(queries >= 20, "{queries} panel queries");
    assert!(problems.is_empty(), "Grafana queries: {problems:#?}");

    // A burst of deadlocks: the alert fires.
    let burst: Vec<_> = (0..12)
        .map(|pair| {
            let manager = manager.clone();
            tokio::spawn(async move { deadlock(&manager, 3 + 2 * pair, 4 + 2 * pair).await })
        })
        .collect();
    for pair in burst {
        pair.await.expect("no panic");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let fired = loop {
        let alerts = prometheus.api("/api/v1/alerts").await;
        let firing = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|alert| {
                alert["labels"]["alertname"] == "CovetTxnDeadlocks" && alert["state"] == "firing"
            })
            .cloned();
        if let Some(alert) = firing {
            break alert;
        }
        assert!(
            Instant::now() < deadline,
            "CovetTxnDeadlocks did not fire within 60 s: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(fired["labels"]["manager"], "prometheus-test");
    assert_eq!(fired["labels"]["severity"], "warning");
    let annotation = dashboard_json["annotations"]["list"][0]["expr"]
        .as_str()
        .expect("the alert annotation's query");
    prometheus
        .has_data(annotation)
        .await
        .expect("the dashboard's alert annotations show the firing alert");

    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("no panic");
    drop(prometheus);
    dashboard.shutdown().await;
    eprintln!("the Prometheus test took {:?}", started.elapsed());
}
