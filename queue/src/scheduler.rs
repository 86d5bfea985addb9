//! The runner's wake-up thread: listens for new jobs, promotes scheduled
//! jobs when they fall due, and is the poll fallback.
//!
//! Idle workers never query the database on their own. This one thread
//! wakes them: at once on a `NOTIFY` from an enqueue (or a promotion); and,
//! every poll interval, after one cheap check for ready jobs on the
//! runner's queues, so a lost notification, a listener that is down, or a
//! job inserted without a notification waits at most one poll interval.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::connection;
use crate::listener::Listener;
use crate::state::{lock, Shared, Slot};
use crate::storage;

/// The longest the thread waits between looks at the workers (and at the
/// stop flag, when it has no bell to ring; see [`crate::shutdown::Signals`]).
const STOP_CHECK: Duration = Duration::from_millis(50);

/// How many scheduled jobs one promotion statement makes ready.
const PROMOTION_BATCH: i64 = 1_000;

pub(crate) fn run<C: Any + Send + Sync>(shared: Arc<Shared<C>>, slots: Vec<Arc<Slot>>) {
    let queues: Vec<String> = shared.signals.queue_names().map(str::to_owned).collect();
    let poll_interval = shared.settings.poll_interval;
    let mut listener: Option<Listener> = None;
    let mut next_connect = Instant::now();
    let mut next_check = Instant::now();
    // Failures are logged when they start (and recoveries when they end),
    // not at every retry.
    let mut listen_failing = false;
    let mut check_failing = false;
    // How many running jobs the last announcement listed.
    let mut announced_running = 0;
    while !shared.signals.is_stopped() {
        if let (None, Some(url)) = (&listener, &shared.listener_url) {
            if Instant::now() >= next_connect {
                match Listener::connect(url, shared.settings.patience) {
                    Ok(connected) => {
                        info!("listening for new jobs");
                        listen_failing = false;
                        listener = Some(connected);
                        // Jobs may have arrived while nobody listened.
                        shared.signals.wake_all_queues();
                    }
                    Err(error) => {
                        if !std::mem::replace(&mut listen_failing, true) {
                            warn!(%error, retry_in_ms = poll_interval.as_millis() as u64,
                                "cannot listen for new jobs; polling meanwhile, and retrying \
                                 every poll interval (logged once)");
                        }
                        next_connect = Instant::now() + poll_interval;
                    }
                }
            }
        }
        // When more workers run a job than the last announcement listed
        // (the runner started, or took on load), it announces at once, not
        // a poll interval later: `skiplock status` and the dashboard count
        // those jobs as running, not ready. A worker that goes from one job
        // to the next changes no count and waits for the poll interval. The
        // count announced drops only at a check, so this adds at most one
        // check per check the poll interval makes.
        if !check_failing {
            let busy = slots
                .iter()
                .filter(|slot| lock(&slot.batch).running.is_some())
                .count();
            if busy > announced_running {
                next_check = Instant::now();
            }
        }
        if Instant::now() >= next_check {
            next_check = Instant::now()
                + check(
                    &shared,
                    &queues,
                    &slots,
                    &mut check_failing,
                    &mut announced_running,
                )
                .min(poll_interval);
        }
        let wait = next_check
            .saturating_duration_since(Instant::now())
            .min(STOP_CHECK);
        match &mut listener {
            Some(connected) => match connected.wait(wait, shared.signals.bell()) {
                Ok(queues_with_jobs) => {
                    for queue in queues_with_jobs {
                        if queue == storage::PAUSES_CHANGED {
                            // Paused or resumed somewhere: look now.
                            next_check = Instant::now();
                        } else if let Some(wakeup) = shared.signals.queue(&queue) {
                            wakeup.wake_one();
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, "lost the listener connection; reconnecting");
                    listener = None;
                    next_connect = Instant::now();
                }
            },
            None => shared.signals.sleep(wait),
        }
    }
    if let Ok(mut conn) = connection::checked_get(&shared.pool) {
        let _ = storage::retire_runner(&mut conn, &shared.runner_id);
    }
}

/// Marks `suspect` the jobs of lock sessions that ended holding them.
pub(crate) fn reap(conn: &mut diesel::PgConnection) -> diesel::QueryResult<()> {
    let marked = storage::reap_ended_sessions(conn)?;
    if marked > 0 {
        info!(
            marked,
            "jobs held by a worker that is gone (dead, or without its session) will run carefully"
        );
    }
    Ok(())
}

/// Adds the jobs ended since the last report to the throughput table (the
/// dashboard's chart); kept for the next report when that fails.
fn report_throughput<C>(
    shared: &Shared<C>,
    conn: &mut diesel::PgConnection,
) -> diesel::QueryResult<()> {
    let unreported = shared.metrics.take_unreported();
    if unreported.0.is_empty() {
        return Ok(());
    }
    let queues: Vec<&str> = unreported.0.iter().map(String::as_str).collect();
    let stored = storage::record_throughput(conn, &queues, &unreported.1, &unreported.2);
    if stored.is_err() {
        shared.metrics.restore_unreported(unreported);
    }
    stored
}

/// This machine's name, for the runner's announcement.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Promotes due jobs, wakes queues that have ready jobs, and returns how
/// long until the next scheduled job falls due.
fn check<C>(
    shared: &Shared<C>,
    queues: &[String],
    slots: &[Arc<Slot>],
    failing: &mut bool,
    announced_running: &mut usize,
) -> Duration {
    let result = (|| -> Result<Duration, Box<dyn std::error::Error>> {
        let mut conn = connection::checked_get(&shared.pool)?;
        let conn = &mut *conn;
        let patience = shared.settings.patience;
        let running: Vec<i64> = slots
            .iter()
            .filter_map(|slot| lock(&slot.batch).running.map(|job| job.id))
            .collect();
        let schedules: Vec<&str> = shared.schedules.iter().map(|s| s.name.as_str()).collect();
        let exclusive: Vec<&str> = queues
            .iter()
            .map(String::as_str)
            .filter(|q| shared.signals.queue(q).is_some_and(|w| w.exclusive))
            .collect();
        let standby: Vec<&str> = exclusive
            .iter()
            .copied()
            .filter(|q| shared.signals.queue(q).is_some_and(|w| w.is_standby()))
            .collect();
        let announcement = storage::Announcement {
            id: &shared.runner_id,
            hostname: &hostname(),
            queues,
            running: &running,
            poll_interval: shared.settings.poll_interval,
            job_types: shared.registry.type_names(),
            schedules: &schedules,
            exclusive: &exclusive,
            standby: &standby,
        };
        connection::as_runner(conn, patience, |c| {
            storage::announce_runner(c, &announcement)
        })?;
        *announced_running = running.len();
        connection::as_runner(conn, patience, reap)?;
        connection::as_runner(conn, patience, |c| report_throughput(shared, c))?;
        let paused = connection::as_runner(conn, patience, storage::paused_queues)?;
        for queue in queues {
            if let Some(wakeup) = shared.signals.queue(queue) {
                wakeup.set_paused(paused.iter().any(|(q, _)| q == queue));
            }
        }
        let promote = |c: &mut diesel::PgConnection| storage::promote_due_jobs(c, PROMOTION_BATCH);
        while connection::as_runner(conn, patience, promote)? == PROMOTION_BATCH as usize {}
        let ready = connection::as_runner(conn, patience, |c| {
            storage::queues_with_ready_jobs(c, queues)
        })?;
        for queue in &ready {
            if let Some(wakeup) = shared.signals.queue(queue) {
                wakeup.wake_one();
            }
        }
        let until_due = connection::as_runner(conn, patience, storage::next_due)?.map(|due| {
            (due - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        });
        Ok(until_due.unwrap_or(Duration::MAX))
    })();
    match result {
        Ok(until_due) => {
            if std::mem::take(failing) {
                info!("checking for due and ready jobs again");
            }
            debug!(?until_due, "checked for due and ready jobs");
            until_due
        }
        Err(error) => {
            if !std::mem::replace(failing, true) {
                warn!(%error, "cannot check for due and ready jobs; trying again every poll \
                    interval (logged once)");
            }
            Duration::MAX
        }
    }
}
