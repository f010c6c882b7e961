//! What a dashboard was told: who may see it, where it listens, and the
//! limits that keep it standing when exposed, each with its default. Plain
//! data, read by everything above it; it checks the token it was given, and
//! serves nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// The address a dashboard binds to unless told otherwise: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7777";
/// How often the page is sent new figures.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
/// How long a client has to send a complete request head, counted from the
/// moment it connects or its previous response ends; an idle keep-alive
/// connection is closed when it runs out.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may go with no byte read or written, while a
/// response is on its way: a client that stopped reading its download or
/// event stream is dropped then.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many connections [`Dashboard::start`](crate::Dashboard::start) serves at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// How many event streams (open pages) are served at once.
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 32;
/// How long [`RunningDashboard::shutdown`](crate::RunningDashboard::shutdown)
/// lets requests in progress finish before it closes their connections.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The shortest timeout accepted: shorter ones would cut off ordinary
/// clients on a busy machine.
pub(crate) const MINIMUM_TIMEOUT: Duration = Duration::from_millis(100);

/// What a dashboard was told.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) token: Option<Arc<str>>,
    pub(crate) addr: String,
    pub(crate) refresh: Duration,
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) remote_without_token: bool,
    pub(crate) secure_cookie: bool,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_event_streams: usize,
    pub(crate) shutdown_timeout: Duration,
}

impl Settings {
    /// Every default, and no token.
    pub(crate) fn new() -> Self {
        Settings {
            token: None,
            addr: DEFAULT_ADDR.to_owned(),
            refresh: DEFAULT_REFRESH,
            allowed_hosts: Vec::new(),
            remote_without_token: false,
            secure_cookie: false,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_event_streams: DEFAULT_MAX_EVENT_STREAMS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// The token, checked: `Err` for one that is empty or blank.
    pub(crate) fn checked_token(&self) -> Result<Option<&Arc<str>>, Error> {
        match &self.token {
            Some(token) if token.trim().is_empty() => Err(Error::Refused(
                "the dashboard's bearer token is empty: set a non-empty token (an unset \
                 environment variable?), or leave bearer_token out"
                    .to_owned(),
            )),
            token => Ok(token.as_ref()),
        }
    }
}
