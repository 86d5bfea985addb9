//! Every query the queue runs. Nothing outside this module writes SQL.
//!
//! The statements here run on diesel connections: the application's
//! (enqueue, administration) and the runner's pool. `claims` holds those of
//! a worker's own lock session (claim, complete, release, record failures).

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::data_types::PgInterval;
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Int8, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz,
};

use crate::job::JobId;
use crate::prepared::Statement;
use crate::schema::queue_jobs;

/// This installation's number, mixed into its advisory lock keys: the locks
/// are per database while the tables follow `search_path`, and two
/// installations in two schemas of one database number their jobs and
/// lock sessions alike (see the migration `lock_namespace`). 0 for the
/// first installation in a database: its keys are those of the runners
/// before that migration. A scalar subquery, evaluated once per statement.
macro_rules! lock_salt {
    () => {
        "(SELECT lock_salt FROM queue_installation)"
    };
}

/// The keys of slot `$slot` of a flow-control limit named `$name` (a key's:
/// queue, U+0001, key; a queue's: queue, U+0002), with the installation's
/// number `$salt`, as they show in `pg_locks` (unsigned): the function
/// `queue_claim_flow` (migration `flow_limits`) takes them.
macro_rules! slot_class {
    ($slot:literal, $salt:literal) => {
        concat!(
            "(((-3 - (",
            $slot,
            ")) # (",
            $salt,
            " >> 32))::int4::int8 & 4294967295)"
        )
    };
}

/// See [`slot_class!`].
macro_rules! slot_key {
    ($name:literal, $salt:literal) => {
        concat!(
            "((hashtext(",
            $name,
            ") # (",
            $salt,
            " & 2147483647))::int4::int8 & 4294967295)"
        )
    };
}

/// The two keys of the advisory lock a worker holds on job `$id` while it
/// has the job claimed, as SQL text. The two-`int4` form is a key space of
/// its own (applications mostly lock single `bigint` keys); the first key
/// carries the high half of the id mixed with the installation's number
/// ([`lock_salt!`]), tagged with "skpl" in ASCII, the second its low half,
/// so every id of an installation has its own lock.
macro_rules! job_lock {
    ($id:literal) => {
        concat!(
            "((((",
            $id,
            ") # ",
            lock_salt!(),
            ") >> 32) # 1936420972)::int4, ((((",
            $id,
            ") # ",
            lock_salt!(),
            ") & 4294967295) - 2147483648)::int4"
        )
    };
}

/// The two keys of the advisory lock that lock session `$holder` holds for
/// its life (so that others can tell when it has ended): `(-1, holder)`
/// mixed with the installation's number ([`lock_salt!`]).
macro_rules! holder_lock {
    ($holder:literal) => {
        concat!(
            "(-1 # (",
            lock_salt!(),
            " >> 32))::int4, ((",
            $holder,
            ") # (",
            lock_salt!(),
            " & 2147483647))::int4"
        )
    };
}

/// The two keys of the advisory lock a worker's lock session holds while it
/// serves exclusive queue `$queue` (a text expression): `(-2, hashtext)`
/// mixed with the installation's number ([`lock_salt!`]).
macro_rules! queue_lock {
    ($queue:literal) => {
        concat!(
            "(-2 # (",
            lock_salt!(),
            " >> 32))::int4, (hashtext(",
            $queue,
            ") # (",
            lock_salt!(),
            " & 2147483647))::int4"
        )
    };
}

/// How many releases `queue_lock_releases` has counted, as SQL text over the
/// sequence's row: `last_value` alone does not move at the first `nextval`
/// of a new sequence (only `is_called` does).
macro_rules! releases_counted {
    () => {
        "(last_value + is_called::int4)"
    };
}

/// The `running` CTE: the ids of the jobs that runners seen within `$fresh`
/// seconds announced as running (what `status` and the gauges leave out
/// of "ready").
macro_rules! running_cte {
    ($fresh:literal) => {
        concat!(
            "running AS ( \
                 SELECT DISTINCT unnest(running) AS id FROM queue_runners \
                 WHERE last_seen_at > now() - ",
            $fresh,
            " * interval '1 second')"
        )
    };
}

pub(crate) mod bulk;
mod claims;
pub(crate) mod limits;
pub(crate) mod maintenance;
pub(crate) mod overview;
pub(crate) mod search;
#[cfg(feature = "web")]
pub(crate) mod sessions;

pub(crate) use claims::*;

diesel::define_sql_function! {
    /// The wall clock now, not the start of the transaction: a job may have
    /// run for minutes inside the transaction that claimed it.
    fn clock_timestamp() -> Timestamptz;
}

diesel::define_sql_function! {
    /// `COALESCE` for a nullable timestamp with a fallback.
    #[sql_name = "coalesce"]
    fn coalesce_timestamp(value: Nullable<Timestamptz>, fallback: Timestamptz) -> Timestamptz;
}

/// When a new job may first run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Schedule {
    /// Not before this instant.
    At(DateTime<Utc>),
    /// Not before this long after the inserting transaction began.
    After(Duration),
}

/// A job ready to insert.
#[derive(Debug)]
pub(crate) struct NewJob {
    pub(crate) job_type: &'static str,
    pub(crate) queue: String,
    pub(crate) priority: i16,
    pub(crate) payload: serde_json::Value,
    pub(crate) schedule: Option<Schedule>,
    /// The caller's unique key, prefixed with the job type.
    pub(crate) unique_key: Option<String>,
    /// Unique by job type and payload (the key is made from them in SQL).
    pub(crate) unique_by_payload: bool,
    /// The W3C trace context of the span that enqueued it.
    pub(crate) traceparent: Option<String>,
    /// Its concurrency key and the key's limits.
    pub(crate) concurrency: Option<Flow>,
}

/// A new job's concurrency key, and the limits of the key (of its first
/// ready job): `None`, no limit, the key only takes turns with the others.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) key: String,
    /// The most jobs of the key that run at once.
    pub(crate) max_concurrent: Option<i32>,
    /// The most jobs of the key that start per period: (starts, period in
    /// milliseconds).
    pub(crate) rate: Option<(i32, i32)>,
}

/// The unique key of a row to insert: the caller's (`$7`), or the job
/// type and a hash of the payload when unique by payload (`$8`), as SQL
/// over the insert's binds. `jsonb` text is canonical, so equal payloads
/// make equal keys.
macro_rules! unique_key {
    ($key:literal, $by_payload:literal, $job_type:literal, $payload:literal) => {
        concat!(
            "COALESCE(",
            $key,
            ", CASE WHEN ",
            $by_payload,
            " THEN ",
            $job_type,
            " || '#' || md5(",
            $payload,
            "::text) END)"
        )
    };
}

fn interval(duration: Duration) -> PgInterval {
    // Checked by the callers' validation; saturate rather than wrap otherwise.
    PgInterval::from_microseconds(i64::try_from(duration.as_micros()).unwrap_or(i64::MAX))
}

/// `run_at` and delay of a schedule, for the enqueue statements.
fn schedule_binds(schedule: Option<Schedule>) -> (Option<DateTime<Utc>>, Option<i64>) {
    match schedule {
        None => (None, None),
        Some(Schedule::At(at)) => (Some(at), None),
        Some(Schedule::After(delay)) => (None, Some(interval(delay).microseconds)),
    }
}

#[derive(QueryableByName)]
struct InsertedId {
    #[diesel(sql_type = Int8)]
    id: i64,
}

/// Inserts one job and returns its id; `None` when it is unique and its
/// key is taken. A job ready now also wakes the runners listening on its
/// queue, when the caller commits.
pub(crate) fn insert_job(conn: &mut PgConnection, job: &NewJob) -> QueryResult<Option<JobId>> {
    let inserted: Vec<InsertedId> = insert_statement(job).load(conn)?;
    Ok(inserted.first().map(|row| JobId(row.id)))
}

/// [`insert_job`] on an async connection.
#[cfg(feature = "tokio")]
pub(crate) async fn insert_job_async(
    conn: &mut diesel_async::AsyncPgConnection,
    job: &NewJob,
) -> QueryResult<Option<JobId>> {
    let inserted: Vec<InsertedId> =
        diesel_async::RunQueryDsl::load(insert_statement(job), conn).await?;
    Ok(inserted.first().map(|row| JobId(row.id)))
}

fn insert_statement(job: &NewJob) -> Statement<'_> {
    let (run_at, delay_us) = schedule_binds(job.schedule);
    Statement::new(
        concat!(
            "WITH job AS ( \
                 INSERT INTO queue_jobs (job_type, queue, priority, payload, run_at, scheduled, traceparent, \
                                         concurrency_key, max_concurrent, rate_limit, rate_period_ms, \
                                         unique_key) \
                 SELECT $1, $2, $3, $4, s.run_at, s.run_at > now(), $9, $10, $11, $12, $13, ",
            unique_key!("$7", "$8", "$1", "$4"),
            " FROM (SELECT COALESCE($5, now() + COALESCE($6, 0) * interval '1 microsecond') AS run_at) s \
                 ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING \
                 RETURNING id, queue, scheduled) \
             SELECT job.id FROM job \
             LEFT JOIN LATERAL (SELECT pg_notify('queue_jobs', job.queue) WHERE NOT job.scheduled) n ON true"
        ),
    )
    .bind::<Text, _>(job.job_type)
    .bind::<Text, _>(&job.queue)
    .bind::<SmallInt, _>(job.priority)
    .bind::<Jsonb, _>(&job.payload)
    .bind::<Nullable<Timestamptz>, _>(run_at)
    .bind::<Nullable<BigInt>, _>(delay_us)
    .bind::<Nullable<Text>, _>(job.unique_key.as_deref())
    .bind::<diesel::sql_types::Bool, _>(job.unique_by_payload)
    .bind::<Nullable<Text>, _>(job.traceparent.as_deref())
    .bind::<Nullable<Text>, _>(job.concurrency.as_ref().map(|f| f.key.as_str()))
    .bind::<Nullable<Integer>, _>(job.concurrency.as_ref().and_then(|f| f.max_concurrent))
    .bind::<Nullable<Integer>, _>(job.concurrency.as_ref().and_then(|f| f.rate).map(|r| r.0))
    .bind::<Nullable<Integer>, _>(job.concurrency.as_ref().and_then(|f| f.rate).map(|r| r.1))
}

/// Inserts many jobs with one statement (a fixed number of array binds,
/// whatever the batch size), waking each queue with ready jobs once.
/// Returns the ids in input order; `None` for a unique job whose key is
/// taken. The jobs' unique keys must differ from each other.
pub(crate) fn insert_jobs(
    conn: &mut PgConnection,
    jobs: &[&NewJob],
) -> QueryResult<Vec<Option<JobId>>> {
    #[derive(QueryableByName)]
    struct Inserted {
        /// The input position of a unique job (inserted or not); `None`
        /// for the others, which are all inserted, in input order.
        #[diesel(sql_type = Nullable<BigInt>)]
        ord: Option<i64>,
        #[diesel(sql_type = Nullable<Int8>)]
        id: Option<i64>,
    }
    let (run_at, delay_us): (Vec<_>, Vec<_>) =
        jobs.iter().map(|job| schedule_binds(job.schedule)).unzip();
    if jobs
        .iter()
        .all(|job| job.unique_key.is_none() && !job.unique_by_payload)
    {
        return insert_plain_jobs(conn, jobs, run_at, delay_us);
    }
    let rows: Vec<Inserted> = batch_binds(
        Statement::new(concat!(
        "WITH t AS MATERIALIZED ( \
             SELECT u.*, \
                    COALESCE(u.at, now() + COALESCE(u.delay_us, 0) * interval '1 microsecond') AS run_at, ",
        unique_key!("u.key", "u.by_payload", "u.job_type", "u.payload"),
        " AS unique_key \
             FROM unnest($1::text[], $2::text[], $3::int2[], $4::jsonb[], $5::timestamptz[], \
                         $6::int8[], $7::text[], $8::bool[], $9::text[], $10::text[], $11::int4[], \
                         $12::int4[], $13::int4[]) \
                 WITH ORDINALITY AS u(job_type, queue, priority, payload, at, delay_us, key, by_payload, \
                                      traceparent, concurrency_key, max_concurrent, rate_limit, \
                                      rate_period_ms, ord)), \
         jobs AS ( \
             INSERT INTO queue_jobs (job_type, queue, priority, payload, run_at, scheduled, traceparent, \
                                     concurrency_key, max_concurrent, rate_limit, rate_period_ms, \
                                     unique_key) \
             SELECT t.job_type, t.queue, t.priority, t.payload, t.run_at, t.run_at > now(), t.traceparent, \
                    t.concurrency_key, t.max_concurrent, t.rate_limit, t.rate_period_ms, t.unique_key \
             FROM t ORDER BY t.ord \
             ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING \
             RETURNING id, queue, scheduled, unique_key), \
         woken AS ( \
             SELECT pg_notify('queue_jobs', q.queue) \
             FROM (SELECT DISTINCT queue FROM jobs WHERE NOT scheduled) q) \
         SELECT r.ord, r.id FROM ( \
             SELECT t.ord, jobs.id FROM t LEFT JOIN jobs ON jobs.unique_key = t.unique_key \
             WHERE t.unique_key IS NOT NULL \
             UNION ALL \
             SELECT NULL, jobs.id FROM jobs WHERE jobs.unique_key IS NULL) r, \
         (SELECT count(*) FROM woken) w"
    )),
        jobs,
        run_at,
        delay_us,
    )
    .bind::<Array<Nullable<Text>>, _>(
        jobs.iter()
            .map(|j| j.unique_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<diesel::sql_types::Bool>, _>(
        jobs.iter().map(|j| j.unique_by_payload).collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(traceparents(jobs))
    .bind::<Array<Nullable<Text>>, _>(concurrency_keys(jobs))
    .bind::<Array<Nullable<Integer>>, _>(flow_column(jobs, |f| f.max_concurrent))
    .bind::<Array<Nullable<Integer>>, _>(flow_column(jobs, |f| f.rate.map(|r| r.0)))
    .bind::<Array<Nullable<Integer>>, _>(flow_column(jobs, |f| f.rate.map(|r| r.1)))
    .load(conn)?;
    let mut ids = vec![None; jobs.len()];
    // Rows are inserted in ORDER BY order, so their serial ids ascend with it.
    let mut plain: Vec<i64> = Vec::with_capacity(jobs.len());
    for row in rows {
        match (row.ord, row.id) {
            (Some(ord), id) => {
                let position = usize::try_from(ord - 1).expect("ordinality starts at 1");
                ids[position] = id.map(JobId);
            }
            (None, Some(id)) => plain.push(id),
            (None, None) => {}
        }
    }
    plain.sort_unstable();
    let unkeyed = jobs
        .iter()
        .enumerate()
        .filter(|(_, job)| job.unique_key.is_none() && !job.unique_by_payload);
    for ((position, _), id) in unkeyed.zip(plain) {
        ids[position] = Some(JobId(id));
    }
    Ok(ids)
}

/// [`insert_jobs`] for a batch without unique jobs: nothing to match
/// against taken keys, so the rows go straight from the arrays into the
/// table (a third less time a batch of 1,000 than the general statement,
/// which keeps the arrays' rows to join the keys back).
fn insert_plain_jobs(
    conn: &mut PgConnection,
    jobs: &[&NewJob],
    run_at: Vec<Option<DateTime<Utc>>>,
    delay_us: Vec<Option<i64>>,
) -> QueryResult<Vec<Option<JobId>>> {
    let inserted: Vec<InsertedId> = batch_binds(
        Statement::new(
            "WITH jobs AS ( \
             INSERT INTO queue_jobs (job_type, queue, priority, payload, run_at, scheduled, traceparent, \
                                     concurrency_key, max_concurrent, rate_limit, rate_period_ms) \
             SELECT u.job_type, u.queue, u.priority, u.payload, r.run_at, r.run_at > now(), u.traceparent, \
                    u.concurrency_key, u.max_concurrent, u.rate_limit, u.rate_period_ms \
             FROM unnest($1::text[], $2::text[], $3::int2[], $4::jsonb[], $5::timestamptz[], \
                         $6::int8[], $7::text[], $8::text[], $9::int4[], $10::int4[], $11::int4[]) \
                 WITH ORDINALITY AS u(job_type, queue, priority, payload, at, delay_us, traceparent, \
                                      concurrency_key, max_concurrent, rate_limit, rate_period_ms, ord) \
             CROSS JOIN LATERAL (SELECT COALESCE(u.at, \
                 now() + COALESCE(u.delay_us, 0) * interval '1 microsecond') AS run_at) r \
             ORDER BY u.ord \
             RETURNING id, queue, scheduled), \
         woken AS ( \
             SELECT pg_notify('queue_jobs', q.queue) \
             FROM (SELECT DISTINCT queue FROM jobs WHERE NOT scheduled) q) \
         SELECT jobs.id FROM jobs, (SELECT count(*) FROM woken) w",
        ),
        jobs,
        run_at,
        delay_us,
    )
    .bind::<Array<Nullable<Text>>, _>(traceparents(jobs))
    .bind::<Array<Nullable<Text>>, _>(concurrency_keys(jobs))
    .bind::<Array<Nullable<Integer>>, _>(flow_column(jobs, |f| f.max_concurrent))
    .bind::<Array<Nullable<Integer>>, _>(flow_column(jobs, |f| f.rate.map(|r| r.0)))
    .bind::<Array<Nullable<Integer>>, _>(flow_column(jobs, |f| f.rate.map(|r| r.1)))
    .load(conn)?;
    // Rows are inserted in ORDER BY order, so their serial ids ascend with it.
    let mut ids: Vec<i64> = inserted.into_iter().map(|row| row.id).collect();
    ids.sort_unstable();
    Ok(ids.into_iter().map(|id| Some(JobId(id))).collect())
}

/// The jobs' concurrency keys, as an array bind.
fn concurrency_keys<'a>(jobs: &[&'a NewJob]) -> Vec<Option<&'a str>> {
    jobs.iter()
        .map(|j| j.concurrency.as_ref().map(|f| f.key.as_str()))
        .collect()
}

/// A limit of the jobs' concurrency keys, as an array bind.
fn flow_column(jobs: &[&NewJob], column: impl Fn(&Flow) -> Option<i32>) -> Vec<Option<i32>> {
    jobs.iter()
        .map(|j| j.concurrency.as_ref().and_then(&column))
        .collect()
}

/// The jobs' trace contexts, as an array bind.
fn traceparents<'a>(jobs: &[&'a NewJob]) -> Vec<Option<&'a str>> {
    jobs.iter().map(|j| j.traceparent.as_deref()).collect()
}

/// Binds the columns every batch statement takes, as arrays in input
/// order: `$1` types, `$2` queues, `$3` priorities, `$4` payloads, `$5`
/// times to run at and `$6` delays.
fn batch_binds<'a>(
    statement: Statement<'a>,
    jobs: &[&'a NewJob],
    run_at: Vec<Option<DateTime<Utc>>>,
    delay_us: Vec<Option<i64>>,
) -> Statement<'a> {
    statement
        .bind::<Array<Text>, _>(jobs.iter().map(|j| j.job_type).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(jobs.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
        .bind::<Array<SmallInt>, _>(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
        .bind::<Array<Jsonb>, _>(jobs.iter().map(|j| &j.payload).collect::<Vec<_>>())
        .bind::<Array<Nullable<Timestamptz>>, _>(run_at)
        .bind::<Array<Nullable<BigInt>>, _>(delay_us)
}

/// Makes due scheduled jobs ready (at most `limit`), waking their queues.
/// Returns how many were promoted. Safe to run from many runners at once.
/// (The due jobs are looked up by `id = ANY (ARRAY(..))`: as `id IN (..)`,
/// with the statistics VACUUM leaves under a held horizon, the planner
/// walked the whole primary key at every poll.)
pub(crate) fn promote_due_jobs(conn: &mut PgConnection, limit: i64) -> QueryResult<usize> {
    #[derive(QueryableByName)]
    struct Promoted {
        #[diesel(sql_type = BigInt)]
        promoted: i64,
    }
    let result: Promoted = Statement::new(
        "WITH due AS ( \
             UPDATE queue_jobs SET scheduled = false \
             WHERE id = ANY (ARRAY( \
                 SELECT id FROM queue_jobs \
                 WHERE scheduled AND dead_at IS NULL AND run_at <= now() \
                 ORDER BY run_at LIMIT $1 \
                 FOR UPDATE SKIP LOCKED)) \
             RETURNING queue), \
         woken AS ( \
             SELECT pg_notify('queue_jobs', q.queue) FROM (SELECT DISTINCT queue FROM due) q) \
         SELECT (SELECT count(*) FROM due) AS promoted, (SELECT count(*) FROM woken) AS woken",
    )
    .bind::<BigInt, _>(limit)
    .get_result(conn)?;
    Ok(usize::try_from(result.promoted).unwrap_or(0))
}

/// Makes every scheduled job of `queues` due now (tests skip delays and
/// backoffs forward). Returns how many.
pub(crate) fn make_scheduled_due(conn: &mut PgConnection, queues: &[String]) -> QueryResult<usize> {
    Statement::new(
        "UPDATE queue_jobs SET run_at = now() \
         WHERE scheduled AND dead_at IS NULL AND queue = ANY ($1) AND run_at > now()",
    )
    .bind::<Array<Text>, _>(queues)
    .execute(conn)
}

/// The payloads of the jobs of type `job_type` that will run (not dead),
/// oldest first.
pub(crate) fn waiting_payloads(
    conn: &mut PgConnection,
    job_type: &str,
) -> QueryResult<Vec<serde_json::Value>> {
    #[derive(QueryableByName)]
    struct Payload {
        #[diesel(sql_type = Jsonb)]
        payload: serde_json::Value,
    }
    let rows: Vec<Payload> = Statement::new(
        "SELECT payload FROM queue_jobs WHERE job_type = $1 AND dead_at IS NULL ORDER BY id",
    )
    .bind::<Text, _>(job_type)
    .load(conn)?;
    Ok(rows.into_iter().map(|row| row.payload).collect())
}

/// The NOTIFY payload that tells runners the paused queues changed (not a
/// queue name: those are plain identifiers without `!`).
pub(crate) const PAUSES_CHANGED: &str = "!pauses";

/// Pauses `queue` (no runner claims its jobs from now on). `false`: it
/// already was.
pub(crate) fn pause_queue(conn: &mut PgConnection, queue: &str) -> QueryResult<bool> {
    changed(
        Statement::new(
            "WITH changed AS ( \
                 INSERT INTO queue_pauses (queue) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT count(*) AS changed FROM changed, pg_notify('queue_jobs', $2) n",
        ),
        conn,
        queue,
    )
}

/// Resumes `queue`, waking its runners. `false`: it was not paused.
pub(crate) fn resume_queue(conn: &mut PgConnection, queue: &str) -> QueryResult<bool> {
    changed(
        Statement::new(
            "WITH changed AS (DELETE FROM queue_pauses WHERE queue = $1 RETURNING 1) \
             SELECT count(*) AS changed FROM changed, \
                 pg_notify('queue_jobs', $2) a, pg_notify('queue_jobs', $1) b",
        ),
        conn,
        queue,
    )
}

/// Runs a pause or resume of `queue` (binds: the queue, [`PAUSES_CHANGED`]);
/// whether it changed anything.
fn changed(statement: Statement<'_>, conn: &mut PgConnection, queue: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Changed {
        #[diesel(sql_type = BigInt)]
        changed: i64,
    }
    let result: Changed = statement
        .bind::<Text, _>(queue)
        .bind::<Text, _>(PAUSES_CHANGED)
        .get_result(conn)?;
    Ok(result.changed > 0)
}

/// The paused queues, with when each was paused.
pub(crate) fn paused_queues(conn: &mut PgConnection) -> QueryResult<Vec<(String, DateTime<Utc>)>> {
    #[derive(QueryableByName)]
    struct Pause {
        #[diesel(sql_type = Text)]
        queue: String,
        #[diesel(sql_type = Timestamptz)]
        paused_at: DateTime<Utc>,
    }
    Ok(
        Statement::new("SELECT queue, paused_at FROM queue_pauses ORDER BY queue")
            .load::<Pause>(conn)?
            .into_iter()
            .map(|p| (p.queue, p.paused_at))
            .collect(),
    )
}

/// Of `queues`, those with at least one ready job (a probe of the ready
/// index, and of the keyed ready index).
pub(crate) fn queues_with_ready_jobs(
    conn: &mut PgConnection,
    queues: &[String],
) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct Ready {
        #[diesel(sql_type = Text)]
        queue: String,
    }
    Ok(Statement::new(
        "SELECT q AS queue FROM unnest($1::text[]) AS q \
         WHERE EXISTS (SELECT 1 FROM queue_jobs j \
                       WHERE j.queue = q AND j.dead_at IS NULL AND NOT j.scheduled \
                         AND j.concurrency_key IS NULL) \
            OR EXISTS (SELECT 1 FROM queue_jobs j \
                       WHERE j.queue = q AND j.dead_at IS NULL AND NOT j.scheduled \
                         AND j.concurrency_key IS NOT NULL)",
    )
    .bind::<Array<Text>, _>(queues)
    .load::<Ready>(conn)?
    .into_iter()
    .map(|r| r.queue)
    .collect())
}

/// Lets this transaction's commit return before its WAL reaches the disk.
pub(crate) fn relax_commit_durability(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SET LOCAL synchronous_commit = off").execute(conn)?;
    Ok(())
}

/// When the next scheduled job falls due, if any is scheduled.
pub(crate) fn next_due(conn: &mut PgConnection) -> QueryResult<Option<DateTime<Utc>>> {
    use crate::schema::queue_jobs::dsl as j;
    j::queue_jobs
        .filter(j::scheduled)
        .filter(j::dead_at.is_null())
        .select(diesel::dsl::min(j::run_at))
        .get_result(conn)
}

/// Counts a release in `queue_lock_releases`, for a write that ends or
/// changes a job without a worker's lock session (an operator's retry or
/// discard, completions recorded after a session was lost): a claim whose
/// snapshot predates the write and that takes the job's lock once it is
/// free then reads the job again (see `claims::claim_jobs`). Counted in the
/// write's transaction and again after its commit (sequences are not
/// transactional): a claim that started before either sees the counter move.
pub(crate) fn count_release(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT nextval('queue_lock_releases')").execute(conn)?;
    Ok(())
}

/// How many releases have been counted, as the claims' recheck reads them.
pub(crate) fn releases_counted(conn: &mut PgConnection) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Counted {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    Ok(Statement::new(concat!(
        "SELECT ",
        releases_counted!(),
        "::int8 AS n FROM queue_lock_releases"
    ))
    .get_result::<Counted>(conn)?
    .n)
}

/// A stored job as operators see it.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = queue_jobs)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct JobRecord {
    /// The job's id.
    pub id: i64,
    /// The stored type name.
    pub job_type: String,
    /// The queue it runs on.
    pub queue: String,
    /// Its priority (higher first).
    pub priority: i16,
    /// The job's serialized value.
    pub payload: serde_json::Value,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it may run next (for a failing job: its next attempt).
    pub run_at: DateTime<Utc>,
    /// Failed attempts so far.
    pub attempts: i32,
    /// When the first recorded failure happened.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When the latest failure happened.
    pub last_failed_at: Option<DateTime<Utc>>,
    /// The latest failure's error text.
    pub last_error: Option<String>,
    /// When the job was marked dead, if it is.
    pub dead_at: Option<DateTime<Utc>>,
}

/// Jobs with at least one failed attempt that are still retried, oldest failure first.
pub(crate) fn failing_jobs(conn: &mut PgConnection, limit: i64) -> QueryResult<Vec<JobRecord>> {
    use crate::schema::queue_jobs::dsl as j;
    j::queue_jobs
        .select(JobRecord::as_select())
        .filter(j::attempts.gt(0))
        .filter(j::dead_at.is_null())
        .order((j::first_failed_at.asc(), j::id.asc()))
        .limit(limit)
        .load(conn)
}

/// Dead jobs, most recently dead first.
pub(crate) fn dead_jobs(conn: &mut PgConnection, limit: i64) -> QueryResult<Vec<JobRecord>> {
    use crate::schema::queue_jobs::dsl as j;
    j::queue_jobs
        .select(JobRecord::as_select())
        .filter(j::dead_at.is_not_null())
        .order((j::dead_at.desc(), j::id.desc()))
        .limit(limit)
        .load(conn)
}

/// One job by id.
pub(crate) fn find_job(conn: &mut PgConnection, id: i64) -> QueryResult<Option<JobRecord>> {
    use crate::schema::queue_jobs::dsl as j;
    j::queue_jobs
        .find(id)
        .select(JobRecord::as_select())
        .first(conn)
        .optional()
}

/// Takes job `id`'s lock until the caller's transaction ends, if no worker
/// holds it. `false`: a worker has claimed the job.
pub(crate) fn lock_idle_job(conn: &mut PgConnection, id: i64) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    Ok(Statement::new(concat!(
        "SELECT pg_try_advisory_xact_lock(",
        job_lock!("$1::int8"),
        ") AS locked"
    ))
    .bind::<BigInt, _>(id)
    .get_result::<Locked>(conn)?
    .locked)
}

/// Marks `suspect` the jobs that lock sessions which have ended (their
/// number can be locked) still held at their latest claim, and forgets
/// those claims. Returns how many jobs were marked. Safe to run from many
/// runners at once: each ended session is reaped by one of them.
pub(crate) fn reap_ended_sessions(conn: &mut PgConnection) -> QueryResult<usize> {
    #[derive(QueryableByName)]
    struct Reaped {
        #[diesel(sql_type = BigInt)]
        marked: i64,
    }
    let reaped: Reaped = Statement::new(concat!(
        // The transaction-level lock keeps two reapers off the same session
        // and goes with the commit; a live session holds its number itself.
        "WITH ended AS MATERIALIZED ( \
             SELECT holder, jobs FROM queue_claims \
             WHERE pg_try_advisory_xact_lock(",
        holder_lock!("holder"),
        ")), \
         marked AS ( \
             UPDATE queue_jobs SET suspect = true \
             WHERE id = ANY (ARRAY(SELECT unnest(jobs) FROM ended)) AND NOT suspect \
             RETURNING id), \
         forgotten AS ( \
             DELETE FROM queue_claims WHERE holder IN (SELECT holder FROM ended)) \
         SELECT count(*) AS marked FROM marked"
    ))
    .get_result(conn)?;
    Ok(usize::try_from(reaped.marked).unwrap_or(0))
}

/// Whether a job with this id exists (locked or not).
pub(crate) fn job_exists(conn: &mut PgConnection, id: i64) -> QueryResult<bool> {
    use crate::schema::queue_jobs::dsl as j;
    diesel::select(diesel::dsl::exists(j::queue_jobs.find(id))).get_result(conn)
}

/// Makes a failing or dead job ready to run now, with a fresh attempt count.
/// The last error is kept for history.
pub(crate) fn reset_for_retry(conn: &mut PgConnection, id: i64) -> QueryResult<usize> {
    use crate::schema::queue_jobs::dsl as j;
    diesel::update(j::queue_jobs.find(id))
        .set((
            j::dead_at.eq(None::<DateTime<Utc>>),
            j::attempts.eq(0),
            j::first_failed_at.eq(None::<DateTime<Utc>>),
            j::run_at.eq(now),
            j::scheduled.eq(false),
            j::running_by.eq(None::<String>),
        ))
        .execute(conn)
}

/// Deletes one job.
pub(crate) fn delete_job(conn: &mut PgConnection, id: i64) -> QueryResult<usize> {
    use crate::schema::queue_jobs::dsl as j;
    diesel::delete(j::queue_jobs.find(id)).execute(conn)
}

/// Serializes concurrent `migrate` calls until the transaction ends.
pub(crate) fn lock_for_migration(conn: &mut PgConnection) -> QueryResult<()> {
    // An arbitrary key of our own: "queue" in ASCII. The session's: each
    // migration commits on its own while it is held.
    diesel::sql_query("SELECT pg_advisory_lock(113117101117101)").execute(conn)?;
    diesel::sql_query(
        "CREATE TABLE IF NOT EXISTS queue_schema_migrations (\
             version VARCHAR(50) PRIMARY KEY, \
             run_on TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(conn)?;
    Ok(())
}

/// Lets the next `migrate` go on.
pub(crate) fn unlock_after_migration(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_unlock(113117101117101)").execute(conn)?;
    Ok(())
}

/// Gives the transaction's later statements the runner's own timeouts
/// (see `connection::as_runner`).
pub(crate) fn runner_timeouts(conn: &mut PgConnection, deadline: Duration) -> QueryResult<()> {
    diesel::sql_query(
        "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true)",
    )
    .bind::<Text, _>(format!("{}ms", deadline.as_millis().max(1)))
    .execute(conn)?;
    Ok(())
}

/// Makes the transaction's statements wait at most `wait` for a lock.
pub(crate) fn limit_lock_wait(conn: &mut PgConnection, wait: Duration) -> QueryResult<()> {
    diesel::sql_query("SELECT set_config('lock_timeout', $1, true)")
        .bind::<Text, _>(format!("{}ms", wait.as_millis().max(1)))
        .execute(conn)?;
    Ok(())
}

/// The applied queue schema versions.
pub(crate) fn applied_migrations(conn: &mut PgConnection) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = Text)]
        version: String,
    }
    Ok(
        diesel::sql_query("SELECT version FROM queue_schema_migrations ORDER BY version")
            .load::<Version>(conn)?
            .into_iter()
            .map(|v| v.version)
            .collect(),
    )
}

/// Records an applied queue schema version.
pub(crate) fn record_migration(conn: &mut PgConnection, version: &str) -> QueryResult<()> {
    diesel::sql_query("INSERT INTO queue_schema_migrations (version) VALUES ($1)")
        .bind::<Text, _>(version)
        .execute(conn)?;
    Ok(())
}

/// Forgets a reverted queue schema version.
pub(crate) fn forget_migration(conn: &mut PgConnection, version: &str) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM queue_schema_migrations WHERE version = $1")
        .bind::<Text, _>(version)
        .execute(conn)?;
    Ok(())
}

/// What a runner says of itself at each poll interval.
#[derive(Debug)]
pub(crate) struct Announcement<'a> {
    pub(crate) id: &'a str,
    pub(crate) hostname: &'a str,
    /// The queues it serves.
    pub(crate) queues: &'a [String],
    /// The jobs it runs now.
    pub(crate) running: &'a [i64],
    pub(crate) poll_interval: Duration,
    /// The job types it registers.
    pub(crate) job_types: &'a [&'a str],
    /// The schedules it declares.
    pub(crate) schedules: &'a [&'a str],
    /// The queues it serves with one worker across all runners.
    pub(crate) exclusive: &'a [&'a str],
    /// Those of them another runner's worker has: this one stands by.
    pub(crate) standby: &'a [&'a str],
}

/// Records that a runner is alive, and what it serves, runs and declares.
pub(crate) fn announce_runner(
    conn: &mut PgConnection,
    runner: &Announcement<'_>,
) -> QueryResult<()> {
    // Runners not seen for three of their own poll intervals (and at least
    // 2 s) died without retiring: their rows go, so no one lists them.
    Statement::new(
        "WITH dead AS ( \
             DELETE FROM queue_runners \
             WHERE id <> $1 AND last_seen_at < now() \
                 - greatest(3 * poll_interval_ms, 2000) * interval '1 millisecond') \
         INSERT INTO queue_runners (id, hostname, pid, queues, running, poll_interval_ms, job_types, schedules, \
             exclusive, standby) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET last_seen_at = now(), running = EXCLUDED.running, \
             standby = EXCLUDED.standby",
    )
    .bind::<Text, _>(runner.id)
    .bind::<Text, _>(runner.hostname)
    .bind::<Integer, _>(std::process::id() as i32)
    .bind::<Array<Text>, _>(runner.queues)
    .bind::<Array<BigInt>, _>(runner.running)
    .bind::<Integer, _>(
        i32::try_from(runner.poll_interval.as_millis()).unwrap_or(i32::MAX),
    )
    .bind::<Array<Text>, _>(runner.job_types)
    .bind::<Array<Text>, _>(runner.schedules)
    .bind::<Array<Text>, _>(runner.exclusive)
    .bind::<Array<Text>, _>(runner.standby)
    .execute(conn)?;
    Ok(())
}

/// Removes a stopped runner's announcement.
pub(crate) fn retire_runner(conn: &mut PgConnection, id: &str) -> QueryResult<()> {
    Statement::new("DELETE FROM queue_runners WHERE id = $1")
        .bind::<Text, _>(id)
        .execute(conn)?;
    Ok(())
}

/// Counts of one job type on one queue, as `skiplock status` shows them.
#[derive(Debug, Clone, PartialEq, QueryableByName, serde::Serialize)]
pub struct QueueStatus {
    /// The queue.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// The job type.
    #[diesel(sql_type = Text)]
    pub job_type: String,
    /// Due and waiting for a worker (not running).
    #[diesel(sql_type = BigInt)]
    pub ready: i64,
    /// Waiting for a later time (a delay, or a retry's backoff).
    #[diesel(sql_type = BigInt)]
    pub scheduled: i64,
    /// Being run by a worker now (as its runner last announced).
    #[diesel(sql_type = BigInt)]
    pub running: i64,
    /// Failed at least once and still retried.
    #[diesel(sql_type = BigInt)]
    pub failing: i64,
    /// Dead: out of attempts or failed permanently.
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
    /// Seconds the oldest ready (not running) job has been due, if any.
    #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
    pub oldest_ready_secs: Option<f64>,
    /// Seconds since the longest failing job first failed, if any.
    #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
    pub failing_for_secs: Option<f64>,
    /// The queue is paused: no runner starts its jobs.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub paused: bool,
    /// A live runner serving the queue registers this job type. When none
    /// does, its jobs wait (a rolling deploy in progress, or a type no
    /// binary knows any more).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub served: bool,
}

/// Per queue and job type: ready, scheduled, running, failing, dead.
/// "Running" trusts runners seen within `fresh_secs`.
pub(crate) fn status(conn: &mut PgConnection, fresh_secs: f64) -> QueryResult<Vec<QueueStatus>> {
    Statement::new(concat!(
        "WITH ",
        running_cte!("$1"),
        ", \
         served AS ( \
             SELECT DISTINCT q.queue, t.job_type FROM queue_runners r, \
                 unnest(r.queues) q(queue), unnest(r.job_types) t(job_type) \
             WHERE r.last_seen_at > now() - $1 * interval '1 second'), \
         jobs AS ( \
             SELECT j.*, r.id IS NOT NULL AS is_running FROM queue_jobs j LEFT JOIN running r ON r.id = j.id) \
         SELECT queue, job_type, \
             count(*) FILTER (WHERE dead_at IS NULL AND NOT scheduled AND NOT is_running) AS ready, \
             count(*) FILTER (WHERE dead_at IS NULL AND scheduled) AS scheduled, \
             count(*) FILTER (WHERE is_running) AS running, \
             count(*) FILTER (WHERE dead_at IS NULL AND attempts > 0) AS failing, \
             count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead, \
             EXTRACT(EPOCH FROM now() - min(run_at) FILTER ( \
                 WHERE dead_at IS NULL AND NOT scheduled AND NOT is_running))::float8 AS oldest_ready_secs, \
             EXTRACT(EPOCH FROM now() - min(first_failed_at) FILTER ( \
                 WHERE dead_at IS NULL AND attempts > 0))::float8 AS failing_for_secs, \
             EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue = jobs.queue) AS paused, \
             EXISTS (SELECT 1 FROM served s \
                     WHERE s.queue = jobs.queue AND s.job_type = jobs.job_type) AS served \
         FROM jobs GROUP BY queue, job_type ORDER BY queue, job_type"
    ))
    .bind::<diesel::sql_types::Double, _>(fresh_secs)
    .load(conn)
}

/// A runner as it last announced itself.
#[derive(Debug, Clone, PartialEq, QueryableByName, serde::Serialize)]
pub struct RunnerRecord {
    /// The runner's id (host, pid, start).
    #[diesel(sql_type = Text)]
    pub id: String,
    /// Its machine.
    #[diesel(sql_type = Text)]
    pub hostname: String,
    /// Its process id.
    #[diesel(sql_type = Integer)]
    pub pid: i32,
    /// The queues it serves.
    #[diesel(sql_type = Array<Text>)]
    pub queues: Vec<String>,
    /// Seconds since it last announced itself.
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub last_seen_secs: f64,
    /// The jobs it was running then.
    #[diesel(sql_type = Array<BigInt>)]
    pub running: Vec<i64>,
    /// The queues it serves with one worker across all runners
    /// ([`RunnerBuilder::exclusive_queue`](crate::RunnerBuilder::exclusive_queue)).
    #[diesel(sql_type = Array<Text>)]
    pub exclusive: Vec<String>,
    /// Those of them another runner's worker had then: this runner's
    /// worker stands by, and takes over when that one ends.
    #[diesel(sql_type = Array<Text>)]
    pub standby: Vec<String>,
}

/// Every announced runner, most recently seen first.
pub(crate) fn runners(conn: &mut PgConnection) -> QueryResult<Vec<RunnerRecord>> {
    Statement::new(
        "SELECT id, hostname, pid, queues, running, exclusive, standby, \
             EXTRACT(EPOCH FROM now() - last_seen_at)::float8 AS last_seen_secs \
         FROM queue_runners ORDER BY last_seen_at DESC",
    )
    .load(conn)
}

/// Whether the queue's tables exist in this database.
pub(crate) fn schema_exists(conn: &mut PgConnection) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    Ok(
        Statement::new("SELECT to_regclass('queue_jobs') IS NOT NULL AS exists")
            .get_result::<Exists>(conn)?
            .exists,
    )
}

/// Ids of the jobs matching a filter (dead only, or failing only, or all),
/// by type and queue when given.
pub(crate) fn select_jobs(
    conn: &mut PgConnection,
    state: &str,
    job_type: Option<&str>,
    queue: Option<&str>,
) -> QueryResult<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    Ok(Statement::new(
        "SELECT id FROM queue_jobs \
         WHERE ($1 = 'any' OR ($1 = 'dead' AND dead_at IS NOT NULL) \
                OR ($1 = 'failing' AND dead_at IS NULL AND attempts > 0) \
                OR ($1 = 'failed' AND (dead_at IS NOT NULL OR attempts > 0))) \
           AND ($2::text IS NULL OR (left(job_type, 200) = left($2, 200) AND job_type = $2)) \
                   AND ($3::text IS NULL OR (left(queue, 200) = left($3, 200) AND queue = $3)) \
         ORDER BY id",
    )
    .bind::<Text, _>(state)
    .bind::<Nullable<Text>, _>(job_type)
    .bind::<Nullable<Text>, _>(queue)
    .load::<Id>(conn)?
    .into_iter()
    .map(|row| row.id)
    .collect())
}

/// Which failed jobs a dashboard list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailedState {
    /// Failed at least once, still retried.
    Failing,
    /// Dead.
    Dead,
    /// Either.
    Either,
}

/// `left(column, 200) = left(value, 200)`: the key of the failed jobs'
/// indexes of one queue or type (the name's first 200 characters).
fn name_prefix(
    column: &'static str,
    value: &str,
) -> Box<dyn BoxableExpression<queue_jobs::table, diesel::pg::Pg, SqlType = diesel::sql_types::Bool>>
{
    Box::new(
        diesel::dsl::sql::<diesel::sql_types::Bool>("left(")
            .sql(column)
            .sql(", 200) = left(")
            .bind::<Text, _>(value.to_owned())
            .sql(", 200)"),
    )
}

/// A page of failed jobs, most recent failure first, of `queue` and
/// `job_type` when given, after `before` (the last row of the previous
/// page: its last failure and id). Walks the failed jobs' index, so its
/// cost does not grow with the number of jobs that never failed.
pub(crate) fn failed_jobs_page(
    conn: &mut PgConnection,
    state: FailedState,
    queue: Option<&str>,
    job_type: Option<&str>,
    before: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> QueryResult<Vec<JobRecord>> {
    use crate::schema::queue_jobs::dsl as j;
    let mut query = j::queue_jobs
        .select(JobRecord::as_select())
        // The failed index's own predicate, so the planner can use it.
        .filter(j::attempts.gt(0).or(j::dead_at.is_not_null()))
        .into_boxed();
    query = match state {
        FailedState::Failing => query.filter(j::dead_at.is_null()),
        FailedState::Dead => query.filter(j::dead_at.is_not_null()),
        FailedState::Either => query,
    };
    // The failed queue and type indexes' key (a prefix), then the whole name.
    if let Some(queue) = queue {
        query = query
            .filter(name_prefix("queue", queue))
            .filter(j::queue.eq(queue.to_owned()));
    }
    if let Some(job_type) = job_type {
        query = query
            .filter(name_prefix("job_type", job_type))
            .filter(j::job_type.eq(job_type.to_owned()));
    }
    if let Some((at, id)) = before {
        // A row comparison, which the index takes as where to start.
        query = query.filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>("(last_failed_at, id) < (")
                .bind::<Timestamptz, _>(at)
                .sql(", ")
                .bind::<BigInt, _>(id)
                .sql(")"),
        );
    }
    query
        .order((j::last_failed_at.desc().nulls_last(), j::id.desc()))
        .limit(limit)
        .load(conn)
}

/// Adds jobs ended by this runner to the current minute's counts per
/// queue (`completed[i]` and `failed[i]` for `queues[i]`), and deletes
/// counts older than a day.
pub(crate) fn record_throughput(
    conn: &mut PgConnection,
    queues: &[&str],
    completed: &[i64],
    failed: &[i64],
) -> QueryResult<()> {
    Statement::new(
        "WITH added AS ( \
             INSERT INTO queue_throughput (minute, queue, completed, failed) \
             SELECT date_trunc('minute', now()), q, c, f \
             FROM unnest($1::text[], $2::int8[], $3::int8[]) AS t(q, c, f) \
             ON CONFLICT (minute, queue) DO UPDATE SET \
                 completed = queue_throughput.completed + EXCLUDED.completed, \
                 failed = queue_throughput.failed + EXCLUDED.failed \
             RETURNING 1), \
         expired AS ( \
             DELETE FROM queue_throughput WHERE minute < now() - interval '1 day' RETURNING 1) \
         SELECT (SELECT count(*) FROM added) + (SELECT count(*) FROM expired) AS n",
    )
    .bind::<Array<Text>, _>(queues)
    .bind::<Array<BigInt>, _>(completed)
    .bind::<Array<BigInt>, _>(failed)
    .execute(conn)?;
    Ok(())
}

/// One minute of [`throughput`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub(crate) struct Minute {
    /// Minutes before the current one (0: this minute).
    #[diesel(sql_type = Integer)]
    pub(crate) ago: i32,
    #[diesel(sql_type = BigInt)]
    pub(crate) completed: i64,
    #[diesel(sql_type = BigInt)]
    pub(crate) failed: i64,
}

/// Jobs ended per minute over the last hour (60 minutes, oldest first,
/// zeros included), of `queue` or of all queues.
pub(crate) fn throughput(conn: &mut PgConnection, queue: Option<&str>) -> QueryResult<Vec<Minute>> {
    Statement::new(
        "SELECT m.ago, COALESCE(sum(t.completed), 0)::int8 AS completed, \
                COALESCE(sum(t.failed), 0)::int8 AS failed \
         FROM generate_series(59, 0, -1) AS m(ago) \
         LEFT JOIN queue_throughput t \
           ON t.minute = date_trunc('minute', now()) - m.ago * interval '1 minute' \
          AND ($1::text IS NULL OR t.queue = $1) \
         GROUP BY m.ago ORDER BY m.ago DESC",
    )
    .bind::<Nullable<Text>, _>(queue)
    .load(conn)
}

/// Records a schedule a runner declares (its cron text and time zone as
/// the runner has them now: a changed schedule takes effect with the
/// deploy that changes it), and its next tick.
pub(crate) fn declare_schedule(
    conn: &mut PgConnection,
    name: &str,
    cron: &str,
    time_zone: &str,
    next_tick: Option<DateTime<Utc>>,
) -> QueryResult<()> {
    Statement::new(
        "INSERT INTO queue_schedules (name, cron, time_zone, next_tick) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron, time_zone = EXCLUDED.time_zone, \
             next_tick = EXCLUDED.next_tick, updated_at = now()",
    )
    .bind::<Text, _>(name)
    .bind::<Text, _>(cron)
    .bind::<Text, _>(time_zone)
    .bind::<Nullable<Timestamptz>, _>(next_tick)
    .execute(conn)?;
    Ok(())
}

/// The latest tick of each of `names` (`None`: never ticked, or unknown).
pub(crate) fn last_ticks(
    conn: &mut PgConnection,
    names: &[&str],
) -> QueryResult<Vec<(String, Option<DateTime<Utc>>)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        last_tick: Option<DateTime<Utc>>,
    }
    let rows: Vec<Row> =
        Statement::new("SELECT name, last_tick FROM queue_schedules WHERE name = ANY ($1::text[])")
            .bind::<Array<Text>, _>(names)
            .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.name, r.last_tick)).collect())
}

/// What [`claim_tick`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TickClaim {
    /// This transaction took the tick, and must enqueue its job before
    /// committing.
    Taken,
    /// Another runner took this tick, or a later one.
    TakenElsewhere,
    /// Another runner's transaction holds the schedule (it is taking a
    /// tick and has not committed): not waited for; ask again.
    Held,
}

/// Moves schedule `name` to `tick` if no runner has taken that tick (or a
/// later one) yet. A schedule another transaction holds is skipped, not
/// waited for: a runner stalled in its tick transaction (paused, on a slow
/// disk, cut off) holds up no other runner's schedules.
pub(crate) fn claim_tick(
    conn: &mut PgConnection,
    name: &str,
    tick: DateTime<Utc>,
    next_tick: Option<DateTime<Utc>>,
) -> QueryResult<TickClaim> {
    #[derive(QueryableByName)]
    struct Claimed {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        free: bool,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        taken: bool,
    }
    let claimed: Claimed = Statement::new(
        "WITH free AS MATERIALIZED ( \
             SELECT name, last_tick FROM queue_schedules WHERE name = $1 \
             FOR UPDATE SKIP LOCKED), \
         taken AS ( \
             UPDATE queue_schedules s \
             SET last_tick = $2, next_tick = $3, updated_at = now() \
             FROM free f \
             WHERE s.name = f.name AND (f.last_tick IS NULL OR f.last_tick < $2) \
             RETURNING 1) \
         SELECT EXISTS (SELECT 1 FROM free) AS free, EXISTS (SELECT 1 FROM taken) AS taken",
    )
    .bind::<Text, _>(name)
    .bind::<Timestamptz, _>(tick)
    .bind::<Nullable<Timestamptz>, _>(next_tick)
    .get_result(conn)?;
    Ok(match (claimed.free, claimed.taken) {
        (_, true) => TickClaim::Taken,
        (true, false) => TickClaim::TakenElsewhere,
        (false, false) => TickClaim::Held,
    })
}

/// A schedule as `skiplock status` and the dashboard show it.
#[derive(Debug, Clone, PartialEq, QueryableByName, serde::Serialize)]
pub struct ScheduleRecord {
    /// The schedule's name (its job type's, unless named).
    #[diesel(sql_type = Text)]
    pub name: String,
    /// Its cron text.
    #[diesel(sql_type = Text)]
    pub cron: String,
    /// The time zone it is read in.
    #[diesel(sql_type = Text)]
    pub time_zone: String,
    /// The latest tick enqueued (or skipped).
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_tick: Option<DateTime<Utc>>,
    /// The next tick.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub next_tick: Option<DateTime<Utc>>,
    /// A live runner declares it: when none does (it was removed from the
    /// code, or no runner runs), it has stopped.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub declared: bool,
}

/// Every schedule, by name.
pub(crate) fn schedules(
    conn: &mut PgConnection,
    fresh_secs: f64,
) -> QueryResult<Vec<ScheduleRecord>> {
    Statement::new(
        "SELECT s.name, s.cron, s.time_zone, s.last_tick, s.next_tick, \
                EXISTS (SELECT 1 FROM queue_runners r \
                        WHERE s.name = ANY (r.schedules) \
                          AND r.last_seen_at > now() - $1 * interval '1 second') AS declared \
         FROM queue_schedules s ORDER BY s.name",
    )
    .bind::<diesel::sql_types::Double, _>(fresh_secs)
    .load(conn)
}

/// The server process of `conn`'s session.
pub(crate) fn backend_pid(conn: &mut PgConnection) -> QueryResult<i32> {
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = Integer)]
        pid: i32,
    }
    Ok(Statement::new("SELECT pg_backend_pid() AS pid")
        .uncached()
        .get_result::<Pid>(conn)?
        .pid)
}
