//! A loopback proxy that counts the queries each side sends, so that the
//! latency table can show both make the same round trips.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A loopback proxy that counts the queries a client sends: PostgreSQL
/// simple-query and Execute messages, MySQL COM_QUERY and COM_STMT_EXECUTE
/// commands. Pool pings are not counted. Used only in a counting pass; the
/// timed passes connect directly.
pub struct QueryCounter {
    /// The port clients connect to.
    pub port: u16,
    queries: Arc<AtomicU64>,
}

/// The wire protocol a [`QueryCounter`] parses.
#[derive(Clone, Copy)]
pub enum Protocol {
    /// PostgreSQL's frontend protocol.
    Postgres,
    /// MySQL's client protocol.
    MySql,
}

impl QueryCounter {
    /// Listens on a loopback port and relays each connection to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr, protocol: Protocol) -> QueryCounter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let port = listener.local_addr().expect("has an address").port();
        let queries = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&queries);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, protocol, Arc::clone(&counted)));
            }
        });
        QueryCounter { port, queries }
    }

    /// Queries sent per call of `work`, over a few calls.
    pub async fn per_call<F, Fut>(&self, mut work: F) -> f64
    where
        F: FnMut(i64) -> Fut,
        Fut: Future<Output = ()>,
    {
        const CALLS: i64 = 20;
        work(0).await;
        self.queries.store(0, Ordering::SeqCst);
        for call in 1..=CALLS {
            work(call).await;
        }
        self.queries.load(Ordering::SeqCst) as f64 / CALLS as f64
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    protocol: Protocol,
    queries: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_reads, mut client_writes) = client.into_split();
    let (mut server_reads, mut server_writes) = server.into_split();
    let upstream = async move {
        let mut parser = Parser::new(protocol);
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read) = client_reads.read(&mut buffer).await {
            if read == 0 {
                return;
            }
            queries.fetch_add(parser.feed(&buffer[..read]), Ordering::Relaxed);
            if server_writes.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_reads, &mut client_writes).await;
    };
    tokio::join!(upstream, downstream);
}

/// Splits a client's byte stream into messages and counts the queries.
struct Parser {
    protocol: Protocol,
    pending: Vec<u8>,
    /// PostgreSQL starts with untyped messages (SSL request, startup).
    started: bool,
}

impl Parser {
    fn new(protocol: Protocol) -> Self {
        Parser {
            protocol,
            pending: Vec::new(),
            started: false,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> u64 {
        self.pending.extend_from_slice(bytes);
        let mut counted = 0;
        loop {
            let (length, query) = match self.protocol {
                Protocol::Postgres if !self.started => {
                    let Some(header) = self.pending.get(..8) else {
                        break;
                    };
                    let length =
                        u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                    let code = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                    // The startup message carries protocol 3.0; an SSL or
                    // GSS request comes before it.
                    self.started = code == 196_608;
                    (length, false)
                }
                Protocol::Postgres => {
                    let Some(header) = self.pending.get(..5) else {
                        break;
                    };
                    let length =
                        1 + u32::from_be_bytes([header[1], header[2], header[3], header[4]])
                            as usize;
                    (length, matches!(header[0], b'Q' | b'E'))
                }
                Protocol::MySql => {
                    let Some(header) = self.pending.get(..5) else {
                        break;
                    };
                    let length = 4
                        + (usize::from(header[0])
                            | usize::from(header[1]) << 8
                            | usize::from(header[2]) << 16);
                    // A command opens a sequence: COM_QUERY 0x03, COM_STMT_EXECUTE 0x17.
                    (length, header[3] == 0 && matches!(header[4], 0x03 | 0x17))
                }
            };
            if self.pending.len() < length {
                break;
            }
            self.pending.drain(..length);
            counted += u64::from(query);
        }
        counted
    }
}

/// The socket address of a server's host and port, for a counter to relay
/// to.
pub fn resolve(host: &str, port: u16) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("the server's address resolves")
}
