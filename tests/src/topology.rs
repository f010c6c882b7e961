//! The replica, failover pair, PgBouncer and MariaDB pair that
//! `.ci/topology` builds on loopback: connecting to them, skipping (or failing under
//! `COVET_REQUIRE_BACKENDS=1`) when they are missing, and running the
//! script's commands that stop, start and rebuild servers.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sqlx::{ConnectOptions, Connection, Pool};

use crate::{backends_required, pool_options};

/// The streaming replica of the shared cluster.
pub const REPLICA_URL: &str = "postgres://postgres@127.0.0.1:5433/test";
/// The two hosts of the failover pair; either may be the primary.
pub const PAIR_URLS: [&str; 2] = [
    "postgres://postgres@127.0.0.1:5434/test",
    "postgres://postgres@127.0.0.1:5435/test",
];
/// PgBouncer's transaction-pooled database, with sqlx's statement cache off.
pub const PGBOUNCER_URL: &str =
    "postgres://postgres@127.0.0.1:6432/test?statement-cache-capacity=0";

/// The MariaDB pair's primary, as the tests' user (whom `read_only` binds).
pub const MARIADB_PRIMARY_URL: &str = "mysql://covet@127.0.0.1:3307/test";
/// The MariaDB pair's replica of [`MARIADB_PRIMARY_URL`].
pub const MARIADB_REPLICA_URL: &str = "mysql://covet@127.0.0.1:3308/test";

/// Connect options for `url`, of the backend the caller asks for.
pub fn options<O: ConnectOptions>(url: &str) -> O {
    match O::from_str(url) {
        Ok(options) => options,
        Err(error) => panic!("`{url}` is not a URL sqlx can connect to: {error}"),
    }
}

/// A pool on `url`, part of the topology, or `None` after a notice.
pub async fn pool<DB: sqlx::Database>(url: &str, max_connections: u32) -> Option<Pool<DB>>
where
    <DB::Connection as Connection>::Options: ConnectOptions<Connection = DB::Connection>,
{
    pool_with::<DB>(options(url), url, max_connections).await
}

/// A pool with these options, or `None` after a notice.
pub async fn pool_with<DB: sqlx::Database>(
    options: <DB::Connection as Connection>::Options,
    url: &str,
    max_connections: u32,
) -> Option<Pool<DB>>
where
    <DB::Connection as Connection>::Options: ConnectOptions<Connection = DB::Connection>,
{
    let connected = pool_options(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await;
    match connected {
        Ok(pool) => Some(pool),
        Err(error) => {
            assert!(
                !backends_required(),
                "{url} is unreachable ({error}) and COVET_REQUIRE_BACKENDS=1: run `.ci/topology up`"
            );
            eprintln!(
                "notice: skipping: {url} is unreachable ({error}); `.ci/topology up` builds the \
                 replica, failover pair, PgBouncer and MariaDB pair"
            );
            None
        }
    }
}

/// Runs `.ci/topology` with `arguments`, panicking if it fails.
pub fn run(arguments: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/topology");
    let status = Command::new(&script).args(arguments).status();
    match status {
        Ok(status) if status.success() => {}
        other => panic!("{} {arguments:?} failed: {other:?}", script.display()),
    }
}

/// A change to the topology, undone when dropped, even if the test fails:
/// the servers are put back for the next test.
pub struct Changed {
    undo: fn(),
}

impl Changed {
    /// Makes `change` now, and `undo` when the guard goes.
    pub fn start(change: fn(), undo: fn()) -> Changed {
        change();
        Changed { undo }
    }
}

impl Drop for Changed {
    fn drop(&mut self) {
        (self.undo)();
    }
}
