//! A bounded load test on loopback: 1,000 event-stream clients for 20
//! seconds, a quarter of them never reading, while a client with the token
//! asks for `/api/state` every 20 ms. The process may grow by at most
//! [`MEMORY_BOUND_MIB`] while they are connected, the `/api/state` answers
//! stay under 50 ms at the 99th percentile, every reading client gets its
//! updates, and every client that stopped reading is dropped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TOKEN, bearer, closed_within, get_authorised, monitor, request};
use covet_txn_dashboard::Dashboard;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const CLIENTS: usize = 1_000;
const NOT_READING: usize = 250;
const RUN: Duration = Duration::from_secs(20);
/// How much the whole process (server and clients) may grow.
const MEMORY_BOUND_MIB: u64 = 64;
const P99_BOUND: Duration = Duration::from_millis(50);

/// The process's resident memory, from `/proc/self/status`.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_with_a_quarter_not_reading_stay_bounded_and_responsive() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("notice: skipping the load test: no /proc/self/status to read memory from");
        return;
    }
    let (manager, monitor) = monitor("load").await;
    // Updates of some 20 kB, as with a real application's functions.
    for index in 0..60 {
        let name = format!("orders::service::a_function_with_a_descriptive_name_{index:02}");
        common::commit(&manager, Box::leak(name.into_boxed_str())).await;
    }
    let running = Dashboard::new(monitor.clone())
        .bind("127.0.0.1:0")
        .bearer_token(TOKEN)
        .max_connections(CLIENTS + 100)
        .max_event_streams(CLIENTS)
        .idle_timeout(Duration::from_secs(5))
        .start()
        .await
        .expect("starts");
    let addr = running.addr();

    // The figures keep changing: transactions, and a sample every second.
    let stop = Arc::new(AtomicBool::new(false));
    let workload = tokio::spawn({
        let (stop, manager, monitor) = (Arc::clone(&stop), manager.clone(), monitor.clone());
        async move {
            let mut round = 0_u32;
            while !stop.load(Ordering::Relaxed) {
                common::commit(&manager, "orders::place").await;
                round += 1;
                if round.is_multiple_of(50) {
                    let _ = monitor.sample();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    // One warm-up answer, so that lazily built parts are counted in the
    // baseline and not as growth.
    let update = get_authorised(addr, "/api/state").await;
    assert_eq!(update.status, 200);
    let update_bytes = update.body.len() as u64;
    let baseline = resident_kib();

    let (name, value) = bearer();
    let head = Arc::new(request(addr, "/api/events", &[(name, &value)], false));
    let received_bytes = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut stalled = Vec::new();
    for index in 0..CLIENTS {
        let reading = index % (CLIENTS / NOT_READING) != 0;
        let socket = TcpSocket::new_v4().expect("a socket");
        if !reading {
            socket.set_recv_buffer_size(4096).expect("a small buffer");
        }
        let mut stream = socket.connect(addr).await.expect("connects");
        stream.write_all(head.as_bytes()).await.expect("sends");
        if reading {
            let (stop, events) = (Arc::clone(&stop), Arc::clone(&received_bytes));
            readers.push(tokio::spawn(async move {
                let mut buffer = vec![0_u8; 16 * 1024];
                let mut received = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer))
                        .await
                    {
                        Ok(Ok(0) | Err(_)) => return (received, false),
                        Ok(Ok(read)) => {
                            // Bytes, not events: scanning 15 MB a second in a
                            // debug build would starve the server under test.
                            received += read as u64;
                            events.fetch_add(read as u64, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                }
                (received, true)
            }));
        } else {
            stalled.push(stream);
        }
    }
    assert_eq!(stalled.len(), NOT_READING);

    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut peak = resident_kib();
    while started.elapsed() < RUN {
        let asked = Instant::now();
        let reply = get_authorised(addr, "/api/state").await;
        latencies.push(asked.elapsed());
        assert_eq!(reply.status, 200);
        peak = peak.max(resident_kib());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut still_open = 0;
    let mut least = u64::MAX;
    for reader in readers {
        let (received, open) = reader.await.expect("no panic");
        least = least.min(received);
        still_open += usize::from(open);
    }
    let mut dropped = 0;
    for mut stream in stalled {
        if closed_within(&mut stream, Duration::from_secs(2))
            .await
            .is_some()
        {
            dropped += 1;
        }
    }
    workload.await.expect("no panic");
    running.shutdown().await;

    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "load: {} /api/state answers, p50 {:?}, p99 {p99:?}, max {:?}; memory {} MiB before, peak {} MiB (+{grown_mib} MiB); \
         {} MiB of events sent to readers, the least by one reader {} KiB (one update: {} KiB); {still_open} readers open; \
         {dropped}/{NOT_READING} stalled clients dropped",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        baseline / 1024,
        peak / 1024,
        received_bytes.load(Ordering::Relaxed) / (1024 * 1024),
        least / 1024,
        update_bytes / 1024,
    );
    assert!(p99 < P99_BOUND, "/api/state p99 {p99:?} under load");
    assert!(
        grown_mib < MEMORY_BOUND_MIB,
        "the process grew by {grown_mib} MiB"
    );
    assert_eq!(
        still_open,
        CLIENTS - NOT_READING,
        "every reading client kept its stream"
    );
    assert!(
        least >= 10 * update_bytes,
        "a reading client got only {least} bytes in {RUN:?}, not 10 updates of {update_bytes}"
    );
    assert_eq!(
        dropped, NOT_READING,
        "every client that stopped reading was dropped"
    );
}
