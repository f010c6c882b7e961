use covet_txn::{Failure, transactional};

fn unique_violations_too(failure: &Failure<'_>) -> bool {
    failure.retryable_by_default() || failure.is_unique_violation()
}

#[derive(Clone)]
struct Order {
    id: i64,
}

#[transactional(
    isolation = "serializable",
    retry = 3,
    backoff = "5ms",
    max_backoff = "500ms",
    backoff_multiplier = 3,
    retry_if = unique_violations_too,
    timeout = "1.5s",
    resolve_ambiguous_commit
)]
async fn place(order: Order, note: &str, counter: &mut u32, _: u8) -> Result<i64, covet_txn::Error> {
    *counter += note.len() as u32;
    Ok(order.id)
}

#[transactional(retry, timeout = "2m")]
async fn with_manager_policy() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn main() {
    let _ = place;
    let _ = with_manager_policy;
}
