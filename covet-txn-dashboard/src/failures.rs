//! Failed authentication: how long to hold back the 401 for a client that
//! keeps failing, and a warning in the log that says how many failures
//! there were without flooding it. It never sees the presented token, so
//! no token reaches the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures from one client within this window count as repeated.
const WINDOW: Duration = Duration::from_secs(60);
/// The second failure in a window waits this long, each further one twice
/// as long as the one before, up to [`MAX_DELAY`]. The first is answered at
/// once: a person who mistyped is not made to wait.
const BASE_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);
/// At most one warning per this long; the next one counts those held back.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Clients remembered at most: a flood of addresses cannot grow the table
/// without bound.
const MAX_CLIENTS: usize = 4096;

/// Counts failures per client address (one key for clients whose address
/// is unknown, when the dashboard is mounted without `ConnectInfo`).
pub(crate) struct Failures {
    clients: Mutex<HashMap<Option<IpAddr>, Recent>>,
    log: Mutex<LogState>,
}

#[derive(Clone, Copy)]
struct Recent {
    count: u32,
    last: Instant,
}

struct LogState {
    last: Option<Instant>,
    held_back: u64,
}

impl Failures {
    pub(crate) fn new() -> Self {
        Failures {
            clients: Mutex::new(HashMap::new()),
            log: Mutex::new(LogState {
                last: None,
                held_back: 0,
            }),
        }
    }

    /// Records a failure from `client` and says how long to wait before
    /// answering it.
    pub(crate) fn record(&self, client: Option<IpAddr>, path: &str) -> Duration {
        let now = Instant::now();
        let count = {
            // A poisoned lock only means another request panicked while
            // counting: the counts are still usable.
            let mut clients = self
                .clients
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
                clients.retain(|_, recent| now.duration_since(recent.last) < WINDOW);
                if clients.len() >= MAX_CLIENTS {
                    clients.clear();
                }
            }
            let recent = clients.entry(client).or_insert(Recent {
                count: 0,
                last: now,
            });
            if now.duration_since(recent.last) >= WINDOW {
                recent.count = 0;
            }
            recent.count = recent.count.saturating_add(1);
            recent.last = now;
            recent.count
        };
        self.log(client, path, now);
        delay_for(count)
    }

    fn log(&self, client: Option<IpAddr>, path: &str, now: Instant) {
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if log
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            log.held_back += 1;
            return;
        }
        let held_back = std::mem::take(&mut log.held_back);
        log.last = Some(now);
        drop(log);
        let client = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        tracing::warn!(
            target: "covet_txn_dashboard",
            %client,
            path,
            earlier_failures_not_logged = held_back,
            "dashboard request refused: missing or wrong bearer token"
        );
    }
}

/// No wait for the first failure, then 100 ms doubling up to 2 s.
fn delay_for(count: u32) -> Duration {
    match count {
        0 | 1 => Duration::ZERO,
        n => BASE_DELAY
            .saturating_mul(1_u32 << (n - 2).min(16))
            .min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_waits_nothing_and_later_ones_double_up_to_the_cap() {
        let delays: Vec<u128> = (1..=8).map(|n| delay_for(n).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(delay_for(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn failures_are_counted_per_client() {
        let failures = Failures::new();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        assert_eq!(failures.record(a, "/"), Duration::ZERO);
        assert_eq!(failures.record(a, "/"), BASE_DELAY);
        assert_eq!(failures.record(b, "/"), Duration::ZERO);
    }
}
