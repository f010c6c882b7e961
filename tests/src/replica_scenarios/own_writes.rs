//! Read-your-writes: a task's reads see its own writes even where the
//! replica has not replayed them yet, and so do another task's reads given
//! its session token; reads of other tasks still go to the replica.

use std::time::Duration;

use super::{MAX_LAG, PROBE, ReplicaTopology, Replicated, read, write};
use crate::topology::Changed;

/// A lag bound long enough for a cut-off replica to keep serving reads.
const PATIENT: Duration = Duration::from_secs(3);

/// Every write is seen by the next read of its task at once; once the probe
/// has sampled past the writes and the replica has replayed them, the
/// task's reads go back to the replica.
pub async fn a_task_reads_its_own_writes_at_once_and_the_replica_again_once_it_has_them<
    T: ReplicaTopology,
>() {
    let table = "reptests_own_writes";
    let Some(replicated) = Replicated::<T>::with_table(MAX_LAG, table).await else {
        return;
    };
    let manager = &replicated.manager;
    for value in 0..20 {
        write::<T>(manager, table, value).await.expect("the write");
        let (seen, _) = read::<T>(manager, table, value).await;
        assert!(seen, "write {value} not seen by the task that made it");
    }
    assert!(
        manager.replicas().reads_on_primary_for_writes >= 1,
        "no read went to the primary for the task's writes"
    );
    tokio::time::sleep(PROBE * 6).await;
    let (seen, server) = read::<T>(manager, table, 19).await;
    assert!(seen && server == T::REPLICA, "seen {seen} on {server}");
}

/// With the replica cut off, a task's read after its write runs on the
/// primary and sees the row; another task reads from the replica, which
/// does not have it.
pub async fn a_task_reads_its_own_writes_on_the_primary_while_the_replica_lacks_them<
    T: ReplicaTopology,
>() {
    let table = "reptests_own_writes_cut_off";
    let Some(replicated) = Replicated::<T>::with_table(PATIENT, table).await else {
        return;
    };
    let _cut = Changed::start(T::cut_off, T::reconnect);
    let writer = replicated.manager.clone();
    let (seen, server) = tokio::spawn(async move {
        write::<T>(&writer, table, 7).await.expect("the write");
        read::<T>(&writer, table, 7).await
    })
    .await
    .expect("the writing task");
    assert!(seen && server == T::PRIMARY, "seen {seen} on {server}");
    assert!(replicated.manager.replicas().reads_on_primary_for_writes >= 1);
    let other = replicated.manager.clone();
    let (seen, server) = tokio::spawn(async move { read::<T>(&other, table, 7).await })
        .await
        .expect("another task");
    assert!(!seen && server == T::REPLICA, "seen {seen} on {server}");
}

/// With the replica cut off (so only the token can send the read
/// elsewhere), a task given another task's session token, through its
/// text, reads that task's write on the primary; a task without it reads
/// from the replica, without the row.
pub async fn a_session_token_carries_read_your_writes_to_another_task<T: ReplicaTopology>() {
    let table = "reptests_tokens";
    let Some(replicated) = Replicated::<T>::with_table(PATIENT, table).await else {
        return;
    };
    let _cut = Changed::start(T::cut_off, T::reconnect);
    let writer = replicated.manager.clone();
    let token = tokio::spawn(async move {
        write::<T>(&writer, table, 7).await?;
        writer.session_token().await
    })
    .await
    .expect("the writing task")
    .expect("its token")
    .expect("a token after a write");
    let token: covet_txn::SessionToken = token.to_string().parse().expect("the token's text");
    let reader = replicated.manager.clone();
    let (seen, server) = tokio::spawn(async move {
        reader.read_after(token);
        read::<T>(&reader, table, 7).await
    })
    .await
    .expect("the reading task");
    assert!(seen && server == T::PRIMARY, "seen {seen} on {server}");
    let other = replicated.manager.clone();
    let (seen, server) = tokio::spawn(async move { read::<T>(&other, table, 7).await })
        .await
        .expect("another task");
    assert!(!seen && server == T::REPLICA, "seen {seen} on {server}");
}
