//! MySQL and MariaDB: `START TRANSACTION` has no isolation clause, so the
//! level is set by `SET TRANSACTION` sent in the same request, which costs no
//! extra round trip.

use std::borrow::Cow;
use std::future::Future;

use sqlx::pool::PoolConnection;
use sqlx::{MySql, MySqlConnection};

use super::sealed::BackendOps;
use super::{access_clause, execute_raw, isolation_sql};
use crate::options::TxOptions;

impl BackendOps for MySql {
    const SYSTEM: &'static str = "mysql";

    fn begin_sql(options: &TxOptions) -> Cow<'static, str> {
        let access = access_clause(options);
        match isolation_sql(options) {
            None if access.is_empty() => Cow::Borrowed("START TRANSACTION"),
            None => Cow::Owned(format!("START TRANSACTION{access}")),
            Some(level) => Cow::Owned(format!(
                "SET TRANSACTION ISOLATION LEVEL {level}; START TRANSACTION{access}"
            )),
        }
    }

    fn execute<'c>(
        conn: &'c mut MySqlConnection,
        sql: Cow<'static, str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        execute_raw::<MySql>(conn, sql)
    }

    fn abandon(conn: PoolConnection<MySql>, _options: &TxOptions) {
        // A reply cut off mid-stream leaves the MySQL protocol out of step, and
        // returning such a connection to the pool can hang for ever. Closing
        // the socket is the only safe end; the server rolls back.
        drop(conn.detach());
    }
}
