//! An axum service with one transaction per request (covet-txn-tower): the
//! `POST /orders/{item}/{quantity}` route runs in a transaction begun by
//! `TransactionLayer`, its handler writes an audit row and calls a
//! `#[transactional]` service function (with a `thiserror` error type),
//! which nests in the request's transaction as a SAVEPOINT and registers an
//! `on_commit` hook. An order that succeeds commits the audit row and the
//! order together, and its hook runs before the client gets the 201; an
//! order refused for lack of stock answers 409 and leaves nothing behind;
//! `/health` is excluded and runs outside any transaction. Retry is on, so a
//! deadlock or serialization failure would run the request again. The
//! program serves on a loopback port, sends itself three requests over real
//! HTTP, and prints what happened.
//!
//! ```sh
//! cargo run --example axum_service                                   # SQLite in a temporary file
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run --example axum_service
//! ```

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use covet_txn::{Backend, TxManager, TxOptions, transactional};
use covet_txn_tower::{HandlerFailure, TransactionLayer};
use sqlx::{Pool, Postgres, Sqlite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What can go wrong in the shop.
#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error("only {available} of item {item} left")]
    OutOfStock { item: i64, available: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Transaction(#[from] covet_txn::Error),
}

impl IntoResponse for ShopError {
    fn into_response(self) -> Response {
        match self {
            refusal @ ShopError::OutOfStock { .. } => {
                (StatusCode::CONFLICT, format!("{refusal}\n")).into_response()
            }
            // Say nothing of the database to the client, but hand the error
            // to the layer: a deadlock or serialization failure in it makes
            // the layer run the request again.
            failure => {
                let mut response =
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response();
                response
                    .extensions_mut()
                    .insert(HandlerFailure::new(failure));
                response
            }
        }
    }
}

/// Takes the items from stock and records the order, or refuses. Runs in a
/// SAVEPOINT of the request's transaction, and finds the layer's manager
/// without naming one.
#[transactional]
async fn place_order<DB: Store>(item: i64, quantity: i64) -> Result<i64, ShopError> {
    let available = DB::stock(item).await?;
    if available < quantity {
        return Err(ShopError::OutOfStock { item, available });
    }
    DB::take(item, quantity).await?;
    DB::record_order(item, quantity).await?;
    covet_txn::on_commit(move || async move {
        println!("    on_commit: confirmation sent for {quantity} x item {item}");
    })
    .await;
    Ok(available - quantity)
}

/// `POST /orders/{item}/{quantity}`: an audit row in the request's
/// transaction, then the order. A refusal answers 409, which rolls the
/// audit row back with it.
async fn order<DB: Store>(
    Path((item, quantity)): Path<(i64, i64)>,
) -> Result<(StatusCode, String), ShopError> {
    DB::audit(item, quantity).await?;
    let left = place_order::<DB>(item, quantity).await?;
    Ok((StatusCode::CREATED, format!("ordered; {left} left\n")))
}

/// `GET /health`: excluded from the layer, so no transaction runs.
async fn health() -> String {
    format!("ok; in a transaction: {}\n", covet_txn::current().is_some())
}

fn app<DB: Store>(manager: TxManager<DB>) -> Router {
    Router::new()
        .route("/orders/{item}/{quantity}", post(order::<DB>))
        .route("/health", get(health))
        .layer(
            TransactionLayer::new(manager)
                .options(TxOptions::new().retries(3))
                .exclude_path_prefix("/health"),
        )
}

async fn run<DB: Store>(pool: Pool<DB>) -> Result<(), Box<dyn std::error::Error>> {
    DB::open_shop(&pool).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server =
        tokio::spawn(axum::serve(listener, app(TxManager::new(pool.clone()))).into_future());
    println!("serving on http://{addr}; 3 of item 1 in stock");

    for (method, path) in [
        ("POST", "/orders/1/2"),
        ("POST", "/orders/1/5"),
        ("GET", "/health"),
    ] {
        println!("  {method} {path}");
        let (status, body) = request(addr, method, path).await?;
        println!("    answered {status}: {}", body.trim_end());
    }
    let (stock, orders, audits) = DB::summary(&pool).await?;
    println!("stock of item 1: {stock}; orders: {orders}; audit rows: {audits}");
    assert_eq!(
        (stock, orders, audits),
        (1, 1, 1),
        "the refused order left something behind"
    );
    server.abort();
    Ok(())
}

/// One HTTP/1.1 request on a connection of its own: the status line and
/// the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(String, String), std::io::Error> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.lines().next().unwrap_or_default();
    let status = status.split_once(' ').map_or(status, |(_, status)| status);
    Ok((status.to_owned(), body.to_owned()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            println!("shop on PostgreSQL");
            run(sqlx::PgPool::connect(&url).await?).await
        }
        Ok(other) => Err(format!("expected a postgres:// URL, got `{other}`").into()),
        Err(_) => {
            let path = std::env::temp_dir().join("covet-axum-service.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            println!("shop on SQLite at {}", path.display());
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
            run(sqlx::SqlitePool::connect_with(options).await?).await
        }
    }
}

/// The shop's SQL, once per database; the service above is written once
/// against it. The statements are the same text on both (SQLite reads
/// `$1` too), only the connection's type differs.
trait Store: Backend {
    fn stock(item: i64) -> impl Future<Output = Result<i64, ShopError>> + Send;
    fn take(item: i64, quantity: i64) -> impl Future<Output = Result<(), ShopError>> + Send;
    fn record_order(item: i64, quantity: i64)
    -> impl Future<Output = Result<(), ShopError>> + Send;
    fn audit(item: i64, quantity: i64) -> impl Future<Output = Result<(), ShopError>> + Send;
    fn open_shop(pool: &Pool<Self>) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Stock of item 1, orders, audit rows.
    fn summary(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<(i64, i64, i64), sqlx::Error>> + Send;
}

const STOCK: &str = "SELECT quantity FROM shop_stock WHERE item = $1";
const TAKE: &str = "UPDATE shop_stock SET quantity = quantity - $1 WHERE item = $2";
const RECORD: &str = "INSERT INTO shop_orders (item, quantity) VALUES ($1, $2)";
const AUDIT: &str = "INSERT INTO shop_audit (item, quantity) VALUES ($1, $2)";
const SCHEMA: &str = "DROP TABLE IF EXISTS shop_stock; DROP TABLE IF EXISTS shop_orders; \
    DROP TABLE IF EXISTS shop_audit; \
    CREATE TABLE shop_stock (item BIGINT PRIMARY KEY, quantity BIGINT NOT NULL); \
    CREATE TABLE shop_orders (item BIGINT NOT NULL, quantity BIGINT NOT NULL); \
    CREATE TABLE shop_audit (item BIGINT NOT NULL, quantity BIGINT NOT NULL); \
    INSERT INTO shop_stock VALUES (1, 3)";
const SUMMARY: &str = "SELECT (SELECT quantity FROM shop_stock WHERE item = 1), \
    (SELECT count(*) FROM shop_orders), (SELECT count(*) FROM shop_audit)";

impl Store for Sqlite {
    async fn stock(item: i64) -> Result<i64, ShopError> {
        let mut conn = covet_txn::sqlite::conn()?;
        Ok(sqlx::query_scalar(STOCK)
            .bind(item)
            .fetch_one(&mut *conn)
            .await?)
    }

    async fn take(item: i64, quantity: i64) -> Result<(), ShopError> {
        let mut conn = covet_txn::sqlite::conn()?;
        sqlx::query(TAKE)
            .bind(quantity)
            .bind(item)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn record_order(item: i64, quantity: i64) -> Result<(), ShopError> {
        let mut conn = covet_txn::sqlite::conn()?;
        sqlx::query(RECORD)
            .bind(item)
            .bind(quantity)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn audit(item: i64, quantity: i64) -> Result<(), ShopError> {
        let mut conn = covet_txn::sqlite::conn()?;
        sqlx::query(AUDIT)
            .bind(item)
            .bind(quantity)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn open_shop(pool: &Pool<Sqlite>) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(SCHEMA).execute(pool).await?;
        Ok(())
    }

    async fn summary(pool: &Pool<Sqlite>) -> Result<(i64, i64, i64), sqlx::Error> {
        sqlx::query_as(SUMMARY).fetch_one(pool).await
    }
}

impl Store for Postgres {
    async fn stock(item: i64) -> Result<i64, ShopError> {
        let mut conn = covet_txn::postgres::conn()?;
        Ok(sqlx::query_scalar(STOCK)
            .bind(item)
            .fetch_one(&mut *conn)
            .await?)
    }

    async fn take(item: i64, quantity: i64) -> Result<(), ShopError> {
        let mut conn = covet_txn::postgres::conn()?;
        sqlx::query(TAKE)
            .bind(quantity)
            .bind(item)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn record_order(item: i64, quantity: i64) -> Result<(), ShopError> {
        let mut conn = covet_txn::postgres::conn()?;
        sqlx::query(RECORD)
            .bind(item)
            .bind(quantity)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn audit(item: i64, quantity: i64) -> Result<(), ShopError> {
        let mut conn = covet_txn::postgres::conn()?;
        sqlx::query(AUDIT)
            .bind(item)
            .bind(quantity)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn open_shop(pool: &Pool<Postgres>) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(SCHEMA).execute(pool).await?;
        Ok(())
    }

    async fn summary(pool: &Pool<Postgres>) -> Result<(i64, i64, i64), sqlx::Error> {
        sqlx::query_as(SUMMARY).fetch_one(pool).await
    }
}
