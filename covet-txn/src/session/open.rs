//! Opening a session: taking its connection (from the pool, already
//! taken, or lent by an autocommit session), running the dialect's probe
//! and BEGIN, and giving the connection back if either fails.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;

use super::recovery::{Held, Origin};
use super::slot::ConnectionSlot;
use super::{PrimaryEpoch, ProbeCache, Session, SessionCore};
use crate::backend::Driver;
use crate::dialect::{BeginRequest, BranchId, Dialect};
use crate::error::{Error, Operation};
use crate::hooks::list::HookList;
use crate::observe::metrics::ActiveTx;
use crate::observe::{Observer, TxAccount};
use crate::request::TxOptions;
use crate::state::{Machine, TxId};

/// Where a new session's connection comes from.
pub(crate) enum Source<DB: Driver> {
    /// Taken from the pool now.
    Pool,
    /// Already taken from the pool.
    Acquired(PoolConnection<DB>),
    /// Borrowed from an autocommit session of the same manager.
    Lent(Arc<Session<DB>>),
}

/// What a new session is opened with.
pub(crate) struct Opening<'a, DB: Driver> {
    pub(crate) manager_id: u64,
    pub(crate) name: &'static str,
    pub(crate) options: TxOptions,
    pub(crate) transactional: bool,
    pub(crate) source: Source<DB>,
    pub(crate) attempt: u32,
    /// Bound the server's statements by this time, if set.
    pub(crate) server_timeout: Option<Duration>,
    /// Where to count a transaction.
    pub(crate) observer: Option<Observer>,
    pub(crate) pool: sqlx::Pool<DB>,
    pub(crate) dialect: Arc<dyn Dialect<DB>>,
    /// The manager's answers to the dialect's probes.
    pub(crate) probes: &'a ProbeCache,
    /// Begin this branch of a two-phase commit.
    pub(crate) branch: Option<BranchId>,
    /// The primary's epoch now, when the manager follows a failover.
    pub(crate) epoch: Option<PrimaryEpoch>,
}

impl<DB: Driver> Session<DB> {
    /// Takes a connection (from `pool`, or as `source` says), begins the
    /// transaction if there is to be one, and returns the session.
    pub(crate) async fn open(opening: Opening<'_, DB>) -> Result<Arc<Session<DB>>, Error> {
        let Opening {
            manager_id,
            name,
            options,
            transactional,
            source,
            attempt,
            server_timeout,
            observer,
            pool,
            dialect,
            probes,
            branch,
            epoch,
        } = opening;
        let prepared =
            match &branch {
                Some(_) => Some(dialect.prepared_transactions().ok_or(
                    Error::TwoPhaseUnsupported {
                        system: dialect.system(),
                    },
                )?),
                None => None,
            };
        let (conn, origin) = match source {
            Source::Lent(parent) => (parent.lend()?, Origin::Lent(parent)),
            Source::Acquired(conn) => (conn, Origin::Pool),
            // Boxed, and built in its box: sqlx's wait for a connection is
            // kilobytes of state, which every future awaiting it would
            // otherwise carry, and `Box::pin` would copy.
            Source::Pool => (
                crate::boxed::pinned(|| pool.acquire())
                    .await
                    .map_err(|source| Error::database(Operation::Acquire, source))?,
                Origin::Pool,
            ),
        };
        let access = options.access();
        let mut held = Held::new(conn, None, &dialect, &origin);
        if transactional {
            let request = BeginRequest {
                access,
                server_timeout,
            };
            let probed = match dialect.probe(&request) {
                Some(sql) => match probes.read::<DB>(held.conn(), sql).await {
                    Ok(row) => Some(row),
                    Err(source) => {
                        held.roll_back_and_release().await;
                        return Err(Error::database(Operation::Begin, source));
                    }
                },
                None => None,
            };
            let probed = probed.as_deref().unwrap_or_default();
            let begin = match (prepared, &branch) {
                (Some(prepared), Some(branch)) => prepared.begin(&request, probed, branch),
                _ => dialect.begin(&request, probed),
            };
            held.restore = begin.restore;
            if let Err(source) = DB::begin(held.conn(), begin.statement).await {
                held.roll_back_and_release().await;
                return Err(Error::database(Operation::Begin, source));
            }
        }
        let restore = held.restore;
        let conn = held.disarm();
        let id = TxId::next();
        let started_at = Instant::now();
        let session = Arc::new(Session {
            core: SessionCore {
                id,
                manager_id,
                name,
                system: dialect.system(),
                isolation: access.isolation,
                read_only: access.read_only == Some(true),
                transactional,
                borrows_connection: matches!(origin, Origin::Lent(_)),
                attempt,
                started_at,
                machine: Machine::active(),
                depth: AtomicU32::new(u32::from(transactional)),
                hooks: HookList::default(),
                account: observer
                    .filter(|_| transactional)
                    .map(|observer| TxAccount::new(observer, id, started_at)),
            },
            resolve_ambiguous_commit: options.resolve_ambiguous_commit,
            restore,
            slot: ConnectionSlot::new(conn),
            origin,
            dialect,
            pool,
            epoch,
            branch,
            prepared_conn: std::sync::Mutex::new(None),
        });
        if let Some(observer) = session.core.observer() {
            observer.begun(id, Arc::clone(&session) as Arc<dyn ActiveTx>);
        }
        Ok(session)
    }
}
