//! Observability: metrics, the active-transaction registry, Prometheus,
//! reports, alerts and tracing spans, against real servers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use covet_txn::monitor::{AlertFilter, AlertLevel, AlertRule, ManualClock, MonitorConfig};
use covet_txn::{
    Error, Failure, FunctionMetrics, MetricsSnapshot, TxManager, TxOptions, transactional,
};
use covet_txn_tests::{AppError, each_backend};

fn retry_refusals(failure: &Failure<'_>) -> bool {
    failure.error().to_string().contains("refused")
}

fn function<'a>(snapshot: &'a MetricsSnapshot, suffix: &str) -> &'a FunctionMetrics {
    match snapshot
        .functions
        .iter()
        .find(|f| f.function.ends_with(suffix))
    {
        Some(function) => function,
        None => panic!(
            "no metrics for {suffix} in {:?}",
            snapshot
                .functions
                .iter()
                .map(|f| &f.function)
                .collect::<Vec<_>>()
        ),
    }
}

each_backend! {
    #[transactional]
    async fn commits() -> Result<(), AppError> {
        Ok(())
    }

    #[transactional]
    async fn refuses() -> Result<(), AppError> {
        Err(AppError::Refused("no"))
    }

    #[transactional]
    async fn nested_refusal() -> Result<(), AppError> {
        Err(AppError::Refused("nested"))
    }

    #[transactional]
    async fn with_savepoints() -> Result<(), AppError> {
        let _ = nested_refusal().await;
        commits().await
    }

    #[transactional(retry = 3, backoff = "1ms", retry_if = retry_refusals)]
    async fn succeeds_on_second_attempt(attempts: &AtomicU32) -> Result<(), AppError> {
        if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(AppError::Refused("refused once"));
        }
        Ok(())
    }

    #[tokio::test]
    async fn metrics_count_each_outcome_per_function() {
        let Some(manager) = manager("obs_counts", 1).await else { return };
        for _ in 0..3 {
            manager.scope(commits()).await.expect("commits");
        }
        manager.scope(refuses()).await.expect_err("refuses");
        manager.scope(with_savepoints()).await.expect("commits");
        let attempts = AtomicU32::new(0);
        manager.scope(succeeds_on_second_attempt(&attempts)).await.expect("second attempt");

        let snapshot = manager.metrics();
        assert_eq!(snapshot.backend, BACKEND);
        let commits = function(&snapshot, "::commits");
        assert_eq!((commits.started, commits.committed, commits.rolled_back, commits.failed), (3, 3, 0, 0));
        assert_eq!(commits.success_rate, Some(1.0));
        assert_eq!(commits.duration.count, 3);
        assert!(commits.duration.p99_ms.is_some_and(|p99| p99 > 0.0));
        let refuses = function(&snapshot, "::refuses");
        assert_eq!((refuses.started, refuses.committed, refuses.rolled_back, refuses.failed), (1, 0, 1, 1));
        assert_eq!(refuses.failure_rate, Some(1.0));
        let nested = function(&snapshot, "::nested_refusal");
        assert_eq!((nested.savepoints_created, nested.savepoints_rolled_back, nested.started), (1, 1, 0));
        let retried = function(&snapshot, "::succeeds_on_second_attempt");
        assert_eq!((retried.started, retried.committed, retried.rolled_back, retried.retries), (2, 1, 1, 1));
        assert_eq!(snapshot.total.started, 3 + 1 + 1 + 2);
        assert!(snapshot.active.is_empty());
    }

    #[transactional(isolation = "serializable")]
    async fn held_open(until: tokio::sync::oneshot::Receiver<()>, begun: tokio::sync::oneshot::Sender<()>) -> Result<(), AppError> {
        let _ = begun.send(());
        let _ = until.await;
        Ok(())
    }

    #[tokio::test]
    async fn a_running_transaction_is_listed_with_its_age_and_then_leaves() {
        let Some(manager) = manager("obs_active", 2).await else { return };
        let (release, until) = tokio::sync::oneshot::channel();
        let (begun, started) = tokio::sync::oneshot::channel();
        let running = tokio::spawn(manager.scope(held_open(until, begun)));
        started.await.expect("the transaction began");
        tokio::time::sleep(Duration::from_millis(120)).await;
        let active = manager.metrics().active;
        assert_eq!(active.len(), 1, "{active:?}");
        let listed = &active[0];
        assert!(listed.function.ends_with("::held_open"));
        assert_eq!((listed.depth, listed.attempt, listed.state.as_str()), (1, 1, "active"));
        assert_eq!(listed.isolation.as_deref(), Some("serializable"));
        assert!(listed.age_ms >= 100.0, "{listed:?}");
        let _ = release.send(());
        running.await.expect("no panic").expect("commits");
        assert!(manager.metrics().active.is_empty(), "it left the registry");
    }

    #[tokio::test]
    async fn the_prometheus_exposition_parses_back_to_the_snapshot() {
        let Some(pool) = pool("obs_prometheus", 1).await else { return };
        let manager = TxManager::builder(pool).name(format!("prom_{BACKEND}")).build();
        for _ in 0..4 {
            manager.scope(commits()).await.expect("commits");
        }
        manager.scope(refuses()).await.expect_err("refuses");
        let text = manager.prometheus_text().expect("encodes");
        let samples = parse_exposition(&text);
        let manager_label = format!("prom_{BACKEND}");
        let value = |name: &str, function_suffix: &str| -> f64 {
            samples
                .iter()
                .find(|(metric, labels, _)| {
                    metric == name
                        && labels.get("manager") == Some(&manager_label)
                        && labels.get("function").is_some_and(|f| f.ends_with(function_suffix))
                })
                .map(|(_, _, value)| *value)
                .unwrap_or_else(|| panic!("{name} for {function_suffix} missing from:\n{text}"))
        };
        assert_eq!(value("covet_txn_transactions_committed_total", "::commits"), 4.0);
        assert_eq!(value("covet_txn_calls_failed_total", "::refuses"), 1.0);
        assert_eq!(value("covet_txn_transaction_duration_seconds_count", "::commits"), 4.0);
        let buckets: Vec<f64> = samples
            .iter()
            .filter(|(metric, labels, _)| {
                metric == "covet_txn_transaction_duration_seconds_bucket"
                    && labels.get("function").is_some_and(|f| f.ends_with("::commits"))
            })
            .map(|(_, _, value)| *value)
            .collect();
        assert_eq!(buckets.len(), covet_txn::DURATION_BUCKETS.len() + 1);
        assert!(buckets.windows(2).all(|pair| pair[0] <= pair[1]), "buckets are cumulative: {buckets:?}");
        assert_eq!(buckets.last(), Some(&4.0));
        assert!(text.contains("# TYPE covet_txn_failures counter"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
        let failures_kinds = samples.iter().filter(|(metric, labels, _)| metric == "covet_txn_failures_total" && labels.contains_key("kind")).count();
        assert!(failures_kinds >= 6, "deadlocks and serialization failures have series of their own");
        assert_eq!(value("covet_txn_rollback_failures_total", "::refuses"), 0.0);
        let outcomes: Vec<&str> = samples
            .iter()
            .filter(|(metric, labels, _)| {
                metric == "covet_txn_cancelled_commits_total"
                    && labels.get("function").is_some_and(|f| f.ends_with("::commits"))
            })
            .filter_map(|(_, labels, _)| labels.get("outcome").map(String::as_str))
            .collect();
        assert_eq!(outcomes, ["committed", "rolled_back", "unknown"]);
    }

    #[tokio::test]
    async fn reports_export_as_json_and_csv() {
        let Some(manager) = manager("obs_reports", 1).await else { return };
        manager.scope(commits()).await.expect("commits");
        let monitor = manager.monitor();
        monitor.sample().expect("samples");
        let report: serde_json::Value = serde_json::from_str(&monitor.report_json().expect("writes")).expect("valid JSON");
        assert_eq!(report["metrics"]["backend"], BACKEND);
        assert!(report["health"]["score"].as_u64().is_some_and(|score| score <= 100));
        assert_eq!(report["history"].as_array().map(Vec::len), Some(1));
        let csv_text = monitor.metrics_csv().expect("writes");
        let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
        let headers = reader.headers().expect("headers").clone();
        assert!(headers.iter().any(|header| header == "p99_ms"));
        let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().expect("rows");
        assert!(rows.iter().any(|row| row.get(0).is_some_and(|f| f.ends_with("::commits"))));
        assert_eq!(rows.last().and_then(|row| row.get(0)), Some("all"));
        let history = monitor.history_csv().expect("writes");
        assert_eq!(csv::Reader::from_reader(history.as_bytes()).records().count(), 1);
        monitor.shutdown();
    }
}

/// Parses the text exposition: (metric, labels, value) per sample line.
fn parse_exposition(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in `{line}`"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in `{line}`"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label in `{line}`"));
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value)
        })
        .collect()
}

/// Two transactions that lock two rows in opposite order, both retried
/// until they succeed.
#[transactional(retry = 10, backoff = "1ms", manager = manager)]
async fn deadlocking_transfer(
    manager: &TxManager<sqlx::MySql>,
    first: i64,
    second: i64,
    barrier: &tokio::sync::Barrier,
) -> Result<(), AppError> {
    let update = |id: i64| format!("UPDATE obs_deadlock SET v = v + 1 WHERE id = {id}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(update(first)))
        .execute(&mut *manager.conn()?)
        .await?;
    if covet_txn::current().is_some_and(|info| info.attempt == 1) {
        barrier.wait().await;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(update(second)))
        .execute(&mut *manager.conn()?)
        .await?;
    Ok(())
}

async fn force_deadlock(manager: &TxManager<sqlx::MySql>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let (a, b) = tokio::join!(
        deadlocking_transfer(manager, 1, 2, &barrier),
        deadlocking_transfer(manager, 2, 1, &barrier)
    );
    a.expect("succeeds after retry");
    b.expect("succeeds after retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_deadlocks_raise_the_counter_and_one_warning_per_window() {
    let Some(pool) = covet_txn_tests::mysql(2).await else {
        return;
    };
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS obs_deadlock; CREATE TABLE obs_deadlock (id BIGINT PRIMARY KEY, v BIGINT NOT NULL); \
         INSERT INTO obs_deadlock VALUES (1, 0), (2, 0)",
    )
    .execute(&pool)
    .await
    .expect("setup");
    let manager = TxManager::new(pool);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let raised = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&raised);
    let monitor = manager.monitor_with(MonitorConfig::new().clock(clock.clone()).on_alert(
        move |alert| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(alert.rule)
        },
    ));

    force_deadlock(&manager).await;
    let deadlocks = manager.metrics().total.deadlocks;
    assert!(deadlocks >= 1, "the victim's deadlock was counted");
    monitor.sample().expect("samples");
    clock.advance(Duration::from_secs(60));
    force_deadlock(&manager).await;
    monitor.sample().expect("samples");

    let warnings = monitor.alerts(AlertFilter::new().at_least(AlertLevel::Warning));
    let deadlock_alerts: Vec<_> = warnings
        .iter()
        .filter(|alert| alert.rule == AlertRule::Deadlocks)
        .collect();
    assert_eq!(
        deadlock_alerts.len(),
        1,
        "one WARNING within the 5-minute window: {warnings:?}"
    );
    assert_eq!(deadlock_alerts[0].level, AlertLevel::Warning);
    assert!(
        deadlock_alerts[0].message.contains("deadlocking_transfer"),
        "{}",
        deadlock_alerts[0].message
    );
    let sunk = raised
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|rule| **rule == AlertRule::Deadlocks)
        .count();
    assert_eq!(sunk, 1, "the sink got it once too");

    clock.advance(Duration::from_secs(301));
    force_deadlock(&manager).await;
    monitor.sample().expect("samples");
    let again = monitor
        .alerts(AlertFilter::new())
        .iter()
        .filter(|alert| alert.rule == AlertRule::Deadlocks)
        .count();
    assert_eq!(again, 2, "after the window it is raised again");
    let health = monitor.health().expect("health");
    assert!(
        health
            .recommendations
            .iter()
            .any(|advice| advice.contains("consistent order")),
        "{health:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_sampler_samples_at_its_interval_and_stops_with_the_manager() {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(covet_txn_tests::sqlite_path("obs_sampler"));
    let manager = TxManager::new(sqlx::SqlitePool::connect_lazy_with(options));
    let monitor = manager.monitor_with(
        MonitorConfig::new()
            .interval(Duration::from_secs(10))
            .capacity(2),
    );
    for _ in 0..35 {
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    let history = monitor.history();
    assert_eq!(
        history.len(),
        2,
        "three samples taken, the oldest dropped: capacity 2"
    );
    assert!(monitor.is_running());
    drop(manager);
    for _ in 0..11 {
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    assert!(
        !monitor.is_running(),
        "the manager is gone: sampling stopped"
    );
    assert!(matches!(monitor.metrics(), Err(Error::InvalidOption(_))));
}

#[tokio::test]
async fn a_transaction_span_carries_the_semantic_fields_and_its_outcome() {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let subscriber = SpanLog {
        spans: Arc::clone(&spans),
        entered: Mutex::default(),
    };
    let _guard = tracing::subscriber::set_default(subscriber);
    let Some(pool) = covet_txn_tests::sqlite("obs_spans", 1).await else {
        return;
    };
    let manager = TxManager::new(pool);
    manager
        .transaction(TxOptions::new().name("app::checkout"), || async {
            tracing::info!("inside the body");
            tokio::task::yield_now().await;
            tracing::info!("inside the body, polled again");
            Ok::<_, Error>(())
        })
        .await
        .expect("commits");
    let recorded = spans.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let transaction = recorded
        .iter()
        .find(|fields| fields.get("code.function").map(String::as_str) == Some("app::checkout"))
        .unwrap_or_else(|| panic!("no transaction span in {recorded:?}"));
    assert_eq!(
        transaction.get("db.system").map(String::as_str),
        Some("sqlite")
    );
    assert_eq!(
        transaction.get("covet.attempt").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        transaction.get("covet.outcome").map(String::as_str),
        Some("committed")
    );
    assert_eq!(
        transaction.get(BODY_EVENTS).map(String::as_str),
        Some("2"),
        "the body runs inside its transaction's span, on every poll"
    );
}

/// The field under which `SpanLog` counts this file's own events that
/// happened with a span entered, on the span innermost at the time.
const BODY_EVENTS: &str = "test.events";

/// Records the fields of every span, including those recorded later, and
/// which span this file's events happen in.
struct SpanLog {
    spans: Arc<Mutex<Vec<HashMap<String, String>>>>,
    /// The spans entered and not yet left, innermost last.
    entered: Mutex<Vec<u64>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl tracing::Subscriber for SpanLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        let mut fields = HashMap::new();
        span.record(&mut Fields(&mut fields));
        fields.insert("name".to_owned(), span.metadata().name().to_owned());
        spans.push(fields);
        tracing::span::Id::from_u64(spans.len() as u64)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fields) = spans.get_mut(span.into_u64() as usize - 1) {
            values.record(&mut Fields(fields));
        }
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() != module_path!() {
            return;
        }
        let entered = self.entered.lock().unwrap_or_else(|p| p.into_inner());
        let Some(innermost) = entered.last() else {
            return;
        };
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fields) = spans.get_mut(*innermost as usize - 1) {
            let seen: u32 = fields
                .get(BODY_EVENTS)
                .map_or(0, |n| n.parse().unwrap_or(0));
            fields.insert(BODY_EVENTS.to_owned(), (seen + 1).to_string());
        }
    }

    fn enter(&self, span: &tracing::span::Id) {
        let mut entered = self.entered.lock().unwrap_or_else(|p| p.into_inner());
        entered.push(span.into_u64());
    }

    fn exit(&self, span: &tracing::span::Id) {
        let mut entered = self.entered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(position) = entered.iter().rposition(|id| *id == span.into_u64()) {
            entered.remove(position);
        }
    }
}
