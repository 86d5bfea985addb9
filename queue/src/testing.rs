//! Helpers for an application's tests: run what a handler enqueued (delays
//! and backoffs skipped forward), look at what it enqueued, run a job's
//! body without a database.
//!
//! ```no_run
//! use skiplock::{background_job, testing, Job, PerformError, Runner};
//!
//! #[derive(Default)]
//! struct Mailer;
//!
//! #[background_job(queue = "mail", backoff = "1h")]
//! fn send_welcome_mail(mailer: &Mailer, user_id: i64) -> Result<(), PerformError> {
//!     # let _ = (mailer, user_id);
//!     Ok(())
//! }
//!
//! # fn signup(conn: &mut diesel::PgConnection, user_id: i64) -> Result<(), skiplock::BoxError> {
//! #     send_welcome_mail(user_id).enqueue(conn)?; Ok(()) }
//! # fn demo(conn: &mut diesel::PgConnection, url: &str) -> Result<(), skiplock::BoxError> {
//! signup(conn, 42)?; // the handler under test enqueues a `SendWelcomeMailJob`
//!
//! // What it enqueued, typed: the struct `#[background_job]` generated.
//! let mails = testing::enqueued::<SendWelcomeMailJob>(conn)?;
//! assert_eq!(mails.len(), 1);
//! assert_eq!(mails[0].user_id, 42);
//!
//! // Its body alone, without a database.
//! for mail in mails {
//!     testing::perform(mail, &Mailer)?;
//! }
//!
//! // Or every job, now, through a runner: a retry an hour away runs at once.
//! let runner = Runner::builder(Mailer).database_url(url).queue("mail", 1).build()?;
//! let summary = testing::run_all(&runner)?;
//! assert!(summary.failed.is_empty(), "{:?}", summary.failed);
//! # Ok(()) }
//! ```

use std::any::Any;

use diesel::PgConnection;

use crate::connection::JobConnection;
use crate::errors::{BoxError, PerformError, RunnerError};
use crate::job::Job;
use crate::runner::{RunSummary, Runner};
use crate::storage;

/// Runs, on the calling thread, every job of the runner's queues that is
/// waiting, the scheduled ones included: delayed jobs and retries waiting
/// out a backoff are made due now instead of slept for. Like
/// [`Runner::run_pending`], a job that fails is not run again by the same
/// call: call again to run its next attempt, at once.
pub fn run_all<C: Any + Send + Sync>(runner: &Runner<C>) -> Result<RunSummary, RunnerError> {
    let mut conn = runner.connection()?;
    storage::make_scheduled_due(&mut conn, &runner.queue_names())?;
    runner.run_pending()
}

/// The jobs of type `J` that are enqueued and will run (not dead), oldest
/// first, deserialized: what a handler under test enqueued.
pub fn enqueued<J: Job>(conn: &mut PgConnection) -> Result<Vec<J>, BoxError> {
    storage::waiting_payloads(conn, J::JOB_TYPE)?
        .into_iter()
        .map(|payload| serde_json::from_value(payload).map_err(BoxError::from))
        .collect()
}

/// Runs one job's body with `context`, without a database: a job that asks
/// for its connection gets an error that says so.
pub fn perform<J: Job>(job: J, context: &J::Context) -> Result<(), PerformError> {
    job.run(context, &mut JobConnection::none())
}
