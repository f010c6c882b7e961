//! PostgreSQL: the isolation level and access mode go into the BEGIN itself,
//! so every transaction begins in one statement.

use std::borrow::Cow;
use std::future::Future;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};

use super::sealed::BackendOps;
use super::{access_clause, execute_raw, isolation_sql};
use crate::options::TxOptions;

impl BackendOps for Postgres {
    const SYSTEM: &'static str = "postgresql";

    fn begin_sql(options: &TxOptions) -> Cow<'static, str> {
        let access = access_clause(options);
        match isolation_sql(options) {
            None if access.is_empty() => Cow::Borrowed("BEGIN"),
            None => Cow::Owned(format!("BEGIN{access}")),
            Some(level) => Cow::Owned(format!("BEGIN ISOLATION LEVEL {level}{access}")),
        }
    }

    fn execute<'c>(
        conn: &'c mut PgConnection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        execute_raw::<Postgres>(conn, sql)
    }

    fn abandon(conn: PoolConnection<Postgres>, _options: &TxOptions) {
        // A statement may have been cut off mid-reply; only closing the socket
        // is sure to end the transaction. The server rolls back when it sees
        // the connection go.
        drop(conn.detach());
    }
}
