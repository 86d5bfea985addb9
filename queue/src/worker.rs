//! Claiming jobs and running them under their row locks.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use tracing::{debug, error, info_span, warn};

use crate::connection::{ConnectionMode, JobConnection, PgPool};
use crate::errors::PerformError;
use crate::job::JobId;
use crate::registry::{JobDescriptor, Registry, RunFailure};
use crate::retry::RetryPolicy;
use crate::shutdown::Signals;
use crate::storage::{self, ClaimedJob};

/// What the workers of one runner share.
#[derive(Debug)]
pub(crate) struct Shared<C> {
    pub(crate) registry: Registry,
    pub(crate) context: C,
    pub(crate) pool: PgPool,
    pub(crate) poll_interval: Duration,
    pub(crate) batch_size: i64,
    pub(crate) synchronous_commit: bool,
    pub(crate) signals: Signals,
    /// Where the wake-up thread listens; `None`: poll only.
    pub(crate) listener_url: Option<String>,
}

/// What happened to one claimed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    /// Failed; it will be retried unless `dead`.
    Failed {
        error: String,
        dead: bool,
    },
}

/// Claims up to `limit` ready jobs of `queue` (not in `exclude`) in one
/// transaction, runs them one after the other, and commits their
/// completions and failures together. Returns how many were claimed.
///
/// Every claimed row stays locked until the commit, so a worker that dies
/// anywhere in here releases all its jobs at once. When a stop is requested
/// mid-batch, the jobs not yet started are released unrun.
pub(crate) fn run_batch<C: Any + Send + Sync>(
    shared: &Shared<C>,
    conn: &mut PgConnection,
    queue: &str,
    limit: i64,
    exclude: &[i64],
    mut report: impl FnMut(JobId, &str, &Outcome),
) -> QueryResult<usize> {
    conn.transaction(|conn| {
        if !shared.synchronous_commit {
            storage::relax_commit_durability(conn)?;
        }
        let jobs = storage::claim_jobs(conn, queue, limit, exclude)?;
        let mut completed = Vec::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            if index > 0 && shared.signals.is_stopped() {
                break;
            }
            let span = info_span!(
                "job",
                id = job.id,
                job_type = %job.job_type,
                queue,
                attempt = job.attempts + 1
            );
            let _entered = span.enter();
            let started = Instant::now();
            let descriptor = shared.registry.get(&job.job_type);
            let outcome = match execute(shared, conn, descriptor, job) {
                Ok(()) => {
                    debug!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "job succeeded"
                    );
                    completed.push(job.id);
                    Outcome::Succeeded
                }
                Err(failure) => record_failure(conn, descriptor, job, queue, &failure)?,
            };
            report(JobId(job.id), &job.job_type, &outcome);
        }
        storage::delete_jobs(conn, &completed)?;
        Ok(jobs.len())
    })
}

/// Runs one claimed job; `Err` is the job's failure, not the runner's.
fn execute<C: Any + Send + Sync>(
    shared: &Shared<C>,
    conn: &mut PgConnection,
    descriptor: Option<&'static JobDescriptor>,
    job: &ClaimedJob,
) -> Result<(), RunFailure> {
    let descriptor = descriptor.ok_or(RunFailure::UnknownType)?;
    if !descriptor.runs_with::<C>() {
        return Err(RunFailure::ContextMismatch {
            expected: descriptor.context_name(),
            actual: std::any::type_name::<C>(),
        });
    }
    let context: &(dyn Any + Send + Sync) = &shared.context;
    let payload = job.payload.clone();
    match descriptor.connection {
        ConnectionMode::JobTransaction => {
            // A savepoint: the job's writes are released with its success, or
            // rolled back before its failure is recorded.
            let result = conn.transaction(|conn| {
                catch_panic(|| {
                    descriptor.run(context, payload, &mut JobConnection::in_transaction(conn))
                })
                .map_err(SavepointExit::Job)
            });
            match result {
                Ok(()) => Ok(()),
                Err(SavepointExit::Job(failure)) => Err(failure),
                Err(SavepointExit::Database(e)) => Err(RunFailure::Job(PerformError::new(
                    format!("the job's writes could not be committed: {e}"),
                ))),
            }
        }
        _ => catch_panic(|| {
            descriptor.run(
                context,
                payload,
                &mut JobConnection::from_pool(&shared.pool),
            )
        }),
    }
}

/// How the savepoint around a `JobTransaction` job ended.
#[derive(Debug)]
enum SavepointExit {
    Job(RunFailure),
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for SavepointExit {
    fn from(e: diesel::result::Error) -> Self {
        SavepointExit::Database(e)
    }
}

fn catch_panic(run: impl FnOnce() -> Result<(), RunFailure>) -> Result<(), RunFailure> {
    match panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(payload) => Err(RunFailure::Panic(panic_message(payload.as_ref()))),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_owned()
    }
}

/// Records the failure on the job's row: the next attempt after a backoff,
/// or dead.
fn record_failure(
    conn: &mut PgConnection,
    descriptor: Option<&'static JobDescriptor>,
    job: &ClaimedJob,
    queue: &str,
    failure: &RunFailure,
) -> QueryResult<Outcome> {
    let policy = descriptor.map_or(RetryPolicy::DEFAULT, |d| d.retry_policy);
    let failed_attempts = u32::try_from(job.attempts).unwrap_or(0).saturating_add(1);
    let error = failure.describe(&job.job_type, queue);
    let dead = failure.is_permanent() || policy.is_exhausted(failed_attempts);
    if dead {
        storage::record_death(conn, job.id, &error)?;
        error!(%error, failed_attempts, "job failed and is now dead; an operator must retry or discard it");
    } else {
        let retry_in = policy.backoff(failed_attempts, job.id as u64);
        storage::record_failure(conn, job.id, &error, retry_in)?;
        warn!(%error, failed_attempts, retry_in_ms = retry_in.as_millis() as u64, "job failed; retry scheduled");
    }
    Ok(Outcome::Failed { error, dead })
}

/// The loop of one worker thread: claim and run batches while there are
/// jobs; when there are none, sleep until the wake-up thread (a new job, a
/// due job, the poll fallback) or a stop wakes it.
pub(crate) fn work<C: Any + Send + Sync>(shared: Arc<Shared<C>>, queue: String) {
    let wakeup = shared
        .signals
        .queue(&queue)
        .expect("a worker's queue has a wake-up");
    // Only a safety net: the wake-up thread wakes idle workers.
    let idle_timeout = shared.poll_interval.saturating_mul(10);
    let mut conn = None;
    while !shared.signals.is_stopped() {
        let seen = wakeup.generation();
        let held = match &mut conn {
            Some(held) => held,
            None => match shared.pool.get() {
                Ok(fresh) => conn.insert(fresh),
                Err(e) => {
                    error!(queue, error = %e, "cannot get a database connection; retrying");
                    shared.signals.wait(wakeup, seen, shared.poll_interval);
                    continue;
                }
            },
        };
        match run_batch(&shared, held, &queue, shared.batch_size, &[], |_, _, _| {}) {
            Ok(0) => shared.signals.wait(wakeup, seen, idle_timeout),
            // A full batch: more jobs may be waiting; share them with a sibling.
            Ok(claimed) if claimed as i64 >= shared.batch_size => wakeup.wake_one(),
            Ok(_) => {}
            Err(e) => {
                // The claimed jobs were rolled back and are free again. Start
                // over on a fresh connection in case this one is broken.
                error!(queue, error = %e, "database error while running jobs; retrying");
                conn = None;
                shared.signals.wait(wakeup, seen, shared.poll_interval);
            }
        }
    }
}
