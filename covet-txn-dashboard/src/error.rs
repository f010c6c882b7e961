//! Why a dashboard could not start: a setting that would leave it open or
//! unusable, or an address that could not be bound.

/// Why a dashboard could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting would leave the dashboard open or unusable: an empty
    /// token, or an address off loopback without a token.
    #[error("{0}")]
    Refused(String),
    /// The address could not be resolved or bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}
