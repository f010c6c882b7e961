//! A loopback TCP proxy that can cut a connection right after forwarding a
//! COMMIT, so that the server commits but the client never hears back: the
//! ambiguous-commit case, made on demand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The proxy; connections to [`CommitCutter::addr`] reach `upstream`.
pub struct CommitCutter {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
}

impl CommitCutter {
    /// Starts a proxy in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let armed = Arc::new(AtomicBool::new(false));
        let accepting = Arc::clone(&armed);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, Arc::clone(&accepting)));
            }
        });
        Ok(CommitCutter { addr, armed })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the next connection that sends a COMMIT, after forwarding it.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

async fn relay(client: TcpStream, server: TcpStream, armed: Arc<AtomicBool>) {
    let (mut client_reads, mut client_writes) = client.into_split();
    let (mut server_reads, mut server_writes) = server.into_split();
    let cut = Arc::new(Notify::new());
    let cut_seen = Arc::clone(&cut);
    let upstream = async move {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = match client_reads.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            let chunk = &buffer[..read];
            let commits = chunk.windows(6).any(|window| window == b"COMMIT");
            if commits && armed.swap(false, Ordering::SeqCst) {
                // Hold back the replies first, then let the COMMIT through;
                // keep the server side open until it has answered.
                cut.notify_one();
                let _ = server_writes.write_all(chunk).await;
                let _ = client_reads.read(&mut buffer).await;
                return;
            }
            if server_writes.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let downstream = async move {
        let mut buffer = vec![0; 64 * 1024];
        let mut cutting = false;
        loop {
            let read = if cutting {
                // The server's answer to the COMMIT: once it arrives, the
                // server has committed; swallow it and hang up.
                match tokio::time::timeout(Duration::from_secs(5), server_reads.read(&mut buffer))
                    .await
                {
                    Ok(read) => read,
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    _ = cut_seen.notified() => {
                        cutting = true;
                        continue;
                    }
                    read = server_reads.read(&mut buffer) => read,
                }
            };
            let read = match read {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            if cutting || client_writes.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(upstream, downstream);
}
