//! The coordinator's decision log: a table in a database the user names,
//! where a global id's decision is recorded before phase two. The first
//! record of an id wins (its primary key), so a coordinator committing and a
//! recovery presuming abort can never both have their way.

use crate::dialect::Decision;
use crate::engine::{EngineHandle, Via};
use crate::error::{Error, Operation};
use crate::session::SessionHandle;

use super::ids;

/// Where one coordinator's decisions are kept.
pub(crate) struct DecisionLog {
    engine: EngineHandle,
    table: String,
    coordinator: String,
}

impl DecisionLog {
    pub(crate) fn new(engine: EngineHandle, table: String, coordinator: String) -> Self {
        DecisionLog {
            engine,
            table,
            coordinator,
        }
    }

    /// The retryable failure in an error of the log's database.
    pub(crate) fn classify(&self, error: &Error) -> Option<crate::failure::FailureKind> {
        self.engine.classify(error)
    }

    /// Creates the table if it does not exist.
    pub(crate) async fn create(&self) -> Result<(), Error> {
        let sql = self.engine.prepared()?.create_log(&self.table);
        match self.engine.text_rows(sql, Vec::new(), Via::Dedicated).await {
            // PostgreSQL's `IF NOT EXISTS` races with a concurrent CREATE:
            // the loser's error means the table is there.
            Err(error) if !is_unique_violation(&error) => Err(error),
            _ => Ok(()),
        }
    }

    /// The manager whose database keeps the log.
    pub(crate) fn engine_id(&self) -> u64 {
        self.engine.id()
    }

    /// Records `decision` for `global` unless it has one already, and
    /// returns the decision that stands.
    /// Recovery's and a dropped call's way: on a connection of its own.
    pub(crate) async fn decide(&self, global: &str, decision: Decision) -> Result<Decision, Error> {
        self.decide_on(global, decision, None, Via::Dedicated).await
    }

    /// Like `decide`, on the connection `branch` kept after its PREPARE
    /// when it has one (a branch on the log's database), else `via`.
    pub(crate) async fn decide_on(
        &self,
        global: &str,
        decision: Decision,
        branch: Option<&SessionHandle>,
        via: Via,
    ) -> Result<Decision, Error> {
        let sql = self.engine.prepared()?.record(&self.table);
        let parameters = vec![
            global.to_owned(),
            self.coordinator.clone(),
            decision.as_str().to_owned(),
            ids::unix_millis_now().to_string(),
        ];
        let kept = match branch {
            Some(branch) => {
                branch
                    .text_rows_on_kept(sql.clone(), parameters.clone())
                    .await
            }
            None => None,
        };
        let recorded = match kept {
            Some(rows) => rows.map_err(|source| Error::database(Operation::DecisionLog, source)),
            None => self.engine.text_rows(sql, parameters, via).await,
        };
        match recorded {
            Ok(_) => Ok(decision),
            Err(error) if is_unique_violation(&error) => {
                self.read(global).await?.ok_or(Error::InvalidOption(format!(
                    "the decision of {global} was recorded and then vanished from {}",
                    self.table
                )))
            }
            Err(error) => Err(error),
        }
    }

    /// The decision recorded for `global`, if any.
    pub(crate) async fn read(&self, global: &str) -> Result<Option<Decision>, Error> {
        let sql = self.engine.prepared()?.read(&self.table);
        let rows = self
            .engine
            .text_rows(sql, vec![global.to_owned()], Via::Dedicated)
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten())
            .as_deref()
            .and_then(Decision::parse))
    }

    /// Every decision this coordinator has recorded and not forgotten.
    pub(crate) async fn decisions(&self) -> Result<Vec<(String, Decision)>, Error> {
        let sql = self.engine.prepared()?.decisions(&self.table);
        let rows = self
            .engine
            .text_rows(sql, vec![self.coordinator.clone()], Via::Dedicated)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let mut columns = row.into_iter();
                let global = columns.next().flatten()?;
                let decision = Decision::parse(columns.next().flatten()?.as_str())?;
                Some((global, decision))
            })
            .collect())
    }

    /// Forgets the decision of `global`, once every branch is finished.
    pub(crate) async fn forget(&self, global: &str, via: Via) -> Result<(), Error> {
        let sql = self.engine.prepared()?.forget(&self.table);
        self.engine
            .text_rows(sql, vec![global.to_owned()], via)
            .await
            .map(drop)
    }
}

fn is_unique_violation(error: &Error) -> bool {
    matches!(
        error,
        Error::Database {
            operation: Operation::DecisionLog,
            source: sqlx::Error::Database(database),
        } if database.is_unique_violation()
    )
}
