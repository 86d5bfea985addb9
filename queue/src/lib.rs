#![doc = include_str!("../README.md")]
//!
//! # Where to find things
//!
//! - Defining jobs: [`background_job`], or by hand [`Job`] and [`register_job!`]; [`RetryPolicy`], [`PerformError`].
//! - Enqueueing: [`Job::enqueue`], [`EnqueueOptions`], [`JobBatch`].
//! - Running: [`Runner`], [`RunnerBuilder`], [`RunningRunner`] (and its
//!   [`metrics`](RunningRunner::metrics)), [`JobConnection`], [`ConnectionMode`].
//! - Schema: [`migrate`].
//! - Tests: [`testing`] ([`run_all`](testing::run_all), [`enqueued`](testing::enqueued),
//!   [`perform`](testing::perform)), [`Runner::run_pending`].
//! - Operations: [`queue_status`], [`overview`], [`runners`], [`failing_jobs`], [`dead_jobs`], [`find_job`],
//!   [`retry_job`], [`discard_job`], [`select_jobs`]; the `skiplock` command (crate `skiplock-cli`)
//!   is built on these.
//!
//! Inside: `storage` holds every SQL statement (`storage::claims` those of
//! a worker's lock session); `worker` is the engine that claims, runs and
//! completes jobs; `watchdog` commits completions and releases a slow job's
//! batch while a job runs; `state` is what the runner's threads share;
//! `scheduler` is the wake-up thread (LISTEN, promotions, poll fallback,
//! announcements); `pq` the libpq sessions of the runner's own (lock
//! sessions, `listener`); `metrics` the Prometheus counters.

mod admin;
#[cfg(feature = "tokio")]
pub mod asynchronous;
mod connection;
mod errors;
mod job;
mod limits;
mod listener;
mod maintenance;
mod metrics;
mod migrate;
mod overview;
mod parts;
mod periodic;
mod position;
mod pq;
mod prepared;
mod redact;
mod registry;
mod retry;
mod runner;
mod scheduler;
mod schema;
mod shutdown;
mod state;
mod storage;
mod telemetry;
pub mod testing;
mod watchdog;
#[cfg(feature = "web")]
pub mod web;
mod worker;

#[doc = include_str!("background_job.md")]
pub use skiplock_derive::background_job;

/// Makes each field of an application's state a part that jobs take by
/// reference: for a field `mailer: Mailer` of `AppState`, a job taking
/// `&Mailer` runs on a runner built with an `AppState`. Implements
/// [`FromState`](trait@FromState) and registers it for each field.
///
/// `#[from_state(skip)]` on a field leaves it out (two fields of one type
/// must be told apart this way, or by a type of their own);
/// `#[from_state(crate = path)]` on the struct names a renamed skiplock.
///
/// ```
/// # struct Mailer; struct Index;
/// #[derive(skiplock::FromState)]
/// struct AppState {
///     mailer: Mailer,
///     index: Index,
///     #[from_state(skip)]
///     admin_password: String,
/// }
/// ```
pub use skiplock_derive::FromState;

pub use crate::admin::{
    change_failed_jobs, count_failed_jobs, dead_jobs, discard_job, failed_jobs_page, failing_jobs,
    find_job, pause_queue, paused_queues, queue_status, require_schema, resume_queue, retry_job,
    runners, schedules, search_jobs, select_jobs, throughput, BulkOutcome, JobSearch, JobState,
    MinuteCounts, PageAfter, PausedQueue, SearchPage, RUNNER_FRESH_SECS,
};
pub use crate::connection::{ConnectionMode, JobConnection, PgPool};
pub use crate::errors::{
    AdminError, BoxError, EnqueueError, MigrationError, PerformError, RunnerError,
};
pub use crate::job::{
    EnqueueOptions, Enqueued, Job, JobBatch, JobId, DEFAULT_QUEUE, MAX_CONCURRENCY_KEY_BYTES,
    MAX_CONCURRENT_LIMIT, MAX_UNIQUE_KEY_BYTES,
};
pub use crate::limits::{
    flow_status, set_queue_limits, KeyLimitStatus, QueueLimitStatus, QueueLimits, Rate, RateError,
    MAX_RATE_LIMIT, MAX_RATE_PERIOD, MIN_RATE_PERIOD,
};
pub use crate::maintenance::{
    horizon_holders, rebuild_indexes, HorizonHolder, IndexRebuild, RebuildReport,
};
pub use crate::migrate::{migrate, MigrationReport};
pub use crate::overview::{
    overview, Count, Overview, OverviewRow, StatisticsAge, MAX_QUEUES, READY_BUDGET, READY_HEAD,
    STATE_HEAD,
};
pub use crate::parts::FromState;
pub use crate::periodic::Periodic;
pub use crate::redact::{connection_secrets, redact_connection_string, scrub_secrets};
pub use crate::retry::RetryPolicy;
pub use crate::runner::{
    FailedRun, RunSummary, Runner, RunnerBuilder, RunningRunner, ShutdownReport,
};
pub use crate::storage::bulk::BulkChange;
pub use crate::storage::search::SearchState;
pub use crate::storage::{JobRecord, QueueStatus, RunnerRecord, ScheduleRecord};

/// Registers a hand-written [`Job`] implementation so runners find it by
/// its [`Job::JOB_TYPE`]. `#[background_job]` does this itself.
///
/// ```
/// # use skiplock::{Job, JobConnection, PerformError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Cleanup;
/// # impl Job for Cleanup {
/// #     const JOB_TYPE: &'static str = "cleanup";
/// #     type Context = ();
/// #     fn run(self, _: &(), _: &mut JobConnection<'_>) -> Result<(), PerformError> { Ok(()) }
/// # }
/// skiplock::register_job!(Cleanup);
/// ```
#[macro_export]
macro_rules! register_job {
    ($job:ty) => {
        $crate::__private::inventory::submit! {
            $crate::__private::JobDescriptor::of::<$job>()
        }
    };
}

/// Registers parts of an application's state, each implementing
/// [`FromState`] for that state, so that runners built with the state give
/// them to the jobs that take them. `#[derive(FromState)]` does this itself.
///
/// ```
/// # use skiplock::FromState;
/// # struct Mailer; struct Index;
/// # struct AppState { mailer: Mailer, index: Index }
/// # impl FromState<AppState> for Mailer { fn from_state(s: &AppState) -> &Mailer { &s.mailer } }
/// # impl FromState<AppState> for Index { fn from_state(s: &AppState) -> &Index { &s.index } }
/// skiplock::state_part!(AppState => Mailer, Index);
/// ```
#[macro_export]
macro_rules! state_part {
    ($state:ty => $($part:ty),+ $(,)?) => {
        $(
            $crate::__private::inventory::submit! {
                $crate::__private::PartDescriptor::of::<$state, $part>()
            }
        )+
    };
}

/// Not public API. Used by generated code: the body of an async job's
/// `run`, which needs the `tokio` feature.
#[cfg(feature = "tokio")]
#[doc(hidden)]
#[macro_export]
macro_rules! __async_job {
    ($($body:tt)*) => { $($body)* };
}

/// Not public API. Used by generated code: the body of an async job's
/// `run`, which needs the `tokio` feature.
#[cfg(not(feature = "tokio"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __async_job {
    ($($body:tt)*) => {
        ::core::compile_error!(
            "an `async fn` job needs skiplock's `tokio` feature: \
             skiplock = { version = \"0.1\", features = [\"tokio\"] }"
        )
    };
}

/// Not public API. Used by generated code.
#[doc(hidden)]
pub mod __private {
    pub use crate::admin::releases_counted;
    #[cfg(feature = "tokio")]
    pub use crate::asynchronous::{async_connection, async_pool, run_async};
    pub use crate::errors::{
        job_result, via, IntoPerformError, JobArgument, JobOutput, Probe, Storable, Unstorable,
    };
    pub use crate::job::concurrency_key_of;
    pub use crate::parts::PartDescriptor;
    pub use crate::registry::JobDescriptor;
    pub use inventory;
    pub use serde;
}
