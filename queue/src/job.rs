//! The `Job` trait and enqueueing.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::PgConnection;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::{ConnectionMode, JobConnection};
use crate::errors::{EnqueueError, PerformError};
use crate::retry::RetryPolicy;
use crate::storage::{self, Flow, NewJob, Schedule};

/// The queue a job runs on when it names none.
pub const DEFAULT_QUEUE: &str = "default";

/// The id of a stored job (the `id` column).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A background job: a serializable value that knows how to run itself.
///
/// The value is stored as JSON in the `payload` column under the type name
/// [`Job::JOB_TYPE`]; a runner serving the job's queue finds the handler by
/// that name, deserializes the value and calls [`Job::run`]. The trait is
/// usually implemented by `#[background_job]`; an implementation written by
/// hand must also be registered with [`register_job!`](crate::register_job).
///
/// ```
/// use skiplock::{Job, JobConnection, PerformError};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct SendWelcomeMail {
///     user_id: i64,
/// }
///
/// struct Mailer; // shared by all jobs of a runner: an SMTP client, say
///
/// impl Job for SendWelcomeMail {
///     const JOB_TYPE: &'static str = "send_welcome_mail";
///     const QUEUE: &'static str = "mail";
///     type Context = Mailer;
///
///     fn run(self, _mailer: &Mailer, _db: &mut JobConnection<'_>) -> Result<(), PerformError> {
///         Ok(())
///     }
/// }
/// skiplock::register_job!(SendWelcomeMail);
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The name stored with each queued job and used to find its handler.
    ///
    /// Part of the stored format: renaming the Rust type is harmless, but
    /// changing this string orphans jobs already queued under the old name.
    const JOB_TYPE: &'static str;

    /// The queue the job runs on unless [`EnqueueOptions::queue`] says otherwise.
    const QUEUE: &'static str = DEFAULT_QUEUE;

    /// Higher runs first among ready jobs of a queue; ties run oldest first.
    const PRIORITY: i16 = 0;

    /// When a failed run is tried again, and when the job is given up.
    const RETRY_POLICY: RetryPolicy = RetryPolicy::DEFAULT;

    /// Which connection [`JobConnection::get`] hands the job. See [`ConnectionMode`].
    const CONNECTION: ConnectionMode = ConnectionMode::Pooled;

    /// Whether at most one job of this type with the same payload waits to
    /// run (`#[background_job(unique)]`): enqueueing another while one
    /// waits stores nothing and says so ([`Enqueued::Duplicate`]). A job
    /// gives its key up when a worker claims it, so one enqueued while the
    /// first runs is stored and runs after it. [`EnqueueOptions::unique_key`]
    /// gives a key of the caller's instead.
    const UNIQUE: bool = false;

    /// The most jobs of this type with the same concurrency key (see
    /// [`Job::concurrency_key`]) that may run at once, across every runner
    /// and host (`#[background_job(max_concurrent = 2)]`): 1 to
    /// [`MAX_CONCURRENT_LIMIT`]. Without a key, the most jobs of this type that may
    /// run at once in their queue. A job over its limit is not claimed: it
    /// waits, its attempts untouched, until a job of its key ends. See the
    /// README's "Flow control".
    const MAX_CONCURRENT: Option<u32> = None;

    /// The most jobs of this type with the same concurrency key that may
    /// start per period, across every runner and host
    /// (`#[background_job(rate = "100/1s")]`): never more in any window of
    /// that length. Without a key, the type's jobs in their queue. A job
    /// over the rate is not claimed: it waits, its attempts untouched. See
    /// [`crate::Rate`] and the README's "Flow control".
    const RATE: Option<crate::Rate> = None;

    /// The job's concurrency key (`#[background_job(concurrency_key =
    /// "account_id")]` takes it from that argument): a tenant, an account,
    /// anything that should take its turn with the others. A queue holding
    /// keyed jobs claims them key by key in turn, so one key's backlog does
    /// not hold up the others' jobs; with [`Job::MAX_CONCURRENT`], at most
    /// that many of a key's jobs run at once. [`EnqueueOptions::concurrency_key`]
    /// gives one at enqueue instead.
    fn concurrency_key(&self) -> Option<String> {
        None
    }

    /// Whether the body is an `async fn` run on the runner's tokio runtime
    /// (set by `#[background_job]`; the `tokio` feature).
    #[doc(hidden)]
    const ASYNC: bool = false;

    /// What all jobs of a runner share (a git checkout, an HTTP client, a
    /// pool...). A runner only runs jobs whose context is its own.
    type Context: Send + Sync + 'static;

    /// Does the work. An `Err` (or a panic) schedules a retry; see [`PerformError`].
    fn run(self, ctx: &Self::Context, db: &mut JobConnection<'_>) -> Result<(), PerformError>;

    /// Stores the job on `conn`, with the job type's queue and priority, to
    /// run as soon as a worker is free.
    ///
    /// The insert joins whatever transaction `conn` is in: if the caller
    /// rolls back, the job never existed; workers see it once the caller
    /// commits. A unique job that has a twin waiting is not stored:
    /// [`Enqueued::Duplicate`].
    fn enqueue(&self, conn: &mut PgConnection) -> Result<Enqueued, EnqueueError> {
        self.enqueue_with(conn, &EnqueueOptions::new())
    }

    /// Stores the job on `conn` with other options: another queue, another
    /// priority, a later start. Joins the caller's transaction like [`Job::enqueue`].
    fn enqueue_with(
        &self,
        conn: &mut PgConnection,
        options: &EnqueueOptions,
    ) -> Result<Enqueued, EnqueueError> {
        let job = NewJob::build(self, options)?;
        Ok(Enqueued::from(storage::insert_job(conn, &job)?))
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The job was stored under this id.
    Inserted(JobId),
    /// Nothing was stored: a job with the same unique key is already
    /// waiting to run (see [`Job::UNIQUE`] and [`EnqueueOptions::unique_key`]).
    Duplicate,
}

impl Enqueued {
    /// The new job's id; `None` for a duplicate.
    pub fn id(self) -> Option<JobId> {
        match self {
            Enqueued::Inserted(id) => Some(id),
            Enqueued::Duplicate => None,
        }
    }

    /// Whether a job was stored.
    pub fn inserted(self) -> bool {
        matches!(self, Enqueued::Inserted(_))
    }
}

impl From<Option<JobId>> for Enqueued {
    fn from(id: Option<JobId>) -> Self {
        id.map_or(Enqueued::Duplicate, Enqueued::Inserted)
    }
}

/// How one job is enqueued: its queue, priority and start time.
///
/// ```
/// use std::time::Duration;
/// let options = skiplock::EnqueueOptions::new()
///     .queue("mail")
///     .priority(10)
///     .delay(Duration::from_secs(60));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    pub(crate) queue: Option<String>,
    pub(crate) priority: Option<i16>,
    pub(crate) schedule: Option<Schedule>,
    pub(crate) unique_key: Option<String>,
    pub(crate) concurrency_key: Option<String>,
    pub(crate) max_concurrent: Option<u32>,
    pub(crate) rate: Option<crate::Rate>,
}

/// The largest limit a concurrency key may have ([`Job::MAX_CONCURRENT`],
/// [`EnqueueOptions::max_concurrent`]).
pub const MAX_CONCURRENT_LIMIT: u32 = 1_000;

/// The longest concurrency key, in bytes.
pub const MAX_CONCURRENCY_KEY_BYTES: usize = 512;

/// The text of a concurrency key taken from a job's argument: a string as
/// it is, anything else as its JSON (`42`, `[1,2]`). What
/// `#[background_job(concurrency_key = "...")]` stores.
#[doc(hidden)]
pub fn concurrency_key_of<T: Serialize + ?Sized>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// The longest unique key [`EnqueueOptions::unique_key`] accepts, in bytes.
pub const MAX_UNIQUE_KEY_BYTES: usize = 512;

impl EnqueueOptions {
    /// The job type's own queue and priority, to run at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the job on this queue instead of the job type's own.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Runs the job with this priority instead of the job type's own (higher first).
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Does not run the job before this time.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.schedule = Some(Schedule::At(at));
        self
    }

    /// Stores the job only if no job of its type with this key is waiting
    /// to run (whatever its payload): at most one waits per key, and
    /// enqueue says [`Enqueued::Duplicate`] otherwise. Keys are per job
    /// type, at most [`MAX_UNIQUE_KEY_BYTES`] bytes. A claimed job gives its
    /// key up, so a job enqueued while one with the key runs is stored.
    /// Race-free: a unique index decides, however many enqueue at once.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// The job's concurrency key, instead of its type's (see
    /// [`Job::concurrency_key`]): 1 to [`MAX_CONCURRENCY_KEY_BYTES`] bytes.
    /// Keys are shared by every job type of the queue: jobs of two types
    /// with the key `"tenant-7"` take one turn, and count against one limit.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// The most jobs of the job's concurrency key that may run at once,
    /// instead of its type's [`Job::MAX_CONCURRENT`]: 1 to [`MAX_CONCURRENT_LIMIT`].
    pub fn max_concurrent(mut self, max: u32) -> Self {
        self.max_concurrent = Some(max);
        self
    }

    /// The most jobs of the job's concurrency key that start per period,
    /// instead of its type's [`Job::RATE`].
    pub fn rate(mut self, rate: crate::Rate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Does not run the job before this long after the insert (by the
    /// database's clock, so workers' clocks do not matter).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.schedule = Some(Schedule::After(delay));
        self
    }
}

/// Many jobs, of any types, inserted with one statement.
///
/// ```no_run
/// # use skiplock::{Job, JobBatch};
/// # fn demo(conn: &mut diesel::PgConnection, jobs: Vec<impl Job>) -> Result<(), skiplock::EnqueueError> {
/// let mut batch = JobBatch::new();
/// for job in &jobs {
///     batch.push(job)?;
/// }
/// let ids = batch.enqueue(conn)?; // one INSERT, in the caller's transaction
/// # let _ = ids; Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct JobBatch {
    jobs: Vec<NewJob>,
}

impl JobBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job with its type's queue and priority.
    pub fn push<J: Job>(&mut self, job: &J) -> Result<&mut Self, EnqueueError> {
        self.push_with(job, &EnqueueOptions::new())
    }

    /// Adds a job with other options.
    pub fn push_with<J: Job>(
        &mut self,
        job: &J,
        options: &EnqueueOptions,
    ) -> Result<&mut Self, EnqueueError> {
        self.jobs.push(NewJob::build(job, options)?);
        Ok(self)
    }

    /// How many jobs the batch holds.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Inserts every job in one statement on `conn`, joining the caller's
    /// transaction. Returns what happened to each, in the order the jobs
    /// were pushed: a unique job whose key is already waiting, or was
    /// pushed earlier in the batch, is a [`Enqueued::Duplicate`].
    pub fn enqueue(self, conn: &mut PgConnection) -> Result<Vec<Enqueued>, EnqueueError> {
        if self.jobs.is_empty() {
            return Ok(Vec::new());
        }
        // Twins within the batch: the first is inserted (or not), the
        // rest are duplicates without asking the database.
        let mut keys = std::collections::HashSet::new();
        let firsts: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| self.jobs[i].batch_key().is_none_or(|key| keys.insert(key)))
            .collect();
        let to_insert: Vec<&NewJob> = firsts.iter().map(|&i| &self.jobs[i]).collect();
        let ids = storage::insert_jobs(conn, &to_insert)?;
        let mut outcomes = vec![Enqueued::Duplicate; self.jobs.len()];
        for (&i, id) in firsts.iter().zip(ids) {
            outcomes[i] = Enqueued::from(id);
        }
        Ok(outcomes)
    }
}

impl NewJob {
    pub(crate) fn build<J: Job>(job: &J, options: &EnqueueOptions) -> Result<NewJob, EnqueueError> {
        let payload = serde_json::to_value(job).map_err(|source| EnqueueError::Serialize {
            job_type: J::JOB_TYPE,
            source,
        })?;
        let queue = options.queue.as_deref().unwrap_or(J::QUEUE);
        if queue.is_empty() {
            return Err(EnqueueError::InvalidOptions(
                "the queue name is empty; name a queue, or leave it unset for the job type's own"
                    .into(),
            ));
        }
        if let Some(Schedule::After(delay)) = options.schedule {
            if i64::try_from(delay.as_micros()).is_err() {
                return Err(EnqueueError::InvalidOptions(format!(
                    "a delay of {delay:?} is too long; delays up to {} years are valid",
                    i64::MAX / 1_000_000 / 86_400 / 366
                )));
            }
        }
        if let Some(key) = &options.unique_key {
            if key.len() > MAX_UNIQUE_KEY_BYTES || key.contains('\0') {
                return Err(EnqueueError::InvalidOptions(format!(
                    "a unique key of {} bytes{} is refused; use at most {MAX_UNIQUE_KEY_BYTES} \
                     bytes without NUL (a hash of a longer key will do)",
                    key.len(),
                    if key.contains('\0') {
                        " with a NUL byte"
                    } else {
                        ""
                    },
                )));
            }
        }
        let concurrency = concurrency::<J>(job, options)?;
        Ok(NewJob {
            concurrency,
            job_type: J::JOB_TYPE,
            queue: queue.to_owned(),
            priority: options.priority.unwrap_or(J::PRIORITY),
            payload,
            schedule: options.schedule,
            unique_key: options
                .unique_key
                .as_ref()
                .map(|key| format!("{}:{key}", J::JOB_TYPE)),
            unique_by_payload: J::UNIQUE && options.unique_key.is_none(),
            traceparent: crate::telemetry::current_traceparent(),
        })
    }

    /// What makes two unique jobs of one batch twins; `None` for a job
    /// that is not unique.
    fn batch_key(&self) -> Option<String> {
        match &self.unique_key {
            Some(key) => Some(key.clone()),
            None if self.unique_by_payload => Some(format!("{}#{}", self.job_type, self.payload)),
            None => None,
        }
    }
}

/// A new job's concurrency key and limits: the options', else the type's.
/// A limit without a key limits the type: its key is the type's name,
/// after a character no key given may start with.
fn concurrency<J: Job>(job: &J, options: &EnqueueOptions) -> Result<Option<Flow>, EnqueueError> {
    let max = options.max_concurrent.or(J::MAX_CONCURRENT);
    if let Some(max) = max {
        if !(1..=MAX_CONCURRENT_LIMIT).contains(&max) {
            return Err(EnqueueError::InvalidOptions(format!(
                "max_concurrent {max} is out of range; use 1 to {MAX_CONCURRENT_LIMIT} \
                 (or no limit)"
            )));
        }
    }
    let max = max.map(|max| i32::try_from(max).unwrap_or(i32::MAX));
    let rate = options.rate.or(J::RATE).map(|rate| rate.stored());
    let key = match options.concurrency_key.clone() {
        Some(key) => Some(key),
        None => job.concurrency_key(),
    };
    match key {
        Some(key) => {
            if key.is_empty()
                || key.len() > MAX_CONCURRENCY_KEY_BYTES
                || key.contains('\0')
                || key.starts_with(TYPE_KEY)
            {
                return Err(EnqueueError::InvalidOptions(format!(
                    "a concurrency key of {} bytes is refused; use 1 to \
                     {MAX_CONCURRENCY_KEY_BYTES} bytes, without NUL, not starting with \
                     U+0001 (a hash of a longer key will do)",
                    key.len()
                )));
            }
            Ok(Some(Flow {
                key,
                max_concurrent: max,
                rate,
            }))
        }
        None if max.is_some() || rate.is_some() => Ok(Some(Flow {
            key: format!("{TYPE_KEY}{}", J::JOB_TYPE),
            max_concurrent: max,
            rate,
        })),
        None => Ok(None),
    }
}

/// What starts the key of a job type's own limit.
pub(crate) const TYPE_KEY: char = '\u{1}';
