//! Bank: concurrent money transfers with
//! `#[transactional(isolation = "serializable", retry = ..., timeout = ...)]`.
//!
//! Eight tasks move money between five accounts at the same time. Each
//! transfer reads both balances and writes them back, which only a
//! serializable transaction keeps correct; conflicts (serialization failures
//! on PostgreSQL, deadlocks on MariaDB, a busy database on SQLite) are
//! retried with jittered backoff. Then it runs the same transfers again
//! with the accounts each one touches declared (`conflict_key = [from,
//! to]`): transfers that share an account take turns in this process before
//! they reach the database, so they stop conflicting there. At the end the
//! total is unchanged and no account is overdrawn.
//!
//! ```sh
//! cargo run --example bank                                       # embedded SQLite file
//! cargo run --example bank -- postgres://postgres@127.0.0.1/test
//! cargo run --example bank -- mysql://root@127.0.0.1/test
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use covet_txn::{Backend, TxManager, transactional};
use sqlx::{MySql, Pool, Postgres, Sqlite};

const ACCOUNTS: i64 = 5;
const OPENING_BALANCE: i64 = 1_000;
const TASKS: usize = 8;
const TRANSFERS_PER_TASK: usize = 50;

#[derive(Debug)]
enum BankError {
    Transaction(covet_txn::Error),
    Database(sqlx::Error),
    InsufficientFunds {
        account: i64,
        balance: i64,
        amount: i64,
    },
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BankError::Transaction(error) => write!(f, "{error}"),
            BankError::Database(error) => write!(f, "{error}"),
            BankError::InsufficientFunds {
                account,
                balance,
                amount,
            } => {
                write!(f, "account {account} holds {balance}, cannot send {amount}")
            }
        }
    }
}

impl std::error::Error for BankError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BankError::Transaction(error) => Some(error),
            BankError::Database(error) => Some(error),
            BankError::InsufficientFunds { .. } => None,
        }
    }
}

impl From<covet_txn::Error> for BankError {
    fn from(error: covet_txn::Error) -> Self {
        BankError::Transaction(error)
    }
}

impl From<sqlx::Error> for BankError {
    fn from(error: sqlx::Error) -> Self {
        BankError::Database(error)
    }
}

/// Moves `amount` from one account to another, or refuses an overdraft.
#[transactional(
    isolation = "serializable",
    retry = 25,
    backoff = "2ms",
    max_backoff = "200ms",
    timeout = "20s"
)]
async fn transfer<DB: Ledger>(from: i64, to: i64, amount: i64) -> Result<u32, BankError> {
    move_money::<DB>(from, to, amount).await
}

/// The same transfer, with the two accounts it touches declared as its
/// conflict keys: transfers sharing an account take turns before they
/// reach the database instead of conflicting there and retrying.
#[transactional(
    isolation = "serializable",
    retry = 25,
    backoff = "2ms",
    max_backoff = "200ms",
    timeout = "20s",
    conflict_key = [from, to]
)]
async fn transfer_keyed<DB: Ledger>(from: i64, to: i64, amount: i64) -> Result<u32, BankError> {
    move_money::<DB>(from, to, amount).await
}

/// A transfer's statements, run in whichever transaction its caller began;
/// returns the attempt it ran in.
async fn move_money<DB: Ledger>(from: i64, to: i64, amount: i64) -> Result<u32, BankError> {
    let from_balance = DB::balance(from).await?;
    if from_balance < amount {
        return Err(BankError::InsufficientFunds {
            account: from,
            balance: from_balance,
            amount,
        });
    }
    let to_balance = DB::balance(to).await?;
    DB::set_balance(from, from_balance - amount).await?;
    DB::set_balance(to, to_balance + amount).await?;
    DB::record(from, to, amount).await?;
    Ok(covet_txn::current().map_or(1, |info| info.attempt))
}

async fn run<DB: Ledger>(pool: Pool<DB>) -> Result<(), Box<dyn std::error::Error>> {
    DB::open_accounts(&pool).await?;
    TxManager::new(pool.clone()).install_default()?;
    println!(
        "{ACCOUNTS} accounts of {OPENING_BALANCE}; {TASKS} tasks x {TRANSFERS_PER_TASK} transfers, twice"
    );
    for keyed in [false, true] {
        println!();
        println!(
            "{}",
            if keyed {
                "with conflict_key = [from, to]:"
            } else {
                "without conflict keys:"
            }
        );
        transfers::<DB>(keyed).await?;
    }

    let (total, lowest, transfers) = DB::summary(&pool).await?;
    println!();
    println!("committed transfers: {transfers}");
    println!(
        "total money: {total} (opened with {})",
        ACCOUNTS * OPENING_BALANCE
    );
    println!("lowest balance: {lowest}");
    assert_eq!(
        total,
        ACCOUNTS * OPENING_BALANCE,
        "money was created or lost"
    );
    assert!(lowest >= 0, "an account was overdrawn");
    println!("the books balance");
    Ok(())
}

/// One pass of every task's transfers, `keyed` or not; prints what
/// happened.
async fn transfers<DB: Ledger>(keyed: bool) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let retried = Arc::new(AtomicU32::new(0));
    let refused = Arc::new(AtomicU32::new(0));
    let gave_up = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (retried, refused, gave_up) = (
            Arc::clone(&retried),
            Arc::clone(&refused),
            Arc::clone(&gave_up),
        );
        tasks.push(tokio::spawn(async move {
            for n in 0..TRANSFERS_PER_TASK {
                let from = ((task + n) as i64) % ACCOUNTS + 1;
                let to = ((task * 3 + n * 7 + 1) as i64) % ACCOUNTS + 1;
                if from == to {
                    continue;
                }
                let amount = 1 + (n as i64 * 37) % 400;
                let done = if keyed {
                    transfer_keyed::<DB>(from, to, amount).await
                } else {
                    transfer::<DB>(from, to, amount).await
                };
                match done {
                    Ok(attempts) => {
                        retried.fetch_add(attempts - 1, Ordering::Relaxed);
                    }
                    Err(BankError::InsufficientFunds { .. }) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    // Still conflicting after every retry: nothing was
                    // committed, and a real service would report it.
                    Err(BankError::Transaction(covet_txn::Error::RetriesExhausted { .. })) => {
                        gave_up.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => return Err(error),
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!("  took {:?}", started.elapsed());
    println!(
        "  refused for insufficient funds: {}",
        refused.load(Ordering::Relaxed)
    );
    println!(
        "  retries after conflicts: {}",
        retried.load(Ordering::Relaxed)
    );
    println!(
        "  given up after every retry: {}",
        gave_up.load(Ordering::Relaxed)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1) {
        Some(url) if url.starts_with("postgres") => {
            println!("bank on PostgreSQL");
            run(sqlx::postgres::PgPoolOptions::new()
                .max_connections(TASKS as u32)
                .connect(&url)
                .await?)
            .await
        }
        Some(url) if url.starts_with("mysql") || url.starts_with("mariadb") => {
            println!("bank on MariaDB/MySQL");
            run(sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(TASKS as u32)
                .connect(&url)
                .await?)
            .await
        }
        Some(other) => Err(format!("expected a postgres:// or mysql:// URL, got `{other}`").into()),
        None => {
            let path = std::env::temp_dir().join("covet-bank.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            println!("bank on SQLite at {}", path.display());
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
            run(sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(TASKS as u32)
                .connect_with(options)
                .await?)
            .await
        }
    }
}

/// The bank's SQL, once per database: the transfer logic above is written
/// once against it.
trait Ledger: Backend {
    fn balance(account: i64) -> impl Future<Output = Result<i64, BankError>> + Send;
    fn set_balance(
        account: i64,
        balance: i64,
    ) -> impl Future<Output = Result<(), BankError>> + Send;
    fn record(
        from: i64,
        to: i64,
        amount: i64,
    ) -> impl Future<Output = Result<(), BankError>> + Send;
    fn open_accounts(pool: &Pool<Self>) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Total money, lowest balance, transfers logged.
    fn summary(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<(i64, i64, i64), sqlx::Error>> + Send;
}

const SCHEMA: &str = "DROP TABLE IF EXISTS bank_transfers; DROP TABLE IF EXISTS bank_accounts; \
    CREATE TABLE bank_accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL); \
    CREATE TABLE bank_transfers (source BIGINT NOT NULL, target BIGINT NOT NULL, amount BIGINT NOT NULL)";

fn opening_rows() -> String {
    let rows: Vec<String> = (1..=ACCOUNTS)
        .map(|id| format!("({id}, {OPENING_BALANCE})"))
        .collect();
    format!(
        "INSERT INTO bank_accounts (id, balance) VALUES {}",
        rows.join(", ")
    )
}

impl Ledger for Postgres {
    async fn balance(account: i64) -> Result<i64, BankError> {
        let balance = sqlx::query_scalar("SELECT balance FROM bank_accounts WHERE id = $1")
            .bind(account)
            .fetch_one(&mut *covet_txn::conn::<Postgres>()?)
            .await?;
        Ok(balance)
    }

    async fn set_balance(account: i64, balance: i64) -> Result<(), BankError> {
        sqlx::query("UPDATE bank_accounts SET balance = $1 WHERE id = $2")
            .bind(balance)
            .bind(account)
            .execute(&mut *covet_txn::conn::<Postgres>()?)
            .await?;
        Ok(())
    }

    async fn record(from: i64, to: i64, amount: i64) -> Result<(), BankError> {
        sqlx::query("INSERT INTO bank_transfers (source, target, amount) VALUES ($1, $2, $3)")
            .bind(from)
            .bind(to)
            .bind(amount)
            .execute(&mut *covet_txn::conn::<Postgres>()?)
            .await?;
        Ok(())
    }

    async fn open_accounts(pool: &Pool<Postgres>) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(SCHEMA).execute(pool).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(opening_rows()))
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn summary(pool: &Pool<Postgres>) -> Result<(i64, i64, i64), sqlx::Error> {
        sqlx::query_as(
            "SELECT SUM(balance)::int8, MIN(balance), (SELECT COUNT(*) FROM bank_transfers) FROM bank_accounts",
        )
        .fetch_one(pool)
        .await
    }
}

impl Ledger for MySql {
    async fn balance(account: i64) -> Result<i64, BankError> {
        let balance = sqlx::query_scalar("SELECT balance FROM bank_accounts WHERE id = ?")
            .bind(account)
            .fetch_one(&mut *covet_txn::conn::<MySql>()?)
            .await?;
        Ok(balance)
    }

    async fn set_balance(account: i64, balance: i64) -> Result<(), BankError> {
        sqlx::query("UPDATE bank_accounts SET balance = ? WHERE id = ?")
            .bind(balance)
            .bind(account)
            .execute(&mut *covet_txn::conn::<MySql>()?)
            .await?;
        Ok(())
    }

    async fn record(from: i64, to: i64, amount: i64) -> Result<(), BankError> {
        sqlx::query("INSERT INTO bank_transfers (source, target, amount) VALUES (?, ?, ?)")
            .bind(from)
            .bind(to)
            .bind(amount)
            .execute(&mut *covet_txn::conn::<MySql>()?)
            .await?;
        Ok(())
    }

    async fn open_accounts(pool: &Pool<MySql>) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(SCHEMA).execute(pool).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(opening_rows()))
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn summary(pool: &Pool<MySql>) -> Result<(i64, i64, i64), sqlx::Error> {
        sqlx::query_as(
            "SELECT CAST(SUM(balance) AS SIGNED), MIN(balance), (SELECT COUNT(*) FROM bank_transfers) FROM bank_accounts",
        )
        .fetch_one(pool)
        .await
    }
}

impl Ledger for Sqlite {
    async fn balance(account: i64) -> Result<i64, BankError> {
        let balance = sqlx::query_scalar("SELECT balance FROM bank_accounts WHERE id = ?")
            .bind(account)
            .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
            .await?;
        Ok(balance)
    }

    async fn set_balance(account: i64, balance: i64) -> Result<(), BankError> {
        sqlx::query("UPDATE bank_accounts SET balance = ? WHERE id = ?")
            .bind(balance)
            .bind(account)
            .execute(&mut *covet_txn::conn::<Sqlite>()?)
            .await?;
        Ok(())
    }

    async fn record(from: i64, to: i64, amount: i64) -> Result<(), BankError> {
        sqlx::query("INSERT INTO bank_transfers (source, target, amount) VALUES (?, ?, ?)")
            .bind(from)
            .bind(to)
            .bind(amount)
            .execute(&mut *covet_txn::conn::<Sqlite>()?)
            .await?;
        Ok(())
    }

    async fn open_accounts(pool: &Pool<Sqlite>) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(SCHEMA).execute(pool).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(opening_rows()))
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn summary(pool: &Pool<Sqlite>) -> Result<(i64, i64, i64), sqlx::Error> {
        sqlx::query_as("SELECT SUM(balance), MIN(balance), (SELECT COUNT(*) FROM bank_transfers) FROM bank_accounts")
            .fetch_one(pool)
            .await
    }
}
