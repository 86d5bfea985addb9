//! The engine: claiming jobs, running them, and recording what happened.
//!
//! A worker claims a batch of ready jobs in one statement on its own lock
//! session, taking a session-level advisory lock on each (see
//! `storage::claims`). It then runs them one after the other:
//!
//! 1. Before each job starts, it checks, without a round trip, that the
//!    session is still alive ([`Session::is_lost`]). Once the session is
//!    gone, so are its locks and other workers may claim the jobs: none of
//!    the unstarted rest of the batch starts here.
//! 2. A job that ran to success joins the completions, which commit (the
//!    rows deleted, the locks released) once the oldest has waited about
//!    three quarters of the completion window: between jobs by the worker,
//!    during a long job by the watchdog. Nothing else waits for the batch
//!    to end, so a crash re-runs only the job that was running and the
//!    completions of the last window.
//! 3. Each claim is recorded under the lock session's number. When a
//!    session ends without releasing its jobs (its worker died, or lost it),
//!    a runner's reaper marks them `suspect`. A suspect job, or one that has
//!    failed before, runs carefully: its row says who runs it before it
//!    starts (`running_by`), and its success commits at once. A claimer that
//!    finds `running_by` on a free job knows the worker running it died, and
//!    records that as a failed attempt with the job's backoff, so a job that
//!    kills its worker ends dead instead of crash-looping every worker.
//!
//! A job that fails has its failure recorded (and its lock released) at
//! once. When the runner stops, the unstarted jobs are released unrun.
//!
//! A lock is released only after the write ending its claim committed. A
//! write the database refuses (a trigger's error, a deadlock, a cancelled
//! statement) does not end the session: the job stays locked, so that it
//! does not run again, and the write is tried again from 100 ms to every
//! 10 s until it is recorded (see [`crate::state::Unwritten`]).

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::Connection;
use tracing::{debug, error, info, info_span, warn};

use crate::connection::{self, ConnectionMode, JobConnection};
use crate::errors::PerformError;
use crate::job::JobId;
use crate::metrics::Ended;
use crate::position::Scan;
use crate::pq::{Session, SessionError};
use crate::registry::{JobDescriptor, RunFailure};
use crate::retry::RetryPolicy;
use crate::state::{lock, LockSession, RunningJob, Settings, Shared, Slot, UnwrittenFailure};
use crate::storage::{self, ClaimRow, ClaimedJob, Claiming, LockTable, NextAttempt, Release};

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

/// Why a batch could not go on.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// No lock session could be opened.
    Connect(SessionError),
    /// The lock session was lost, or a statement on it failed; the session
    /// is closed and its locks are gone.
    Lost {
        error: SessionError,
        /// Claimed jobs that had not started: free for other workers.
        unstarted: usize,
    },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Connect(error) => {
                write!(
                    f,
                    "cannot open a database session to hold job locks: {error}"
                )
            }
            BatchError::Lost { error, unstarted } => write!(
                f,
                "lost the database session holding this worker's jobs ({error}); \
                 {unstarted} unstarted job(s) went back to the queue"
            ),
        }
    }
}

/// What a batch did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchReport {
    pub(crate) claimed: usize,
    /// The claim took as many jobs as it asked for: more may be waiting.
    pub(crate) full: bool,
    /// Another runner's worker has this exclusive queue: nothing claimed.
    pub(crate) standby: bool,
    /// The claim resumed at the runner's position in the queue (see
    /// [`crate::position`]): jobs behind it wait for a sweep.
    pub(crate) resumed: bool,
    /// The queue holds jobs with a concurrency key: a claim that took
    /// none may take some once a worker lets go of a key's slot.
    pub(crate) keyed: bool,
    /// The claim of the keys stopped short of a whole turn: claim again.
    pub(crate) cut: bool,
    /// How soon a full rate window the claim met will have room.
    pub(crate) opens_in: Option<Duration>,
}

/// How a job that ran to success was completed.
enum Completion {
    /// To be committed with the next completions.
    Pending,
    /// Its own transaction deleted its row (`ConnectionMode::JobTransaction`).
    Committed,
    /// Its row was already gone: another worker completed it after this
    /// worker's session was lost. Its own transaction was rolled back.
    Elsewhere,
}

/// Claims up to `limit` (by default: about one completion window of work)
/// ready jobs of `queue` not in `exclude`, runs them, and records their
/// outcomes; `report` hears of each. With `then_claim_again`, the caller
/// claims again at once when this batch was full: the batch's completions
/// then commit with that claim, in its round trip. The claim starts where
/// the runner's position in the queue says, or, with `sweep`, at the head.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_batch<C: Any + Send + Sync>(
    shared: &Shared<C>,
    slot: &Slot,
    queue: &str,
    limit: Option<i64>,
    exclude: &[i64],
    then_claim_again: bool,
    sweep: bool,
    mut report: impl FnMut(JobId, &str, &Outcome),
) -> Result<BatchReport, BatchError> {
    let mut limit = limit.unwrap_or(i64::MAX);
    let mut standby = false;
    let mut claim_took = Duration::ZERO;
    let position = shared.positions.get(queue);
    let turn = shared.turns.get(queue);
    let mut resumed = false;
    let mut walked = 0;
    let mut keyed = storage::Keyed::default();
    let claimed = {
        let mut guard = lock(&slot.session);
        let mut completed = Vec::new();
        let result = open_session(shared, &mut guard).and_then(|lock_session| {
            if !take_exclusive(shared, queue, lock_session)? {
                standby = true;
                return Ok(Vec::new());
            }
            // A queue holding jobs with a concurrency key is claimed key by
            // key, where each job may come with its key's slot: a lock more.
            let cursor = turn.and_then(|turn| {
                let turn = lock(turn);
                turn.waiting.then(|| turn.cursor.clone())
            });
            // Known once a session is open.
            let budget = shared.lock_budget.get().copied();
            let budget = budget.map(|b| if cursor.is_some() { (b / 2).max(1) } else { b });
            limit = limit.min(lock(&slot.batch).claim_size(&shared.settings, budget));
            retry_unwritten(shared, slot, lock_session).map_err(BatchError::Connect)?;
            // Jobs this session holds are not claimed again (its locks are
            // re-entrant): those whose outcome is still to be recorded.
            let (taken, release_all, exclude) = {
                let mut batch = lock(&slot.batch);
                let unwritten = &batch.unwritten;
                let mut excluded = exclude.to_vec();
                excluded.extend(&unwritten.completions);
                excluded.extend(unwritten.failures.iter().map(|f| f.id));
                let release_all = unwritten.is_empty();
                let completed = batch.take_completed();
                // Letting go of everything costs statements: only for
                // completions, or slots of concurrency keys.
                let release_all = release_all && (!completed.is_empty() || batch.holds_slots);
                if release_all {
                    batch.holds_slots = false;
                }
                (completed, release_all, excluded)
            };
            completed = taken;
            let LockSession {
                session,
                holder,
                exclusive,
                claim_row,
            } = lock_session;
            // Everything the session holds goes, unless it holds jobs whose
            // outcome is still to be recorded.
            let release = if release_all {
                Release::All {
                    holder: *holder,
                    exclusive: exclusive.as_deref().unwrap_or(""),
                }
            } else {
                Release::These(&completed)
            };
            let synchronous = shared.settings.synchronous_commit;
            // Chosen once the claim is sure to be made: a sweep chosen keeps
            // the runner's other workers from sweeping until it reports.
            let scan = match position {
                Some(position) if !sweep && cursor.is_none() => lock(position).scan(Instant::now()),
                _ => Scan::Sweep,
            };
            let how = match &cursor {
                Some(cursor) => Claiming::Keyed { cursor },
                None => Claiming::Plain(&scan),
            };
            let position = position.filter(|_| cursor.is_none());
            resumed = scan != Scan::Sweep;
            let began = Instant::now();
            let claim = storage::claim_jobs(
                session,
                queue,
                limit,
                &exclude,
                (*holder, claim_row),
                (&completed, release),
                synchronous,
                shared.registry.type_names(),
                &how,
            )
            .map_err(|error| {
                if let Some(position) = position {
                    lock(position).claim_failed(&scan);
                }
                BatchError::Connect(error)
            })?;
            claim_took = began.elapsed();
            walked = claim.walked;
            if let Some(turn) = turn {
                let mut turn = lock(turn);
                turn.waiting = claim.keyed.waiting;
                if let Some(cursor) = &claim.keyed.cursor {
                    turn.cursor.clone_from(cursor);
                }
            }
            keyed = claim.keyed;
            // (Slots come with the jobs the claim locked, those it let go
            // again included.)
            if matches!(how, Claiming::Keyed { .. }) && !claim.taken.is_empty() {
                lock(&slot.batch).holds_slots = true;
            }
            if let Some(position) = position {
                lock(position).taken(
                    &scan,
                    claim.taken.iter().copied(),
                    claim.taken.len() as i64 >= limit,
                    claim.walked,
                    claim_took,
                    Instant::now(),
                );
            }
            let mut jobs = claim.jobs;
            if let Some(error) = claim.completions_refused {
                // Still ready, and locked by this session: the claim may
                // have locked some again. Not run twice, and held once.
                let (again, claimed): (Vec<_>, Vec<_>) = jobs
                    .into_iter()
                    .partition(|job| completed.contains(&job.id));
                jobs = claimed;
                let again: Vec<i64> = again.iter().map(|job| job.id).collect();
                if !again.is_empty() {
                    storage::unlock_jobs(session, &again).map_err(BatchError::Connect)?;
                }
                keep_unwritten_completions(slot, std::mem::take(&mut completed), &error);
            }
            Ok(jobs)
        });
        match result {
            Ok(jobs) => jobs,
            Err(error) => {
                // The completions are still to be recorded.
                lock(&slot.batch).completed.extend(completed);
                return Err(match error {
                    BatchError::Connect(error) if guard.is_some() => {
                        lose(shared, slot, &mut guard, error)
                    }
                    other => other,
                });
            }
        }
    };
    let batch = BatchReport {
        claimed: claimed.len(),
        full: claimed.len() as i64 >= limit,
        standby,
        resumed,
        keyed: keyed.waiting,
        cut: keyed.cut,
        opens_in: keyed.opens_in,
    };
    if batch.claimed > 0 {
        // The round trip of the claim (with the last batch's completions),
        // and the entries of the ready index its scan walked.
        let claim_us = u64::try_from(claim_took.as_micros()).unwrap_or(u64::MAX);
        debug!(
            queue,
            claimed = batch.claimed,
            claim_us,
            walked,
            resumed = batch.resumed,
            "claimed jobs"
        );
    }
    let mut runnable = VecDeque::with_capacity(claimed.len());
    for job in claimed {
        match job.crashed_in.clone() {
            Some(worker) => {
                let span = job_span(&job, queue);
                let _entered = span.enter();
                let failure = RunFailure::WorkerDied(worker);
                crate::telemetry::mark_failed(&span, || failure.describe(&job.job_type, queue));
                let outcome = fail(shared, slot, &job, queue, &failure, Duration::ZERO)?;
                report(JobId(job.id), &job.job_type, &outcome);
            }
            None => runnable.push_back(job),
        }
    }
    // A rate-limited job first: it has a moment to start (the claim's only
    // one).
    runnable
        .make_contiguous()
        .sort_by_key(|job| job.rated.is_none());
    lock(&slot.batch).pending = runnable;

    let mut started = 0;
    while let Some((job, careful)) = start_next(shared, slot, started)? {
        started += 1;
        let span = job_span(&job, queue);
        let _entered = span.enter();
        let begun = Instant::now();
        let descriptor = shared.registry.get(&job.job_type);
        let result = execute(shared, descriptor, &job);
        let outcome = match result {
            Ok(completion) => {
                debug!(
                    elapsed_ms = begun.elapsed().as_millis() as u64,
                    "job succeeded"
                );
                complete(
                    shared,
                    slot,
                    &job,
                    queue,
                    careful,
                    completion,
                    begun.elapsed(),
                )?;
                Outcome::Succeeded
            }
            Err(failure) => {
                crate::telemetry::mark_failed(&span, || failure.describe(&job.job_type, queue));
                fail(shared, slot, &job, queue, &failure, begun.elapsed())?
            }
        };
        report(JobId(job.id), &job.job_type, &outcome);
    }
    let stopping = shared.signals.is_stopped();
    if !(then_claim_again && batch.full && !stopping && lock(&slot.batch).pending.is_empty()) {
        end_batch(shared, slot)?;
    }
    Ok(batch)
}

/// The span of a job's run: with the feature `opentelemetry`, a span of
/// the trace that enqueued the job (its fields are the OpenTelemetry
/// span's attributes, the `otel.` ones its kind and, on failure, status).
fn job_span(job: &ClaimedJob, queue: &str) -> tracing::Span {
    #[cfg(feature = "opentelemetry")]
    let span = info_span!(
        "job",
        id = job.id,
        job_type = %job.job_type,
        queue,
        attempt = job.attempts + 1,
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    #[cfg(not(feature = "opentelemetry"))]
    let span = info_span!(
        "job",
        id = job.id,
        job_type = %job.job_type,
        queue,
        attempt = job.attempts + 1
    );
    crate::telemetry::continue_trace(&span, job.traceparent.as_deref());
    span
}

/// The slot's session, connecting one if there is none.
fn open_session<'s, C>(
    shared: &Shared<C>,
    guard: &'s mut Option<LockSession>,
) -> Result<&'s mut LockSession, BatchError> {
    if guard.is_none() {
        // Who is who in pg_stat_activity (the pid first: names are cut at 63 bytes).
        let name = format!(
            "skiplock worker pid {} {}",
            std::process::id(),
            shared.runner_id
        );
        let mut session = Session::connect(&shared.database_url, &name, shared.settings.patience)
            .map_err(BatchError::Connect)?;
        storage::prepare_runner_session(&mut session).map_err(BatchError::Connect)?;
        let (holder, table) =
            storage::register_lock_session(&mut session).map_err(BatchError::Connect)?;
        shared
            .lock_budget
            .get_or_init(|| lock_budget(&shared.settings, table));
        *guard = Some(LockSession {
            session,
            holder,
            exclusive: None,
            claim_row: ClaimRow::default(),
        });
    }
    Ok(guard.as_mut().expect("just opened"))
}

/// Whether the worker may claim on its session: always for a queue that is
/// not exclusive; for an exclusive one, once its session holds the queue's
/// lock (taken here if free). A change of standing is logged.
fn take_exclusive<C>(
    shared: &Shared<C>,
    queue: &str,
    lock_session: &mut LockSession,
) -> Result<bool, BatchError> {
    let Some(wakeup) = shared.signals.queue(queue).filter(|w| w.exclusive) else {
        return Ok(true);
    };
    // (A session serving several queues, as `Runner::run_pending` does, may
    // have let go of this one's lock while it held another's: taken again.)
    if lock_session.exclusive.as_deref() == Some(queue) {
        return Ok(true);
    }
    let taken = storage::take_exclusive_queue(&mut lock_session.session, queue)
        .map_err(BatchError::Connect)?;
    let was_standby = wakeup.set_standby(!taken);
    if taken {
        lock_session.exclusive = Some(queue.to_owned());
        if was_standby {
            info!(
                queue,
                "the queue's other worker has ended: this runner runs the exclusive queue now"
            );
        }
    } else if !was_standby {
        warn!(
            queue,
            "queue `{queue}` runs one worker across all runners and another runner's worker has \
             it: this one stands by and takes over when that one ends (`skiplock status` shows \
             which runner has it); if this process was started by mistake, stop it"
        );
    }
    Ok(taken)
}

/// The share of the server's lock table a runner takes at most.
const LOCK_TABLE_SHARE: i64 = 4;

/// The most jobs each worker claims at once, so that the runner's advisory
/// locks (one per claimed job, one per lock session) take at most a
/// quarter of the server's lock table, whatever its batch size: a full
/// table fails every session's next lock, the application's included
/// ("out of shared memory"). Said once when it shrinks the batches.
fn lock_budget(settings: &Settings, table: LockTable) -> i64 {
    let share = table.capacity() / LOCK_TABLE_SHARE;
    let per_worker = share / settings.workers.max(1) - 1;
    if per_worker < settings.batch_size {
        warn!(
            max_locks_per_transaction = table.max_locks_per_transaction,
            max_connections = table.max_connections,
            max_prepared_transactions = table.max_prepared_transactions,
            workers = settings.workers,
            batch_size = settings.batch_size,
            jobs_per_claim = per_worker.max(1),
            "the server's lock table (max_locks_per_transaction x (max_connections + \
             max_prepared_transactions) locks) is small for this runner: each worker claims at \
             most jobs_per_claim jobs at once, so that the runner holds at most a quarter of it; \
             raise max_locks_per_transaction on the server for larger batches"
        );
    }
    per_worker.max(1)
}

/// Ends a lost (or failing) session: its locks are released by the server,
/// and the unstarted jobs with them. The completions not yet committed are
/// deleted on another connection first if possible (those jobs ran), so
/// that a session still alive keeps their locks until then.
fn lose<C>(
    shared: &Shared<C>,
    slot: &Slot,
    guard: &mut Option<LockSession>,
    error: SessionError,
) -> BatchError {
    record_completions_elsewhere(shared, slot);
    *guard = None;
    let (unstarted, failures) = {
        let mut batch = lock(&slot.batch);
        let failures = std::mem::take(&mut batch.unwritten.failures);
        batch.unwritten.written();
        // The session's slots went with it.
        batch.holds_slots = false;
        (batch.pending.drain(..).count(), failures)
    };
    if !failures.is_empty() {
        let ids: Vec<i64> = failures.iter().map(|f| f.id).collect();
        warn!(?ids, "the failures of these jobs were never recorded; they run again without an attempt counted");
    }
    BatchError::Lost { error, unstarted }
}

/// Deletes the completed jobs of a lost session on a connection from the
/// pool: they ran, and other workers can claim them now.
pub(crate) fn record_completions_elsewhere<C>(shared: &Shared<C>, slot: &Slot) {
    let completed = {
        let mut batch = lock(&slot.batch);
        let mut completed = batch.take_completed();
        completed.append(&mut batch.unwritten.completions);
        completed
    };
    if completed.is_empty() {
        return;
    }
    // A session of its own rather than the pool's: its statements have a
    // deadline, and after a silent network the pool's connections may be
    // as dead as the lost one.
    let name = format!("skiplock recorder pid {}", std::process::id());
    let deleted = Session::connect(&shared.database_url, &name, shared.settings.patience)
        .and_then(|mut session| storage::complete_elsewhere(&mut session, &completed))
        .map_err(|e| e.to_string());
    match deleted {
        Ok(_) => debug!(
            jobs = completed.len(),
            "recorded the completions on another connection"
        ),
        Err(e) => warn!(jobs = completed.len(), error = %e,
            "could not record completions after losing the lock session; those jobs will run again"),
    }
}

/// The slot's session, which a batch under way needs: when it is gone (the
/// watchdog or an earlier step found it lost), what it held is accounted
/// for and the batch ends.
fn open_or_lost<'g, C>(
    shared: &Shared<C>,
    slot: &Slot,
    guard: &'g mut Option<LockSession>,
) -> Result<&'g mut LockSession, BatchError> {
    if guard.is_none() {
        return Err(lose(
            shared,
            slot,
            guard,
            SessionError::new("the session was lost"),
        ));
    }
    Ok(guard.as_mut().expect("checked"))
}

/// Takes the next job of the batch, if it may start: the runner is not
/// stopping (once something ran), and the session holding its lock is
/// alive. A careful job's row is marked before it starts.
fn start_next<C>(
    shared: &Shared<C>,
    slot: &Slot,
    started: usize,
) -> Result<Option<(ClaimedJob, bool)>, BatchError> {
    // Holding the session while choosing: the watchdog cannot release the
    // batch in between.
    let mut guard = lock(&slot.session);
    loop {
        let job = {
            let batch = lock(&slot.batch);
            if started > 0 && shared.signals.is_stopped() {
                return Ok(None);
            }
            // Paused meanwhile: the rest of the batch goes back unstarted.
            if shared
                .signals
                .queue(&slot.queue)
                .is_some_and(|w| w.is_paused())
            {
                return Ok(None);
            }
            if batch.pending.is_empty() {
                return Ok(None);
            }
            drop(batch);
            let lost = match guard.as_mut() {
                None => true,
                Some(lock_session) => !is_heard(shared, &mut lock_session.session),
            };
            let mut batch = lock(&slot.batch);
            if batch.pending.is_empty() {
                return Ok(None);
            }
            if lost {
                drop(batch);
                let error = SessionError::new("the server ended the session");
                return Err(lose(shared, slot, &mut guard, error));
            }
            batch.pending.pop_front().expect("not empty")
        };
        if let (Some(by), Some((within, counted))) = (job.start_by, &job.rated) {
            if Instant::now() > by {
                // Too late for its rate limit's window (its start was
                // counted at the claim): counted again now if there is room,
                // else back unstarted, its attempts untouched.
                let session = &mut guard.as_mut().expect("checked above").session;
                let mut again = false;
                let mut counted = counted.clone();
                for _ in 0..3 {
                    let sent = Instant::now();
                    match storage::recount_rated_start(session, job.id, &counted) {
                        Ok(Some(_)) if sent.elapsed() <= *within => {
                            again = true;
                            break;
                        }
                        // Counted again, and late again: once more.
                        Ok(Some(at)) => counted = at,
                        Ok(None) => break,
                        Err(error) => return Err(lose(shared, slot, &mut guard, error)),
                    }
                }
                if !again {
                    debug!(
                        id = job.id,
                        "a rate-limited job missed its start; given back"
                    );
                    if let Err(error) = storage::unlock_jobs(session, &[job.id]) {
                        return Err(lose(shared, slot, &mut guard, error));
                    }
                    continue;
                }
            }
        }
        let careful = job.suspect || job.attempts > 0;
        if careful {
            let session = &mut guard.as_mut().expect("checked above").session;
            match storage::mark_running(session, job.id, &shared.worker_name) {
                Ok(true) => {}
                Ok(false) => {
                    // Gone meanwhile (deleted by hand): nothing to run.
                    if let Err(error) = storage::unlock_jobs(session, &[job.id]) {
                        return Err(lose(shared, slot, &mut guard, error));
                    }
                    continue;
                }
                Err(error) => return Err(lose(shared, slot, &mut guard, error)),
            }
        }
        lock(&slot.batch).running = Some(RunningJob {
            id: job.id,
            since: Instant::now(),
        });
        return Ok(Some((job, careful)));
    }
}

/// Whether the session is alive, as far as a job may start on it: nothing
/// says it ended, and the server answered within the silence limit (when
/// it has been quiet for half of it, one round trip asks). A session found
/// lost is marked so.
fn is_heard<C>(shared: &Shared<C>, session: &mut Session) -> bool {
    if session.is_lost() {
        return false;
    }
    if session.silent_for() >= shared.settings.patience.silence / 2 {
        if let Err(error) = session.ping() {
            warn!(%error, "the database server did not answer in time; starting nothing more on this session");
            return false;
        }
    }
    true
}

/// Records a success. A careful job's completion commits at once (its row
/// names its runner until then); the others join the pending completions,
/// which commit when due.
fn complete<C>(
    shared: &Shared<C>,
    slot: &Slot,
    job: &ClaimedJob,
    queue: &str,
    careful: bool,
    completion: Completion,
    took: Duration,
) -> Result<(), BatchError> {
    let mut guard = lock(&slot.session);
    let commit_now = {
        let mut batch = lock(&slot.batch);
        batch.running = None;
        batch.observe_run(took);
        if matches!(completion, Completion::Pending) {
            batch.completed.push(job.id);
            batch.completed_since.get_or_insert_with(Instant::now);
        }
        careful || batch.completions_due(flush_after(shared))
    };
    shared
        .metrics
        .record(queue, &job.job_type, Ended::Completed, took);
    let lock_session = open_or_lost(shared, slot, &mut guard)?;
    let result = match completion {
        Completion::Pending => Ok(()),
        // Its row is gone: only its lock is left to release.
        Completion::Committed | Completion::Elsewhere => {
            storage::unlock_jobs(&mut lock_session.session, &[job.id])
        }
    }
    .and_then(|()| {
        if commit_now {
            commit_completions(shared, slot, lock_session, false)?;
        }
        retry_unwritten(shared, slot, lock_session)
    });
    result.map_err(|error| lose(shared, slot, &mut guard, error))
}

/// When the worker (or the watchdog) commits the pending completions: the
/// oldest has waited three quarters of the window, so that it commits
/// within the window even when a job is running.
pub(crate) fn flush_after<C>(shared: &Shared<C>) -> Duration {
    shared.settings.completion_window * 3 / 4
}

/// Deletes the completed jobs and releases their locks; when the batch is
/// over (nothing else held), releases everything the session holds. What
/// the database refuses to delete stays locked, to be tried again.
pub(crate) fn commit_completions<C>(
    shared: &Shared<C>,
    slot: &Slot,
    lock_session: &mut LockSession,
    batch_over: bool,
) -> Result<(), SessionError> {
    let (completed, release_all) = {
        let mut batch = lock(&slot.batch);
        let release_all = batch_over && batch.unwritten.is_empty();
        let slots = release_all && std::mem::take(&mut batch.holds_slots);
        let completed = batch.take_completed();
        if completed.is_empty() && !slots {
            return Ok(());
        }
        (completed, release_all)
    };
    let release = if release_all {
        Release::All {
            holder: lock_session.holder,
            exclusive: lock_session.exclusive.as_deref().unwrap_or(""),
        }
    } else {
        Release::These(&completed)
    };
    let done = storage::complete_jobs(
        &mut lock_session.session,
        &completed,
        release,
        shared.settings.synchronous_commit,
    );
    match done {
        Ok(None) => Ok(()),
        Ok(Some(refused)) => {
            keep_unwritten_completions(slot, refused.ids, &refused.error);
            Ok(())
        }
        Err(error) => {
            // Kept for the caller's `lose`, which records them elsewhere.
            lock(&slot.batch).completed.extend(completed);
            Err(error)
        }
    }
}

/// Keeps completed jobs whose deletion the database refused: their locks
/// stay held (none runs again), and the deletion is tried again.
fn keep_unwritten_completions(slot: &Slot, ids: Vec<i64>, error: &SessionError) {
    warn!(?ids, %error,
        "the database refused to record these jobs' completion; they stay locked and it is tried again");
    let mut batch = lock(&slot.batch);
    batch.unwritten.completions.extend(ids);
    batch.unwritten.refused();
}

/// Tries again, when due, to record the outcomes the database refused
/// (see [`crate::state::Unwritten`]). `Err`: the session is lost.
pub(crate) fn retry_unwritten<C>(
    shared: &Shared<C>,
    slot: &Slot,
    lock_session: &mut LockSession,
) -> Result<(), SessionError> {
    let (completions, failures) = {
        let mut batch = lock(&slot.batch);
        if !batch.unwritten.due() {
            return Ok(());
        }
        (
            std::mem::take(&mut batch.unwritten.completions),
            std::mem::take(&mut batch.unwritten.failures),
        )
    };
    let synchronous = shared.settings.synchronous_commit;
    let session = &mut lock_session.session;
    let mut kept = (Vec::new(), Vec::new());
    let mut refusal = None;
    let mut outcome = Ok(());
    if !completions.is_empty() {
        let release = Release::These(&completions);
        match storage::complete_jobs(session, &completions, release, synchronous) {
            Ok(None) => {}
            Ok(Some(refused)) => {
                kept.0 = refused.ids;
                refusal = Some(refused.error);
            }
            Err(error) => {
                kept.0 = completions.clone();
                outcome = Err(error);
            }
        }
    }
    for failure in failures {
        if outcome.is_err() {
            kept.1.push(failure);
            continue;
        }
        match storage::record_failure(
            session,
            failure.id,
            &failure.error,
            failure.next,
            synchronous,
        ) {
            Ok(None) => {}
            Ok(Some(error)) => {
                refusal.get_or_insert(error);
                kept.1.push(failure);
            }
            Err(error) => {
                outcome = Err(error);
                kept.1.push(failure);
            }
        }
    }
    let mut batch = lock(&slot.batch);
    let unwritten = &mut batch.unwritten;
    unwritten.completions.extend(kept.0);
    unwritten.failures.extend(kept.1);
    match refusal {
        Some(error) if outcome.is_ok() => {
            unwritten.refused();
            warn!(%error, refusals = unwritten.refusals,
                completions = unwritten.completions.len(), failures = unwritten.failures.len(),
                "the database still refuses to record these outcomes; their jobs stay locked");
        }
        _ if outcome.is_ok() && unwritten.is_empty() => {
            info!(
                refusals = unwritten.refusals,
                "recorded the outcomes the database had refused"
            );
            unwritten.written();
        }
        _ => {}
    }
    outcome
}

/// Gives the unstarted jobs back (on error they stay in the batch, for
/// the worker to account for when it closes the session).
pub(crate) fn release_pending(
    slot: &Slot,
    lock_session: &mut LockSession,
) -> Result<usize, SessionError> {
    let ids: Vec<i64> = lock(&slot.batch).pending.iter().map(|job| job.id).collect();
    if ids.is_empty() {
        return Ok(0);
    }
    storage::release_jobs(&mut lock_session.session, &ids, lock_session.holder)?;
    lock(&slot.batch).pending.clear();
    Ok(ids.len())
}

/// Commits what is left of the batch: completions, and unstarted jobs
/// released (when the runner stops, or the watchdog has not already).
fn end_batch<C>(shared: &Shared<C>, slot: &Slot) -> Result<(), BatchError> {
    let mut guard = lock(&slot.session);
    {
        let batch = lock(&slot.batch);
        if batch.completed.is_empty()
            && batch.pending.is_empty()
            && !batch.unwritten.due()
            && !batch.holds_slots
        {
            return Ok(());
        }
    }
    let lock_session = open_or_lost(shared, slot, &mut guard)?;
    // Unstarted jobs first: then the completions are all the session holds.
    let result = retry_unwritten(shared, slot, lock_session)
        .and_then(|()| release_pending(slot, lock_session))
        .and_then(|released| {
            commit_completions(shared, slot, lock_session, true).map(|()| released)
        });
    match result {
        Ok(released) => {
            if released > 0 {
                if let Some(wakeup) = shared.signals.queue(&slot.queue) {
                    wakeup.wake_all();
                }
            }
            Ok(())
        }
        Err(error) => Err(lose(shared, slot, &mut guard, error)),
    }
}

/// Runs one claimed job; `Err` is the job's failure, not the runner's.
fn execute<C: Any + Send + Sync>(
    shared: &Shared<C>,
    descriptor: Option<&'static JobDescriptor>,
    job: &ClaimedJob,
) -> Result<Completion, RunFailure> {
    let descriptor = descriptor.ok_or(RunFailure::UnknownType)?;
    let part = shared
        .parts
        .get(&descriptor.context_type())
        .and_then(|get| get(&shared.context));
    let Some(context) = part else {
        return Err(RunFailure::ContextMismatch {
            expected: descriptor.context_name(),
            actual: std::any::type_name::<C>(),
        });
    };
    match descriptor.connection {
        ConnectionMode::JobTransaction => {
            // A transaction of the job's own that deletes the job's row when
            // it commits: the job's writes and its completion are one.
            let mut conn = connection::checked_get(&shared.pool).map_err(|e| {
                RunFailure::Job(PerformError::new(format!(
                    "no database connection for the job's transaction: {e}"
                )))
            })?;
            let result = conn.transaction(|conn| {
                if !shared.settings.synchronous_commit {
                    storage::relax_commit_durability(conn)?;
                }
                catch_panic(|| {
                    descriptor.run(
                        context,
                        &job.payload,
                        &mut JobConnection::in_transaction(conn),
                    )
                })
                .map_err(TransactionExit::Job)?;
                if storage::delete_job(conn, job.id)? == 1 {
                    Ok(Completion::Committed)
                } else {
                    Err(TransactionExit::Gone)
                }
            });
            match result {
                Ok(completion) => Ok(completion),
                Err(TransactionExit::Job(failure)) => Err(failure),
                Err(TransactionExit::Gone) => Ok(Completion::Elsewhere),
                Err(TransactionExit::Database(e)) => Err(RunFailure::Job(PerformError::new(
                    format!("the job's writes could not be committed: {e}"),
                ))),
            }
        }
        _ => catch_panic(|| {
            let conn = JobConnection::from_pool(&shared.pool);
            #[cfg(feature = "tokio")]
            let conn = conn.with_runtime(shared.runtime.as_ref());
            descriptor.run(context, &job.payload, &mut { conn })
        })
        .map(|()| Completion::Pending),
    }
}

/// How the transaction around a `JobTransaction` job ended without commit.
#[derive(Debug)]
enum TransactionExit {
    Job(RunFailure),
    /// The job's row was gone: rolled back, someone else completed it.
    Gone,
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for TransactionExit {
    fn from(e: diesel::result::Error) -> Self {
        TransactionExit::Database(e)
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

/// The longest error text stored for a failure.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// The error text to store: whole up to a bound, without NUL bytes (which
/// PostgreSQL text cannot hold).
fn storable(error: &str) -> String {
    let mut text = error.replace('\0', "\u{FFFD}");
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("… (truncated)");
    }
    text
}

/// Records a failed attempt: the next attempt after a backoff, or dead. The
/// job's lock is released with it.
fn fail<C>(
    shared: &Shared<C>,
    slot: &Slot,
    job: &ClaimedJob,
    queue: &str,
    failure: &RunFailure,
    took: Duration,
) -> Result<Outcome, BatchError> {
    let descriptor = shared.registry.get(&job.job_type);
    let policy = descriptor.map_or(RetryPolicy::DEFAULT, |d| d.retry_policy);
    let failed_attempts = u32::try_from(job.attempts).unwrap_or(0).saturating_add(1);
    let error = storable(&failure.describe(&job.job_type, queue));
    let dead = failure.is_permanent() || policy.is_exhausted(failed_attempts);
    let next = if dead {
        NextAttempt::Never
    } else {
        NextAttempt::After(policy.backoff(failed_attempts, job.id as u64))
    };
    let mut guard = lock(&slot.session);
    {
        let mut batch = lock(&slot.batch);
        if batch.running.is_some_and(|r| r.id == job.id) {
            batch.running = None;
            batch.observe_run(took);
        }
    }
    let LockSession { session, .. } = open_or_lost(shared, slot, &mut guard)?;
    let recorded = storage::record_failure(
        session,
        job.id,
        &error,
        next,
        shared.settings.synchronous_commit,
    );
    match recorded {
        Ok(None) => {}
        Ok(Some(refusal)) => {
            warn!(error = %refusal,
                "the database refused to record this job's failure; it stays locked and it is tried again");
            let mut batch = lock(&slot.batch);
            batch.unwritten.failures.push(UnwrittenFailure {
                id: job.id,
                error: error.clone(),
                next,
            });
            batch.unwritten.refused();
        }
        Err(e) => return Err(lose(shared, slot, &mut guard, e)),
    }
    drop(guard);
    match next {
        NextAttempt::Never => {
            error!(%error, failed_attempts, "job failed and is now dead; an operator must retry or discard it");
        }
        NextAttempt::After(retry_in) => {
            warn!(%error, failed_attempts, retry_in_ms = retry_in.as_millis() as u64, "job failed; retry scheduled");
        }
    }
    shared.metrics.record(
        queue,
        &job.job_type,
        if dead { Ended::Dead } else { Ended::Retried },
        took,
    );
    Ok(Outcome::Failed { error, dead })
}

/// How often an idle worker claims a queue whose keyed jobs wait for a
/// slot: a slot another worker (of any runner) lets go of is taken within
/// this long. A claim that finds every key full costs a few index lookups
/// per key held.
const KEYED_POLL: Duration = Duration::from_millis(100);

/// The loop of one worker thread: claim and run batches while there are
/// jobs; when there are none, sleep until the wake-up thread (a new job, a
/// due job, the poll fallback) or a stop wakes it.
pub(crate) fn work<C: Any + Send + Sync>(shared: Arc<Shared<C>>, slot: Arc<Slot>, queue: String) {
    let wakeup = shared
        .signals
        .queue(&queue)
        .expect("a worker's queue has a wake-up");
    // Only a safety net: the wake-up thread wakes idle workers.
    let idle_timeout = shared.settings.poll_interval.saturating_mul(10);
    let mut trouble = Trouble::default();
    while !shared.signals.is_stopped() {
        let seen = wakeup.generation();
        if wakeup.is_paused() {
            // The last batch's completions, then nothing until resumed.
            if let Err(error) = end_batch(&shared, &slot) {
                warn!(queue, %error, "while pausing");
            }
            shared.signals.wait(wakeup, seen, idle_timeout);
            continue;
        }
        match run_batch(&shared, &slot, &queue, None, &[], true, false, |_, _, _| {}) {
            Ok(batch) => {
                trouble.over(&queue);
                if batch.standby {
                    // Another runner has the queue: ask again at each poll.
                    shared
                        .signals
                        .wait(wakeup, seen, shared.settings.poll_interval);
                } else if batch.claimed == 0 && batch.cut {
                    // The keys' turn goes on at once.
                } else if batch.claimed == 0 {
                    // Not past the next try of a refused write, nor, after
                    // a claim that resumed, the next sweep, nor, while the
                    // queue holds keyed jobs, the moment another worker
                    // may have let go of a key's slot.
                    let retry = lock(&slot.batch).unwritten.wait();
                    let mut timeout = retry.map_or(idle_timeout, |r| r.min(idle_timeout));
                    if batch.resumed {
                        let due = shared
                            .positions
                            .get(&queue)
                            .and_then(|p| lock(p).sweep_due_in(Instant::now()));
                        timeout = due.map_or(timeout, |due| due.min(timeout));
                    }
                    if batch.keyed {
                        // A rate window's room is taken the moment it comes.
                        let opens = batch.opens_in.unwrap_or(KEYED_POLL);
                        timeout = timeout.min(KEYED_POLL).min(opens);
                    }
                    shared.signals.wait(wakeup, seen, timeout);
                } else if batch.full {
                    // More may be waiting: share them with a sibling.
                    wakeup.wake_one();
                }
            }
            Err(error) => {
                let retry_in = trouble.seen(&queue, &error);
                shared.signals.wait(wakeup, seen, retry_in);
            }
        }
    }
    // The last batch's completions, if it left them for a next claim, and
    // one more try of the writes the database refused.
    if let Some(retry_at) = lock(&slot.batch).unwritten.retry_at.as_mut() {
        *retry_at = Instant::now();
    }
    if let Err(error) = end_batch(&shared, &slot) {
        warn!(queue, %error, "while stopping");
    }
    let unwritten = {
        let batch = lock(&slot.batch);
        batch.unwritten.completions.len() + batch.unwritten.failures.len()
    };
    if unwritten > 0 {
        warn!(
            queue,
            jobs = unwritten,
            "stopping with outcomes the database refused to record: those jobs run again"
        );
    }
    // Holds no lock any more: say so (or a reaper will), and close it.
    if let Some(LockSession {
        mut session,
        holder,
        ..
    }) = lock(&slot.session).take()
    {
        let _ = storage::retire_lock_session(&mut session, holder);
    }
}

/// A worker's run of database errors: logged when it starts or changes
/// cause, not at every retry, with reconnections backing off from 50 ms to
/// 500 ms (so a database that is back is used again within half a second).
#[derive(Debug, Default)]
struct Trouble {
    last: Option<String>,
    retries: u32,
}

impl Trouble {
    fn seen(&mut self, queue: &str, error: &BatchError) -> Duration {
        let cause = match error {
            BatchError::Connect(e) => format!("connect: {e}"),
            // Every loss is an event of its own.
            BatchError::Lost { .. } => {
                warn!(queue, %error, "reconnecting");
                String::from("lost")
            }
        };
        if matches!(error, BatchError::Connect(_)) && self.last.as_deref() != Some(&cause) {
            error!(queue, %error, "retrying until the database answers (logged once)");
        }
        self.last = Some(cause);
        self.retries = self.retries.saturating_add(1);
        let doublings = self.retries.saturating_sub(1).min(4);
        Duration::from_millis(50 << doublings).min(Duration::from_millis(500))
    }

    fn over(&mut self, queue: &str) {
        if self.last.take().is_some() && self.retries > 1 {
            info!(queue, retries = self.retries, "database session open again");
        }
        self.retries = 0;
    }
}
