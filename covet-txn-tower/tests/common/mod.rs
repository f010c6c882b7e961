//! What the layer's tests share: a real axum server on a loopback port, a
//! real HTTP/1.1 client (hyper's) that can keep its connection, per-test
//! tables on the real PostgreSQL (skipped with a notice when it is
//! unreachable, failed under `COVET_REQUIRE_BACKENDS=1`), and an
//! application error type as users write them.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use covet_txn::TxManager;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sqlx::{AssertSqlSafe, PgPool, Postgres};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// An axum application served on 127.0.0.1 until dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on a free loopback port.
pub async fn serve(app: Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("an address");
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            panic!("the server stopped: {error}");
        }
    });
    Server { addr, task }
}

/// One HTTP/1.1 connection to a server, kept open between requests.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    connection: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closes the socket: the server sees the client go away.
        self.connection.abort();
    }
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connects");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("an HTTP/1.1 handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Client { sender, connection }
    }

    /// Sends a request and reads the whole reply, within 30 s.
    pub async fn send(&mut self, method: &str, path: &str, body: &str) -> Reply {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "covet.test")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a request");
        let exchange = async {
            self.sender.ready().await.expect("the connection is open");
            let response = self.sender.send_request(request).await.expect("a response");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("the whole body")
                .to_bytes();
            Reply {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("a reply within 30 s")
    }

    /// Starts sending a request; the reply is awaited separately.
    pub fn start(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>> + use<> {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "covet.test")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a request");
        self.sender.send_request(request)
    }
}

/// One request on a connection of its own.
pub async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    Client::connect(addr).await.send(method, path, body).await
}

/// A manager on the test PostgreSQL server, or `None` to skip.
pub async fn postgres(max_connections: u32) -> Option<TxManager<Postgres>> {
    covet_txn_tests::postgres(max_connections)
        .await
        .map(TxManager::new)
}

/// A fresh table `name (note TEXT NOT NULL)`.
pub async fn notes_table(pool: &PgPool, name: &str) {
    let sql = format!("DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (note TEXT NOT NULL)");
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .expect("creates the table");
}

/// The notes committed in `table`, sorted, read outside any transaction.
pub async fn notes(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT note FROM {table} ORDER BY note"
    )))
    .fetch_all(pool)
    .await
    .expect("reads the notes")
}

/// Inserts a note in the current transaction.
pub async fn insert(table: &str, note: &str) -> Result<(), AppError> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (note) VALUES ($1)"
    )))
    .bind(note)
    .execute(&mut *covet_txn::postgres::conn()?)
    .await?;
    Ok(())
}

/// Raises a real serialization failure (SQLSTATE 40001) on the server.
pub async fn serialization_failure() -> Result<(), AppError> {
    sqlx::raw_sql("DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$")
        .execute(&mut *covet_txn::postgres::conn()?)
        .await?;
    Ok(())
}

/// An application error type as users write them.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Transaction(#[from] covet_txn::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("refused: {0}")]
    Refused(&'static str),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Refused(why) => (StatusCode::CONFLICT, why).into_response(),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "app error").into_response(),
        }
    }
}
