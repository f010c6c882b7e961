//! A flag that tasks wait on: raised once, for shutdown or for closing the
//! event streams.

use tokio::sync::watch;

/// Waits until `flag` is raised (or its sender is gone, which means the
/// same). The guard that `wait_for` returns is dropped here, so that the
/// futures of callers that `select!` on this stay `Send`.
pub(crate) async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|raised| *raised).await;
}
