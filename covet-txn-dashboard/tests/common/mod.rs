//! Helpers shared by the dashboard's tests: a monitor over an embedded
//! SQLite database, and HTTP/1.1 spoken by hand over real loopback sockets,
//! so that every test sees exactly what the server sends and when it closes.

#![allow(dead_code)] // each test file uses its own share of the helpers

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use covet_txn::monitor::{Monitor, MonitorConfig};
use covet_txn::{TxManager, TxOptions};
use sqlx::Sqlite;
use sqlx::sqlite::SqlitePoolOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TOKEN: &str = "t0ken+with/odd=chars";

/// A manager over an in-memory SQLite database and its monitor, which
/// samples only when a test asks (`monitor.sample()`), so that what the
/// dashboard shows does not depend on timing.
pub async fn monitor(name: &str) -> (TxManager<Sqlite>, Monitor) {
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect("sqlite::memory:")
        .await
        .expect("an in-memory SQLite database");
    let manager = TxManager::builder(pool).name(name).build();
    let monitor = manager.monitor_with(MonitorConfig::new().interval(Duration::from_secs(3600)));
    (manager, monitor)
}

/// Runs one empty transaction named `name`.
pub async fn commit(manager: &TxManager<Sqlite>, name: &'static str) {
    manager
        .transaction(TxOptions::new().name(name), || async {
            Ok::<_, covet_txn::Error>(())
        })
        .await
        .expect("commits");
}

/// A reply read to its end (the request asked the server to close).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Sends one GET with `Connection: close` and these extra header lines,
/// and reads the whole reply. `Host` is the address unless a line sets it.
pub async fn get(addr: SocketAddr, target: &str, lines: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream
        .write_all(request(addr, target, lines, true).as_bytes())
        .await
        .expect("sends");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("the reply ends within 20 s")
        .expect("reads");
    parse(&raw).expect("a complete reply")
}

/// `get` with the token in the `Authorization` header.
pub async fn get_authorised(addr: SocketAddr, target: &str) -> Reply {
    get(
        addr,
        target,
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .await
}

/// The text of a GET request.
pub fn request(addr: SocketAddr, target: &str, lines: &[(&str, &str)], close: bool) -> String {
    let mut text = format!("GET {target} HTTP/1.1\r\n");
    if !lines
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        text.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in lines {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        text.push_str("Connection: close\r\n");
    }
    text.push_str("\r\n");
    text
}

/// Parses a reply's head and body (a chunked body is left as sent).
pub fn parse(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Reads one reply on a kept-alive connection: its head, and a body of
/// `Content-Length` bytes.
pub async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let mut buffer = [0_u8; 8192];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("a reply within 10 s")
            .expect("reads");
        assert!(read > 0, "the connection closed before the reply ended");
        raw.extend_from_slice(&buffer[..read]);
        if let Some(reply) = parse(&raw) {
            let length: usize = reply
                .header("content-length")
                .and_then(|length| length.parse().ok())
                .unwrap_or(0);
            if reply.body.len() >= length {
                return reply;
            }
        }
    }
}

/// How long until the server closes `stream`, reading (and dropping)
/// whatever it sends meanwhile; `None` if it is still open after `limit`.
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0_u8; 16 * 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.ok().map(|()| started.elapsed())
}

/// Opens an event stream and reads until its head has arrived: the stream
/// is then open on the server.
pub async fn open_stream(addr: SocketAddr, lines: &[(&str, &str)]) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream
        .write_all(request(addr, "/api/events", lines, false).as_bytes())
        .await
        .expect("sends");
    let mut raw = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer within 10 s")
            .expect("reads");
        assert!(read > 0, "closed before answering");
        raw.extend_from_slice(&buffer[..read]);
        if let Some(reply) = parse(&raw) {
            return (reply.status, stream);
        }
    }
}

/// The authorisation header line.
pub fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}
