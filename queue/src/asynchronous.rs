//! `async fn` jobs on tokio, and enqueueing from async code (the `tokio`
//! feature).
//!
//! An async job is claimed, locked, completed and retried by the same
//! engine as any job: the worker thread that claimed it runs its body on
//! the runner's tokio runtime (the one given to
//! [`RunnerBuilder::tokio_handle`](crate::RunnerBuilder::tokio_handle), or
//! a runtime of the runner's own) and waits for it, so a worker still runs
//! one job at a time and a crash still re-runs only what was running. A
//! job that takes `&mut AsyncPgConnection` gets one from a diesel-async
//! pool of the runner's.
//!
//! ```no_run
//! use diesel_async::{AsyncConnection, AsyncPgConnection};
//! use skiplock::{asynchronous, background_job, PerformError};
//!
//! #[background_job(queue = "hooks", timeout = "30s")]
//! async fn call_webhook(conn: &mut AsyncPgConnection, url: String) -> Result<(), PerformError> {
//!     # let _ = (conn, url);
//!     Ok(())
//! }
//!
//! # async fn demo(conn: &mut AsyncPgConnection) -> Result<(), skiplock::BoxError> {
//! // In the application's own async transaction: rolled back with it, or committed with it.
//! conn.transaction(async |conn| {
//!     asynchronous::enqueue(&call_webhook("https://example.com/hook".into()), conn).await?;
//!     Ok::<_, skiplock::BoxError>(())
//! })
//! .await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
pub use diesel_async::AsyncPgConnection;
use tokio::runtime::{Handle, Runtime};

use crate::connection::JobConnection;
use crate::errors::{EnqueueError, PerformError, RunnerError};
use crate::job::{EnqueueOptions, Enqueued, Job};
use crate::storage::{self, NewJob};

/// Stores `job` on `conn` (an async connection), to run as soon as a worker
/// is free. Joins whatever transaction `conn` is in, like
/// [`Job::enqueue`].
pub async fn enqueue<J: Job + Sync>(
    job: &J,
    conn: &mut AsyncPgConnection,
) -> Result<Enqueued, EnqueueError> {
    enqueue_with(job, conn, &EnqueueOptions::new()).await
}

/// [`enqueue`] with other options, like [`Job::enqueue_with`].
pub async fn enqueue_with<J: Job + Sync>(
    job: &J,
    conn: &mut AsyncPgConnection,
    options: &EnqueueOptions,
) -> Result<Enqueued, EnqueueError> {
    let job = NewJob::build(job, options)?;
    Ok(Enqueued::from(storage::insert_job_async(conn, &job).await?))
}

/// The async jobs' connections.
pub(crate) type AsyncPool = Pool<AsyncPgConnection>;

/// Where a runner runs async job bodies, and their connections.
pub(crate) struct AsyncRuntime {
    handle: Handle,
    /// The runner's own runtime, when it was given none.
    own: Option<Runtime>,
    pool: AsyncPool,
}

impl AsyncRuntime {
    /// On `handle`, or on a runtime of its own; `connections` for the jobs.
    pub(crate) fn new(
        handle: Option<Handle>,
        database_url: &str,
        connections: usize,
    ) -> Result<Self, RunnerError> {
        let (handle, own) = match handle {
            Some(handle) => (handle, None),
            None => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("skiplock-async")
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        RunnerError::Config(format!("cannot start a tokio runtime: {e}"))
                    })?;
                (runtime.handle().clone(), Some(runtime))
            }
        };
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .build()
            .map_err(|e| RunnerError::Config(format!("cannot build the async pool: {e}")))?;
        Ok(AsyncRuntime { handle, own, pool })
    }
}

impl Drop for AsyncRuntime {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, and panics in async code.
        if let Some(runtime) = self.own.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for AsyncRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncRuntime")
            .field("own", &self.own.is_some())
            .finish_non_exhaustive()
    }
}

/// Not public API. Used by generated code: runs an async job's body on the
/// runner's runtime and waits for it on the worker's thread, cancelled at
/// `timeout` (its length, and as the user wrote it) as a failure.
pub fn run_async<F: Future<Output = Result<(), PerformError>>>(
    db: &JobConnection<'_>,
    timeout: Option<(Duration, &'static str)>,
    body: F,
) -> Result<(), PerformError> {
    let runtime = runtime(db)?;
    runtime.handle.block_on(async {
        match timeout {
            None => body.await,
            Some((limit, written)) => tokio::time::timeout(limit, body)
                .await
                .unwrap_or_else(|_| Err(PerformError::new(format!("timed out after {written}")))),
        }
    })
}

/// Not public API. Used by generated code: the pool of the async jobs'
/// connections.
pub fn async_pool(db: &JobConnection<'_>) -> Result<AsyncPool, PerformError> {
    Ok(runtime(db)?.pool.clone())
}

/// Not public API. Used by generated code: a connection for an async job.
pub async fn async_connection(pool: &AsyncPool) -> Result<Object<AsyncPgConnection>, PerformError> {
    pool.get()
        .await
        .map_err(|e| PerformError::new(format!("no database connection for the async job: {e}")))
}

fn runtime<'a>(db: &JobConnection<'a>) -> Result<&'a AsyncRuntime, PerformError> {
    db.runtime().ok_or_else(|| {
        PerformError::permanent(
            "this async job ran without a tokio runtime (through `skiplock::testing::perform`?); \
             run it through a runner, or test its `perform` with your own runtime",
        )
    })
}
