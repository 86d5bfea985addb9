//! Claiming jobs and running them under their row locks.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use tracing::{debug, error, info_span, warn};

use crate::connection::{ConnectionMode, JobConnection, PgPool};
use crate::errors::PerformError;
use crate::job::JobId;
use crate::metrics::{Ended, Metrics};
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
    /// After this long, a running job's unstarted batch is released.
    pub(crate) slow_job_threshold: Duration,
    /// This runner's name in `queue_runners`.
    pub(crate) runner_id: String,
    pub(crate) metrics: Metrics,
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

/// A worker's connection (the one whose transaction holds its job locks)
/// and its current batch, shared with the watchdog that releases the
/// batch of a slow job (see [`crate::handover`]).
#[derive(Default)]
pub(crate) struct Slot {
    /// The worker's queue, whose idle workers are woken for released jobs.
    pub(crate) queue: String,
    pub(crate) conn: Mutex<Option<PooledConn>>,
    pub(crate) batch: Mutex<BatchState>,
}

impl Slot {
    pub(crate) fn new(queue: &str) -> Self {
        Slot {
            queue: queue.to_owned(),
            ..Slot::default()
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

/// The claimed jobs of the open batch.
#[derive(Debug, Default)]
pub(crate) struct BatchState {
    /// Claimed, not started yet.
    pub(crate) pending: VecDeque<ClaimedJob>,
    /// Succeeded; deleted when the batch commits.
    pub(crate) completed: Vec<i64>,
    /// The job running now.
    pub(crate) running: Option<RunningJob>,
}

/// The job a worker is running.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunningJob {
    pub(crate) id: i64,
    pub(crate) since: Instant,
    /// Whether the job leaves the lock connection alone while it runs
    /// (`ConnectionMode::Pooled`), so its lock can be handed over.
    pub(crate) movable: bool,
}

pub(crate) type PooledConn = PooledConnection<ConnectionManager<PgConnection>>;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the slot's connection (taking one from the pool if needed).
fn with_conn<C, T>(
    shared: &Shared<C>,
    slot: &Slot,
    f: impl FnOnce(&mut PgConnection) -> QueryResult<T>,
) -> QueryResult<T> {
    let mut guard = lock(&slot.conn);
    if guard.is_none() {
        let fresh = shared.pool.get().map_err(|e| {
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ClosedConnection,
                Box::new(format!("no connection from the pool: {e}")),
            )
        })?;
        *guard = Some(fresh);
    }
    f(guard.as_mut().expect("just filled"))
}

/// Claims up to `limit` ready jobs of `queue` (not in `exclude`) in one
/// transaction, runs them one after the other, and commits their
/// completions and failures together. Returns how many were claimed.
///
/// Every claimed row stays locked until a commit, so a worker that dies
/// anywhere in here releases all its jobs at once. When a stop is requested
/// mid-batch, the jobs not yet started are released unrun; when a job runs
/// long, the watchdog may release them earlier (and move the running job's
/// lock to another connection). On a database error the transaction is
/// rolled back and the slot's connection dropped.
pub(crate) fn run_batch<C: Any + Send + Sync>(
    shared: &Shared<C>,
    slot: &Slot,
    queue: &str,
    limit: i64,
    exclude: &[i64],
    mut report: impl FnMut(JobId, &str, &Outcome),
) -> QueryResult<usize> {
    let result = run_batch_inner(shared, slot, queue, limit, exclude, &mut report);
    if result.is_err() {
        *lock(&slot.batch) = BatchState::default();
        let mut guard = lock(&slot.conn);
        if let Some(conn) = guard.as_mut() {
            let _ = AnsiTransactionManager::rollback_transaction(&mut **conn);
        }
        *guard = None;
    }
    result
}

fn run_batch_inner<C: Any + Send + Sync>(
    shared: &Shared<C>,
    slot: &Slot,
    queue: &str,
    limit: i64,
    exclude: &[i64],
    report: &mut impl FnMut(JobId, &str, &Outcome),
) -> QueryResult<usize> {
    let jobs = with_conn(shared, slot, |conn| {
        AnsiTransactionManager::begin_transaction(conn)?;
        if !shared.synchronous_commit {
            storage::relax_commit_durability(conn)?;
        }
        storage::claim_jobs(conn, queue, limit, exclude)
    })?;
    let claimed = jobs.len();
    if claimed > 0 {
        debug!(queue, claimed, "claimed jobs");
    }
    lock(&slot.batch).pending = jobs.into();

    let mut started = 0;
    loop {
        let job = {
            // Holding the connection's lock while choosing the next job means
            // no job starts while the watchdog is moving locks (it holds the
            // connection for the whole move), so a move never releases a job
            // that has just started.
            let _no_move_in_progress = lock(&slot.conn);
            let mut batch = lock(&slot.batch);
            if started > 0 && shared.signals.is_stopped() {
                batch.pending.clear();
            }
            let Some(job) = batch.pending.pop_front() else {
                break;
            };
            let descriptor = shared.registry.get(&job.job_type);
            batch.running = Some(RunningJob {
                id: job.id,
                since: Instant::now(),
                movable: descriptor.is_none_or(|d| d.connection == ConnectionMode::Pooled),
            });
            job
        };
        started += 1;
        let span = info_span!(
            "job",
            id = job.id,
            job_type = %job.job_type,
            queue,
            attempt = job.attempts + 1
        );
        let _entered = span.enter();
        let begun = Instant::now();
        let descriptor = shared.registry.get(&job.job_type);
        let outcome = match execute(shared, slot, descriptor, &job) {
            Ok(()) => {
                debug!(
                    elapsed_ms = begun.elapsed().as_millis() as u64,
                    "job succeeded"
                );
                lock(&slot.batch).completed.push(job.id);
                Outcome::Succeeded
            }
            Err(failure) => with_conn(shared, slot, |conn| {
                record_failure(conn, descriptor, &job, queue, &failure)
            })?,
        };
        lock(&slot.batch).running = None;
        let ended = match &outcome {
            Outcome::Succeeded => Ended::Completed,
            Outcome::Failed { dead: false, .. } => Ended::Retried,
            Outcome::Failed { dead: true, .. } => Ended::Dead,
        };
        shared.metrics.record(&job.job_type, ended, begun.elapsed());
        report(JobId(job.id), &job.job_type, &outcome);
    }

    with_conn(shared, slot, |conn| {
        let completed = std::mem::take(&mut lock(&slot.batch).completed);
        storage::delete_jobs(conn, &completed)?;
        AnsiTransactionManager::commit_transaction(conn)
    })?;
    Ok(claimed)
}

/// Runs one claimed job; `Err` is the job's failure, not the runner's.
fn execute<C: Any + Send + Sync>(
    shared: &Shared<C>,
    slot: &Slot,
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
            // rolled back before its failure is recorded. The job holds the
            // lock connection throughout, so its lock never moves.
            let mut guard = lock(&slot.conn);
            let conn = guard.as_mut().expect("a claimed batch has a connection");
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
pub(crate) fn work<C: Any + Send + Sync>(shared: Arc<Shared<C>>, slot: Arc<Slot>, queue: String) {
    let wakeup = shared
        .signals
        .queue(&queue)
        .expect("a worker's queue has a wake-up");
    // Only a safety net: the wake-up thread wakes idle workers.
    let idle_timeout = shared.poll_interval.saturating_mul(10);
    while !shared.signals.is_stopped() {
        let seen = wakeup.generation();
        match run_batch(&shared, &slot, &queue, shared.batch_size, &[], |_, _, _| {}) {
            Ok(0) => shared.signals.wait(wakeup, seen, idle_timeout),
            // A full batch: more jobs may be waiting; share them with a sibling.
            Ok(claimed) if claimed as i64 >= shared.batch_size => wakeup.wake_one(),
            Ok(_) => {}
            Err(e) => {
                // The claimed jobs were rolled back and are free again; the
                // next batch starts on a fresh connection.
                error!(queue, error = %e, "database error while running jobs; retrying");
                shared.signals.wait(wakeup, seen, shared.poll_interval);
            }
        }
    }
}
