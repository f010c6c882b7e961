//! What every service of one layer shares: the transaction's options, which
//! statuses roll back, which requests are left out, and how much body a
//! retry may buffer; with the defaults of each.
//!
//! A leaf: data and the predicates' meaning, nothing about requests in
//! flight.

use std::sync::Arc;

use covet_txn::TxOptions;
use http::StatusCode;
use http::request::Parts;

/// How much request body a retrying layer buffers by default: 1 MiB.
pub const DEFAULT_RETRY_BODY_LIMIT: usize = 1024 * 1024;

/// The name of the layer's transactions in logs and metrics when
/// [`TxOptions::name`] gives none.
pub const DEFAULT_TRANSACTION_NAME: &str = "http_request";

pub(crate) type StatusPredicate = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;
pub(crate) type RequestPredicate = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

/// What every service of one layer shares.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) options: TxOptions,
    pub(crate) rollback_on: StatusPredicate,
    pub(crate) exclude: Option<RequestPredicate>,
    pub(crate) retry_body_limit: usize,
}

impl Settings {
    /// Whether a response with `status` rolls the transaction back.
    pub(crate) fn rolls_back(&self, status: StatusCode) -> bool {
        (self.rollback_on)(status)
    }

    /// Whether the request runs without a transaction.
    pub(crate) fn excludes(&self, request: &Parts) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|predicate| predicate(request))
    }

    /// Whether a failed attempt may run the handler again.
    pub(crate) fn retries(&self) -> bool {
        self.options.retries_enabled()
    }
}

/// The default rollback rule: any client or server error.
pub(crate) fn client_or_server_error(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// Whether `path` is `prefix` or lies under it, segment-wise.
pub(crate) fn path_is_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_prefix_matches_whole_segments_only() {
        assert!(path_is_under("/health", "/health"));
        assert!(path_is_under("/health/db", "/health"));
        assert!(!path_is_under("/healthy", "/health"));
        assert!(!path_is_under("/api/health", "/health"));
        // "/" (trimmed to "") matches every path.
        assert!(path_is_under("/anything", ""));
    }

    #[test]
    fn the_default_rule_rolls_back_on_client_and_server_errors_only() {
        for (status, rolls_back) in [
            (StatusCode::OK, false),
            (StatusCode::CREATED, false),
            (StatusCode::SEE_OTHER, false),
            (StatusCode::BAD_REQUEST, true),
            (StatusCode::CONFLICT, true),
            (StatusCode::INTERNAL_SERVER_ERROR, true),
            (StatusCode::SERVICE_UNAVAILABLE, true),
        ] {
            assert_eq!(client_or_server_error(status), rolls_back, "{status}");
        }
    }
}
