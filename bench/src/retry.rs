//! The hand-written side's retry policy, the same as covet-txn's: the same
//! failures are retried (MariaDB's lock wait timeout 1205, whose SQLSTATE is
//! the generic HY000, included) and the same jittered exponential backoff is
//! slept, so that the contended table compares implementations.

use std::time::Duration;

/// Whether a careful hand retries this error: a serialization failure, a
/// deadlock, a lock wait timeout or a busy database.
pub fn retryable(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else {
        return false;
    };
    if let Some(mysql) = database.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(mysql.number(), 1213 | 1205 | 1020);
    }
    matches!(
        database.code().as_deref(),
        Some("40001" | "40P01" | "5" | "6" | "261" | "262" | "517" | "518" | "773")
    )
}

/// The wait before retry number `retry` (from 1): centred on
/// `min(cap, first × 2^(retry-1))`, drawn from half to one and a half times
/// it, never above `cap`.
pub fn backoff(retry: u32, first: Duration, cap: Duration) -> Duration {
    let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
    let nominal = (first.as_secs_f64() * 2f64.powi(exponent)).min(cap.as_secs_f64());
    Duration::from_secs_f64((nominal * (0.5 + fastrand::f64())).min(cap.as_secs_f64()))
}
