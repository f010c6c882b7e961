//! The bearer token, over real loopback sockets: refused when empty, the
//! scheme matched in any case, every near miss refused with the right
//! challenge, the page trading `?token=` for an HttpOnly SameSite cookie,
//! repeated failures slowed down, and no public address without a token.

mod common;

use std::time::{Duration, Instant};

use common::{TOKEN, get, monitor};
use covet_txn_dashboard::{Dashboard, Error, RunningDashboard};

async fn protected(name: &str) -> (covet_txn::TxManager<sqlx::Sqlite>, RunningDashboard) {
    let (manager, monitor) = monitor(name).await;
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .start()
        .await
        .expect("starts");
    (manager, running)
}

#[tokio::test]
async fn an_empty_or_blank_token_is_refused_at_start_up() {
    let (_manager, monitor) = monitor("empty_token").await;
    for token in ["", "   "] {
        let started = Dashboard::new(monitor.clone())
            .bind("127.0.0.1:0")
            .bearer_token(token)
            .start()
            .await;
        assert!(
            matches!(&started, Err(Error::Refused(reason)) if reason.contains("empty")),
            "{:?}",
            started.map(|running| running.addr())
        );
    }
}

#[tokio::test]
async fn an_address_off_loopback_needs_a_token_or_an_explicit_allowance() {
    let (_manager, monitor) = monitor("remote").await;
    let refused = Dashboard::new(monitor.clone())
        .bind("0.0.0.0:0")
        .start()
        .await;
    assert!(
        matches!(&refused, Err(Error::Refused(reason)) if reason.contains("off loopback")),
        "{:?}",
        refused.map(|running| running.addr())
    );
    // Names that resolve to loopback are loopback.
    let local = Dashboard::new(monitor).bind("localhost:0").start().await;
    let local = local.expect("localhost needs no token");
    assert!(local.addr().ip().is_loopback());
    local.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheme_is_matched_in_any_case_and_near_misses_are_refused() {
    let (_manager, running) = protected("scheme").await;
    let addr = running.addr();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {TOKEN}");
        let reply = get(addr, "/api/state", &[("Authorization", &value)]).await;
        assert_eq!(reply.status, 200, "{value}");
    }
    let challenge = "Bearer realm=\"covet-txn dashboard\"";
    let reply = get(addr, "/api/state", &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some(challenge));

    let shorter = &TOKEN[..TOKEN.len() - 1];
    let longer = format!("{TOKEN}x");
    let near_misses = [
        format!("Bearer {shorter}"),
        format!("Bearer {longer}"),
        format!("Bearer {}", TOKEN.to_uppercase()),
        "Bearer ".to_owned(),
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
    ];
    for value in &near_misses {
        let reply = get(addr, "/api/state", &[("Authorization", value)]).await;
        assert_eq!(reply.status, 401, "{value}");
        let with_token = format!("{challenge}, error=\"invalid_token\"");
        let expected = if value.starts_with("Bearer ") && value.len() > 7 {
            with_token.as_str()
        } else {
            challenge
        };
        assert_eq!(reply.header("www-authenticate"), Some(expected), "{value}");
    }
    // The token never rides in the address of a data request.
    let encoded = "t0ken%2Bwith%2Fodd%3Dchars";
    let reply = get(addr, &format!("/api/state?token={encoded}"), &[]).await;
    assert_eq!(reply.status, 401, "?token= on a data path");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_trades_the_token_in_its_address_for_a_cookie() {
    let (_manager, running) = protected("cookie").await;
    let addr = running.addr();
    let encoded = "t0ken%2Bwith%2Fodd%3Dchars";

    let reply = get(addr, &format!("/?token={encoded}&level=ERROR"), &[]).await;
    assert_eq!(reply.status, 303, "{reply:?}");
    assert_eq!(reply.header("location"), Some("./?level=ERROR"));
    let cookie = reply.header("set-cookie").expect("a cookie");
    assert!(
        cookie.contains("; HttpOnly") && cookie.contains("; SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure") && !cookie.contains("Path="),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value");
    assert!(!pair.contains(TOKEN), "the cookie value is encoded: {pair}");

    for path in ["/", "/api/state", "/export/report.json"] {
        let reply = get(addr, path, &[("Cookie", &format!("theme=dark; {pair}"))]).await;
        assert_eq!(reply.status, 200, "{path} with the cookie");
    }
    let reply = get(
        addr,
        "/api/state",
        &[("Cookie", "covet_txn_dashboard=wrong")],
    )
    .await;
    assert_eq!(reply.status, 401);

    let wrong = get(addr, "/?token=wrong", &[]).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    // Behind a TLS-terminating proxy the cookie is `Secure`.
    let proxied = get(
        addr,
        &format!("/?token={encoded}"),
        &[("X-Forwarded-Proto", "https")],
    )
    .await;
    let cookie = proxied.header("set-cookie").expect("a cookie");
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_slowed_and_the_right_token_is_not() {
    let (_manager, running) = protected("slowing").await;
    let addr = running.addr();
    let mut took = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let reply = get(addr, "/api/state", &[("Authorization", "Bearer wrong")]).await;
        assert_eq!(reply.status, 401);
        took.push(started.elapsed());
    }
    assert!(
        took[0] < Duration::from_millis(90),
        "the first failure waits: {took:?}"
    );
    assert!(
        took[3] >= Duration::from_millis(400) && took[4] >= Duration::from_millis(800),
        "later failures wait longer and longer: {took:?}"
    );
    let started = Instant::now();
    let reply = get(
        addr,
        "/api/state",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "the right token is answered at once"
    );
    running.shutdown().await;
}
