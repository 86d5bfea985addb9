//! The watchdog: what a worker cannot do while its job runs.
//!
//! A worker records outcomes between jobs. While one of its jobs runs, the
//! watchdog takes the worker's lock session (free meanwhile: no job runs on
//! it) to:
//!
//! - commit the pending completions once the oldest has waited three
//!   quarters of the completion window, so that a long job does not keep
//!   the completions before it from becoming durable (and a crash from
//!   re-running them);
//! - release the unstarted rest of the batch once the job has run for
//!   `slow_job_threshold`, so a slow job holds no ready job hostage. Only
//!   their locks are given back: the running job keeps its own, on the same
//!   session, so nothing is ever unlocked while it runs.
//!
//! And when the session is found lost while a job runs, it records the
//! completions on another connection at once: their locks are gone, and
//! another worker could otherwise run them again before the job ends.
//!
//! A statement that fails leaves the session marked lost; the worker, at
//! its next step, closes it and accounts for what it held.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use crate::state::{lock, Shared, Slot};
use crate::worker::{
    commit_completions, flush_after, record_completions_elsewhere, release_pending, retry_unwritten,
};

/// A watchdog thread: looks at one worker's running job.
pub(crate) fn watch<C: Any + Send + Sync>(shared: Arc<Shared<C>>, slot: Arc<Slot>) {
    let settings = &shared.settings;
    let tick = (settings.completion_window / 8)
        .min(settings.slow_job_threshold / 4)
        .clamp(Duration::from_millis(1), Duration::from_millis(25));
    while !shared.signals.is_stopped() {
        shared.signals.sleep(tick);
        tend(&shared, &slot);
    }
}

fn tend<C>(shared: &Shared<C>, slot: &Slot) {
    // The worker holds its session between jobs: then it does this itself.
    let Ok(mut guard) = slot.session.try_lock() else {
        return;
    };
    let (flush, release) = {
        let batch = lock(&slot.batch);
        let Some(running) = batch.running else {
            return;
        };
        if batch.completed.is_empty() && batch.pending.is_empty() && !batch.unwritten.due() {
            return;
        }
        (
            batch.completions_due(flush_after(shared)),
            !batch.pending.is_empty()
                && running.since.elapsed() >= shared.settings.slow_job_threshold,
        )
    };
    let Some(lock_session) = guard.as_mut() else {
        return;
    };
    if lock_session.session.is_lost() {
        // Its locks are gone: other workers may claim the completed jobs
        // now, so record them at once rather than when the job ends.
        record_completions_elsewhere(shared, slot);
        return;
    }
    if let Err(error) = retry_unwritten(shared, slot, lock_session) {
        debug!(%error, "could not record refused outcomes during a job; the worker will reconnect");
        return;
    }
    if flush {
        if let Err(error) = commit_completions(shared, slot, lock_session, false) {
            debug!(%error, "could not commit completions during a job; the worker will reconnect");
            return;
        }
    }
    if release {
        match release_pending(slot, lock_session) {
            Ok(released) => {
                info!(released, "a slow job's batch was released to other workers");
                // Idle workers of the queue take the released jobs now.
                if let Some(wakeup) = shared.signals.queue(&slot.queue) {
                    wakeup.wake_all();
                }
            }
            Err(error) => {
                debug!(%error, "could not release a slow job's batch; the worker will reconnect");
            }
        }
    }
}
