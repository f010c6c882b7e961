//! Replicas: `read_only` transactions on a streaming replica, everything
//! else on the primary, and read-your-writes.
//!
//! A task writes an order and reads it back at once (its read goes to the
//! primary, since the replica may not have replayed the write yet); another
//! request of the same user, given the session token the write produced,
//! reads it too; an unrelated read runs on the replica. At the end the
//! manager tells where the reads went and how far behind the replica is.
//!
//! ```sh
//! .ci/topology up    # a replica of the local PostgreSQL on 5433 (as root)
//! cargo run --example replicas
//! cargo run --example replicas -- postgres://primary/db postgres://replica/db
//! ```

use std::time::Duration;

use covet_txn::{SessionToken, TxManager, transactional};
use sqlx::postgres::PgPoolOptions;

#[transactional]
async fn place_order(item: &str) -> Result<i64, covet_txn::Error> {
    let id =
        sqlx::query_scalar("INSERT INTO replica_example_orders (item) VALUES ($1) RETURNING id")
            .bind(item)
            .fetch_one(&mut *covet_txn::postgres::conn()?)
            .await?;
    Ok(id)
}

/// The order, if this server has it, and whether the server is a replica.
#[transactional(read_only)]
async fn find_order(id: i64) -> Result<(Option<String>, bool), covet_txn::Error> {
    let item = sqlx::query_scalar("SELECT item FROM replica_example_orders WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *covet_txn::postgres::conn()?)
        .await?;
    let on_replica = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *covet_txn::postgres::conn()?)
        .await?;
    Ok((item, on_replica))
}

fn server(on_replica: bool) -> &'static str {
    if on_replica {
        "the replica"
    } else {
        "the primary"
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut urls = std::env::args().skip(1);
    let primary_url = urls
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let replica_url = urls
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5433/test".to_owned());
    let primary = PgPoolOptions::new().connect(&primary_url).await?;
    // A short acquire timeout: a read whose replica is gone goes to the
    // primary instead of waiting.
    let replica = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect(&replica_url)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS replica_example_orders (id bigserial PRIMARY KEY, item text NOT NULL)",
    )
    .execute(&primary)
    .await?;

    let manager = TxManager::builder(primary)
        .replica(replica)
        .max_replica_lag(Duration::from_secs(2))
        .build();
    manager.refresh_replicas().await;

    // One request: write, then read back at once.
    let writer = manager.clone();
    let (id, token) = tokio::spawn(writer.clone().scope(async move {
        let id = place_order("teapot").await?;
        let (item, on_replica) = find_order(id).await?;
        println!(
            "the writing task reads {item:?} from {}",
            server(on_replica)
        );
        let token = writer.session_token().await?;
        Ok::<_, covet_txn::Error>((id, token))
    }))
    .await??;

    // The user's next request, perhaps in another process: the token says
    // what it must see.
    let token: Option<SessionToken> = token.map(|token| token.to_string().parse()).transpose()?;
    let reader = manager.clone();
    tokio::spawn(reader.clone().scope(async move {
        if let Some(token) = token {
            reader.read_after(token);
        }
        let (item, on_replica) = find_order(id).await?;
        println!(
            "the next request reads {item:?} from {}",
            server(on_replica)
        );
        Ok::<_, covet_txn::Error>(())
    }))
    .await??;

    // Someone else's read, a moment later: the replica.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (item, on_replica) = manager.scope(find_order(id)).await?;
    println!("an unrelated read finds {item:?} on {}", server(on_replica));

    let report = manager.replicas();
    for replica in &report.replicas {
        println!(
            "{}: serving {}, lag {:?} ({:?} bytes), {} reads",
            replica.name, replica.serving, replica.lag, replica.lag_bytes, replica.reads
        );
    }
    println!(
        "reads on the primary: {} for the tasks' own writes, {} with no replica available",
        report.reads_on_primary_for_writes, report.reads_on_primary_unavailable
    );
    Ok(())
}
