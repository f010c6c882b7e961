use std::sync::{Arc, OnceLock};

use covet_txn::transactional;
use covet_txn::two_phase::TwoPhase;

static SHOP: OnceLock<TwoPhase> = OnceLock::new();

#[transactional(two_phase = SHOP, isolation = "serializable", retry = 3, backoff = "2ms", timeout = "10s")]
async fn place(order: String, quantity: u32) -> Result<usize, covet_txn::Error> {
    Ok(order.len() + quantity as usize)
}

#[transactional(two_phase = SHOP)]
async fn consume(order: String) -> Result<String, covet_txn::Error> {
    Ok(order)
}

async fn with_a_shared_coordinator(shop: Arc<TwoPhase>) -> Result<(), covet_txn::Error> {
    #[transactional(two_phase = shop)]
    async fn inner(shop: &Arc<TwoPhase>) -> Result<(), covet_txn::Error> {
        let _ = shop;
        Ok(())
    }
    inner(&shop).await
}

fn main() {
    let _ = (place, consume, with_a_shared_coordinator);
}
