// The generic `conn()` needs its backend named; the typed ones do not.
async fn count() -> Result<i64, covet_txn::Error> {
    let count = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&mut *covet_txn::conn()?)
        .await?;
    Ok(count)
}

fn main() {}
