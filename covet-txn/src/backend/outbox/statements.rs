//! The text of the outbox's statements for one table: the schema, the
//! claim, the finishes, the upkeep, written once per table and backend from
//! the few things the backends spell differently (placeholders, the id
//! column, the lock clause, how a claim begins).

use super::Finish;

/// The statements of one outbox table on one backend, written once per
/// relay or enqueue site. `?` placeholders; PostgreSQL's are numbered.
#[derive(Debug, Clone)]
pub struct Statements {
    pub(crate) schema: Vec<String>,
    /// Binds topic, key, payload, created-at, next-attempt-at.
    pub(crate) insert: String,
    pub(crate) begin_claim: &'static str,
    pub(super) table: String,
    pub(super) lock_clause: &'static str,
    pub(super) numbered: bool,
}

/// A table name covet-txn accepts: an SQL identifier, so that it can be put
/// into statements as it is, and short enough for the index names built
/// from it.
pub(crate) fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

impl Statements {
    pub(super) fn sql(&self, text: String) -> String {
        if !self.numbered {
            return text;
        }
        let mut numbered = String::with_capacity(text.len() + 8);
        let mut index = 0;
        for c in text.chars() {
            if c == '?' {
                index += 1;
                numbered.push('$');
                numbered.push_str(&index.to_string());
            } else {
                numbered.push(c);
            }
        }
        numbered
    }

    /// The first deliverable messages, each the first undelivered one of
    /// its key. The key check is an OR arm, not a join: it runs only for
    /// keyed rows, through the `(ordering_key, state, id)` index, whatever
    /// plan a prepared statement settles on (as an anti join, a generic
    /// plan scanned every pending row once per candidate).
    pub(super) fn claimable(&self, topics: usize) -> String {
        let table = &self.table;
        let topic_list = vec!["?"; topics].join(", ");
        self.sql(format!(
            "SELECT id, topic, ordering_key, payload, attempts, created_at_ms, last_error \
             FROM {table} AS pending \
             WHERE state = 0 AND next_attempt_at_ms <= ? \
             AND (lease_until_ms IS NULL OR lease_until_ms < ?) \
             AND topic IN ({topic_list}) \
             AND (pending.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM {table} AS earlier \
                 WHERE earlier.ordering_key = pending.ordering_key \
                 AND earlier.state = 0 AND earlier.id < pending.id)) \
             ORDER BY id LIMIT ?{}",
            self.lock_clause
        ))
    }

    pub(super) fn lease(&self, ids: &[i64]) -> String {
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        self.sql(format!(
            "UPDATE {} SET lease_owner = ?, lease_until_ms = ?, attempts = attempts + 1 \
             WHERE id IN ({})",
            self.table,
            ids.join(", ")
        ))
    }

    /// The statement of a finish, guarded by the lease owner: a relay whose
    /// lease expired and was taken over changes nothing.
    pub(super) fn finish(&self, finish: &Finish) -> String {
        let table = &self.table;
        let change = match finish {
            Finish::Delete => {
                return self.sql(format!(
                    "DELETE FROM {table} WHERE id = ? AND lease_owner = ?"
                ));
            }
            Finish::Archive(_) => "state = 1, delivered_at_ms = ?",
            Finish::Retry(..) => "next_attempt_at_ms = ?, last_error = ?",
            Finish::Dead(..) => "state = 2, next_attempt_at_ms = ?, last_error = ?",
        };
        self.sql(format!(
            "UPDATE {table} SET {change}, lease_owner = NULL, lease_until_ms = NULL \
             WHERE id = ? AND lease_owner = ?"
        ))
    }

    pub(super) fn dead_letters(&self) -> String {
        format!(
            "SELECT id, topic, ordering_key, payload, attempts, created_at_ms, last_error \
             FROM {} WHERE state = 2 ORDER BY id",
            self.table
        )
    }

    pub(super) fn redrive(&self, all: bool) -> String {
        let which = if all { "" } else { " AND id = ?" };
        self.sql(format!(
            "UPDATE {} SET state = 0, attempts = 0, next_attempt_at_ms = ?, last_error = NULL \
             WHERE state = 2{which}",
            self.table
        ))
    }

    pub(super) fn oldest_pending(&self) -> String {
        format!(
            "SELECT MIN(created_at_ms) FROM {} WHERE state = 0",
            self.table
        )
    }

    pub(super) fn purge_archived(&self) -> String {
        self.sql(format!(
            "DELETE FROM {} WHERE state = 1 AND delivered_at_ms < ?",
            self.table
        ))
    }
}

/// The columns every backend shares, after the id.
fn columns(text: &str, integer: &str) -> String {
    format!(
        "topic VARCHAR(255) NOT NULL, ordering_key VARCHAR(255), payload {text} NOT NULL, \
         created_at_ms {integer} NOT NULL, state {integer} NOT NULL DEFAULT 0, \
         attempts {integer} NOT NULL DEFAULT 0, next_attempt_at_ms {integer} NOT NULL, \
         lease_owner VARCHAR(100), lease_until_ms {integer}, last_error {text}, \
         delivered_at_ms {integer}"
    )
}

/// The table and the indexes the claim and the per-key check use.
pub(super) fn schema(table: &str, id_column: &str, text: &str, integer: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {table} ({id_column}, {})",
            columns(text, integer)
        ),
        format!("CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (state, id)"),
        format!("CREATE INDEX IF NOT EXISTS {table}_by_key ON {table} (ordering_key, state, id)"),
    ]
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(super) fn plain_insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (topic, ordering_key, payload, created_at_ms, next_attempt_at_ms) \
         VALUES (?, ?, ?, ?, ?)"
    )
}
