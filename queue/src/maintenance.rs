//! Giving back the space that a held xmin horizon left in the jobs table's
//! indexes, without stopping the queue.
//!
//! While a transaction holds the horizon back, the rows of completed jobs
//! stay, and so do their index entries. Once it ends, `VACUUM` (autovacuum)
//! removes them: the table's file shrinks back, but an index keeps its size
//! (its emptied pages are reused, never returned). [`rebuild_indexes`]
//! rebuilds each index with `REINDEX INDEX CONCURRENTLY`: enqueues, claims
//! and completions go on meanwhile.

use std::fmt;
use std::time::Duration;

use diesel::PgConnection;
use serde::Serialize;

use crate::errors::AdminError;
use crate::storage::maintenance as m;

/// A transaction, prepared transaction or replication slot that holds back
/// the oldest rows `VACUUM` may remove in this database.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HorizonHolder {
    /// The session's backend pid (`pg_terminate_backend` ends it).
    pub pid: Option<i32>,
    /// `transaction`, `prepared transaction` or `replication slot`.
    pub kind: String,
    /// The session's application name, the prepared transaction's gid or
    /// the slot's name.
    pub name: String,
    /// How long the transaction has been open (none for a slot).
    pub open_for: Option<Duration>,
    /// The session's state, as `pg_stat_activity` says (`idle in
    /// transaction`, `active`).
    pub state: String,
}

impl fmt::Display for HorizonHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if let Some(pid) = self.pid {
            write!(f, " of pid {pid}")?;
        }
        if !self.name.is_empty() {
            // Attacker-chosen text at worst (an application name): shown
            // as a quoted, escaped string.
            write!(f, " {:?}", self.name)?;
        }
        if let Some(open) = self.open_for {
            write!(f, ", open for {} s", open.as_secs())?;
        }
        if !self.state.is_empty() {
            write!(f, " ({})", self.state)?;
        }
        Ok(())
    }
}

/// What [`rebuild_indexes`] did to one index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct IndexRebuild {
    /// The index.
    pub name: String,
    /// Its size on disk before, in bytes.
    pub bytes_before: i64,
    /// Its size on disk after.
    pub bytes_after: i64,
    /// Whether it was invalid before (an interrupted concurrent build, which
    /// `migrate` does not repair: it found the name taken).
    pub was_invalid: bool,
}

/// What [`rebuild_indexes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RebuildReport {
    /// The jobs table's indexes, each rebuilt.
    pub rebuilt: Vec<IndexRebuild>,
    /// Unfinished copies an interrupted rebuild had left (`*_ccnew`,
    /// `*_ccold`), dropped first.
    pub dropped: Vec<String>,
    /// Invalid indexes on the jobs table that are not the queue's own, left
    /// as they are.
    pub foreign_invalid: Vec<String>,
}

/// Rebuilds every index of the jobs table (`REINDEX INDEX CONCURRENTLY`, one
/// at a time), which gives back the space that dead entries took while a
/// transaction held back the xmin horizon. The queue keeps working
/// meanwhile: a concurrent rebuild takes no lock that stops enqueues,
/// claims or completions.
///
/// - It refuses, with [`AdminError::HorizonHeld`], while anything has held
///   the database's horizon for longer than `wait`: the rebuilt index would
///   keep every entry the horizon keeps, and the rebuild would wait for that
///   transaction to end.
/// - Each of its waits (for a lock, for the transactions that were running
///   when it started) lasts at most `wait`; past that it drops the
///   unfinished copy it made and fails with [`AdminError::RebuildWaited`].
///   It also drops such copies left by an earlier interrupted rebuild, and
///   rebuilds an index that an interrupted migration left invalid.
/// - It puts the session's `lock_timeout` and `statement_timeout` back as
///   they were (it needs no statement timeout while it builds).
///
/// It must be called outside a transaction (PostgreSQL runs a concurrent
/// rebuild in transactions of its own).
pub fn rebuild_indexes(
    conn: &mut PgConnection,
    wait: Duration,
) -> Result<RebuildReport, AdminError> {
    crate::admin::require_schema(conn)?;
    let holders = horizon_holders(conn, wait)?;
    if !holders.is_empty() {
        return Err(AdminError::HorizonHeld(holders));
    }
    let (lock, statement) = m::session_timeouts(conn)?;
    m::set_session_timeouts(conn, &format!("{}ms", wait.as_millis().max(1)), "0")?;
    let result = rebuild(conn, wait);
    let restored = m::set_session_timeouts(conn, &lock, &statement);
    let report = result?;
    restored?;
    Ok(report)
}

/// What has held back this database's horizon for longer than `older_than`
/// (see [`rebuild_indexes`]), the oldest first. A role without
/// `pg_read_all_stats` sees only its own sessions' transactions.
pub fn horizon_holders(
    conn: &mut PgConnection,
    older_than: Duration,
) -> Result<Vec<HorizonHolder>, AdminError> {
    Ok(m::horizon_holders(conn, older_than.as_secs_f64())?
        .into_iter()
        .map(|row| HorizonHolder {
            pid: row.pid,
            kind: row.kind,
            name: row.name,
            open_for: row
                .open_secs
                .map(|secs| Duration::from_secs_f64(secs.max(0.0))),
            state: row.state,
        })
        .collect())
}

fn rebuild(conn: &mut PgConnection, wait: Duration) -> Result<RebuildReport, AdminError> {
    let mut report = RebuildReport::default();
    let before = m::job_indexes(conn)?;
    for index in &m::INDEXES {
        for (suffix, drop) in [("_ccnew", index.drop_new), ("_ccold", index.drop_old)] {
            let leftover = format!("{}{suffix}", index.name);
            if before.iter().any(|row| row.name == leftover) {
                m::run_maintenance(conn, drop)?;
                report.dropped.push(leftover);
            }
        }
    }
    report.foreign_invalid = before
        .iter()
        .filter(|row| !row.valid && !report.dropped.contains(&row.name))
        .filter(|row| !m::INDEXES.iter().any(|known| known.name == row.name))
        .map(|row| row.name.clone())
        .collect();
    for index in &m::INDEXES {
        let Some(old) = before.iter().find(|row| row.name == index.name) else {
            continue;
        };
        if let Err(error) = m::run_maintenance(conn, index.reindex) {
            // An interrupted rebuild leaves its copy, invalid, and still
            // written to by every insert: drop it now.
            let cleaned = m::run_maintenance(conn, index.drop_new);
            return Err(match error {
                error if is_lock_timeout(&error) => AdminError::RebuildWaited {
                    index: index.name,
                    wait,
                    cleaned: cleaned.is_ok(),
                },
                error => AdminError::Database(error),
            });
        }
        report.rebuilt.push(IndexRebuild {
            name: index.name.to_owned(),
            bytes_before: old.bytes,
            bytes_after: 0,
            was_invalid: !old.valid,
        });
    }
    let after = m::job_indexes(conn)?;
    for rebuilt in &mut report.rebuilt {
        if let Some(row) = after.iter().find(|row| row.name == rebuilt.name) {
            rebuilt.bytes_after = row.bytes;
        }
    }
    Ok(report)
}

/// Whether a statement was cancelled by `lock_timeout` (SQLSTATE 55P03,
/// which diesel does not name: its message says so).
fn is_lock_timeout(error: &diesel::result::Error) -> bool {
    matches!(error, diesel::result::Error::DatabaseError(_, info)
        if info.message().contains("lock timeout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_described_with_its_name_escaped() {
        let holder = HorizonHolder {
            pid: Some(42),
            kind: "transaction".into(),
            name: "report\n\u{1b}[31m".into(),
            open_for: Some(Duration::from_secs(600)),
            state: "idle in transaction".into(),
        };
        assert_eq!(
            holder.to_string(),
            "transaction of pid 42 \"report\\n\\u{1b}[31m\", open for 600 s (idle in transaction)"
        );
        let slot = HorizonHolder {
            pid: None,
            kind: "replication slot".into(),
            name: "replica".into(),
            open_for: None,
            state: String::new(),
        };
        assert_eq!(slot.to_string(), "replication slot \"replica\"");
    }
}
