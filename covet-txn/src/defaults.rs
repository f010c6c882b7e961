//! The manager a call that names none runs on: the task's scoped default,
//! else the process-wide default, else the manager of the innermost
//! transaction already running in the task.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use crate::context::Frame;
use crate::engine::EngineHandle;
use crate::error::Error;

static DEFAULT: OnceLock<EngineHandle> = OnceLock::new();

tokio::task_local! {
    static SCOPED_DEFAULT: EngineHandle;
}

/// Makes `engine` the process-wide default, once.
pub(crate) fn install(engine: EngineHandle) -> Result<(), Error> {
    DEFAULT
        .set(engine)
        .map_err(|_| Error::DefaultManagerAlreadySet)
}

/// Runs `body` with `engine` as the task's default.
pub(crate) fn scope<F: Future>(engine: EngineHandle, body: F) -> impl Future<Output = F::Output> {
    SCOPED_DEFAULT.scope(engine, body)
}

/// The manager of a call without one, given the task's innermost frame.
pub(crate) fn resolve(head: Option<&Arc<Frame>>) -> Result<EngineHandle, Error> {
    if let Ok(scoped) = SCOPED_DEFAULT.try_with(EngineHandle::clone) {
        return Ok(scoped);
    }
    if let Some(global) = DEFAULT.get() {
        return Ok(global.clone());
    }
    head.map(|frame| frame.engine.clone())
        .ok_or(Error::NoDefaultManager)
}
