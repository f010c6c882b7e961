//! DNS rebinding and cross-origin reads, over real loopback sockets: a
//! request that names a host the dashboard does not answer to is refused
//! on every path, with or without a token; a request for data from a page
//! of another origin is refused even with the token.

mod common;

use common::{TOKEN, get, monitor};
use covet_txn_dashboard::Dashboard;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_is_refused_on_every_path() {
    let (_manager, monitor) = monitor("rebinding").await;
    // The documented default: loopback, no token.
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .allow_host("dashboard.internal")
        .start()
        .await
        .expect("starts");
    let addr = running.addr();
    let port = addr.port();

    for path in [
        "/",
        "/api/state",
        "/api/events",
        "/export/report.json",
        "/metrics",
        "/assets/app.js",
    ] {
        let rebound = format!("attacker.example:{port}");
        let reply = get(addr, path, &[("Host", &rebound)]).await;
        assert_eq!(reply.status, 421, "{path} for Host {rebound}: {reply:?}");
        assert!(
            !reply.body.contains("covet_txn_transactions"),
            "no data leaks"
        );
    }
    let localhost = format!("localhost:{port}");
    let v6 = format!("[::1]:{port}");
    let named = format!("Dashboard.Internal:{port}");
    for host in [addr.to_string(), localhost, v6, named] {
        let reply = get(addr, "/api/state", &[("Host", &host)]).await;
        assert_eq!(reply.status, 200, "Host {host}");
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_data_from_another_origin_is_refused() {
    let (_manager, monitor) = monitor("origin").await;
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .start()
        .await
        .expect("starts");
    let addr = running.addr();
    let bearer = format!("Bearer {TOKEN}");
    let own = format!("http://{addr}");

    for path in [
        "/api/state",
        "/export/report.json",
        "/export/metrics.csv",
        "/metrics",
    ] {
        let foreign = get(
            addr,
            path,
            &[
                ("Authorization", &bearer),
                ("Origin", "http://attacker.example"),
            ],
        )
        .await;
        assert_eq!(foreign.status, 403, "{path} from a foreign origin");
        let other_port = get(
            addr,
            path,
            &[("Authorization", &bearer), ("Origin", "http://127.0.0.1:1")],
        )
        .await;
        assert_eq!(
            other_port.status, 403,
            "{path} from another port of the same host"
        );
        let cross_site = get(
            addr,
            path,
            &[("Authorization", &bearer), ("Sec-Fetch-Site", "cross-site")],
        )
        .await;
        assert_eq!(
            cross_site.status, 403,
            "{path} with Sec-Fetch-Site: cross-site"
        );
        let same = get(
            addr,
            path,
            &[
                ("Authorization", &bearer),
                ("Origin", &own),
                ("Sec-Fetch-Site", "same-origin"),
            ],
        )
        .await;
        assert_eq!(same.status, 200, "{path} from the dashboard's own page");
    }
    running.shutdown().await;
}
