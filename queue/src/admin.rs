//! What operators do with stored jobs: list failures, look one up, retry
//! or discard it. All of it works on any `&mut PgConnection`.

use diesel::prelude::*;

use crate::errors::AdminError;
use crate::job::JobId;
use crate::storage::{self, JobRecord};

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

/// Runs `change` on the job while holding its row lock, so no worker runs it meanwhile.
fn with_idle_job(
    conn: &mut PgConnection,
    id: JobId,
    change: fn(&mut PgConnection, i64) -> QueryResult<usize>,
) -> Result<(), AdminError> {
    conn.transaction(|conn| {
        if storage::lock_idle_job(conn, id.0)?.is_none() {
            return Err(if storage::job_exists(conn, id.0)? {
                AdminError::Running(id)
            } else {
                AdminError::NotFound(id)
            });
        }
        change(conn, id.0)?;
        Ok(())
    })
}
