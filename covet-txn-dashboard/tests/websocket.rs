//! The WebSocket endpoint, over real loopback sockets, spoken by hand (the
//! handshake and RFC 6455 frames): it pushes the same updates as the event
//! stream, byte for byte; it follows the same token, Host and Origin rules;
//! WebSockets and event streams share one cap; an upgraded connection keeps
//! its place under the connection cap and its idle timeout; and shutdown
//! ends open sockets.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Reply, TOKEN, bearer, closed_within, monitor, open_stream, parse, request};
use covet_txn_dashboard::{Dashboard, RunningDashboard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn start(dashboard: Dashboard) -> RunningDashboard {
    dashboard
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .refresh(Duration::from_millis(100))
        .start()
        .await
        .expect("the dashboard starts")
}

/// Sends a WebSocket handshake for `target` with these extra lines, and
/// returns the status and the stream (positioned after the response head).
async fn handshake(
    stream: &mut TcpStream,
    addr: SocketAddr,
    target: &str,
    lines: &[(&str, &str)],
) -> u16 {
    let mut all = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    all.extend_from_slice(lines);
    stream
        .write_all(request(addr, target, &all, false).as_bytes())
        .await
        .expect("sends");
    let reply = read_head(stream).await;
    if reply.status == 101 {
        assert_eq!(
            reply.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "the RFC 6455 sample key's answer"
        );
    }
    reply.status
}

/// Reads a response head byte by byte: what follows it (frames, chunks)
/// stays in the stream.
async fn read_head(stream: &mut TcpStream) -> Reply {
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .expect("reads");
        assert!(read > 0, "closed before answering");
        head.push(byte[0]);
    }
    parse(&head).expect("a response head")
}

/// Opens a WebSocket to `/api/ws` with the token.
async fn open_socket(addr: SocketAddr) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let (name, value) = bearer();
    let status = handshake(&mut stream, addr, "/api/ws", &[(name, &value)]).await;
    (status, stream)
}

/// One frame from the server: its opcode and payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0_u8; 2];
    stream.read_exact(&mut head).await.expect("a frame head");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let length = match head[1] & 0x7f {
        126 => {
            let mut length = [0_u8; 2];
            stream.read_exact(&mut length).await.expect("a length");
            u64::from(u16::from_be_bytes(length))
        }
        127 => {
            let mut length = [0_u8; 8];
            stream.read_exact(&mut length).await.expect("a length");
            u64::from_be_bytes(length)
        }
        short => u64::from(short),
    };
    let mut payload = vec![0_u8; usize::try_from(length).expect("a sane length")];
    stream.read_exact(&mut payload).await.expect("a payload");
    (head[0] & 0x0f, payload)
}

/// The next text message, skipping pings.
async fn next_text(stream: &mut TcpStream) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (opcode, payload) = read_frame(stream).await;
            match opcode {
                1 => return String::from_utf8(payload).expect("UTF-8 text"),
                9 | 10 => {}
                other => panic!("unexpected frame {other}: {payload:?}"),
            }
        }
    })
    .await
    .expect("a message within 10 s")
}

/// An event stream opened with the token, read chunk by chunk.
struct Events {
    stream: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
}

impl Events {
    async fn open(addr: SocketAddr) -> Events {
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        let (name, value) = bearer();
        stream
            .write_all(request(addr, "/api/events", &[(name, &value)], false).as_bytes())
            .await
            .expect("sends");
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("transfer-encoding"), Some("chunked"));
        Events {
            stream,
            raw: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Moves every complete chunk of `raw` into `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|pair| pair == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line_end])
                .ok()
                .and_then(|size| usize::from_str_radix(size.trim(), 16).ok())
                .expect("a chunk size");
            let end = line_end + 2 + size + 2;
            if self.raw.len() < end {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..end);
        }
    }

    /// The data of the next `state` event.
    async fn next_state(&mut self) -> String {
        const START: &str = "event: state\ndata: ";
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let text = String::from_utf8_lossy(&self.body).into_owned();
                if let Some(start) = text.find(START)
                    && let Some(end) = text[start..].find("\n\n")
                {
                    let data = text[start + START.len()..start + end].to_owned();
                    self.body.drain(..start + end + 2);
                    return data;
                }
                let mut buffer = [0_u8; 16 * 1024];
                let read = self.stream.read(&mut buffer).await.expect("reads");
                assert!(read > 0, "the stream ended");
                self.raw.extend_from_slice(&buffer[..read]);
                self.dechunk();
            }
        })
        .await
        .expect("an event within 10 s")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_pushes_the_same_updates_as_the_event_stream() {
    let (manager, monitor) = monitor("ws_same").await;
    common::commit(&manager, "app::deposit").await;
    monitor.sample().expect("a sample");
    let running = start(Dashboard::new(monitor)).await;
    let addr = running.addr();

    let (status, mut socket) = open_socket(addr).await;
    assert_eq!(status, 101);
    let mut events = Events::open(addr).await;

    let mut messages = Vec::new();
    let mut data = Vec::new();
    for _ in 0..4 {
        messages.push(next_text(&mut socket).await);
        data.push(events.next_state().await);
    }
    let state: serde_json::Value = serde_json::from_str(&messages[0]).expect("JSON");
    assert_eq!(state["metrics"]["manager"], "ws_same");
    assert!(
        state["metrics"]["functions"]
            .as_array()
            .is_some_and(|functions| functions
                .iter()
                .any(|function| function["function"] == "app::deposit"))
    );
    // Built once per tick: some update reached both, as the same bytes.
    assert!(
        messages.iter().any(|message| data.contains(message)),
        "no WebSocket message equals an event's data"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_follows_the_token_host_and_origin_rules() {
    let (_manager, monitor) = monitor("ws_rules").await;
    let running = start(Dashboard::new(monitor)).await;
    let addr = running.addr();
    let origin = format!("http://{addr}");
    let (name, value) = bearer();
    let cookie = format!("covet_txn_dashboard={}", "t0ken%2Bwith%2Fodd%3Dchars");
    for (lines, expected, why) in [
        (vec![], 401, "no token"),
        (
            vec![("Authorization", "Bearer wrong")],
            401,
            "a wrong token",
        ),
        (
            vec![(name, value.as_str()), ("Origin", "http://evil.example")],
            403,
            "a page of another site",
        ),
        (
            vec![(name, value.as_str()), ("Host", "attacker.example:7777")],
            421,
            "a rebound name",
        ),
        (
            vec![("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            101,
            "the page's own cookie, from its own origin",
        ),
    ] {
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        let status = handshake(&mut stream, addr, "/api/ws", &lines).await;
        assert_eq!(status, expected, "{why}");
    }
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let status = handshake(&mut stream, addr, "/api/ws?level=loud", &[(name, &value)]).await;
    assert_eq!(status, 400, "an unknown level");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_and_event_streams_share_one_cap() {
    let (_manager, monitor) = monitor("ws_cap").await;
    let running = start(Dashboard::new(monitor).max_event_streams(2)).await;
    let addr = running.addr();
    let (name, value) = bearer();

    let (status, socket) = open_socket(addr).await;
    assert_eq!(status, 101);
    let (status, _events) = open_stream(addr, &[(name, &value)]).await;
    assert_eq!(status, 200);
    let (status, _) = open_socket(addr).await;
    assert_eq!(status, 503, "a WebSocket over the cap");
    let (status, _) = open_stream(addr, &[(name, &value)]).await;
    assert_eq!(status, 503, "an event stream over the cap");

    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _socket) = open_socket(addr).await;
        if status == 101 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed WebSocket's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_keeps_its_place_under_the_connection_cap() {
    let (_manager, monitor) = monitor("ws_connections").await;
    let running = start(
        Dashboard::new(monitor)
            .max_connections(2)
            .header_read_timeout(Duration::from_secs(60)),
    )
    .await;
    let addr = running.addr();
    let (status, mut first) = open_socket(addr).await;
    assert_eq!(status, 101);
    let (status, _second) = open_socket(addr).await;
    assert_eq!(status, 101);
    // Both sockets showed the token: a third connection finds no place.
    let (name, value) = bearer();
    let mut third = TcpStream::connect(addr).await.expect("connects");
    third
        .write_all(request(addr, "/api/state", &[(name, &value)], true).as_bytes())
        .await
        .expect("sends");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "the upgraded connections still count: {answer}"
    );
    // And the first socket still gets its updates.
    let state: serde_json::Value =
        serde_json::from_str(&next_text(&mut first).await).expect("JSON");
    assert_eq!(state["metrics"]["manager"], "ws_connections");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_client_stopped_reading_is_dropped() {
    let (manager, monitor) = monitor("ws_stalled").await;
    // Enough functions that an update weighs a few kilobytes.
    for index in 0..40 {
        let name = format!("service::function_with_a_long_descriptive_name_{index}");
        common::commit(&manager, Box::leak(name.into_boxed_str())).await;
    }
    let running = start(
        Dashboard::new(monitor)
            .max_event_streams(1)
            .idle_timeout(Duration::from_secs(1)),
    )
    .await;
    let addr = running.addr();
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut stalled = socket.connect(addr).await.expect("connects");
    let (name, value) = bearer();
    assert_eq!(
        handshake(&mut stalled, addr, "/api/ws", &[(name, &value)]).await,
        101
    );
    let started = Instant::now();
    let (status, _) = open_socket(addr).await;
    assert_eq!(status, 503, "the stalled socket holds the only place");
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (status, _socket) = open_socket(addr).await;
        if status == 101 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a client that stopped reading still holds its WebSocket after 20 s"
        );
    }
    eprintln!(
        "the stalled WebSocket was dropped after {:?}",
        started.elapsed()
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_websockets_within_its_bound() {
    let (_manager, monitor) = monitor("ws_shutdown").await;
    let running = start(Dashboard::new(monitor)).await;
    let addr = running.addr();
    let (status, mut socket) = open_socket(addr).await;
    assert_eq!(status, 101);
    next_text(&mut socket).await;
    let started = Instant::now();
    running.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    let closed = closed_within(&mut socket, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the WebSocket is closed");
}
