//! Failed authentication in the log, over real loopback sockets: a burst of
//! wrong tokens gives one warning, not one per request, and no log line
//! holds a token. Its own test binary: it installs a global subscriber.

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use common::{TOKEN, get, monitor};
use covet_txn_dashboard::Dashboard;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Every event, as `LEVEL target: field=value ...`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Subscriber for Captured {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut line = format!("{} {}:", metadata.level(), metadata.target());
        event.record(&mut Line(&mut line));
        if let Ok(mut lines) = self.0.lock() {
            lines.push(line);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_tokens_logs_one_warning_and_no_token() {
    let captured = Captured::default();
    tracing::subscriber::set_global_default(captured.clone()).expect("the only subscriber");

    let (_manager, monitor) = monitor("logs").await;
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .start()
        .await
        .expect("starts");
    let addr = running.addr();
    let guesses: Vec<_> = (0..30)
        .map(|index| {
            tokio::spawn(async move {
                let guess = format!("Bearer guess-{index}");
                get(addr, "/api/state", &[("Authorization", &guess)])
                    .await
                    .status
            })
        })
        .collect();
    for guess in guesses {
        assert_eq!(guess.await.expect("no panic"), 401);
    }
    let ok = get(
        addr,
        "/api/state",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(ok.status, 200);
    running.shutdown().await;

    let lines = captured.0.lock().expect("not poisoned").clone();
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with(&format!("{} covet_txn_dashboard:", Level::WARN)))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("refused"), "{}", warnings[0]);
    assert!(
        lines
            .iter()
            .all(|line| !line.contains(TOKEN) && !line.contains("guess-")),
        "a token reached the log: {lines:#?}"
    );
}
