//! Planning a call: what it does, decided from what it asks for and what is
//! already running in its task, before anything is sent. A pure function,
//! tested as a table over every propagation, running state, isolation and
//! access mode.
//!
//! The rules:
//!
//! | propagation | nothing running | an autocommit session running | a transaction running |
//! |---|---|---|---|
//! | `nested` | begin | begin on its connection | savepoint |
//! | `required` | begin | begin on its connection | join |
//! | `requires_new` | begin | begin on a second connection | begin on a second connection |
//! | `mandatory` | [`Error::NoTransaction`] | [`Error::NoTransaction`] | join |
//! | `never` | autocommit | join it | [`Error::TransactionActive`] |
//! | `supports` | autocommit | join it | join |
//! | `not_supported` | autocommit | join it | autocommit on a second connection |
//!
//! A call that joins or nests in a running transaction must be satisfied
//! by it: a read-only request joins a read-write transaction, a weaker or
//! equal isolation level joins a stronger one; a read-write request in a
//! read-only transaction, or a stronger level than the running one, is an
//! error. A `durable` call must be the outermost transaction. Inside a test
//! transaction (which always rolls back) `durable` nests, any isolation
//! level joins, and `requires_new` and `not_supported`, which would write
//! outside it, are errors.

use crate::error::Error;
use crate::options::{Isolation, Propagation};

/// What a call asks for, as planning sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) propagation: Propagation,
    pub(crate) isolation: Option<Isolation>,
    pub(crate) read_only: Option<bool>,
    pub(crate) durable: bool,
    pub(crate) name: &'static str,
}

/// What runs in the call's task on the call's manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Running {
    Nothing,
    /// An autocommit session (`supports`, `never`, `not_supported`).
    Autocommit,
    Transaction(RunningTransaction),
}

/// The innermost transaction running on the call's manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunningTransaction {
    /// The level it asked for; `None`: the server's default.
    pub(crate) isolation: Option<Isolation>,
    /// The level it runs at when it asked for none.
    pub(crate) default_isolation: Isolation,
    pub(crate) read_only: bool,
    /// A test transaction, which always rolls back.
    pub(crate) test: bool,
    pub(crate) name: &'static str,
}

/// The connections the task holds from the manager's pool, and how many it
/// may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolUse {
    pub(crate) held: u32,
    pub(crate) max: u32,
}

/// What a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Begin a transaction on a connection of its own, while the task keeps
    /// `holding` others of the same pool.
    Begin { holding: u32 },
    /// Begin a transaction on the running autocommit session's connection.
    BeginOnAutocommit,
    /// Run without a transaction on a connection of its own, while the task
    /// keeps `holding` others of the same pool.
    Autocommit { holding: u32 },
    /// Run in a savepoint of the running transaction.
    Savepoint,
    /// Run in the running session as it is.
    Join,
}

/// Plans a call.
pub(crate) fn plan(request: &Request, running: Running, pool: PoolUse) -> Result<Plan, Error> {
    let propagation = request.propagation;
    let transaction = match running {
        Running::Nothing => {
            return match propagation {
                Propagation::Mandatory => Err(Error::NoTransaction),
                Propagation::Never | Propagation::Supports | Propagation::NotSupported => {
                    Ok(Plan::Autocommit { holding: 0 })
                }
                _ => Ok(Plan::Begin { holding: 0 }),
            };
        }
        Running::Autocommit => {
            return match propagation {
                Propagation::Mandatory => Err(Error::NoTransaction),
                Propagation::Never | Propagation::Supports | Propagation::NotSupported => {
                    Ok(Plan::Join)
                }
                Propagation::RequiresNew => second_connection(pool, true),
                _ => Ok(Plan::BeginOnAutocommit),
            };
        }
        Running::Transaction(transaction) => transaction,
    };
    match propagation {
        Propagation::RequiresNew | Propagation::NotSupported if transaction.test => {
            return Err(Error::EscapesTestTransaction(propagation));
        }
        Propagation::RequiresNew => return second_connection(pool, true),
        Propagation::NotSupported => return second_connection(pool, false),
        Propagation::Never => return Err(Error::TransactionActive(propagation)),
        _ => {}
    }
    if request.durable && !transaction.test {
        return Err(Error::NotOutermost {
            scope: request.name,
            running: transaction.name,
        });
    }
    check_satisfied(request, &transaction)?;
    Ok(match propagation {
        Propagation::Nested => Plan::Savepoint,
        _ => Plan::Join,
    })
}

/// A second connection of the pool, unless the task already holds every
/// connection the pool may open and waiting would never end.
fn second_connection(pool: PoolUse, transactional: bool) -> Result<Plan, Error> {
    if pool.held >= pool.max {
        return Err(Error::PoolExhaustedByNesting {
            held: pool.held,
            max: pool.max,
        });
    }
    Ok(if transactional {
        Plan::Begin { holding: pool.held }
    } else {
        Plan::Autocommit { holding: pool.held }
    })
}

/// The running transaction must give a joining call what it asks for: the
/// server fixed its isolation level and access mode at BEGIN. A test
/// transaction gives every level: a test runs one transaction at a time,
/// where levels differ in nothing it can see, and refusing would make every
/// `serializable` function untestable (Spring's test transactions join the
/// same way).
fn check_satisfied(request: &Request, running: &RunningTransaction) -> Result<(), Error> {
    if let Some(requested) = request.isolation
        && !running.test
    {
        let effective = running.isolation.unwrap_or(running.default_isolation);
        if requested > effective {
            return Err(Error::IsolationMismatch {
                call: request.name,
                transaction: running.name,
                requested,
                running: running.isolation,
                effective,
            });
        }
    }
    if request.read_only == Some(false) && running.read_only {
        return Err(Error::AccessModeMismatch {
            call: request.name,
            transaction: running.name,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: PoolUse = PoolUse { held: 1, max: 4 };

    fn request(propagation: Propagation) -> Request {
        Request {
            propagation,
            isolation: None,
            read_only: None,
            durable: false,
            name: "call",
        }
    }

    fn transaction(isolation: Option<Isolation>, read_only: bool, test: bool) -> Running {
        Running::Transaction(RunningTransaction {
            isolation,
            default_isolation: Isolation::ReadCommitted,
            read_only,
            test,
            name: "outer",
        })
    }

    /// What each propagation does in each running state, with a request
    /// the running transaction satisfies.
    #[test]
    fn each_propagation_in_each_running_state() {
        use Propagation::*;
        let begin = Ok(Plan::Begin { holding: 0 });
        let autocommit = Ok(Plan::Autocommit { holding: 0 });
        let second = Ok(Plan::Begin { holding: 1 });
        let suspended = Ok(Plan::Autocommit { holding: 1 });
        let no_transaction = Err("NoTransaction");
        let active = Err("TransactionActive");
        let escapes = Err("EscapesTestTransaction");
        let plain = transaction(None, false, false);
        let test = transaction(None, false, true);
        #[rustfmt::skip]
        let table: [(Propagation, [Result<Plan, &str>; 4]); 7] = [
            //               nothing          autocommit                     transaction       test transaction
            (Nested,        [begin,  Ok(Plan::BeginOnAutocommit),  Ok(Plan::Savepoint), Ok(Plan::Savepoint)]),
            (Required,      [begin,  Ok(Plan::BeginOnAutocommit),  Ok(Plan::Join),      Ok(Plan::Join)]),
            (RequiresNew,   [begin,  second,               second,      escapes]),
            (Mandatory,     [no_transaction, no_transaction, Ok(Plan::Join),     Ok(Plan::Join)]),
            (Never,         [autocommit, Ok(Plan::Join),           active,      active]),
            (Supports,      [autocommit, Ok(Plan::Join),           Ok(Plan::Join),      Ok(Plan::Join)]),
            (NotSupported,  [autocommit, Ok(Plan::Join),           suspended,   escapes]),
        ];
        for (propagation, expected) in table {
            let states = [Running::Nothing, Running::Autocommit, plain, test];
            for (state, expected) in states.into_iter().zip(expected) {
                let planned =
                    plan(&request(propagation), state, ROOM).map_err(|error| variant(&error));
                assert_eq!(planned, expected, "{propagation} with {state:?}");
            }
        }
    }

    fn variant(error: &Error) -> &'static str {
        match error {
            Error::NoTransaction => "NoTransaction",
            Error::TransactionActive(_) => "TransactionActive",
            Error::EscapesTestTransaction(_) => "EscapesTestTransaction",
            Error::IsolationMismatch { .. } => "IsolationMismatch",
            Error::AccessModeMismatch { .. } => "AccessModeMismatch",
            Error::NotOutermost { .. } => "NotOutermost",
            Error::PoolExhaustedByNesting { .. } => "PoolExhaustedByNesting",
            other => panic!("unexpected {other}"),
        }
    }

    /// Every isolation level and access mode asked of every running one,
    /// for each propagation that joins or nests.
    #[test]
    fn a_joining_call_must_be_satisfied_by_the_running_transaction() {
        let levels = [
            None,
            Some(Isolation::ReadUncommitted),
            Some(Isolation::ReadCommitted),
            Some(Isolation::RepeatableRead),
            Some(Isolation::Serializable),
        ];
        for propagation in [
            Propagation::Nested,
            Propagation::Required,
            Propagation::Mandatory,
            Propagation::Supports,
        ] {
            for running_level in levels {
                for running_read_only in [false, true] {
                    for asked_level in levels {
                        for asked_access in [None, Some(true), Some(false)] {
                            let running = transaction(running_level, running_read_only, false);
                            let asked = Request {
                                isolation: asked_level,
                                read_only: asked_access,
                                ..request(propagation)
                            };
                            let effective = running_level.unwrap_or(Isolation::ReadCommitted);
                            let expected = if asked_level.is_some_and(|asked| asked > effective) {
                                Err("IsolationMismatch")
                            } else if asked_access == Some(false) && running_read_only {
                                Err("AccessModeMismatch")
                            } else if propagation == Propagation::Nested {
                                Ok(Plan::Savepoint)
                            } else {
                                Ok(Plan::Join)
                            };
                            let planned =
                                plan(&asked, running, ROOM).map_err(|error| variant(&error));
                            assert_eq!(planned, expected, "{asked:?} in {running:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_durable_call_must_be_outermost_except_in_a_test_transaction() {
        let durable = Request {
            durable: true,
            ..request(Propagation::Nested)
        };
        assert_eq!(
            plan(&durable, Running::Nothing, ROOM).ok(),
            Some(Plan::Begin { holding: 0 })
        );
        let nested =
            plan(&durable, transaction(None, false, false), ROOM).map_err(|error| variant(&error));
        assert_eq!(nested, Err("NotOutermost"));
        assert_eq!(
            plan(&durable, transaction(None, false, true), ROOM).ok(),
            Some(Plan::Savepoint)
        );
        let independent = Request {
            durable: true,
            ..request(Propagation::RequiresNew)
        };
        assert_eq!(
            plan(&independent, transaction(None, false, false), ROOM).ok(),
            Some(Plan::Begin { holding: 1 })
        );
    }

    #[test]
    fn a_test_transaction_gives_every_isolation_level_but_not_write_access() {
        for level in [Isolation::RepeatableRead, Isolation::Serializable] {
            let asked = Request {
                isolation: Some(level),
                ..request(Propagation::Nested)
            };
            let in_test = transaction(Some(Isolation::ReadCommitted), false, true);
            assert_eq!(plan(&asked, in_test, ROOM).ok(), Some(Plan::Savepoint));
        }
        let writer = Request {
            read_only: Some(false),
            ..request(Propagation::Nested)
        };
        let read_only_test = transaction(None, true, true);
        let planned = plan(&writer, read_only_test, ROOM).map_err(|error| variant(&error));
        assert_eq!(planned, Err("AccessModeMismatch"));
    }

    #[test]
    fn a_second_connection_is_refused_when_the_task_holds_the_whole_pool() {
        let full = PoolUse { held: 4, max: 4 };
        for propagation in [Propagation::RequiresNew, Propagation::NotSupported] {
            let planned = plan(&request(propagation), transaction(None, false, false), full)
                .map_err(|error| variant(&error));
            assert_eq!(planned, Err("PoolExhaustedByNesting"), "{propagation}");
        }
    }
}
