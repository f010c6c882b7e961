//! The bank: concurrent transfers at SERIALIZABLE with retry keep the books
//! balanced on every backend, as they are by default, with contention
//! management on, and with declared conflict keys (which, on MariaDB at
//! SERIALIZABLE, go on to the next transfer as the COMMIT goes out). Each
//! transfer reads both balances and writes them back, so only real
//! serializability keeps the invariant.

use std::collections::BTreeSet;

use covet_txn::{Error, transactional};
use covet_txn_tests::{AppError, each_backend};

const ACCOUNTS: i64 = 10;
const OPENING_BALANCE: i64 = 100;
const TASKS: i64 = 16;
const TRANSFERS_PER_TASK: i64 = 125;

each_backend! {
    fn accounts_table(variant: &str) -> String {
        format!("bank_accounts_{BACKEND}_{variant}")
    }

    fn log_table(variant: &str) -> String {
        format!("bank_log_{BACKEND}_{variant}")
    }

    #[transactional(isolation = "serializable", retry = 40, backoff = "1ms", max_backoff = "40ms")]
    async fn transfer(id: i64, from: i64, to: i64, amount: i64) -> Result<u32, AppError> {
        move_money("default", id, from, to, amount).await
    }

    #[transactional(isolation = "serializable", retry = 40, backoff = "1ms", max_backoff = "40ms", contention = "adaptive")]
    async fn transfer_managed(id: i64, from: i64, to: i64, amount: i64) -> Result<u32, AppError> {
        move_money("managed", id, from, to, amount).await
    }

    #[transactional(isolation = "serializable", retry = 40, backoff = "1ms", max_backoff = "40ms", conflict_key = [from, to])]
    async fn transfer_keyed(id: i64, from: i64, to: i64, amount: i64) -> Result<u32, AppError> {
        move_money("keyed", id, from, to, amount).await
    }

    /// The body of every transfer: read both balances, refuse an
    /// overdraft, write both back, log it; the attempt it took.
    async fn move_money(variant: &str, id: i64, from: i64, to: i64, amount: i64) -> Result<u32, AppError> {
        let accounts = accounts_table(variant);
        let from_balance = scalar(format!("SELECT balance FROM {accounts} WHERE id = {from}")).await?;
        let to_balance = scalar(format!("SELECT balance FROM {accounts} WHERE id = {to}")).await?;
        if from_balance < amount {
            return Err(AppError::Refused("overdraft"));
        }
        exec(format!("UPDATE {accounts} SET balance = {} WHERE id = {from}", from_balance - amount)).await?;
        exec(format!("UPDATE {accounts} SET balance = {} WHERE id = {to}", to_balance + amount)).await?;
        exec(format!(
            "INSERT INTO {} (id, source, target, amount) VALUES ({id}, {from}, {to}, {amount})",
            log_table(variant)
        ))
        .await?;
        Ok(covet_txn::current().map_or(1, |info| info.attempt))
    }

    /// One transfer of `variant`.
    async fn transfer_as(variant: &str, id: i64, from: i64, to: i64, amount: i64) -> Result<u32, AppError> {
        match variant {
            "managed" => transfer_managed(id, from, to, amount).await,
            "keyed" => transfer_keyed(id, from, to, amount).await,
            _ => transfer(id, from, to, amount).await,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_serializable_transfers_keep_the_books_balanced() {
        bank("default").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_books_stay_balanced_with_contention_management() {
        bank("managed").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_books_stay_balanced_with_declared_keys() {
        bank("keyed").await;
    }

    async fn bank(variant: &'static str) {
        let Some(manager) = manager(&format!("bank_{BACKEND}_{variant}"), TASKS as u32).await else { return };
        let accounts = accounts_table(variant);
        reset_table(manager.pool(), &accounts, "id BIGINT PRIMARY KEY, balance BIGINT NOT NULL").await;
        reset_table(manager.pool(), &log_table(variant), "id BIGINT PRIMARY KEY, source BIGINT NOT NULL, target BIGINT NOT NULL, amount BIGINT NOT NULL").await;
        for account in 1..=ACCOUNTS {
            let sql = format!("INSERT INTO {accounts} (id, balance) VALUES ({account}, {OPENING_BALANCE})");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(manager.pool()).await.expect("opens accounts");
        }

        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let manager = manager.clone();
            tasks.push(tokio::spawn(manager.clone().scope(async move {
                let mut random = 0x9E37_79B9_7F4A_7C15_u64 ^ (task as u64 + 1);
                let mut next = |bound: i64| {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    (random % bound as u64) as i64
                };
                let mut succeeded = Vec::new();
                let (mut refused, mut gave_up, mut retried) = (0, 0, 0);
                for n in 0..TRANSFERS_PER_TASK {
                    let id = task * TRANSFERS_PER_TASK + n;
                    let from = 1 + next(ACCOUNTS);
                    let to = 1 + (from + next(ACCOUNTS - 1)) % ACCOUNTS;
                    match transfer_as(variant, id, from, to, 1 + next(60)).await {
                        Ok(attempt) => {
                            succeeded.push(id);
                            retried += usize::from(attempt > 1);
                        }
                        Err(AppError::Refused(_)) => refused += 1,
                        Err(AppError::Tx(Error::RetriesExhausted { .. })) => gave_up += 1,
                        Err(error) => panic!("transfer {id} failed unexpectedly: {error}"),
                    }
                }
                (succeeded, refused, gave_up, retried)
            })));
        }
        let mut succeeded = BTreeSet::new();
        let (mut refused, mut gave_up, mut retried) = (0, 0, 0);
        for task in tasks {
            let (ids, task_refused, task_gave_up, task_retried) = task.await.expect("no panic");
            succeeded.extend(ids);
            refused += task_refused;
            gave_up += task_gave_up;
            retried += task_retried;
        }
        eprintln!(
            "{BACKEND}, {variant}: {} transfers succeeded ({retried} after a retry), {refused} refused, {gave_up} gave up",
            succeeded.len()
        );
        if BACKEND != "sqlite" && variant == "default" {
            assert!(retried > 0, "contention forced retries, so the retry path was exercised");
        }
        assert_eq!(succeeded.len() + refused + gave_up, (TASKS * TRANSFERS_PER_TASK) as usize);
        assert!(succeeded.len() > 1000, "most transfers go through");

        let balances: Vec<i64> = covet_txn_tests::column(manager.pool(), format!("SELECT balance FROM {accounts}"))
            .await
            .expect("reads balances");
        assert_eq!(balances.iter().sum::<i64>(), ACCOUNTS * OPENING_BALANCE, "no money created or lost");
        assert!(balances.iter().all(|balance| *balance >= 0), "no overdraft: {balances:?}");
        let logged: BTreeSet<i64> = covet_txn_tests::column(manager.pool(), format!("SELECT id FROM {}", log_table(variant)))
            .await
            .expect("reads the log")
            .into_iter()
            .collect();
        assert_eq!(logged, succeeded, "one log row per successful transfer, none for the others");
    }
}
