use covet_txn::transactional;
use covet_txn::two_phase::TwoPhase;

static SHOP: std::sync::OnceLock<TwoPhase> = std::sync::OnceLock::new();
struct NotACoordinator;

// A two-phase call picks no manager, joins nothing and declares no hooks.
#[transactional(two_phase = SHOP, manager = SHOP, propagation = "requires_new", commit_on = refused)]
async fn place() -> Result<(), covet_txn::Error> {
    Ok(())
}

#[transactional(two_phase = NotACoordinator)]
async fn misplaced() -> Result<(), covet_txn::Error> {
    Ok(())
}

fn refused(_: &covet_txn::Error) -> bool {
    false
}

fn main() {}
