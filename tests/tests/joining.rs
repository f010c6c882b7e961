//! Joining a running transaction, every cell of the table: each isolation
//! level and access mode a nested call can ask for, inside each one a
//! transaction can run at, for each propagation that joins or nests. A call
//! the running transaction satisfies joins it (or nests as a savepoint) and
//! its writes commit with it; one it cannot satisfy fails before its body
//! runs, names both sides, and leaves the running transaction unharmed.

use std::sync::atomic::{AtomicU32, Ordering};

use covet_txn::{Error, Isolation, Propagation, TxOptions};
use covet_txn_tests::each_backend;

const LEVELS: [Option<Isolation>; 5] = [
    None,
    Some(Isolation::ReadUncommitted),
    Some(Isolation::ReadCommitted),
    Some(Isolation::RepeatableRead),
    Some(Isolation::Serializable),
];
const ACCESS: [Option<bool>; 3] = [None, Some(true), Some(false)];
const JOINING: [Propagation; 4] = [
    Propagation::Required,
    Propagation::Nested,
    Propagation::Mandatory,
    Propagation::Supports,
];
const OUTER: &str = "joining::outer";
const CALL: &str = "joining::call";

fn options(level: Option<Isolation>, read_only: Option<bool>) -> TxOptions {
    let options = match level {
        Some(level) => TxOptions::new().isolation(level),
        None => TxOptions::new(),
    };
    match read_only {
        Some(read_only) => options.read_only(read_only),
        None => options,
    }
}

/// What a cell should do: `Ok` when the running transaction satisfies the
/// request, else the variant it fails with.
fn expected(
    running: (Option<Isolation>, bool),
    asked: (Option<Isolation>, Option<bool>),
    server_default: Isolation,
) -> Result<(), &'static str> {
    let effective = running.0.unwrap_or(server_default);
    if asked.0.is_some_and(|level| level > effective) {
        Err("IsolationMismatch")
    } else if asked.1 == Some(false) && running.1 {
        Err("AccessModeMismatch")
    } else {
        Ok(())
    }
}

each_backend! {
    const SERVER_DEFAULT: Isolation = match BACKEND.as_bytes() {
        b"postgresql" => Isolation::ReadCommitted,
        b"mysql" => Isolation::RepeatableRead,
        _ => Isolation::Serializable,
    };

    /// Runs every nested cell inside one running transaction; returns how
    /// many joined (and wrote a row, when the transaction is read-write).
    async fn cells_inside(
        manager: &covet_txn::TxManager<Db>,
        running: (Option<Isolation>, bool),
        first_id: i64,
    ) -> Result<i64, Error> {
        let outer = options(running.0, Some(running.1)).name(OUTER);
        manager
            .transaction(outer, || async {
                let outer_id = covet_txn::current().map(|info| info.id);
                let mut joined = 0;
                let mut cell = first_id;
                for propagation in JOINING {
                    for level in LEVELS {
                        for access in ACCESS {
                            cell += 1;
                            let ran = AtomicU32::new(0);
                            let asked = options(level, access).propagation(propagation).name(CALL);
                            let result = manager
                                .transaction(asked, || async {
                                    ran.fetch_add(1, Ordering::SeqCst);
                                    let info = covet_txn::current().expect("runs in a transaction");
                                    assert_eq!(Some(info.id), outer_id, "{propagation:?} joins the running transaction");
                                    let savepoint = propagation == Propagation::Nested;
                                    assert_eq!(info.depth, 1 + u32::from(savepoint), "only `nested` opens a savepoint");
                                    assert_eq!((info.name, info.transaction_name), (CALL, OUTER));
                                    if !running.1 {
                                        exec(format!("INSERT INTO joining (id) VALUES ({cell})")).await?;
                                    }
                                    Ok::<_, Error>(())
                                })
                                .await;
                            let case = format!("{propagation:?} {level:?} {access:?} inside {running:?}");
                            match (expected(running, (level, access), SERVER_DEFAULT), result) {
                                (Ok(()), Ok(())) => {
                                    joined += 1;
                                    assert_eq!(ran.load(Ordering::SeqCst), 1, "{case}");
                                }
                                (Err(variant), Err(error)) => {
                                    assert_eq!(ran.load(Ordering::SeqCst), 0, "{case}: refused before the body runs");
                                    let (names_both, found) = match &error {
                                        Error::IsolationMismatch { call, transaction, requested, effective, .. } => (
                                            *call == CALL && *transaction == OUTER && Some(*requested) == level
                                                && *effective == running.0.unwrap_or(SERVER_DEFAULT),
                                            "IsolationMismatch",
                                        ),
                                        Error::AccessModeMismatch { call, transaction } => {
                                            (*call == CALL && *transaction == OUTER, "AccessModeMismatch")
                                        }
                                        other => panic!("{case}: unexpected {other}"),
                                    };
                                    assert_eq!(found, variant, "{case}");
                                    assert!(names_both, "{case}: {error:?}");
                                    let message = error.to_string();
                                    assert!(message.contains(CALL) && message.contains(OUTER), "{case}: {message}");
                                }
                                (expected, result) => panic!("{case}: expected {expected:?}, got {result:?}"),
                            }
                        }
                    }
                }
                assert!(!covet_txn::is_rollback_only(), "a refused call leaves the transaction healthy");
                Ok(joined)
            })
            .await
    }

    #[tokio::test]
    async fn every_request_inside_every_running_transaction() {
        let Some(manager) = manager("joining", 2).await else { return };
        reset_table(manager.pool(), "joining", "id BIGINT PRIMARY KEY").await;
        let mut written = 0;
        let mut refused = 0;
        for (index, level) in LEVELS.into_iter().enumerate() {
            for read_only in [false, true] {
                let first_id = (index as i64 * 2 + i64::from(read_only)) * 1000;
                let joined = cells_inside(&manager, (level, read_only), first_id)
                    .await
                    .unwrap_or_else(|error| panic!("{level:?} read_only={read_only}: {error}"));
                let cells = (JOINING.len() * LEVELS.len() * ACCESS.len()) as i64;
                refused += cells - joined;
                if !read_only {
                    written += joined;
                }
            }
        }
        assert_eq!(
            pool_scalar(manager.pool(), "SELECT COUNT(*) FROM joining").await,
            written,
            "every joined write committed with its transaction"
        );
        assert!(refused > 0 && written > 0, "the table has both kinds of cell");
    }
}
