//! Operators' changes to every failed job a filter selects, one statement
//! per page of jobs: the page is read from the failed jobs' index (most
//! recent failure first, as the lists show them), the jobs no worker holds
//! are locked for the transaction, changed together, and the release is
//! counted (see `count_release`), all in one round trip.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};

use crate::prepared::Statement;

/// The page of jobs a filter selects after the previous page's last
/// (`$4`, `$5`: its last failure and id), at most `$6`: failed in the way
/// `$1` says (`dead`, `failing` or `failed`), of type `$2` and on queue
/// `$3` when given; and those of them no worker holds, locked until the
/// transaction ends.
macro_rules! bulk_page {
    () => {
        concat!(
            "WITH page AS MATERIALIZED ( \
                 SELECT id, last_failed_at FROM queue_jobs \
                 WHERE (attempts > 0 OR dead_at IS NOT NULL) \
                   AND ($1 = 'failed' OR ($1 = 'dead' AND dead_at IS NOT NULL) \
                        OR ($1 = 'failing' AND dead_at IS NULL)) \
                   AND ($2::text IS NULL OR (left(job_type, 200) = left($2, 200) AND job_type = $2)) \
                   AND ($3::text IS NULL OR (left(queue, 200) = left($3, 200) AND queue = $3)) \
                   AND ($4::timestamptz IS NULL OR (last_failed_at, id) < ($4, $5)) \
                 ORDER BY last_failed_at DESC NULLS LAST, id DESC LIMIT $6), \
             idle AS MATERIALIZED ( \
                 SELECT id FROM page WHERE pg_try_advisory_xact_lock(",
            job_lock!("id"),
            ")), \
             last AS (SELECT last_failed_at, id FROM page \
                      ORDER BY last_failed_at ASC NULLS FIRST, id ASC LIMIT 1), "
        )
    };
}

/// What the page's statement reports.
macro_rules! bulk_report {
    () => {
        "SELECT (SELECT last_failed_at FROM last) AS last_at, (SELECT id FROM last) AS last_id, \
                (SELECT count(*) FROM page) AS seen, (SELECT count(*) FROM changed) AS changed, \
                nextval('queue_lock_releases') AS released"
    };
}

/// Makes the page's idle jobs ready to run now with a fresh attempt count
/// (as `reset_for_retry`).
const RETRY_PAGE: &str = concat!(
    bulk_page!(),
    "changed AS ( \
         UPDATE queue_jobs SET dead_at = NULL, attempts = 0, first_failed_at = NULL, \
                run_at = now(), scheduled = false, running_by = NULL \
         WHERE id IN (SELECT id FROM idle) RETURNING 1) ",
    bulk_report!()
);

/// Deletes the page's idle jobs.
const DISCARD_PAGE: &str = concat!(
    bulk_page!(),
    "changed AS (DELETE FROM queue_jobs WHERE id IN (SELECT id FROM idle) RETURNING 1) ",
    bulk_report!()
);

/// What [`change_failed_jobs`](crate::change_failed_jobs) does to each job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkChange {
    /// Run it again as soon as a worker is free, with a fresh attempt count.
    Retry,
    /// Delete it for good.
    Discard,
}

/// What one page's statement did.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct BulkPage {
    /// The page's last job (its last failure and id): where the next
    /// page starts. `None`: the page was empty.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub last_id: Option<i64>,
    /// Jobs the page held.
    #[diesel(sql_type = BigInt)]
    pub seen: i64,
    /// Jobs changed (the others: a worker runs them).
    #[diesel(sql_type = BigInt)]
    pub changed: i64,
}

/// Changes one page of the failed jobs a filter selects (see
/// [`bulk_page`]); to be run in a transaction of its own, after which the
/// release is counted again.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bulk_change_page(
    conn: &mut PgConnection,
    change: BulkChange,
    state: &str,
    job_type: Option<&str>,
    queue: Option<&str>,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> QueryResult<BulkPage> {
    let sql = match change {
        BulkChange::Retry => RETRY_PAGE,
        BulkChange::Discard => DISCARD_PAGE,
    };
    Statement::new(sql)
        .bind::<Text, _>(state)
        .bind::<Nullable<Text>, _>(job_type)
        .bind::<Nullable<Text>, _>(queue)
        .bind::<Nullable<Timestamptz>, _>(after.map(|(at, _)| at))
        .bind::<BigInt, _>(after.map_or(0, |(_, id)| id))
        .bind::<BigInt, _>(limit)
        .get_result(conn)
}

/// How many failed jobs a filter selects (the bulk confirmation's count),
/// counted on the failed jobs' index.
pub(crate) fn count_failed(
    conn: &mut PgConnection,
    state: &str,
    job_type: Option<&str>,
    queue: Option<&str>,
) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    Ok(Statement::new(
        "SELECT count(*) AS n FROM queue_jobs \
         WHERE (attempts > 0 OR dead_at IS NOT NULL) \
           AND ($1 = 'failed' OR ($1 = 'dead' AND dead_at IS NOT NULL) \
                OR ($1 = 'failing' AND dead_at IS NULL)) \
           AND ($2::text IS NULL OR (left(job_type, 200) = left($2, 200) AND job_type = $2)) \
                   AND ($3::text IS NULL OR (left(queue, 200) = left($3, 200) AND queue = $3))",
    )
    .bind::<Text, _>(state)
    .bind::<Nullable<Text>, _>(job_type)
    .bind::<Nullable<Text>, _>(queue)
    .get_result::<Count>(conn)?
    .n)
}
