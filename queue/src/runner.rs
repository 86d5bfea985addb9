//! Configuring, starting and stopping the workers of each queue.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use diesel::r2d2::{ConnectionManager, Pool};
use diesel::{Connection, PgConnection};
use tracing::info;

use crate::connection::{self, PgPool};
use crate::errors::RunnerError;
use crate::job::{Job, JobId};
use crate::metrics::{self, Gauge, Metrics};
use crate::parts::{self, PartFn};
use crate::periodic::{self, Periodic};
use crate::pq::Patience;
use crate::registry::Registry;
use crate::scheduler;
use crate::shutdown::Signals;
use crate::state::{lock, Settings, Shared, Slot};
use crate::storage;
use crate::watchdog;
use crate::worker::{self, Outcome};

/// Builds a [`Runner`]: its context, its queues and their worker counts,
/// and its database.
///
/// ```no_run
/// use std::time::Duration;
/// # struct AppContext;
/// let runner = skiplock::Runner::builder(AppContext)
///     .database_url("postgres://postgres@127.0.0.1/app")
///     .queue("default", 4)
///     .queue("index", 1) // never two index jobs at once
///     .poll_interval(Duration::from_secs(1))
///     .build()?;
/// let running = runner.start();
/// // ... until SIGTERM:
/// running.shutdown(Duration::from_secs(30));
/// # Ok::<(), skiplock::RunnerError>(())
/// ```
pub struct RunnerBuilder<C> {
    context: C,
    queues: Vec<(String, usize)>,
    exclusive: HashSet<String>,
    database_url: Option<String>,
    pool: Option<PgPool>,
    listener_url: Option<String>,
    poll_interval: Duration,
    batch_size: u16,
    synchronous_commit: bool,
    completion_window: Duration,
    slow_job_threshold: Duration,
    patience: Patience,
    metrics_listener: Option<TcpListener>,
    schedules: Vec<Periodic>,
    #[cfg(feature = "tokio")]
    tokio_handle: Option<tokio::runtime::Handle>,
}

impl<C> fmt::Debug for RunnerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerBuilder")
            .field("context", &std::any::type_name::<C>())
            .field("queues", &self.queues)
            .field("poll_interval", &self.poll_interval)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl<C: Any + Send + Sync> RunnerBuilder<C> {
    /// Enqueues `make()` at each tick of `cron` (five fields, or six with
    /// seconds first; UTC), each tick exactly once across every runner
    /// that declares the schedule. See [`Periodic`] for a name, a time
    /// zone, skipping missed ticks, or the tick's time in the job.
    pub fn periodic<J: Job>(
        self,
        cron: &str,
        make: impl Fn() -> J + Send + Sync + 'static,
    ) -> Self {
        self.schedule(Periodic::new(cron, move |_| make()))
    }

    /// Enqueues a [`Periodic`] job at each of its ticks.
    pub fn schedule(mut self, periodic: Periodic) -> Self {
        self.schedules.push(periodic);
        self
    }

    /// Serves `queue` with `workers` threads. A queue with one worker never
    /// runs two of its jobs at once in this runner.
    pub fn queue(mut self, queue: impl Into<String>, workers: usize) -> Self {
        self.queues.push((queue.into(), workers));
        self
    }

    /// Serves `queue` with one worker across every runner of the database,
    /// for jobs that must never run two at once anywhere (a git index that
    /// one writer pushes to). The worker runs the queue's jobs only while
    /// its lock session holds the queue's advisory lock; another runner's
    /// worker (a second process started by mistake, a rolling deploy's
    /// overlap) logs a warning, stands by, and takes over within a poll
    /// interval once the first one's session ends (the process stopped or
    /// died, its connection broke). `skiplock status` shows which runner has
    /// the queue and which stand by. Runners of a release without exclusive
    /// queues do not take the lock: during a deploy from one, both run.
    pub fn exclusive_queue(mut self, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        self.exclusive.insert(queue.clone());
        self.queues.push((queue, 1));
        self
    }

    /// The database. Required: each worker holds the locks of its jobs in a
    /// session of its own opened here, and the runner listens here for new
    /// jobs; give it a direct connection (or a pooler in session mode: the
    /// locks are session state). Unless [`pool`](Self::pool) is given, the
    /// jobs' own connections come from a pool the runner builds here too
    /// (one connection per worker, plus two for the runner's short queries).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.listener_url.get_or_insert_with(|| url.clone());
        self.database_url = Some(url);
        self
    }

    /// Takes the jobs' own connections (and the runner's short queries)
    /// from this pool instead of building one. It must hold at least one
    /// connection per worker plus two, or [`build`](Self::build) refuses it.
    /// The workers' lock sessions still connect with
    /// [`database_url`](Self::database_url).
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Runs the bodies of `async fn` jobs on this tokio runtime (the
    /// application's own, typically `Handle::current()`) instead of a
    /// runtime of the runner's. The worker threads stay the runner's: each
    /// waits for its job's body, so the runtime's threads are only busy
    /// while the bodies are. The `tokio` feature.
    #[cfg(feature = "tokio")]
    pub fn tokio_handle(mut self, handle: tokio::runtime::Handle) -> Self {
        self.tokio_handle = Some(handle);
        self
    }

    /// Where the runner holds its `LISTEN` session, if not at the
    /// [`database_url`](Self::database_url) (a direct connection: `NOTIFY`
    /// does not pass through PgBouncer in transaction mode).
    pub fn listen_url(mut self, url: impl Into<String>) -> Self {
        self.listener_url = Some(url.into());
        self
    }

    /// The poll fallback (default 1 second). A job is normally picked up at
    /// once through `LISTEN`/`NOTIFY`; every poll interval the runner also
    /// runs one cheap query for ready jobs on its queues (and promotes due
    /// scheduled jobs), so a lost notification or a listener that is down
    /// delays a job by at most this long. Delayed jobs and retries are
    /// promoted when they fall due, or at the next poll, whichever is later.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The most jobs a worker claims at once (default 100). A claim takes
    /// about one [`completion_window`](Self::completion_window) of work, by
    /// how long the worker's recent jobs ran, and never more than this. The
    /// jobs of a batch run one after the other; those not started when the
    /// runner stops are released unrun.
    pub fn batch_size(mut self, jobs: u16) -> Self {
        self.batch_size = jobs;
        self
    }

    /// How long a completed job waits, at most, before its completion
    /// commits (default 50 ms). Completions commit together, so a shorter
    /// window costs more commits; and a worker that dies runs again, beside
    /// the job it was running, only the jobs it completed in its last
    /// window. A job that failed, or whose worker died, commits its outcome
    /// at once on its next runs.
    pub fn completion_window(mut self, window: Duration) -> Self {
        self.completion_window = window;
        self
    }

    /// When a job has run this long and jobs of its batch have not started
    /// yet, they are released for other workers (default 100 ms), so a slow
    /// job holds no ready job hostage. The slow job keeps its own lock.
    pub fn slow_job_threshold(mut self, threshold: Duration) -> Self {
        self.slow_job_threshold = threshold;
        self
    }

    /// The longest a worker goes without hearing from the database server
    /// and still starts a job (default 2 seconds). A network that goes
    /// silent (a failover that moves the primary's address, a partition, a
    /// NAT dropping the flow) sends nothing, and the server on the other
    /// side may have ended the session and given its jobs' locks to other
    /// workers: so when a worker has not heard from its server for half
    /// this long, it asks (one round trip) before it starts its next job,
    /// and without an answer within this long it starts nothing more,
    /// counts its session lost and reconnects. Its sessions' TCP keepalives
    /// start after this long idle (unless the database URL sets its own).
    pub fn silence_limit(mut self, limit: Duration) -> Self {
        self.patience.silence = limit;
        self
    }

    /// The longest any statement of the runner's own sessions (claims,
    /// completions, the listener) waits for an answer (default 30 seconds);
    /// then the session counts as lost: its unstarted jobs are released,
    /// and its completions recorded on a new connection. Also the sessions'
    /// `tcp_user_timeout`, and five times the silence limit is their
    /// `connect_timeout` (unless the database URL sets its own). A
    /// completion that waits longer than this for a row another transaction
    /// holds gives its jobs up to be run again.
    pub fn statement_deadline(mut self, deadline: Duration) -> Self {
        self.patience.statement = deadline;
        self
    }

    /// Serves the runner's metrics (Prometheus text format) at `/metrics`
    /// on this listener while the runner runs. Without it, an application
    /// serves [`RunningRunner::metrics`] from its own HTTP server.
    pub fn metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// Whether the commits of completions and failures wait for their WAL
    /// to reach the disk (default `true`). With `false` completions are
    /// faster, and a crash of the *database server* can forget the
    /// completions of the last moments (up to three times
    /// `wal_writer_delay`, 600 ms by default): those jobs run again. No job
    /// is ever lost by this: enqueues keep the durability of the caller's
    /// transaction, and a failure forgotten the same way simply happens
    /// again.
    pub fn synchronous_commit(mut self, wait_for_disk: bool) -> Self {
        self.synchronous_commit = wait_for_disk;
        self
    }

    /// Checks the configuration and the registered jobs, and connects.
    ///
    /// Refuses to build when two registered job types share a name, when a
    /// job registered on one of the queues needs another context type, when
    /// a queue is named twice, empty or has no worker, or when the pool is
    /// too small.
    pub fn build(self) -> Result<Runner<C>, RunnerError> {
        if self.queues.is_empty() {
            return Err(RunnerError::Config(
                "no queue to serve; add one with `.queue(name, workers)`".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (queue, workers) in &self.queues {
            if queue.is_empty() {
                return Err(RunnerError::Config("a queue name is empty".into()));
            }
            if *workers == 0 {
                return Err(RunnerError::Config(format!(
                    "queue `{queue}` has 0 workers; give it at least 1"
                )));
            }
            if !seen.insert(queue.as_str()) {
                return Err(RunnerError::Config(format!(
                    "queue `{queue}` is configured twice; configure each queue once"
                )));
            }
        }
        if self.batch_size == 0 {
            return Err(RunnerError::Config("batch size 0; use at least 1".into()));
        }
        if self.patience.silence.is_zero() || self.patience.statement < self.patience.silence {
            return Err(RunnerError::Config(format!(
                "silence limit {:?} and statement deadline {:?}: the silence limit must be \
                 above zero and no longer than the statement deadline (the defaults are 2 s and 30 s)",
                self.patience.silence, self.patience.statement
            )));
        }
        if self.completion_window.is_zero() {
            return Err(RunnerError::Config(
                "completion window 0; use at least 1 ms (the default is 50 ms)".into(),
            ));
        }
        let mut schedules = Vec::with_capacity(self.schedules.len());
        for periodic in self.schedules {
            let schedule = periodic.check()?;
            if schedules
                .iter()
                .any(|s: &periodic::Schedule| s.name == schedule.name)
            {
                return Err(RunnerError::Config(format!(
                    "two schedules are named `{}`; name them apart with `Periodic::name`",
                    schedule.name
                )));
            }
            schedules.push(schedule);
        }
        let Some(database_url) = self.database_url else {
            return Err(RunnerError::Config(
                "no database; give one with `.database_url(..)` (the workers hold their job \
                 locks in sessions of their own there; `.pool(..)` only serves the jobs' \
                 connections)"
                    .into(),
            ));
        };

        let registry = Registry::collect()?;
        // How each job's part is had from the state, for every job this
        // state can serve (a job enqueued on another queue may come too).
        let state = TypeId::of::<C>();
        let parts: HashMap<TypeId, PartFn> = registry
            .all()
            .filter_map(|d| Some((d.context_type(), parts::part_fn(state, d.context_type())?)))
            .collect();
        for (queue, _) in &self.queues {
            for descriptor in registry.on_queue(queue) {
                if !parts.contains_key(&descriptor.context_type()) {
                    return Err(RunnerError::ContextMismatch {
                        job_type: descriptor.job_type,
                        rust_type: descriptor.rust_type(),
                        queue: queue.clone(),
                        expected: descriptor.context_name(),
                        actual: std::any::type_name::<C>(),
                    });
                }
            }
        }

        let workers: usize = self.queues.iter().map(|(_, n)| n).sum();
        // Every taker of a pooled connection at once: each worker's job, the
        // wake-up thread, the watchdog (completions of a lost session), a scrape.
        // (And the periodic thread, when there are schedules.)
        let needed =
            u32::try_from(workers + 3 + usize::from(!schedules.is_empty())).unwrap_or(u32::MAX);
        // Connect once directly: an unreachable database is reported with
        // its real cause at once, not after a pool's timeout.
        let secrets = crate::redact::connection_secrets(&database_url);
        let unreachable = |e: &dyn fmt::Display| {
            RunnerError::Connect(crate::redact::scrub_secrets(&e.to_string(), &secrets))
        };
        let pooled = |what: &str| {
            RunnerError::Config(format!(
                "the runner's {what} reaches PostgreSQL through a pooler that shares server \
                 sessions between clients (PgBouncer in transaction or statement mode): two \
                 connections opened there ran on one server session. A worker holds the locks \
                 of its jobs in its own session, the listener needs one for LISTEN, and the \
                 runner's queries are not written for sessions that change under them: through \
                 such a pooler, jobs would run twice. Give the runner direct connections (the \
                 server's own host and port) or a session-mode pool; the application can go on \
                 enqueueing through the pooler"
            ))
        };
        for (what, url) in [
            ("database_url", Some(&database_url)),
            ("listen_url", self.listener_url.as_ref()),
        ] {
            let Some(url) = url else { continue };
            let mut a = PgConnection::establish(url).map_err(|e| unreachable(&e))?;
            let mut b = PgConnection::establish(url).map_err(|e| unreachable(&e))?;
            if connection::share_a_session(&mut a, &mut b).map_err(|e| unreachable(&e))? {
                return Err(pooled(what));
            }
        }
        let pool = match self.pool {
            Some(pool) => pool,
            None => Pool::builder()
                .max_size(needed)
                .min_idle(Some(0))
                .test_on_check_out(false)
                // While the database is down, the pool retries connecting
                // with a growing delay capped at half this timeout: 1 s, so
                // jobs get connections within a second of it coming back.
                .connection_timeout(Duration::from_secs(2))
                .error_handler(Box::new(connection::QuietPoolErrors))
                .build(ConnectionManager::new(connection::with_tcp_defaults(
                    &database_url,
                    self.patience,
                )))
                .map_err(|e| unreachable(&e))?,
        };
        if pool.max_size() < needed {
            return Err(RunnerError::PoolTooSmall {
                pool_size: pool.max_size(),
                workers,
                needed,
            });
        }
        // Fail now, not in every worker, when the database is unreachable.
        {
            let mut a = pool.get().map_err(|e| unreachable(&e))?;
            let mut b = pool.get().map_err(|e| unreachable(&e))?;
            if connection::share_a_session(&mut a, &mut b).map_err(|e| unreachable(&e))? {
                return Err(pooled("pool"));
            }
        }

        // Async jobs on the runner's queues run on tokio, with connections
        // of their own (one per worker at most).
        #[cfg(feature = "tokio")]
        let runtime = if self
            .queues
            .iter()
            .any(|(queue, _)| registry.on_queue(queue).any(|d| d.is_async))
        {
            Some(crate::asynchronous::AsyncRuntime::new(
                self.tokio_handle,
                &database_url,
                workers,
            )?)
        } else {
            None
        };

        Ok(Runner {
            shared: Arc::new(Shared {
                #[cfg(feature = "tokio")]
                runtime,
                registry,
                context: self.context,
                parts,
                pool,
                database_url,
                settings: Settings {
                    poll_interval: self.poll_interval,
                    batch_size: i64::from(self.batch_size),
                    synchronous_commit: self.synchronous_commit,
                    completion_window: self.completion_window,
                    slow_job_threshold: self.slow_job_threshold,
                    patience: self.patience,
                    workers: i64::try_from(workers).unwrap_or(i64::MAX),
                },
                metrics: Metrics::default(),
                schedules,
                lock_budget: std::sync::OnceLock::new(),
                positions: self
                    .queues
                    .iter()
                    .map(|(queue, _)| (queue.clone(), std::sync::Mutex::default()))
                    .collect(),
                turns: self
                    .queues
                    .iter()
                    .map(|(queue, _)| (queue.clone(), std::sync::Mutex::default()))
                    .collect(),
                worker_name: format!("host {}, pid {}", scheduler::hostname(), std::process::id()),
                runner_id: format!(
                    "{}-{}-{}",
                    scheduler::hostname(),
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos())
                ),
                signals: Signals::new(
                    self.queues
                        .iter()
                        .map(|(q, _)| (q.as_str(), self.exclusive.contains(q))),
                ),
                listener_url: self.listener_url,
            }),
            queues: self.queues,
            metrics_listener: self.metrics_listener,
        })
    }
}

/// Runs the jobs of its queues: in worker threads ([`Runner::start`]) or,
/// in tests, synchronously ([`Runner::run_pending`]).
///
/// Each worker claims a batch of jobs and holds each under a lock of its
/// own database session while it runs them. Success deletes the job (the
/// completions commit within the [completion
/// window](RunnerBuilder::completion_window)); a failure records the
/// attempt and schedules a retry; a worker that dies releases its jobs at
/// once, and the job it was running runs again elsewhere. Jobs must
/// therefore be idempotent.
pub struct Runner<C> {
    shared: Arc<Shared<C>>,
    queues: Vec<(String, usize)>,
    metrics_listener: Option<TcpListener>,
}

impl<C> fmt::Debug for Runner<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("context", &std::any::type_name::<C>())
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl<C: Any + Send + Sync> Runner<C> {
    /// Starts configuring a runner whose jobs share `context`.
    pub fn builder(context: C) -> RunnerBuilder<C> {
        RunnerBuilder {
            context,
            queues: Vec::new(),
            exclusive: HashSet::new(),
            database_url: None,
            pool: None,
            listener_url: None,
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            synchronous_commit: true,
            completion_window: Duration::from_millis(50),
            slow_job_threshold: Duration::from_millis(100),
            patience: Patience {
                silence: Duration::from_secs(2),
                statement: Duration::from_secs(30),
            },
            metrics_listener: None,
            schedules: Vec::new(),
            #[cfg(feature = "tokio")]
            tokio_handle: None,
        }
    }

    /// The pool the runner uses (also handy for the application's own queries in tests).
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// The context the runner's jobs share.
    pub fn context(&self) -> &C {
        &self.shared.context
    }

    /// Runs, on the calling thread, every job of the runner's queues that is
    /// ready now, and returns when none is left. Jobs enqueued by the jobs
    /// themselves run too; a job that fails is not run again by the same
    /// call, even if its retry is already due.
    ///
    /// Meant for tests: enqueue, `run_pending`, then assert.
    pub fn run_pending(&self) -> Result<RunSummary, RunnerError> {
        let slot = Slot::default();
        let mut summary = RunSummary::default();
        let mut tried = Vec::new();
        loop {
            let mut conn = connection::checked_get(&self.shared.pool)?;
            scheduler::reap(&mut conn)?;
            storage::promote_due_jobs(&mut conn, i64::MAX)?;
            drop(conn);
            let mut claimed = 0;
            for (queue, _) in &self.queues {
                let mut ran = Vec::new();
                claimed += worker::run_batch(
                    &self.shared,
                    &slot,
                    queue,
                    Some(1),
                    &tried,
                    false,
                    true,
                    |id, job_type, outcome| {
                        ran.push(id.0);
                        summary.record(id, job_type, outcome);
                    },
                )
                .map_err(|e| RunnerError::Session(e.to_string()))?
                .claimed;
                tried.extend(ran);
            }
            if claimed == 0 {
                return Ok(summary);
            }
        }
    }

    /// The names of the queues this runner serves.
    pub(crate) fn queue_names(&self) -> Vec<String> {
        self.queues.iter().map(|(queue, _)| queue.clone()).collect()
    }

    /// A connection from the runner's pool.
    pub(crate) fn connection(
        &self,
    ) -> Result<diesel::r2d2::PooledConnection<ConnectionManager<PgConnection>>, RunnerError> {
        Ok(connection::checked_get(&self.shared.pool)?)
    }

    /// Starts the worker threads and returns at once.
    pub fn start(self) -> RunningRunner {
        // Before any worker claims: a job whose worker died (perhaps this
        // process, a moment ago) must be known as suspect when next claimed.
        if let Err(error) = connection::checked_get(&self.shared.pool)
            .map_err(|e| e.to_string())
            .and_then(|mut conn| scheduler::reap(&mut conn).map_err(|e| e.to_string()))
        {
            tracing::warn!(%error, "cannot look for jobs held by workers that are gone; the wake-up thread will");
        }
        let mut workers = Vec::new();
        let mut slots = Vec::new();
        for (queue, count) in &self.queues {
            for index in 0..*count {
                let shared = Arc::clone(&self.shared);
                let slot = Arc::new(Slot::new(queue));
                slots.push(Arc::clone(&slot));
                let queue = queue.clone();
                let handle = thread::Builder::new()
                    .name(format!("queue-{queue}-{index}"))
                    .spawn(move || worker::work(shared, slot, queue))
                    .expect("the OS refused to start a worker thread");
                workers.push(handle);
            }
        }
        let slots_for_metrics = slots.clone();
        // A watchdog per worker: a statement that waits on a silent network
        // (up to the statement deadline) holds up no other worker's.
        for slot in &slots {
            let shared = Arc::clone(&self.shared);
            let slot = Arc::clone(slot);
            workers.push(
                thread::Builder::new()
                    .name(format!("queue-watchdog-{}", slot.queue))
                    .spawn(move || watchdog::watch(shared, slot))
                    .expect("the OS refused to start a watchdog thread"),
            );
        }
        let shared = Arc::clone(&self.shared);
        workers.push(
            thread::Builder::new()
                .name("queue-wakeups".into())
                .spawn(move || scheduler::run(shared, slots))
                .expect("the OS refused to start the wake-up thread"),
        );
        if !self.shared.schedules.is_empty() {
            let shared = Arc::clone(&self.shared);
            workers.push(
                thread::Builder::new()
                    .name("queue-periodic".into())
                    .spawn(move || periodic::run(shared))
                    .expect("the OS refused to start the periodic thread"),
            );
        }
        let control: Arc<dyn Control> = self.shared;
        if let Some(listener) = self.metrics_listener {
            let (control, slots) = (Arc::clone(&control), slots_for_metrics.clone());
            workers.push(
                thread::Builder::new()
                    .name("queue-metrics".into())
                    .spawn(move || {
                        metrics::serve(
                            listener,
                            || control.metrics(&slots),
                            || control.is_stopped(),
                        )
                    })
                    .expect("the OS refused to start the metrics thread"),
            );
        }
        info!(queues = ?self.queues, "runner started");
        RunningRunner {
            control,
            workers,
            slots: slots_for_metrics,
        }
    }
}

/// Lets [`RunningRunner`] stop workers and read metrics without naming the context type.
trait Control: Send + Sync {
    fn stop(&self);
    fn is_stopped(&self) -> bool;
    fn metrics(&self, slots: &[Arc<Slot>]) -> String;
}

impl<C: Send + Sync> Control for Shared<C> {
    fn stop(&self) {
        self.signals.stop();
    }

    fn is_stopped(&self) -> bool {
        self.signals.is_stopped()
    }

    fn metrics(&self, slots: &[Arc<Slot>]) -> String {
        let queues: Vec<String> = self.signals.queue_names().map(str::to_owned).collect();
        let mut busy: Vec<(String, f64)> = queues.iter().map(|q| (q.clone(), 0.0)).collect();
        // The jobs this runner's workers run now are not ready, whether or
        // not its last announcement lists them yet.
        let mut own_running = Vec::new();
        for slot in slots {
            if let Some(job) = lock(&slot.batch).running {
                own_running.push(job.id);
                if let Some(entry) = busy.iter_mut().find(|(q, _)| *q == slot.queue) {
                    entry.1 += 1.0;
                }
            }
        }
        // One connection for the scrape's statements: another thread may
        // take one given back before a second is asked for.
        let (depths, flow) = self
            .pool
            .get()
            .ok()
            .map(|mut conn| {
                let depths = crate::overview::ready_by_queue(
                    &mut conn,
                    &queues,
                    crate::admin::RUNNER_FRESH_SECS,
                    &own_running,
                )
                .unwrap_or_default();
                // Flow control, for the queues with limits.
                let flow = crate::limits::flow_gauges(&mut conn, &queues).unwrap_or_default();
                (depths, flow)
            })
            .unwrap_or_default();
        let depth = |q: &String| depths.get(q).copied().unwrap_or_default();
        let ready = queues
            .iter()
            .map(|q| (q.clone(), depth(q).0 as f64))
            .collect();
        let oldest = queues.iter().map(|q| (q.clone(), depth(q).1)).collect();
        let paused = queues
            .iter()
            .map(|q| {
                let paused = self.signals.queue(q).is_some_and(|w| w.is_paused());
                (q.clone(), if paused { 1.0 } else { 0.0 })
            })
            .collect();
        let flow_gauge = |at: usize| flow.iter().map(|(q, v)| (q.clone(), v[at])).collect();
        let gauge = |name, help, values| Gauge {
            name,
            help,
            label: "queue",
            values,
        };
        self.metrics.render(&[
            gauge(
                "queue_ready_jobs",
                "Jobs due and waiting for a worker.",
                ready,
            ),
            gauge(
                "queue_oldest_ready_age_seconds",
                "How long the oldest ready job has been due.",
                oldest,
            ),
            gauge("queue_workers_busy", "Workers running a job now.", busy),
            gauge(
                "queue_paused",
                "1 while the queue is paused (nothing new starts), else 0.",
                paused,
            ),
            gauge(
                "queue_limit_slots_held",
                "Workers (of any runner) holding one of the queue's own max_running slots.",
                flow_gauge(0),
            ),
            gauge(
                "queue_limit_window_starts",
                "Starts counted in the queue's own rate window now.",
                flow_gauge(1),
            ),
            gauge(
                "queue_limited_keys_waiting",
                "Concurrency keys under a limit with ready jobs (counted up to 1,000).",
                flow_gauge(2),
            ),
            gauge(
                "queue_limit_wait_seconds",
                "How long the first ready job of the limited key waiting longest has waited.",
                flow_gauge(3),
            ),
        ])
    }
}

/// The handle of a started runner. Dropping it asks the workers to stop
/// without waiting for them; call [`shutdown`](Self::shutdown) to wait.
pub struct RunningRunner {
    control: Arc<dyn Control>,
    workers: Vec<JoinHandle<()>>,
    slots: Vec<Arc<Slot>>,
}

impl fmt::Debug for RunningRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningRunner")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl RunningRunner {
    /// The runner's metrics in the Prometheus text format: jobs completed,
    /// failed, retried and dead by type, job durations by type, and, by
    /// queue, ready jobs, the age of the oldest one, and busy workers.
    pub fn metrics(&self) -> String {
        self.control.metrics(&self.slots)
    }

    /// Graceful shutdown: workers stop claiming, finish the job they are
    /// running, and release the rest of their batch. Waits at most `timeout`.
    ///
    /// Workers still running a job after `timeout` are left to finish in
    /// the background; if the process exits first, their locks are
    /// released by the database and the jobs run again elsewhere.
    pub fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        self.control.stop();
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.workers.iter().filter(|w| !w.is_finished()).count();
            if running == 0 || Instant::now() >= deadline {
                let report = ShutdownReport {
                    workers_still_running: running,
                };
                info!(still_running = running, "runner stopped");
                for worker in self.workers.drain(..).filter(|w| w.is_finished()) {
                    // A worker thread never panics (jobs' panics are caught).
                    let _ = worker.join();
                }
                return report;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RunningRunner {
    fn drop(&mut self) {
        self.control.stop();
    }
}

/// What [`RunningRunner::shutdown`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Workers still running a job when the timeout ran out (0 for a clean stop).
    pub workers_still_running: usize,
}

/// What [`Runner::run_pending`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Jobs that ran to success, in order.
    pub succeeded: Vec<JobId>,
    /// Jobs that failed, in order.
    pub failed: Vec<FailedRun>,
}

impl RunSummary {
    fn record(&mut self, id: JobId, job_type: &str, outcome: &Outcome) {
        match outcome {
            Outcome::Succeeded => self.succeeded.push(id),
            Outcome::Failed { error, dead } => self.failed.push(FailedRun {
                id,
                job_type: job_type.to_owned(),
                error: error.clone(),
                dead: *dead,
            }),
        }
    }
}

/// One failed run seen by [`Runner::run_pending`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRun {
    /// The job's id.
    pub id: JobId,
    /// Its stored type name.
    pub job_type: String,
    /// The error text recorded on the row.
    pub error: String,
    /// Whether the failure made the job dead.
    pub dead: bool,
}
