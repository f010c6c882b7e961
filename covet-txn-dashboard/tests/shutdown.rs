//! Stopping a dashboard over real loopback sockets: `shutdown()` ends open
//! event streams and returns within its bound, even when a client stopped
//! reading; dropping the `RunningDashboard` stops it too.

mod common;

use std::time::{Duration, Instant};

use common::{TOKEN, bearer, closed_within, monitor, open_stream, request};
use covet_txn_dashboard::Dashboard;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_event_streams_at_once() {
    let (_manager, monitor) = monitor("shutdown_streams").await;
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .refresh(Duration::from_millis(100))
        .start()
        .await
        .expect("starts");
    let addr = running.addr();
    let (name, value) = bearer();
    let mut pages = Vec::new();
    for _ in 0..3 {
        let (status, stream) = open_stream(addr, &[(name, &value)]).await;
        assert_eq!(status, 200);
        pages.push(stream);
    }

    let started = Instant::now();
    running.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "shutdown took {took:?} with pages open"
    );
    for page in &mut pages {
        let closed = closed_within(page, Duration::from_secs(1)).await;
        assert!(closed.is_some(), "an event stream outlived the shutdown");
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_within_its_bound_when_a_client_stopped_reading() {
    let (manager, monitor) = monitor("shutdown_stalled").await;
    // Updates of some 100 kB, which a small socket buffer cannot take.
    for index in 0..200 {
        let name = format!("service::a_function_with_a_long_and_descriptive_name_{index:03}");
        common::commit(&manager, Box::leak(name.into_boxed_str())).await;
    }
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .refresh(Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(1))
        .start()
        .await
        .expect("starts");
    let addr = running.addr();
    let (name, value) = bearer();

    // A download the client never reads, on a socket that takes little:
    // the response cannot finish, so only the bound ends it.
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut stalled = socket.connect(addr).await.expect("connects");
    let head = request(addr, "/api/events", &[(name, &value)], false);
    stalled.write_all(head.as_bytes()).await.expect("sends");
    let mut keep_alive = TcpStream::connect(addr).await.expect("connects");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    running.shutdown().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1700),
        "shutdown took {took:?}; its bound is 1 s, and a stalled response must not end earlier"
    );
    assert!(
        closed_within(&mut keep_alive, Duration::from_secs(1))
            .await
            .is_some(),
        "an idle connection outlived the shutdown"
    );
    assert!(
        closed_within(&mut stalled, Duration::from_secs(1))
            .await
            .is_some(),
        "the stalled connection outlived the shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_running_dashboard_stops_it() {
    let (_manager, monitor) = monitor("drop").await;
    let running = Dashboard::new(monitor)
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .start()
        .await
        .expect("starts");
    let addr = running.addr();
    let (name, value) = bearer();
    let (status, mut page) = open_stream(addr, &[(name, &value)]).await;
    assert_eq!(status, 200);

    drop(running);
    assert!(
        closed_within(&mut page, Duration::from_secs(2))
            .await
            .is_some(),
        "the page's stream outlived the dashboard"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting 2 s after the drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
