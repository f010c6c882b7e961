//! The downloads, over real loopback sockets: function names that a
//! spreadsheet would run as formulas arrive neutralised, empty exports
//! still have their header row (the same as a full export's), and an
//! unknown `?level=` is a 400 that lists the accepted levels.

mod common;

use std::time::Duration;

use common::{TOKEN, get_authorised, monitor};
use covet_txn::TxOptions;
use covet_txn_dashboard::Dashboard;

const FORMULAS: [&str; 6] = [
    "=HYPERLINK(\"http://attacker.example\",\"open\")",
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
];

fn rows(csv: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(csv.as_bytes())
        .records()
        .map(|row| row.expect("a CSV row").iter().map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formulas_in_function_names_are_neutralised() {
    let (manager, monitor) = monitor("formulas").await;
    for name in FORMULAS {
        common::commit(&manager, name).await;
        // A timeout per function raises an alert that names it.
        let timed_out = manager
            .transaction(
                TxOptions::new()
                    .name(name)
                    .timeout(Duration::from_millis(5)),
                || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, covet_txn::Error>(())
                },
            )
            .await;
        assert!(timed_out.is_err());
    }
    monitor.sample().expect("a sample");
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .start()
        .await
        .expect("starts");
    let addr = running.addr();

    let metrics = get_authorised(addr, "/export/metrics.csv").await;
    assert_eq!(metrics.status, 200);
    let alerts = get_authorised(addr, "/export/alerts.csv").await;
    assert_eq!(alerts.status, 200);
    for (file, body) in [("metrics.csv", &metrics.body), ("alerts.csv", &alerts.body)] {
        let rows = rows(body);
        let function = rows[0]
            .iter()
            .position(|column| column == "function")
            .expect("a function column");
        for name in FORMULAS {
            assert!(
                rows.iter().any(|row| row[function] == format!("'{name}")),
                "{file} has no neutralised {name:?}: {rows:?}"
            );
        }
        for row in &rows {
            for cell in row {
                assert!(
                    !cell.starts_with(['=', '+', '@', '\t', '\r'])
                        && (!cell.starts_with('-') || cell.parse::<f64>().is_ok()),
                    "{file}: a cell a spreadsheet would run: {cell:?}"
                );
            }
        }
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_exports_have_the_header_row_of_full_ones() {
    let (manager, monitor) = monitor("empty_exports").await;
    let running = Dashboard::new(monitor.clone())
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .start()
        .await
        .expect("starts");
    let addr = running.addr();
    let empty_history = get_authorised(addr, "/export/history.csv").await;
    let empty_alerts = get_authorised(addr, "/export/alerts.csv").await;
    assert_eq!((empty_history.status, empty_alerts.status), (200, 200));
    assert_eq!(rows(&empty_history.body).len(), 1, "{}", empty_history.body);
    assert_eq!(rows(&empty_alerts.body).len(), 1, "{}", empty_alerts.body);

    let timed_out = manager
        .transaction(
            TxOptions::new().timeout(Duration::from_millis(5)),
            || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, covet_txn::Error>(())
            },
        )
        .await;
    assert!(timed_out.is_err());
    monitor.sample().expect("a sample");
    let history = get_authorised(addr, "/export/history.csv").await;
    let alerts = get_authorised(addr, "/export/alerts.csv").await;
    assert!(rows(&history.body).len() > 1 && rows(&alerts.body).len() > 1);
    assert_eq!(rows(&empty_history.body)[0], rows(&history.body)[0]);
    assert_eq!(rows(&empty_alerts.body)[0], rows(&alerts.body)[0]);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_level_is_a_400_that_lists_the_levels() {
    let (_manager, monitor) = monitor("levels").await;
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .start()
        .await
        .expect("starts");
    let addr = running.addr();
    for path in ["/api/state", "/api/events", "/export/alerts.csv"] {
        let reply = get_authorised(addr, &format!("{path}?level=LOUD")).await;
        assert_eq!(reply.status, 400, "{path}");
        assert!(
            reply.body.contains("LOUD") && reply.body.contains("INFO, WARNING, ERROR, CRITICAL"),
            "{path}: {}",
            reply.body
        );
    }
    for level in ["", "info", "Warning", "ERROR", "critical"] {
        let reply = get_authorised(addr, &format!("/api/state?level={level}")).await;
        assert_eq!(reply.status, 200, "level={level}");
    }
    running.shutdown().await;
}
