//! What a runner's threads share: the settings, the registry and context,
//! the pool, the wake-ups, and one [`Slot`] per worker (its lock session
//! and its batch), which the worker, the watchdog, the wake-up thread and
//! the metrics read.

use std::any::TypeId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::connection::PgPool;
use crate::metrics::Metrics;
use crate::parts::PartFn;
use crate::position::Position;
use crate::pq::{Patience, Session};
use crate::registry::Registry;
use crate::shutdown::Signals;
use crate::storage::{ClaimRow, ClaimedJob, NextAttempt};

/// How a runner is configured, once built.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) poll_interval: Duration,
    /// The most jobs one claim takes.
    pub(crate) batch_size: i64,
    pub(crate) synchronous_commit: bool,
    /// How long a completed job may wait before its completion commits.
    pub(crate) completion_window: Duration,
    /// After this long, a running job's unstarted batch is released.
    pub(crate) slow_job_threshold: Duration,
    /// How long the runner's sessions wait on the server.
    pub(crate) patience: Patience,
    /// How many workers the runner has, on all its queues.
    pub(crate) workers: i64,
}

/// What the threads of one runner share.
#[derive(Debug)]
pub(crate) struct Shared<C> {
    pub(crate) registry: Registry,
    /// The application's state.
    pub(crate) context: C,
    /// How each job's part is had from `context`, by the part's type.
    pub(crate) parts: HashMap<TypeId, PartFn>,
    /// Where async jobs run (the `tokio` feature).
    #[cfg(feature = "tokio")]
    pub(crate) runtime: Option<crate::asynchronous::AsyncRuntime>,
    /// The jobs' connections, and the runner's short queries.
    pub(crate) pool: PgPool,
    /// Where the workers open their lock sessions.
    pub(crate) database_url: String,
    /// Where the wake-up thread listens; `None`: poll only.
    pub(crate) listener_url: Option<String>,
    pub(crate) settings: Settings,
    pub(crate) signals: Signals,
    /// This runner's name in `queue_runners`.
    pub(crate) runner_id: String,
    /// How this runner's workers sign the jobs they hold ("host H, pid P").
    pub(crate) worker_name: String,
    pub(crate) metrics: Metrics,
    /// The periodic jobs this runner enqueues.
    pub(crate) schedules: Vec<crate::periodic::Schedule>,
    /// The most jobs one worker may hold at once, by the server's lock
    /// table (see `worker::lock_budget`): set by the first lock session.
    pub(crate) lock_budget: std::sync::OnceLock<i64>,
    /// Where this runner's claims of each queue resume (see
    /// [`crate::position`]).
    pub(crate) positions: HashMap<String, Mutex<Position>>,
    /// Where this runner's claims of each queue's keys stand.
    pub(crate) turns: HashMap<String, Mutex<KeyTurn>>,
}

/// A queue's jobs with a concurrency key, as this runner's last claim of
/// the queue saw them.
#[derive(Debug, Default)]
pub(crate) struct KeyTurn {
    /// The queue holds some: its claims take the keys in turn.
    pub(crate) waiting: bool,
    /// The last key visited (`""`: none yet).
    pub(crate) cursor: String,
}

/// One worker: its lock session and its batch. The worker holds `session`
/// while it chooses and starts a job and while it records an outcome; the
/// watchdog takes it (when free) to commit completions and release jobs
/// while a job runs.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The worker's queue, whose idle workers are woken for released jobs.
    pub(crate) queue: String,
    /// The session holding the advisory locks of the batch; `None` until
    /// connected, and after it was lost.
    pub(crate) session: Mutex<Option<LockSession>>,
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

/// A worker's lock session, and its number, under which its claims are
/// recorded (see `storage::claims`).
#[derive(Debug)]
pub(crate) struct LockSession {
    pub(crate) session: Session,
    pub(crate) holder: i32,
    /// The exclusive queue whose lock it holds, if any (every release that
    /// lets go of everything takes that one back at once).
    pub(crate) exclusive: Option<String>,
    /// Where its claim record lies.
    pub(crate) claim_row: ClaimRow,
}

/// The jobs a worker holds the locks of.
#[derive(Debug, Default)]
pub(crate) struct BatchState {
    /// Claimed, not started yet.
    pub(crate) pending: VecDeque<ClaimedJob>,
    /// Succeeded; deleted at the next commit of completions.
    pub(crate) completed: Vec<i64>,
    /// When the oldest of `completed` ended.
    pub(crate) completed_since: Option<Instant>,
    /// Outcomes the database refused to record: their jobs stay locked
    /// until a later try records them.
    pub(crate) unwritten: Unwritten,
    /// The job running now.
    pub(crate) running: Option<RunningJob>,
    /// A moving average of how long this worker's jobs run, which sizes
    /// its claims to about one completion window of work.
    pub(crate) typical_run: Option<Duration>,
    /// The session may hold slots of concurrency keys (a keyed claim took
    /// jobs since it last let go of everything): the batch's end lets go of
    /// everything even when it has no completion to commit.
    pub(crate) holds_slots: bool,
}

impl BatchState {
    /// Whether the oldest completion has waited `window` or longer.
    pub(crate) fn completions_due(&self, window: Duration) -> bool {
        self.completed_since
            .is_some_and(|since| since.elapsed() >= window)
    }

    /// Takes the completions to commit.
    pub(crate) fn take_completed(&mut self) -> Vec<i64> {
        self.completed_since = None;
        std::mem::take(&mut self.completed)
    }

    /// Learns from one more run.
    pub(crate) fn observe_run(&mut self, took: Duration) {
        self.typical_run = Some(match self.typical_run {
            None => took,
            Some(typical) => (typical * 7 + took) / 8,
        });
    }

    /// How many jobs the next claim should take: about one completion
    /// window of work, at least one, at most `batch_size` (and `budget`).
    pub(crate) fn claim_size(&self, settings: &Settings, budget: Option<i64>) -> i64 {
        let size = self.window_of_work(settings);
        budget.map_or(size, |budget| size.min(budget).max(1))
    }

    fn window_of_work(&self, settings: &Settings) -> i64 {
        match self.typical_run {
            Some(typical) if !typical.is_zero() => {
                let fit = settings.completion_window.as_nanos() / typical.as_nanos();
                i64::try_from(fit)
                    .unwrap_or(i64::MAX)
                    .clamp(1, settings.batch_size)
            }
            _ => settings.batch_size,
        }
    }
}

/// Outcomes of a worker's jobs that the database refused to record (a
/// trigger's error, a deadlock, a cancelled statement, a full disk). Their
/// jobs stay locked by the worker's session, so that none runs again, and
/// the writes are tried again after 100 ms, doubling up to 10 s.
#[derive(Debug, Default)]
pub(crate) struct Unwritten {
    /// Jobs that succeeded: their rows are to be deleted.
    pub(crate) completions: Vec<i64>,
    pub(crate) failures: Vec<UnwrittenFailure>,
    /// When to try again.
    pub(crate) retry_at: Option<Instant>,
    /// Refusals in a row.
    pub(crate) refusals: u32,
}

/// A failed attempt still to be recorded.
#[derive(Debug, Clone)]
pub(crate) struct UnwrittenFailure {
    pub(crate) id: i64,
    pub(crate) error: String,
    pub(crate) next: NextAttempt,
}

impl Unwritten {
    pub(crate) fn is_empty(&self) -> bool {
        self.completions.is_empty() && self.failures.is_empty()
    }

    /// Whether there is something to try again now.
    pub(crate) fn due(&self) -> bool {
        !self.is_empty() && self.retry_at.is_none_or(|at| at <= Instant::now())
    }

    /// How long until the next try (`None`: nothing to try).
    pub(crate) fn wait(&self) -> Option<Duration> {
        (!self.is_empty()).then(|| {
            self.retry_at.map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            })
        })
    }

    /// One more refusal: the next try waits longer.
    pub(crate) fn refused(&mut self) {
        self.refusals = self.refusals.saturating_add(1);
        let wait = Duration::from_millis(100 << self.refusals.min(8).saturating_sub(1))
            .min(Duration::from_secs(10));
        self.retry_at = Some(Instant::now() + wait);
    }

    /// Everything was recorded.
    pub(crate) fn written(&mut self) {
        self.refusals = 0;
        self.retry_at = None;
    }
}

/// The job a worker is running.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunningJob {
    pub(crate) id: i64,
    pub(crate) since: Instant,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
