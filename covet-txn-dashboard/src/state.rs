//! What every request handler reads: the monitor, the settings, the event
//! streams and failure counts that clones of a dashboard share, and the
//! token the dashboard requires.

use std::sync::Arc;

use covet_txn::monitor::Monitor;

use crate::events::Hub;
use crate::failures::Failures;
use crate::settings::Settings;

/// One router's state.
pub(crate) struct Shared {
    pub(crate) monitor: Monitor,
    pub(crate) settings: Settings,
    pub(crate) events: Arc<Hub>,
    pub(crate) failures: Arc<Failures>,
    pub(crate) token: Token,
}

/// What the dashboard requires.
pub(crate) enum Token {
    /// Nothing: anyone who passes the Host check.
    Open,
    /// This token.
    Required(Arc<str>),
    /// A token was set but is empty: nothing gets in.
    Locked,
}
