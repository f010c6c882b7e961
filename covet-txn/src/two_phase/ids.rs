//! The names and ids of two-phase commit: coordinator and participant names
//! checked to be safe as SQL literals and short enough for MySQL's XA ids,
//! and global ids that carry their coordinator and the time they were made,
//! so that recovery touches only its own coordinator's branches and leaves
//! young ones to the call that is still running them.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// The longest coordinator name: with the time and the random part, a
/// global id stays within MySQL's 64-byte `gtrid`.
pub(crate) const MAX_COORDINATOR_NAME: usize = 24;

/// The longest participant name (MySQL's `bqual` takes 64 bytes).
pub(crate) const MAX_PARTICIPANT_NAME: usize = 64;

/// Checks that `name` is 1 to `max` ASCII letters, digits, `_` or `-`.
pub(crate) fn check_name(what: &str, name: &str, max: usize) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidOption(format!(
            "the {what} name `{name}` must be 1 to {max} ASCII letters, digits, `_` or `-`"
        )))
    }
}

/// Checks a table name: an identifier, optionally qualified by a schema.
pub(crate) fn check_table(table: &str) -> Result<(), Error> {
    let valid = !table.is_empty()
        && table.len() <= 128
        && table.split('.').all(|part| {
            part.bytes()
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
                && part
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidOption(format!(
            "the decision log table `{table}` must be an identifier (letters, digits, `_`), \
             optionally qualified by a schema"
        )))
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A new global id of `coordinator`: `coordinator:millis:random`. 64 random
/// bits keep ids of processes that share a coordinator name apart.
pub(crate) fn new_global(coordinator: &str) -> String {
    format!(
        "{coordinator}:{}:{:016x}",
        unix_millis_now(),
        fastrand::u64(..)
    )
}

/// The coordinator and birth time (Unix milliseconds) of a global id, if it
/// is one of covet-txn's.
pub(crate) fn parse_global(global: &str) -> Option<(&str, u64)> {
    let mut parts = global.split(':');
    let coordinator = parts.next()?;
    let millis = parts.next()?.parse().ok()?;
    let random = parts.next()?;
    (parts.next().is_none() && random.len() == 16).then_some((coordinator, millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_global_id_names_its_coordinator_and_fits_mysql() {
        let coordinator = "a".repeat(MAX_COORDINATOR_NAME);
        let global = new_global(&coordinator);
        assert!(global.len() <= 64, "{global} is {} bytes", global.len());
        let (parsed, millis) = parse_global(&global).expect("parses");
        assert_eq!(parsed, coordinator);
        assert!(millis > 1_700_000_000_000);
        assert_ne!(new_global("x"), new_global("x"));
    }

    #[test]
    fn names_that_could_break_a_literal_are_refused() {
        assert!(check_name("coordinator", "orders-svc_1", 24).is_ok());
        for bad in ["", "a'b", "a b", "a/b", "a:b", &"x".repeat(25)] {
            assert!(check_name("coordinator", bad, 24).is_err(), "{bad}");
        }
        assert!(check_table("covet.decisions").is_ok());
        assert!(check_table("x; DROP TABLE y").is_err());
        assert_eq!(parse_global("other:12:abc"), None);
    }
}
