//! covet-txn behind PgBouncer 1.18 (`.ci/topology` runs it on 6432 in front
//! of the shared cluster, dropping prepared statements when it releases a
//! server connection: `server_reset_query = DEALLOCATE ALL`,
//! `server_reset_query_always = 1`).
//!
//! What these tests pin: in transaction pooling, sqlx's statement cache
//! breaks (a cached statement is gone by the next transaction); with the
//! cache off (`statement-cache-capacity=0`) every statement of a
//! transaction is prepared in it and transactions work, whichever client
//! used the server before; outside a transaction sqlx's prepared
//! statements break (it syncs between preparing and binding, and PgBouncer
//! hands the server back in between), the simple protocol does not; a
//! transaction's `SET LOCAL` does not reach the next client; in session
//! pooling sqlx's defaults work. The bank and cancellation tests run behind
//! the transaction pool in `.ci/run`.

use std::time::Duration;

use covet_txn::{Error, TxManager, TxOptions};
use covet_txn_tests::topology;
use sqlx::Postgres;

/// Transaction pooling over one server connection, statement cache off.
const SINGLE: &str = "postgres://postgres@127.0.0.1:6432/test_single?statement-cache-capacity=0";
/// The same with sqlx's default statement cache.
const SINGLE_CACHED: &str = "postgres://postgres@127.0.0.1:6432/test_single";
/// Session pooling, sqlx's defaults.
const SESSION: &str = "postgres://postgres@127.0.0.1:6432/test_session";

async fn manager(url: &str) -> Option<TxManager<Postgres>> {
    Some(TxManager::new(topology::pool(url, 1).await?))
}

/// Two clients of the transaction pool over one server connection.
async fn two_clients() -> Option<(TxManager<Postgres>, TxManager<Postgres>)> {
    Some((manager(SINGLE).await?, manager(SINGLE).await?))
}

/// A transaction that runs one parameterized statement.
async fn add(manager: &TxManager<Postgres>, options: TxOptions, value: i64) -> Result<i64, Error> {
    manager
        .transaction(options, || async {
            let sum: i64 = sqlx::query_scalar("SELECT $1::int8 + 1")
                .bind(value)
                .fetch_one(&mut *manager.conn()?)
                .await?;
            Ok::<_, Error>(sum)
        })
        .await
}

fn sqlstate(error: &Error) -> Option<String> {
    match error {
        Error::Query(sqlx::Error::Database(database)) => {
            database.code().map(|code| code.into_owned())
        }
        _ => None,
    }
}

#[tokio::test]
async fn in_transaction_pooling_sqlx_statement_cache_breaks_the_next_transaction() {
    let Some(manager) = manager(SINGLE_CACHED).await else {
        return;
    };
    assert_eq!(
        add(&manager, TxOptions::new(), 1).await.expect("the first"),
        2
    );
    let error = add(&manager, TxOptions::new(), 2)
        .await
        .expect_err("the cached statement was dropped with the server's release");
    assert_eq!(sqlstate(&error).as_deref(), Some("26000"), "{error}");
}

#[tokio::test]
async fn in_transaction_pooling_transactions_work_without_the_statement_cache() {
    let Some((first, second)) = two_clients().await else {
        return;
    };
    // Two clients take turns on the one server connection.
    for value in 0..50 {
        let manager = if value % 2 == 0 { &first } else { &second };
        let read_only = TxOptions::new().read_only(value % 3 == 0);
        assert_eq!(
            add(manager, read_only, value).await.expect("a transaction"),
            value + 1
        );
    }
}

#[tokio::test]
async fn in_transaction_pooling_prepared_statements_outside_a_transaction_break() {
    let Some(pool) = topology::pool::<Postgres>(SINGLE, 1).await else {
        return;
    };
    let prepared = sqlx::query_scalar::<_, i64>("SELECT $1::int8")
        .bind(1_i64)
        .fetch_one(&pool)
        .await;
    assert!(
        matches!(&prepared, Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("26000")),
        "{prepared:?}"
    );
    let simple = covet_txn_tests::column::<_, _, i64>(&pool, "SELECT 1::int8".into()).await;
    assert_eq!(simple.expect("the simple protocol"), [1]);
}

#[tokio::test]
async fn in_transaction_pooling_a_transactions_settings_do_not_reach_the_next_client() {
    let Some((first, second)) = two_clients().await else {
        return;
    };
    let timeout_inside: String = first
        .transaction(
            TxOptions::new().timeout(Duration::from_secs(30)),
            || async {
                let setting: String =
                    sqlx::query_scalar("SELECT current_setting('statement_timeout')")
                        .fetch_one(&mut *first.conn()?)
                        .await?;
                Ok::<_, Error>(setting)
            },
        )
        .await
        .expect("a transaction with a deadline");
    assert_ne!(timeout_inside, "0", "the deadline set a server timeout");
    let timeout_after: String = second
        .transaction(TxOptions::new(), || async {
            let setting: String = sqlx::query_scalar("SELECT current_setting('statement_timeout')")
                .fetch_one(&mut *second.conn()?)
                .await?;
            Ok::<_, Error>(setting)
        })
        .await
        .expect("the next client's transaction");
    assert_eq!(timeout_after, "0");
}

#[tokio::test]
async fn in_session_pooling_sqlx_defaults_work_in_and_out_of_transactions() {
    let Some(manager) = manager(SESSION).await else {
        return;
    };
    for value in 0..10 {
        assert_eq!(
            add(&manager, TxOptions::new(), value)
                .await
                .expect("a transaction"),
            value + 1
        );
        let outside: i64 = sqlx::query_scalar("SELECT $1::int8")
            .bind(value)
            .fetch_one(manager.pool())
            .await
            .expect("a prepared statement outside a transaction");
        assert_eq!(outside, value);
    }
}
