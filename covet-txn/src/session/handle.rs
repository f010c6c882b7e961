//! A session of any compiled-in driver, erased as an enum rather than a
//! trait object, so that no statement pays for a boxed future: the runtime
//! above the session calls it without knowing the driver.

use std::sync::Arc;

use super::{CommitError, Session, SessionCore};
use crate::backend::Driver;
use crate::dialect::{SavepointAction, SavepointName};
use crate::error::Error;
use crate::failure::FailureKind;
use crate::hooks::run::HookHolder;

/// A session of any compiled-in driver.
#[doc(hidden)]
#[derive(Clone)]
pub enum SessionHandle {
    #[cfg(feature = "postgres")]
    Postgres(Arc<Session<sqlx::Postgres>>),
    #[cfg(feature = "mysql")]
    MySql(Arc<Session<sqlx::MySql>>),
    #[cfg(feature = "sqlite")]
    Sqlite(Arc<Session<sqlx::Sqlite>>),
}

/// Runs `$body` with `$session` bound to the handle's typed session.
macro_rules! dispatch {
    ($handle:expr, $session:ident => $body:expr) => {
        match $handle {
            #[cfg(feature = "postgres")]
            SessionHandle::Postgres($session) => $body,
            #[cfg(feature = "mysql")]
            SessionHandle::MySql($session) => $body,
            #[cfg(feature = "sqlite")]
            SessionHandle::Sqlite($session) => $body,
            // Without a backend the enum has no variant and no value.
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            _ => unreachable!("no backend feature is enabled"),
        }
    };
}

impl SessionHandle {
    pub(crate) fn core(&self) -> &SessionCore {
        dispatch!(self, session => &session.core)
    }

    pub(crate) fn abort(&self, reason: &'static str) {
        dispatch!(self, session => session.abort(reason))
    }

    pub(crate) async fn savepoint(
        &self,
        action: SavepointAction,
        name: SavepointName<'_>,
    ) -> Result<(), Error> {
        dispatch!(self, session => session.savepoint(action, name).await)
    }

    pub(crate) async fn commit(&self) -> Result<(), CommitError> {
        dispatch!(self, session => session.commit().await)
    }

    pub(crate) async fn prepare(&self) -> Result<(), CommitError> {
        dispatch!(self, session => session.prepare().await)
    }

    pub(crate) async fn text_rows_on_kept(
        &self,
        sql: String,
        parameters: Vec<String>,
    ) -> Option<Result<crate::backend::TextRows, sqlx::Error>> {
        dispatch!(self, session => session.text_rows_on_kept(sql, parameters).await)
    }

    pub(crate) async fn finish_prepared(&self, commit: bool) -> Result<bool, Error> {
        dispatch!(self, session => session.finish_prepared(commit).await)
    }

    pub(crate) async fn rollback(&self, failure: Option<FailureKind>) -> Result<(), Error> {
        dispatch!(self, session => session.rollback(failure).await)
    }

    pub(crate) fn release(&self) -> Result<(), Error> {
        dispatch!(self, session => session.release())
    }

    /// The session, as what keeps its hooks alive.
    pub(crate) fn hook_holder(&self) -> Arc<dyn HookHolder> {
        dispatch!(self, session => Arc::clone(session) as Arc<dyn HookHolder>)
    }
}

/// Moving a driver's sessions in and out of a [`SessionHandle`].
pub trait SessionErase: Driver {
    /// The session, erased.
    #[doc(hidden)]
    fn erase(session: Arc<Session<Self>>) -> SessionHandle;

    /// The session, if the handle holds one of this driver.
    #[doc(hidden)]
    fn unerase(handle: &SessionHandle) -> Option<&Arc<Session<Self>>>;
}

macro_rules! erase {
    ($feature:literal, $driver:ty, $variant:ident) => {
        #[cfg(feature = $feature)]
        impl SessionErase for $driver {
            fn erase(session: Arc<Session<Self>>) -> SessionHandle {
                SessionHandle::$variant(session)
            }

            #[allow(unreachable_patterns)]
            fn unerase(handle: &SessionHandle) -> Option<&Arc<Session<Self>>> {
                match handle {
                    SessionHandle::$variant(session) => Some(session),
                    _ => None,
                }
            }
        }
    };
}

erase!("postgres", sqlx::Postgres, Postgres);
erase!("mysql", sqlx::MySql, MySql);
erase!("sqlite", sqlx::Sqlite, Sqlite);
