//! Every shape of function `#[transactional]` accepts, run for real: free
//! functions, inherent and trait methods, generics, `impl Trait` and
//! explicit lifetimes, error aliases, a renamed crate path, and code that
//! shadows `core` and `std`.

use std::fmt::Display;

use covet_txn::{Error, TxManager, transactional};
use covet_txn_tests::AppError;
use sqlx::Sqlite;

async fn count() -> Result<i64, Error> {
    let value: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
        .fetch_one(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    Ok(value)
}

async fn add(name: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO items (name) VALUES (?)")
        .bind(name)
        .execute(&mut *covet_txn::conn::<Sqlite>()?)
        .await?;
    Ok(())
}

struct Store {
    added: Vec<String>,
}

impl Store {
    #[transactional]
    async fn add_shared(&self, name: &str) -> Result<usize, Error> {
        add(name).await?;
        Ok(self.added.len())
    }

    #[transactional(isolation = "serializable")]
    async fn add_exclusive(&mut self, name: String) -> Result<(), Error> {
        add(&name).await?;
        self.added.push(name);
        Ok(())
    }

    #[transactional]
    async fn consume(self) -> Result<Vec<String>, Error> {
        Ok(self.added)
    }
}

trait Catalog {
    async fn add_item(&self, name: &str) -> Result<i64, AppError>;
}

impl Catalog for Store {
    #[transactional]
    async fn add_item(&self, name: &str) -> Result<i64, AppError> {
        add(name).await?;
        Ok(count().await?)
    }
}

#[transactional]
async fn add_all<T: Display + Send>(names: Vec<T>) -> Result<usize, Error> {
    for name in &names {
        add(&name.to_string()).await?;
    }
    Ok(names.len())
}

#[transactional]
async fn add_each(names: impl IntoIterator<Item = &'static str>) -> Result<(), Error> {
    for name in names {
        add(name).await?;
    }
    Ok(())
}

#[transactional]
async fn longest<'a>(first: &'a str, second: &'a str) -> Result<&'a str, Error> {
    add(first).await?;
    Ok(if first.len() >= second.len() {
        first
    } else {
        second
    })
}

type AppResult<T> = Result<T, AppError>;

#[transactional(read_only = true)]
async fn total() -> AppResult<i64> {
    Ok(count().await?)
}

#[transactional]
async fn early_return(stop: bool) -> Result<&'static str, Error> {
    if stop {
        return Ok("stopped early");
    }
    add("not stopped").await?;
    Ok("ran to the end")
}

#[transactional]
async fn opaque() -> Result<impl Display, Error> {
    let total = count().await?;
    Ok(format!("{total} items"))
}

mod renamed {
    pub use ::covet_txn as covet;
}

#[renamed::covet::transactional(crate = "renamed::covet")]
async fn through_renamed_path() -> Result<i64, Error> {
    count().await
}

mod hygiene {
    #![allow(dead_code)]
    mod core {}
    mod std {}
    mod sqlx {}
    mod tokio {}
    mod covet_txn {}

    #[::covet_txn::transactional(propagation = "required")]
    pub async fn unaffected_by_local_modules() -> Result<u32, ::covet_txn::Error> {
        Ok(::covet_txn::current().map_or(0, |info| info.depth))
    }
}

#[tokio::test]
async fn every_supported_function_shape_runs_in_a_transaction() {
    let Some(pool) = covet_txn_tests::sqlite("forms", 1).await else {
        return;
    };
    sqlx::raw_sql("CREATE TABLE items (name TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("setup");
    let manager = TxManager::new(pool);
    manager
        .scope(async {
            let mut store = Store { added: Vec::new() };
            assert_eq!(store.add_shared("a").await?, 0);
            store.add_exclusive("b".to_owned()).await?;
            assert_eq!(store.add_item("c").await?, 3);
            assert_eq!(add_all(vec![1, 2]).await?, 2);
            add_each(["d", "e"]).await?;
            assert_eq!(longest("fff", "gg").await?, "fff");
            assert_eq!(total().await?, 8);
            assert_eq!(early_return(true).await?, "stopped early");
            assert_eq!(early_return(false).await?, "ran to the end");
            assert_eq!(opaque().await?.to_string(), "9 items");
            assert_eq!(through_renamed_path().await?, 9);
            assert_eq!(hygiene::unaffected_by_local_modules().await?, 1);
            assert_eq!(store.consume().await?, ["b"]);
            Ok::<_, AppError>(())
        })
        .await
        .expect("every form runs");
}

#[tokio::test]
async fn a_transactional_future_is_send_and_can_be_spawned() {
    let Some(pool) = covet_txn_tests::sqlite("forms_send", 1).await else {
        return;
    };
    sqlx::raw_sql("CREATE TABLE items (name TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("setup");
    let manager = TxManager::new(pool);
    let spawned = tokio::spawn(manager.scope(add_all(vec!["x".to_owned()])));
    assert_eq!(spawned.await.expect("no panic").expect("commits"), 1);
}
