//! The limits of a dashboard that serves itself, over real loopback
//! sockets: slow and idle clients are closed within the configured
//! timeouts, a refused client is closed after its 401, the connection cap
//! holds while a client with the token still gets in, event streams are
//! capped, and a stream whose client stopped reading gives its place back.

mod common;

use std::time::{Duration, Instant};

use common::{
    TOKEN, bearer, closed_within, get_authorised, monitor, open_stream, read_reply, request,
};
use covet_txn_dashboard::{Dashboard, RunningDashboard};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

async fn start(dashboard: Dashboard) -> RunningDashboard {
    dashboard
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .start()
        .await
        .expect("the dashboard starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_at_the_header_read_timeout() {
    let (_manager, monitor) = monitor("slowloris").await;
    let running = start(Dashboard::new(monitor).header_read_timeout(Duration::from_secs(1))).await;
    let addr = running.addr();

    // Twenty clients each send a request head one byte every 300 ms: they
    // would take 20 s to finish it.
    let clients: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connects");
                let started = Instant::now();
                let head = request(addr, "/api/state", &[bearer_line()], false);
                for byte in head.as_bytes() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return started.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if started.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    for client in clients {
        let lasted = client.await.expect("the client does not panic");
        assert!(
            lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(3),
            "a slow client was closed after {lasted:?}, not at the 1 s header timeout"
        );
    }
    running.shutdown().await;
}

fn bearer_line() -> (&'static str, &'static str) {
    ("Authorization", "Bearer t0ken+with/odd=chars")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_refused_ones_right_after_their_401() {
    let (_manager, monitor) = monitor("idle").await;
    let running = start(Dashboard::new(monitor).header_read_timeout(Duration::from_secs(1))).await;
    let addr = running.addr();

    let mut silent = TcpStream::connect(addr).await.expect("connects");
    let closed = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|after| after >= Duration::from_millis(900)),
        "a connection that sent nothing: closed after {closed:?}"
    );

    // A kept-alive connection with the token: served, then closed when
    // no next request comes within the timeout.
    let mut kept = TcpStream::connect(addr).await.expect("connects");
    let (name, value) = bearer();
    kept.write_all(request(addr, "/api/state", &[(name, &value)], false).as_bytes())
        .await
        .expect("sends");
    assert_eq!(read_reply(&mut kept).await.status, 200);
    let closed = closed_within(&mut kept, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|after| after >= Duration::from_millis(800)),
        "an idle kept-alive connection: closed after {closed:?}"
    );

    // A wrong token: the 401, then the connection is closed at once, even
    // though the client asked to keep it.
    let mut refused = TcpStream::connect(addr).await.expect("connects");
    refused
        .write_all(
            request(
                addr,
                "/api/state",
                &[("Authorization", "Bearer wrong")],
                false,
            )
            .as_bytes(),
        )
        .await
        .expect("sends");
    let reply = read_reply(&mut refused).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("connection"), Some("close"));
    let closed = closed_within(&mut refused, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|after| after < Duration::from_millis(500)),
        "a refused connection: closed after {closed:?}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_strangers_give_way_to_a_client_with_the_token() {
    let (_manager, monitor) = monitor("cap").await;
    // Timeouts far away: only the cap closes connections here.
    let running = start(
        Dashboard::new(monitor)
            .max_connections(8)
            .header_read_timeout(Duration::from_secs(60)),
    )
    .await;
    let addr = running.addr();

    let mut strangers = Vec::new();
    for _ in 0..20 {
        strangers.push(TcpStream::connect(addr).await.expect("connects"));
        // In order, so that "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut closed = 0;
    let mut open = Vec::new();
    for (index, mut stranger) in strangers.into_iter().enumerate() {
        if closed_within(&mut stranger, Duration::from_millis(300))
            .await
            .is_some()
        {
            closed += 1;
            assert!(index < 12, "the newest connections are kept, not #{index}");
        } else {
            open.push(stranger);
        }
    }
    assert_eq!((closed, open.len()), (12, 8), "the cap of 8 holds");

    let started = Instant::now();
    let reply = get_authorised(addr, "/api/state").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_showed_the_token_are_kept_and_a_new_one_is_refused() {
    let (_manager, monitor) = monitor("cap_trusted").await;
    let running = start(
        Dashboard::new(monitor)
            .max_connections(4)
            .header_read_timeout(Duration::from_secs(60)),
    )
    .await;
    let addr = running.addr();
    let (name, value) = bearer();
    let head = request(addr, "/api/state", &[(name, &value)], false);

    let mut trusted = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        stream.write_all(head.as_bytes()).await.expect("sends");
        assert_eq!(read_reply(&mut stream).await.status, 200);
        trusted.push(stream);
    }
    let mut fifth = TcpStream::connect(addr).await.expect("connects");
    let closed = closed_within(&mut fifth, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "a fifth connection is refused");
    for stream in &mut trusted {
        stream.write_all(head.as_bytes()).await.expect("sends");
        assert_eq!(
            read_reply(stream).await.status,
            200,
            "a trusted connection still serves"
        );
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_and_a_closed_one_frees_its_place() {
    let (_manager, monitor) = monitor("stream_cap").await;
    let running = start(
        Dashboard::new(monitor)
            .max_event_streams(2)
            .refresh(Duration::from_millis(100)),
    )
    .await;
    let addr = running.addr();
    let (name, value) = bearer();
    let lines = [(name, value.as_str())];

    let (first, one) = open_stream(addr, &lines).await;
    let (second, _two) = open_stream(addr, &lines).await;
    assert_eq!((first, second), (200, 200));
    let (third, _) = open_stream(addr, &lines).await;
    assert_eq!(third, 503, "a third stream is over the cap");

    drop(one);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _stream) = open_stream(addr, &lines).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stopped_reading_is_dropped() {
    let (manager, monitor) = monitor("stalled").await;
    // Enough functions that an update weighs a few kilobytes.
    for index in 0..40 {
        let name = format!("service::function_with_a_long_descriptive_name_{index}");
        common::commit(&manager, Box::leak(name.into_boxed_str())).await;
    }
    let running = start(
        Dashboard::new(monitor)
            .max_event_streams(1)
            .refresh(Duration::from_millis(100))
            .idle_timeout(Duration::from_secs(1)),
    )
    .await;
    let addr = running.addr();
    let (name, value) = bearer();
    let head = request(addr, "/api/events", &[(name, &value)], false);

    // A client with a small receive buffer that never reads.
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut stalled = socket.connect(addr).await.expect("connects");
    stalled.write_all(head.as_bytes()).await.expect("sends");

    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = open_stream(addr, &[(name, &value)]).await;
    assert_eq!(status, 503, "the stalled stream holds the only place");
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (status, _stream) = open_stream(addr, &[(name, &value)]).await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a client that stopped reading still holds its stream after 20 s"
        );
    }
    eprintln!(
        "the stalled stream was dropped after {:?}",
        started.elapsed()
    );
    drop(stalled);
    running.shutdown().await;
}
