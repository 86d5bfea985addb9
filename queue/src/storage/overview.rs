//! What the dashboard's overview reads, each statement bounded whatever the
//! table holds: the head of each queue (the next jobs a worker would
//! claim), the soonest scheduled jobs and the newest failures, at most a
//! cap of each, counted by job type; the running jobs; and, for the counts
//! past a cap, PostgreSQL's statistics (a sample ANALYZE keeps) and the
//! size of the state's index as ANALYZE or VACUUM last measured it.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};

use crate::prepared::Statement;

/// Ready jobs at the head of one queue, of one type: among the first
/// `cap + 1` without a concurrency key in claim order and the first `cap +
/// 1` with one in key order (not running).
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct ReadyHead {
    #[diesel(sql_type = Text)]
    pub(crate) queue: String,
    #[diesel(sql_type = Text)]
    pub(crate) job_type: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
    /// Seconds the longest-waiting of them has been due.
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) oldest_secs: Option<f64>,
    /// The jobs counted exactly per queue: `budget` shared among the
    /// queues found, within `[least, most]`.
    #[diesel(sql_type = BigInt)]
    pub(crate) cap: i64,
    /// The queues found (at most `max_queues`).
    #[diesel(sql_type = BigInt)]
    pub(crate) queues: i64,
}

/// How many ready jobs [`ready_heads`] reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadBudget {
    /// Ready jobs read in all, shared among the queues.
    pub(crate) budget: i64,
    /// The fewest read of each queue, however many queues.
    pub(crate) least: i64,
    /// The most read of each queue, however few queues.
    pub(crate) most: i64,
    /// Queues looked at, by name.
    pub(crate) max_queues: i64,
}

/// The statement of [`ready_heads`] over the queues `$queues` names: a
/// CTE `queues (queue, depth)`.
macro_rules! ready_heads {
    ($queues:expr) => {
        concat!(
            "WITH RECURSIVE ",
            running_cte!("$1"),
            ", queues AS (",
            $queues,
            "), \
             found AS (SELECT count(*) AS queues, \
                              least($5, greatest($4, $2 / greatest(count(*), 1))) AS cap \
                       FROM queues WHERE queue IS NOT NULL), \
             heads AS ( \
                 SELECT q.queue, h.job_type, h.run_at FROM queues q CROSS JOIN LATERAL ( \
                     SELECT j.job_type, j.run_at FROM queue_jobs j \
                     WHERE j.queue = q.queue AND j.dead_at IS NULL AND NOT j.scheduled \
                       AND j.concurrency_key IS NULL \
                       AND j.id <> ALL (ARRAY(SELECT id FROM running)) AND j.id <> ALL ($3) \
                     ORDER BY j.priority DESC, j.id LIMIT (SELECT cap + 1 FROM found)) h \
                 WHERE q.queue IS NOT NULL \
                 UNION ALL \
                 SELECT q.queue, h.job_type, h.run_at FROM queues q CROSS JOIN LATERAL ( \
                     SELECT j.job_type, j.run_at FROM queue_jobs j \
                     WHERE j.queue = q.queue AND j.dead_at IS NULL AND NOT j.scheduled \
                       AND j.concurrency_key IS NOT NULL \
                       AND j.id <> ALL (ARRAY(SELECT id FROM running)) AND j.id <> ALL ($3) \
                     ORDER BY j.concurrency_key, j.priority DESC, j.id \
                     LIMIT (SELECT cap + 1 FROM found)) h \
                 WHERE q.queue IS NOT NULL) \
             SELECT queue, job_type, count(*) AS n, \
                 EXTRACT(EPOCH FROM now() - min(run_at))::float8 AS oldest_secs, \
                 (SELECT cap FROM found) AS cap, (SELECT queues FROM found) AS queues \
             FROM heads GROUP BY queue, job_type"
        )
    };
}

/// The first `$6` queues holding ready jobs, by name: a skip scan of the
/// ready index and of the keyed ready index, one probe of each per queue.
const EVERY_QUEUE: &str = ready_heads!(
    "SELECT least( \
         (SELECT queue FROM queue_jobs \
          WHERE dead_at IS NULL AND NOT scheduled AND concurrency_key IS NULL \
          ORDER BY queue LIMIT 1), \
         (SELECT queue FROM queue_jobs \
          WHERE dead_at IS NULL AND NOT scheduled AND concurrency_key IS NOT NULL \
          ORDER BY queue LIMIT 1)) AS queue, 1 AS depth \
     UNION ALL \
     SELECT least( \
         (SELECT j.queue FROM queue_jobs j \
          WHERE j.dead_at IS NULL AND NOT j.scheduled AND j.concurrency_key IS NULL \
            AND j.queue > queues.queue ORDER BY j.queue LIMIT 1), \
         (SELECT j.queue FROM queue_jobs j \
          WHERE j.dead_at IS NULL AND NOT j.scheduled AND j.concurrency_key IS NOT NULL \
            AND j.queue > queues.queue ORDER BY j.queue LIMIT 1)), queues.depth + 1 \
     FROM queues WHERE queues.queue IS NOT NULL AND queues.depth < $6"
);

/// The queues `$7` names (at most `$6` of them).
const THESE_QUEUES: &str =
    ready_heads!("SELECT queue, 1 AS depth FROM unnest($7::text[]) queue WHERE $6 > 0");

/// Of the first `max_queues` queues holding ready jobs by name (`queues`:
/// those named), the first `cap + 1` ready jobs of each (the budget shared
/// among them) that no runner seen within `fresh_secs` is running (nor
/// `exclude`: the asking runner's own running jobs, not announced yet),
/// counted by type. The running jobs are an array each row is checked
/// against: as a join, the planner may scan every ready job to hash it.
pub(crate) fn ready_heads(
    conn: &mut PgConnection,
    fresh_secs: f64,
    budget: HeadBudget,
    exclude: &[i64],
    queues: Option<&[String]>,
) -> QueryResult<Vec<ReadyHead>> {
    let statement = Statement::new(if queues.is_some() {
        THESE_QUEUES
    } else {
        EVERY_QUEUE
    })
    .bind::<Double, _>(fresh_secs)
    .bind::<BigInt, _>(budget.budget)
    .bind::<diesel::sql_types::Array<BigInt>, _>(exclude)
    .bind::<BigInt, _>(budget.least)
    .bind::<BigInt, _>(budget.most)
    .bind::<BigInt, _>(budget.max_queues);
    match queues {
        Some(queues) => statement
            .bind::<diesel::sql_types::Array<Text>, _>(queues)
            .load(conn),
        None => statement.load(conn),
    }
}

/// The `$1 + 1` scheduled jobs due soonest (the scheduled index's order),
/// counted by queue and type.
pub(crate) fn scheduled_head(conn: &mut PgConnection, cap: i64) -> QueryResult<Vec<Counted>> {
    Statement::new(
        "SELECT queue, job_type, count(*) AS n \
         FROM (SELECT queue, job_type FROM queue_jobs WHERE dead_at IS NULL AND scheduled \
               ORDER BY run_at LIMIT $1 + 1) s \
         GROUP BY queue, job_type",
    )
    .bind::<BigInt, _>(cap)
    .load(conn)
}

/// Failed jobs of one queue and type among the `cap + 1` newest failures.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct FailedHead {
    #[diesel(sql_type = Text)]
    pub(crate) queue: String,
    #[diesel(sql_type = Text)]
    pub(crate) job_type: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) failing: i64,
    #[diesel(sql_type = BigInt)]
    pub(crate) dead: i64,
    /// Seconds since the longest failing of them first failed.
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) failing_for_secs: Option<f64>,
}

/// The `$1 + 1` newest failures (the failed index's order), counted by
/// queue and type.
pub(crate) fn failed_head(conn: &mut PgConnection, cap: i64) -> QueryResult<Vec<FailedHead>> {
    Statement::new(
        "SELECT queue, job_type, \
             count(*) FILTER (WHERE dead_at IS NULL) AS failing, \
             count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead, \
             EXTRACT(EPOCH FROM now() - min(first_failed_at) FILTER (WHERE dead_at IS NULL))::float8 \
                 AS failing_for_secs \
         FROM (SELECT queue, job_type, dead_at, first_failed_at FROM queue_jobs \
               WHERE attempts > 0 OR dead_at IS NOT NULL \
               ORDER BY last_failed_at DESC NULLS LAST, id DESC LIMIT $1 + 1) f \
         GROUP BY queue, job_type",
    )
    .bind::<BigInt, _>(cap)
    .load(conn)
}

/// Jobs of one queue and type, a count of them (of the running jobs, or
/// of the scheduled jobs due soonest).
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct Counted {
    #[diesel(sql_type = Text)]
    pub(crate) queue: String,
    #[diesel(sql_type = Text)]
    pub(crate) job_type: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

/// The jobs runners seen within `$1` seconds are running, by queue and
/// type: each found by the primary key (the `LIMIT` keeps the planner from
/// turning the lookups into a hash join over the whole table).
pub(crate) fn running(conn: &mut PgConnection, fresh_secs: f64) -> QueryResult<Vec<Counted>> {
    Statement::new(concat!(
        "WITH ",
        running_cte!("$1"),
        " SELECT j.queue, j.job_type, count(*) AS n \
         FROM running r CROSS JOIN LATERAL ( \
             SELECT queue, job_type FROM queue_jobs WHERE id = r.id LIMIT 1) j \
         GROUP BY j.queue, j.job_type"
    ))
    .bind::<Double, _>(fresh_secs)
    .load(conn)
}

/// A queue and a job type a live runner serving the queue registers.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct Served {
    #[diesel(sql_type = Text)]
    pub(crate) queue: String,
    #[diesel(sql_type = Text)]
    pub(crate) job_type: String,
}

/// Every queue and job type a runner seen within `$1` seconds serves.
pub(crate) fn served(conn: &mut PgConnection, fresh_secs: f64) -> QueryResult<Vec<Served>> {
    Statement::new(
        "SELECT DISTINCT q.queue, t.job_type FROM queue_runners r, \
             unnest(r.queues) q(queue), unnest(r.job_types) t(job_type) \
         WHERE r.last_seen_at > now() - $1 * interval '1 second'",
    )
    .bind::<Double, _>(fresh_secs)
    .load(conn)
}

/// The ready jobs (running ones included) of one queue and type that
/// PostgreSQL's statistics estimate: the share of ANALYZE's sample times
/// the table's rows. Only the combinations common enough in the sample to
/// be kept are listed.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct Estimated {
    #[diesel(sql_type = Text)]
    pub(crate) queue: String,
    #[diesel(sql_type = Text)]
    pub(crate) job_type: String,
    #[diesel(sql_type = Double)]
    pub(crate) rows: f64,
}

/// The ready jobs per queue and type in the statistics object
/// `queue_jobs_overview_stats` (most common values of queue, job type,
/// `scheduled` and `dead_at IS NULL` together), read through
/// `pg_stats_ext`, which shows them to whoever may read the table. Each
/// value lists the columns in the table's order (`job_type` before
/// `queue`, then `scheduled`), then the expression.
pub(crate) fn estimated_ready(conn: &mut PgConnection) -> QueryResult<Vec<Estimated>> {
    Statement::new(
        "SELECT s.most_common_vals[i][2] AS queue, s.most_common_vals[i][1] AS job_type, \
             s.most_common_freqs[i] * greatest(c.reltuples, 0)::float8 AS rows \
         FROM pg_statistic_ext x \
         JOIN pg_namespace n ON n.oid = x.stxnamespace \
         JOIN pg_class c ON c.oid = x.stxrelid \
         JOIN pg_stats_ext s ON s.statistics_schemaname = n.nspname AND s.statistics_name = x.stxname, \
         generate_subscripts(s.most_common_freqs, 1) i \
         WHERE x.stxrelid = to_regclass('queue_jobs') AND x.stxname = 'queue_jobs_overview_stats' \
           AND s.most_common_vals[i][1] IS NOT NULL AND s.most_common_vals[i][2] IS NOT NULL \
           AND s.most_common_vals[i][3] = 'f' AND s.most_common_vals[i][4] = 't'",
    )
    .load(conn)
}

/// How old the statistics are, and the entries in the indexes of
/// scheduled and failed jobs as ANALYZE or VACUUM last counted them.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct Statistics {
    /// Seconds since the jobs table was last analyzed (`None`: never).
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) analyzed_secs: Option<f64>,
    /// Rows inserted, updated or deleted since.
    #[diesel(sql_type = BigInt)]
    pub(crate) changed_since: i64,
    /// Entries in the scheduled jobs' index (`None`: never measured).
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) scheduled_rows: Option<f64>,
    /// Entries in the failed jobs' index (`None`: never measured).
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) failed_rows: Option<f64>,
}

/// The statistics' age and the two indexes' sizes in entries.
pub(crate) fn statistics(conn: &mut PgConnection) -> QueryResult<Statistics> {
    Statement::new(
        "SELECT EXTRACT(EPOCH FROM now() - greatest(t.last_analyze, t.last_autoanalyze))::float8 \
                 AS analyzed_secs, \
             coalesce(t.n_mod_since_analyze, 0) AS changed_since, \
             (SELECT nullif(reltuples, -1)::float8 FROM pg_class \
              WHERE oid = to_regclass('queue_jobs_scheduled_idx')) AS scheduled_rows, \
             (SELECT nullif(reltuples, -1)::float8 FROM pg_class \
              WHERE oid = to_regclass('queue_jobs_failed_order_idx')) AS failed_rows \
         FROM (SELECT 1) one LEFT JOIN pg_stat_user_tables t ON t.relid = to_regclass('queue_jobs')",
    )
    .get_result(conn)
}
