//! The statements of flow control's settings: a queue's own limits, and
//! what the limits hold now (see the migration `flow_limits`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};

use crate::prepared::Statement;

/// How many of the `$max` slots of limit `$name` sessions hold now, as SQL
/// (their advisory locks in this database, see [`slot_class!`]).
macro_rules! slots_held {
    ($max:literal, $name:literal) => {
        concat!(
            "(SELECT count(*) FROM pg_locks held, queue_installation inst, \
                     generate_series(0, COALESCE(",
            $max,
            ", 0) - 1) slot \
              WHERE held.locktype = 'advisory' AND held.granted AND held.objsubid = 2 \
                AND held.database = \
                    (SELECT oid FROM pg_database WHERE datname = current_database()) \
                AND held.classid::int8 = ",
            slot_class!("slot", "inst.lock_salt"),
            " AND held.objid::int8 = ",
            slot_key!($name, "inst.lock_salt"),
            ")"
        )
    };
}

/// How many starts the rate window of (`$queue`, `$key`) counts now, as SQL.
macro_rules! window_starts {
    ($queue:literal, $key:literal, $period:literal) => {
        concat!(
            "COALESCE((SELECT count(*) FROM queue_rate_windows win, unnest(win.starts) s \
                       WHERE win.queue = ",
            $queue,
            " AND win.key = ",
            $key,
            " AND s > clock_timestamp() - make_interval( \
                             secs => queue_rate_span(",
            $period,
            ") / 1000.0)), 0)"
        )
    };
}

/// A queue's limits as stored.
#[derive(Debug, QueryableByName)]
pub(crate) struct LimitRow {
    #[diesel(sql_type = Text)]
    pub(crate) queue: String,
    #[diesel(sql_type = Nullable<Integer>)]
    pub(crate) max_running: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub(crate) rate_limit: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub(crate) rate_period_ms: Option<i32>,
    #[diesel(sql_type = Timestamptz)]
    pub(crate) updated_at: DateTime<Utc>,
    /// Workers holding one of the queue's slots now (see `max_running`).
    #[diesel(sql_type = BigInt)]
    pub(crate) running: i64,
    /// Starts counted in the rate limit's window now.
    #[diesel(sql_type = BigInt)]
    pub(crate) recent_starts: i64,
}

/// Runs `read` in a transaction of its own (a savepoint in the caller's)
/// without JIT: the limits' statements walk the keys with recursive scans
/// whose estimates pass the JIT's threshold, and compiling them costs a
/// second where running them costs a millisecond.
pub(crate) fn without_jit<T>(
    conn: &mut PgConnection,
    read: impl FnOnce(&mut PgConnection) -> QueryResult<T>,
) -> QueryResult<T> {
    conn.transaction(|conn| {
        Statement::new("SELECT set_config('jit', 'off', true)").execute(conn)?;
        read(conn)
    })
}

/// Sets queue `$1`'s limits (none: forgets them), and wakes its runners.
pub(crate) fn set_queue_limits(
    conn: &mut PgConnection,
    queue: &str,
    max_running: Option<i32>,
    rate: Option<(i32, i32)>,
) -> QueryResult<()> {
    Statement::new(
        "WITH gone AS ( \
             DELETE FROM queue_limits WHERE queue = $1 \
               AND $2::int4 IS NULL AND $3::int4 IS NULL), \
         set AS ( \
             INSERT INTO queue_limits (queue, max_running, rate_limit, rate_period_ms) \
             SELECT $1, $2, $3, $4 WHERE $2::int4 IS NOT NULL OR $3::int4 IS NOT NULL \
             ON CONFLICT (queue) DO UPDATE SET max_running = EXCLUDED.max_running, \
                 rate_limit = EXCLUDED.rate_limit, rate_period_ms = EXCLUDED.rate_period_ms, \
                 updated_at = now()) \
         SELECT pg_notify('queue_jobs', $1)",
    )
    .bind::<Text, _>(queue)
    .bind::<Nullable<Integer>, _>(max_running)
    .bind::<Nullable<Integer>, _>(rate.map(|r| r.0))
    .bind::<Nullable<Integer>, _>(rate.map(|r| r.1))
    .execute(conn)?;
    Ok(())
}

/// Every queue's limits, with what they hold now: the slots held (advisory
/// locks of the session that holds them, in `pg_locks`) and the starts in
/// the rate window.
pub(crate) fn queue_limits(conn: &mut PgConnection) -> QueryResult<Vec<LimitRow>> {
    Statement::new(concat!(
        "SELECT l.queue, l.max_running, l.rate_limit, l.rate_period_ms, l.updated_at, ",
        slots_held!("l.max_running", "l.queue || chr(2)"),
        " AS running, ",
        window_starts!("l.queue", "''", "l.rate_period_ms"),
        " AS recent_starts \
         FROM queue_limits l ORDER BY l.queue"
    ))
    .load(conn)
}

/// A concurrency key's limits and what they hold now.
#[derive(Debug, QueryableByName)]
pub(crate) struct KeyRow {
    #[diesel(sql_type = Text)]
    pub(crate) queue: String,
    #[diesel(sql_type = Text)]
    pub(crate) key: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) ready: i64,
    #[diesel(sql_type = Nullable<Integer>)]
    pub(crate) max_concurrent: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub(crate) rate_limit: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub(crate) rate_period_ms: Option<i32>,
    #[diesel(sql_type = BigInt)]
    pub(crate) running: i64,
    #[diesel(sql_type = BigInt)]
    pub(crate) recent_starts: i64,
    /// How long the key's first ready job has waited, in seconds.
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub(crate) waited_secs: f64,
}

/// The limited keys with ready jobs, those whose first job waited longest
/// first, at most `limit` (each key's ready jobs counted up to
/// `count_up_to`): one walk of the keyed ready index per queue, a key at a
/// time, at most 1,000 keys a queue.
pub(crate) fn limited_keys(
    conn: &mut PgConnection,
    limit: i64,
    count_up_to: i64,
) -> QueryResult<Vec<KeyRow>> {
    Statement::new(concat!(
        "WITH RECURSIVE queues AS ( \
             (SELECT queue FROM queue_jobs WHERE concurrency_key IS NOT NULL \
                AND dead_at IS NULL AND NOT scheduled ORDER BY queue LIMIT 1) \
             UNION ALL \
             SELECT (SELECT j.queue FROM queue_jobs j WHERE j.queue > q.queue \
                       AND j.concurrency_key IS NOT NULL AND j.dead_at IS NULL AND NOT j.scheduled \
                     ORDER BY j.queue LIMIT 1) \
             FROM queues q WHERE q.queue IS NOT NULL), \
         keys AS ( \
             SELECT q.queue, k.* FROM queues q CROSS JOIN LATERAL ( \
                 WITH RECURSIVE walk AS ( \
                     (SELECT j.concurrency_key AS key, j.max_concurrent, j.rate_limit, \
                             j.rate_period_ms, j.created_at FROM queue_jobs j \
                      WHERE j.queue = q.queue AND j.concurrency_key IS NOT NULL \
                        AND j.dead_at IS NULL AND NOT j.scheduled \
                      ORDER BY j.concurrency_key, j.priority DESC, j.id LIMIT 1) \
                     UNION ALL \
                     SELECT n.* FROM walk w CROSS JOIN LATERAL ( \
                         SELECT j.concurrency_key, j.max_concurrent, j.rate_limit, \
                                j.rate_period_ms, j.created_at FROM queue_jobs j \
                         WHERE j.queue = q.queue AND j.concurrency_key > w.key \
                           AND j.dead_at IS NULL AND NOT j.scheduled \
                         ORDER BY j.concurrency_key, j.priority DESC, j.id LIMIT 1) n) \
                 SELECT * FROM walk LIMIT 1000) k \
             WHERE q.queue IS NOT NULL \
               AND (k.max_concurrent IS NOT NULL OR k.rate_limit IS NOT NULL)), \
         chosen AS MATERIALIZED ( \
             SELECT * FROM keys ORDER BY created_at, queue, key LIMIT $1) \
         SELECT k.queue, k.key, \
                (SELECT count(*) FROM (SELECT 1 FROM queue_jobs j WHERE j.queue = k.queue \
                   AND j.concurrency_key = k.key AND j.dead_at IS NULL AND NOT j.scheduled \
                   LIMIT $2) c) AS ready, \
                k.max_concurrent, k.rate_limit, k.rate_period_ms, ",
        slots_held!("k.max_concurrent", "k.queue || chr(1) || k.key"),
        " AS running, ",
        window_starts!("k.queue", "k.key", "k.rate_period_ms"),
        " AS recent_starts, \
                extract(epoch FROM clock_timestamp() - k.created_at)::float8 AS waited_secs \
         FROM chosen k ORDER BY k.created_at, k.queue, k.key"
    ))
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(count_up_to)
    .load(conn)
}
