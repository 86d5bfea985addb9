//! Releasing the batch of a slow job, so it holds no ready job hostage.
//!
//! A worker claims a batch of jobs in one transaction and runs them one
//! after the other; their row locks last until that transaction commits.
//! When one job runs long, the jobs behind it would wait as long. The
//! watchdog notices (`slow_job_threshold`) and, for a job that runs on its
//! own pooled connection (so the lock connection is idle meanwhile):
//!
//! 1. opens a transaction on a fresh connection and asks for the slow job's
//!    row lock there: this waits in PostgreSQL's lock queue behind the
//!    worker's transaction;
//! 2. once that request is queued (`pg_blocking_pids`), commits the worker's
//!    transaction: the completed jobs are deleted, the unstarted ones are
//!    free for other workers, and the slow job's lock passes straight to
//!    the waiting request (a waiter holds the tuple lock, so no other
//!    worker's `SKIP LOCKED` claim can take the row in between);
//! 3. gives the fresh connection, now holding the slow job's lock in an
//!    open transaction, to the worker, which completes the job there.
//!
//! The row is locked at every moment, so a worker that dies still releases
//! it at once. While a move is under way the worker cannot start its next
//! job (it takes the connection's lock to pick one), so a move never
//! releases a job that has just started. Jobs on the lock transaction (`ConnectionMode::JobTransaction`)
//! are never moved: keep them short.

use std::any::Any;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::PgConnection;
use tracing::{info, warn};

use crate::storage;
use crate::worker::{lock, PooledConn, Shared, Slot};

/// The watchdog thread: checks every worker's running job.
pub(crate) fn watch<C: Any + Send + Sync>(shared: Arc<Shared<C>>, slots: Vec<Arc<Slot>>) {
    let tick =
        (shared.slow_job_threshold / 4).clamp(Duration::from_millis(5), Duration::from_millis(50));
    while !shared.signals.is_stopped() {
        thread::sleep(tick);
        for slot in &slots {
            release_if_slow(&shared, slot);
        }
    }
}

fn release_if_slow<C>(shared: &Shared<C>, slot: &Slot) {
    let job = {
        let batch = lock(&slot.batch);
        match batch.running {
            Some(running)
                if running.movable
                    && !batch.pending.is_empty()
                    && running.since.elapsed() >= shared.slow_job_threshold =>
            {
                running.id
            }
            _ => return,
        }
    };
    // The worker holds its connection only between jobs: come back later.
    let Ok(mut guard) = slot.conn.try_lock() else {
        return;
    };
    // Now that no job can start, check again: the slow job may have ended
    // (then there is nothing to move, and moving would release whatever
    // the worker runs next).
    {
        let batch = lock(&slot.batch);
        if batch.running.map(|r| r.id) != Some(job) || batch.pending.is_empty() {
            return;
        }
    }
    let Some(old) = guard.as_mut() else { return };
    match hand_over(shared, old, slot, job) {
        Ok(Some(fresh)) => {
            // The old connection, its transaction committed, goes back to the pool.
            *guard = Some(fresh);
            drop(guard);
            // Idle workers of the queue take the released jobs now.
            if let Some(wakeup) = shared.signals.queue(&slot.queue) {
                wakeup.wake_all();
            }
        }
        Ok(None) => {}
        Err(error) => warn!(job, %error, "could not release the batch of a slow job"),
    }
}

fn hand_over<C>(
    shared: &Shared<C>,
    old: &mut PgConnection,
    slot: &Slot,
    job: i64,
) -> Result<Option<PooledConn>, Box<dyn std::error::Error + Send + Sync>> {
    let mut fresh = shared.pool.get()?;
    let fresh_pid = storage::backend_pid(&mut fresh)?;
    let old_pid = storage::backend_pid(old)?;
    let synchronous_commit = shared.synchronous_commit;
    let waiter = thread::spawn(move || -> diesel::QueryResult<PooledConn> {
        AnsiTransactionManager::begin_transaction(&mut *fresh)?;
        if !synchronous_commit {
            storage::relax_commit_durability(&mut fresh)?;
        }
        storage::lock_job_waiting(&mut fresh, job)?;
        Ok(fresh)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !storage::is_blocked_by(old, fresh_pid, old_pid)? {
        if waiter.is_finished() || Instant::now() > deadline {
            // Nothing is released: the worker goes on as if nothing happened.
            // (A waiter still queued gets the lock at the worker's commit and
            // lets it go when its connection is dropped.)
            return Err("the fresh connection did not queue for the job's lock".into());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let (released, completed) = {
        let mut batch = lock(&slot.batch);
        (
            batch.pending.drain(..).count(),
            std::mem::take(&mut batch.completed),
        )
    };
    if let Err(error) = storage::delete_jobs(old, &completed)
        .and_then(|_| AnsiTransactionManager::commit_transaction(old))
    {
        // Rolled back instead: the completed jobs will run again (at least
        // once), the others are released all the same.
        warn!(%error, "could not commit the completed part of a slow job's batch");
        let _ = AnsiTransactionManager::rollback_transaction(old);
    }
    let fresh = waiter.join().map_err(|_| "the lock waiter panicked")??;
    info!(
        job,
        released,
        completed = completed.len(),
        "a slow job's batch was released to other workers"
    );
    Ok(Some(fresh))
}
