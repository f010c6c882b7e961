//! A replica that cannot serve: cut off from the primary past the lag
//! bound, or shut down. Reads go to the primary and are counted until it
//! serves again.

use covet_txn::TxManager;

use super::{MAX_LAG, PROBE, READ_ONLY, ReplicaTopology, Replicated, server, wait_for, write};
use crate::topology::Changed;

/// Cut off while the primary takes a write, the replica falls behind past
/// the bound: it stays reachable but serves nothing, and its lag says one
/// write; once it has caught up it serves again.
pub async fn a_replica_cut_off_past_the_lag_bound_is_skipped_and_counted_then_serves_again<
    T: ReplicaTopology,
>() {
    let table = "reptests_lagging";
    let Some(replicated) = Replicated::<T>::with_table(MAX_LAG, table).await else {
        return;
    };
    let manager = &replicated.manager;
    {
        let _cut = Changed::start(T::cut_off, T::reconnect);
        // Through a manager without replicas: the write is no read's concern.
        write::<T>(&TxManager::new(replicated.primary.clone()), table, 1)
            .await
            .expect("a write the replica cannot replay");
        tokio::time::sleep(MAX_LAG + PROBE * 4).await;
        let report = manager.replicas();
        assert!(!report.replicas[0].serving, "{report:?}");
        assert!(report.replicas[0].reachable, "{report:?}");
        assert!(
            T::one_write_behind(report.replicas[0].lag_bytes),
            "{report:?}"
        );
        assert_eq!(server::<T>(manager, READ_ONLY).await, T::PRIMARY);
        assert_eq!(manager.replicas().reads_on_primary_unavailable, 1);
    }
    wait_for(manager, |status| status.serving).await;
    assert_eq!(server::<T>(manager, READ_ONLY).await, T::REPLICA);
}

/// With the replica's server down, the probe says why, reads go to the
/// primary and are counted; once it is up again it serves.
pub async fn a_stopped_replica_is_skipped_and_counted_then_serves_again<T: ReplicaTopology>() {
    let Some(replicated) = Replicated::<T>::connect(MAX_LAG).await else {
        return;
    };
    let manager = &replicated.manager;
    {
        let _down = Changed::start(T::stop_replica, T::start_replica);
        wait_for(manager, |status| !status.reachable).await;
        let report = manager.replicas();
        assert!(
            !report.replicas[0].reachable && !report.replicas[0].serving,
            "{report:?}"
        );
        assert!(report.replicas[0].last_error.is_some(), "{report:?}");
        for _ in 0..3 {
            assert_eq!(server::<T>(manager, READ_ONLY).await, T::PRIMARY);
        }
        let report = manager.replicas();
        assert_eq!(report.reads_on_primary_unavailable, 3, "{report:?}");
    }
    wait_for(manager, |status| status.serving).await;
    assert_eq!(server::<T>(manager, READ_ONLY).await, T::REPLICA);
}
