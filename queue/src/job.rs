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
use crate::storage::{self, NewJob, Schedule};

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
    /// rolls back, the job never existed; workers see it once the caller commits.
    fn enqueue(&self, conn: &mut PgConnection) -> Result<JobId, EnqueueError> {
        self.enqueue_with(conn, &EnqueueOptions::new())
    }

    /// Stores the job on `conn` with other options: another queue, another
    /// priority, a later start. Joins the caller's transaction like [`Job::enqueue`].
    fn enqueue_with(
        &self,
        conn: &mut PgConnection,
        options: &EnqueueOptions,
    ) -> Result<JobId, EnqueueError> {
        let job = NewJob::build(self, options)?;
        Ok(storage::insert_job(conn, &job)?)
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
}

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
    /// transaction. Returns the ids in the order the jobs were pushed.
    pub fn enqueue(self, conn: &mut PgConnection) -> Result<Vec<JobId>, EnqueueError> {
        if self.jobs.is_empty() {
            return Ok(Vec::new());
        }
        Ok(storage::insert_jobs(conn, &self.jobs)?)
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
        Ok(NewJob {
            job_type: J::JOB_TYPE,
            queue: queue.to_owned(),
            priority: options.priority.unwrap_or(J::PRIORITY),
            payload,
            schedule: options.schedule,
        })
    }
}
