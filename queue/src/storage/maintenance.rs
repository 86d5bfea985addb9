//! Statements of an operator's maintenance: what holds back the xmin
//! horizon in this database, the jobs table's indexes, their rebuild.
//!
//! An index's name cannot be a bind parameter, so each index the schema
//! creates has its statements spelled out here ([`INDEXES`]); nothing is
//! built from a name read out of the catalog.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Double, Integer, Nullable, Text};

/// Something that holds back the oldest transaction id whose deleted rows
/// `VACUUM` may remove, older than the grace asked for.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct HorizonRow {
    /// The backend's pid, for a session's transaction.
    #[diesel(sql_type = Nullable<Integer>)]
    pub pid: Option<i32>,
    /// `transaction`, `prepared transaction` or `replication slot`.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// The application name, the prepared transaction's gid, the slot's name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// How long the transaction has been open (unknown for a slot).
    #[diesel(sql_type = Nullable<Double>)]
    pub open_secs: Option<f64>,
    /// The session's state (`idle in transaction`, `active`, ...).
    #[diesel(sql_type = Text)]
    pub state: String,
}

/// What holds the horizon of this database back and has for longer than
/// `older_than_secs`: other sessions' transactions in this database (those
/// of other databases do not hold back this one's tables, nor does an index
/// build wait for them), prepared transactions, and replication slots that
/// hold an `xmin` (a replica's `hot_standby_feedback`). A role without
/// `pg_read_all_stats` does not see other roles' transactions.
pub(crate) fn horizon_holders(
    conn: &mut PgConnection,
    older_than_secs: f64,
) -> QueryResult<Vec<HorizonRow>> {
    diesel::sql_query(
        "SELECT pid, 'transaction' AS kind, coalesce(application_name, '') AS name, \
                extract(epoch FROM now() - xact_start)::float8 AS open_secs, \
                coalesce(state, '') AS state \
           FROM pg_stat_activity \
          WHERE datname = current_database() AND pid <> pg_backend_pid() \
            AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) \
            AND xact_start < now() - make_interval(secs => $1) \
         UNION ALL \
         SELECT NULL, 'prepared transaction', gid, \
                extract(epoch FROM now() - prepared)::float8, '' \
           FROM pg_prepared_xacts \
          WHERE database = current_database() \
            AND prepared < now() - make_interval(secs => $1) \
         UNION ALL \
         SELECT NULL, 'replication slot', slot_name::text, NULL, '' \
           FROM pg_replication_slots \
          WHERE xmin IS NOT NULL AND (database IS NULL OR database = current_database()) \
         ORDER BY open_secs DESC NULLS FIRST",
    )
    .bind::<Double, _>(older_than_secs)
    .load(conn)
}

/// One index of the jobs table, as the catalog has it now.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct IndexRow {
    #[diesel(sql_type = Text)]
    pub name: String,
    /// False for an index a concurrent build left unfinished: it is kept
    /// up to date by writes but no query uses it.
    #[diesel(sql_type = Bool)]
    pub valid: bool,
    #[diesel(sql_type = BigInt)]
    pub bytes: i64,
}

/// The jobs table's indexes, by name.
pub(crate) fn job_indexes(conn: &mut PgConnection) -> QueryResult<Vec<IndexRow>> {
    diesel::sql_query(
        "SELECT c.relname::text AS name, i.indisvalid AS valid, \
                pg_relation_size(c.oid) AS bytes \
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
          WHERE i.indrelid = 'queue_jobs'::regclass \
          ORDER BY c.relname",
    )
    .load(conn)
}

/// An index the schema creates, with the statements that rebuild it and
/// drop what an interrupted rebuild leaves (`REINDEX CONCURRENTLY` names its
/// copy `<name>_ccnew` and, after the swap, the old one `<name>_ccold`).
pub(crate) struct KnownIndex {
    pub name: &'static str,
    pub reindex: &'static str,
    pub drop_new: &'static str,
    pub drop_old: &'static str,
}

macro_rules! known_index {
    ($name:literal) => {
        KnownIndex {
            name: $name,
            reindex: concat!("REINDEX INDEX CONCURRENTLY ", $name),
            drop_new: concat!("DROP INDEX CONCURRENTLY IF EXISTS ", $name, "_ccnew"),
            drop_old: concat!("DROP INDEX CONCURRENTLY IF EXISTS ", $name, "_ccold"),
        }
    };
}

/// Every index of the jobs table the migrations create.
pub(crate) const INDEXES: [KnownIndex; 8] = [
    known_index!("queue_jobs_pkey"),
    known_index!("queue_jobs_ready_idx"),
    known_index!("queue_jobs_keyed_ready_idx"),
    known_index!("queue_jobs_scheduled_idx"),
    known_index!("queue_jobs_failed_order_idx"),
    known_index!("queue_jobs_failed_type_idx"),
    known_index!("queue_jobs_failed_queue_idx"),
    known_index!("queue_jobs_unique_idx"),
];

/// The session's lock and statement timeouts, to be put back after a
/// maintenance statement that runs outside any transaction.
pub(crate) fn session_timeouts(conn: &mut PgConnection) -> QueryResult<(String, String)> {
    #[derive(QueryableByName)]
    struct Timeouts {
        #[diesel(sql_type = Text)]
        lock: String,
        #[diesel(sql_type = Text)]
        statement: String,
    }
    let t: Timeouts = diesel::sql_query(
        "SELECT current_setting('lock_timeout') AS lock, \
                current_setting('statement_timeout') AS statement",
    )
    .get_result(conn)?;
    Ok((t.lock, t.statement))
}

/// Sets the session's lock and statement timeouts (PostgreSQL's syntax:
/// `'0'` for none, `'30s'`, `'1500ms'`).
pub(crate) fn set_session_timeouts(
    conn: &mut PgConnection,
    lock: &str,
    statement: &str,
) -> QueryResult<()> {
    diesel::sql_query(
        "SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $2, false)",
    )
    .bind::<Text, _>(lock)
    .bind::<Text, _>(statement)
    .execute(conn)?;
    Ok(())
}

/// Runs one of [`KnownIndex`]'s statements (none may run in a transaction).
pub(crate) fn run_maintenance(conn: &mut PgConnection, statement: &'static str) -> QueryResult<()> {
    diesel::sql_query(statement).execute(conn)?;
    Ok(())
}
