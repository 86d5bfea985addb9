//! What operators do with stored jobs: list failures, look one up, retry
//! or discard it. All of it works on any `&mut PgConnection`.

use diesel::prelude::*;

use crate::errors::AdminError;
use crate::job::JobId;
use crate::storage::bulk::BulkChange;
use crate::storage::search::SearchState;
use crate::storage::{self, FailedState, JobRecord, QueueStatus, RunnerRecord, ScheduleRecord};

/// Jobs that have failed at least once and will be retried, the longest
/// failing first (at most `limit`).
pub fn failing_jobs(conn: &mut PgConnection, limit: i64) -> Result<Vec<JobRecord>, AdminError> {
    Ok(storage::failing_jobs(conn, limit)?)
}

/// Dead jobs (out of attempts, or failed permanently), most recent first
/// (at most `limit`). They never run again unless [`retry_job`] is called.
pub fn dead_jobs(conn: &mut PgConnection, limit: i64) -> Result<Vec<JobRecord>, AdminError> {
    Ok(storage::dead_jobs(conn, limit)?)
}

/// One stored job, whatever its state.
pub fn find_job(conn: &mut PgConnection, id: JobId) -> Result<JobRecord, AdminError> {
    storage::find_job(conn, id.0)?.ok_or(AdminError::NotFound(id))
}

/// Makes a dead or failing job run again as soon as a worker is free, with a
/// fresh attempt count (its last error is kept until it next fails).
///
/// Refuses a job that a worker is running right now: [`AdminError::Running`].
pub fn retry_job(conn: &mut PgConnection, id: JobId) -> Result<(), AdminError> {
    with_idle_job(conn, id, storage::reset_for_retry)
}

/// Deletes a job for good, whatever its state.
///
/// Refuses a job that a worker is running right now: [`AdminError::Running`].
pub fn discard_job(conn: &mut PgConnection, id: JobId) -> Result<(), AdminError> {
    with_idle_job(conn, id, storage::delete_job)
}

/// Runs `change` on the job while holding its lock, so no worker claims it
/// meanwhile, and counts the change as a release: a claim that read the job
/// before it and locks it after reads it again (see
/// `storage::count_release`).
fn with_idle_job(
    conn: &mut PgConnection,
    id: JobId,
    change: fn(&mut PgConnection, i64) -> QueryResult<usize>,
) -> Result<(), AdminError> {
    conn.transaction(|conn| {
        if !storage::job_exists(conn, id.0)? {
            return Err(AdminError::NotFound(id));
        }
        if !storage::lock_idle_job(conn, id.0)? {
            return Err(AdminError::Running(id));
        }
        change(conn, id.0)?;
        storage::count_release(conn)?;
        Ok::<_, AdminError>(())
    })?;
    storage::count_release(conn)?;
    Ok(())
}

/// How many job releases the database has counted (what a claim compares
/// before and after it takes its locks). For tests of the claim's recheck.
#[doc(hidden)]
pub fn releases_counted(conn: &mut PgConnection) -> Result<i64, AdminError> {
    Ok(storage::releases_counted(conn)?)
}

/// Runners seen this recently count as alive: their running jobs are
/// not ready (the `skiplock` command's `status` and `monitor`, the metrics).
pub const RUNNER_FRESH_SECS: f64 = 60.0;

/// Per queue and job type: how many jobs are ready, scheduled, running,
/// failing and dead, the age of the oldest ready job and how long the
/// longest failing job has been failing. Running jobs are those that live
/// runners (seen within `runner_fresh_secs`, [`RUNNER_FRESH_SECS`] for the
/// metrics and the `skiplock` command) announced as running.
///
/// Exact: it reads every row of the jobs table (about 5 s at 10,000,000
/// jobs). [`overview`](crate::overview) answers in milliseconds at any
/// size, exact up to a cap and estimated past it.
pub fn queue_status(
    conn: &mut PgConnection,
    runner_fresh_secs: f64,
) -> Result<Vec<QueueStatus>, AdminError> {
    require_schema(conn)?;
    Ok(storage::status(conn, runner_fresh_secs)?)
}

/// The runners that announced themselves, most recently seen first.
pub fn runners(conn: &mut PgConnection) -> Result<Vec<RunnerRecord>, AdminError> {
    require_schema(conn)?;
    Ok(storage::runners(conn)?)
}

/// Pauses `queue` on every runner: jobs already running finish, nothing
/// new starts (a runner learns of it by `NOTIFY` at once, or at its next
/// poll without one), and enqueueing goes on. The pause is stored, so it
/// survives runner restarts. Returns `false` if the queue was paused
/// already.
pub fn pause_queue(conn: &mut PgConnection, queue: &str) -> Result<bool, AdminError> {
    require_schema(conn)?;
    check_queue_name(queue)?;
    Ok(storage::pause_queue(conn, queue)?)
}

/// Refuses a name no queue can have.
pub(crate) fn check_queue_name(queue: &str) -> Result<(), AdminError> {
    if queue.is_empty() {
        return Err(AdminError::Invalid("the queue name is empty".into()));
    }
    if queue.contains('\0') {
        return Err(AdminError::Invalid(
            "the queue name holds a NUL character (no queue's can)".into(),
        ));
    }
    Ok(())
}

/// Resumes a paused `queue`: its runners start claiming again at once.
/// Returns `false` if it was not paused.
pub fn resume_queue(conn: &mut PgConnection, queue: &str) -> Result<bool, AdminError> {
    require_schema(conn)?;
    if queue.contains('\0') {
        // No paused queue's name holds one.
        return Ok(false);
    }
    Ok(storage::resume_queue(conn, queue)?)
}

/// A paused queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct PausedQueue {
    /// The queue.
    pub queue: String,
    /// When it was paused.
    pub paused_at: chrono::DateTime<chrono::Utc>,
}

/// The paused queues, by name.
pub fn paused_queues(conn: &mut PgConnection) -> Result<Vec<PausedQueue>, AdminError> {
    require_schema(conn)?;
    Ok(storage::paused_queues(conn)?
        .into_iter()
        .map(|(queue, paused_at)| PausedQueue { queue, paused_at })
        .collect())
}

/// Which jobs a bulk operation selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobState {
    /// Dead jobs.
    Dead,
    /// Failing jobs (failed at least once, still retried).
    Failing,
    /// Dead or failing.
    Failed,
    /// Every job.
    Any,
}

/// What [`change_failed_jobs`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BulkOutcome {
    /// Jobs changed.
    pub changed: u64,
    /// Jobs selected and left alone: a worker was running them.
    pub left: u64,
}

/// Jobs changed per statement (and per transaction) of a bulk change.
const BULK_PAGE: i64 = 1_000;

/// Retries or discards (`change`) every failed job in `state`
/// ([`JobState::Dead`], `Failing` or `Failed`), of `job_type` and on
/// `queue` when given: a retried job runs again as soon as a worker is
/// free, with a fresh attempt count; a discarded one is deleted for good.
/// One statement per thousand jobs, each in a transaction of its own; jobs
/// a worker is running are left (counted in [`BulkOutcome::left`]).
pub fn change_failed_jobs(
    conn: &mut PgConnection,
    change: BulkChange,
    state: JobState,
    job_type: Option<&str>,
    queue: Option<&str>,
) -> Result<BulkOutcome, AdminError> {
    require_schema(conn)?;
    let state = failed_state(state)?;
    let mut outcome = BulkOutcome::default();
    let mut after = None;
    loop {
        let page = conn.transaction(|conn| {
            storage::bulk::bulk_change_page(conn, change, state, job_type, queue, after, BULK_PAGE)
        })?;
        // Counted again after the commit (see `with_idle_job`).
        storage::count_release(conn)?;
        let changed = u64::try_from(page.changed).unwrap_or(0);
        outcome.changed += changed;
        outcome.left += u64::try_from(page.seen).unwrap_or(0) - changed;
        match (page.last_at, page.last_id) {
            (Some(at), Some(id)) if page.seen == BULK_PAGE => after = Some((at, id)),
            // The last page (or one ending in a job without a failure time,
            // which only the oldest schemas left: they come last).
            _ => return Ok(outcome),
        }
    }
}

/// How many failed jobs in `state`, of `job_type` and on `queue` when
/// given, there are (what a bulk change would select now).
pub fn count_failed_jobs(
    conn: &mut PgConnection,
    state: JobState,
    job_type: Option<&str>,
    queue: Option<&str>,
) -> Result<i64, AdminError> {
    require_schema(conn)?;
    Ok(storage::bulk::count_failed(
        conn,
        failed_state(state)?,
        job_type,
        queue,
    )?)
}

fn failed_state(state: JobState) -> Result<&'static str, AdminError> {
    match state {
        JobState::Dead => Ok("dead"),
        JobState::Failing => Ok("failing"),
        JobState::Failed => Ok("failed"),
        JobState::Any => Err(AdminError::Invalid(
            "bulk changes select failed jobs: dead, failing, or both".into(),
        )),
    }
}

/// What [`search_jobs`] looks for. Empty filters select every job.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct JobSearch {
    /// Jobs in this state.
    pub state: SearchState,
    /// Jobs on this queue.
    pub queue: Option<String>,
    /// Jobs of this type.
    pub job_type: Option<String>,
    /// Jobs whose payload contains this JSON value (PostgreSQL's `@>`:
    /// `{"user_id": 42}` matches every payload with that key and value).
    pub payload: Option<serde_json::Value>,
    /// Jobs older than this one (where the previous page ended).
    pub before: Option<JobId>,
}

/// One page of [`search_jobs`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SearchPage {
    /// The matching jobs, newest first.
    pub jobs: Vec<JobRecord>,
    /// How many jobs were examined (the newest below `before`).
    pub examined: i64,
    /// Where the search goes on (pass it as [`JobSearch::before`]), if
    /// older jobs remain to examine or more matched than a page holds.
    pub next: Option<JobId>,
}

/// Searches the jobs, newest first: at most `limit` matches from the
/// `budget` newest jobs below [`JobSearch::before`] (their primary key's
/// range), so a request costs the same whatever the table holds; the page
/// says where to go on. A payload filter is checked row by row: no index
/// serves it (a GIN index would slow every enqueue by 40 %).
pub fn search_jobs(
    conn: &mut PgConnection,
    search: &JobSearch,
    limit: i64,
    budget: i64,
) -> Result<SearchPage, AdminError> {
    require_schema(conn)?;
    if let Some(payload) = &search.payload {
        if serde_json::to_string(payload).is_ok_and(|text| text.contains("\\u0000")) {
            return Err(AdminError::Invalid(
                "the payload filter holds a NUL character, which no stored payload can".into(),
            ));
        }
    }
    for text in [&search.queue, &search.job_type].into_iter().flatten() {
        if text.contains('\0') {
            return Err(AdminError::Invalid("a filter holds a NUL character".into()));
        }
    }
    let before = search.before.map(|id| id.0);
    let (low, examined) = storage::search::search_window(conn, before, budget.max(1))?;
    let Some(low) = low else {
        return Ok(SearchPage {
            jobs: Vec::new(),
            examined: 0,
            next: None,
        });
    };
    let mut jobs = storage::search::search_jobs(
        conn,
        low,
        before,
        search.state,
        search.queue.as_deref(),
        search.job_type.as_deref(),
        search.payload.as_ref(),
        limit.max(1) + 1,
    )?;
    let next = if jobs.len() as i64 > limit.max(1) {
        jobs.truncate(limit.max(1) as usize);
        jobs.last().map(|job| JobId(job.id))
    } else if examined >= budget.max(1) {
        Some(JobId(low))
    } else {
        None
    };
    Ok(SearchPage {
        jobs,
        examined,
        next,
    })
}

/// The ids of the jobs in `state`, of `job_type` and on `queue` when given.
pub fn select_jobs(
    conn: &mut PgConnection,
    state: JobState,
    job_type: Option<&str>,
    queue: Option<&str>,
) -> Result<Vec<JobId>, AdminError> {
    require_schema(conn)?;
    let state = match state {
        JobState::Dead => "dead",
        JobState::Failing => "failing",
        JobState::Failed => "failed",
        JobState::Any => "any",
    };
    Ok(storage::select_jobs(conn, state, job_type, queue)?
        .into_iter()
        .map(JobId)
        .collect())
}

/// Where a page of [`failed_jobs_page`] starts: after this job (the last of
/// the previous page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageAfter {
    /// The job's last failure.
    pub last_failed_at: chrono::DateTime<chrono::Utc>,
    /// The job's id.
    pub id: JobId,
}

/// Failed jobs (`state`: [`JobState::Failing`], [`JobState::Dead`], or
/// either), most recent failure first, of `queue` and `job_type` when
/// given, `limit` of them after `after`. Walks the index of failed jobs:
/// fast however many jobs never failed.
pub fn failed_jobs_page(
    conn: &mut PgConnection,
    state: JobState,
    queue: Option<&str>,
    job_type: Option<&str>,
    after: Option<PageAfter>,
    limit: i64,
) -> Result<Vec<JobRecord>, AdminError> {
    require_schema(conn)?;
    let state = match state {
        JobState::Failing => FailedState::Failing,
        JobState::Dead => FailedState::Dead,
        JobState::Failed | JobState::Any => FailedState::Either,
    };
    let after = after.map(|a| (a.last_failed_at, a.id.0));
    Ok(storage::failed_jobs_page(
        conn, state, queue, job_type, after, limit,
    )?)
}

/// Jobs ended in one minute (see [`throughput`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MinuteCounts {
    /// Minutes before the current one (0: the current minute, still counting).
    pub minutes_ago: u32,
    /// Jobs completed.
    pub completed: i64,
    /// Failed attempts (retried or dead).
    pub failed: i64,
}

/// Jobs ended per minute over the last hour, oldest minute first (60 of
/// them, zeros included), on `queue` or on all queues, as runners report
/// them (each every poll interval).
pub fn throughput(
    conn: &mut PgConnection,
    queue: Option<&str>,
) -> Result<Vec<MinuteCounts>, AdminError> {
    require_schema(conn)?;
    Ok(storage::throughput(conn, queue)?
        .into_iter()
        .map(|m| MinuteCounts {
            minutes_ago: u32::try_from(m.ago).unwrap_or(0),
            completed: m.completed,
            failed: m.failed,
        })
        .collect())
}

/// The periodic jobs' schedules, by name: last and next tick, and whether
/// a live runner (seen within `runner_fresh_secs`) still declares each.
pub fn schedules(
    conn: &mut PgConnection,
    runner_fresh_secs: f64,
) -> Result<Vec<ScheduleRecord>, AdminError> {
    require_schema(conn)?;
    Ok(storage::schedules(conn, runner_fresh_secs)?)
}

/// Fails with [`AdminError::NoSchema`] when the queue's tables are missing.
pub fn require_schema(conn: &mut PgConnection) -> Result<(), AdminError> {
    if storage::schema_exists(conn)? {
        Ok(())
    } else {
        Err(AdminError::NoSchema)
    }
}
