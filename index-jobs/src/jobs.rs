//! The index jobs. They run on the [`INDEX_QUEUE`] queue: serve it with
//! `RunnerBuilder::exclusive_queue`, one worker across every runner (two
//! would only push against each other; they stay correct, see
//! [`Index::sparse_dir`](crate::Index::sparse_dir)).

use diesel::PgConnection;
use skiplock::{background_job, PerformError};
use tracing::info;

use crate::index::{Change, Index, IndexError, Outcome};
use crate::model::IndexVersion;

/// The queue of the index jobs. Serve it with `exclusive_queue`: one worker across every runner.
pub const INDEX_QUEUE: &str = "index";

fn apply(index: &Index, change: Change) -> Result<(), PerformError> {
    outcome(index.apply(&change))
}

fn outcome(result: Result<Outcome, IndexError>) -> Result<(), PerformError> {
    match result {
        Ok(Outcome::Committed {
            commit,
            push_attempts,
        }) => {
            info!(%commit, push_attempts, "index job committed");
            Ok(())
        }
        Ok(Outcome::Unchanged) => Ok(()),
        Err(e) if e.is_permanent() => Err(PerformError::permanent(e)),
        Err(e @ IndexError::PushRejected { .. }) => Err(PerformError::new(e)),
        Err(e) => Err(PerformError::new(e)),
    }
}

/// Brings the crate's file to exactly what the registry's records say
/// (read through the [`Index`]'s [`RegistryRecords`](crate::RegistryRecords)),
/// committing only when it changed. Unique per crate name: at most one
/// waits, and one enqueued while another runs runs after it.
///
/// The registry's publish, yank and unyank handlers change their tables
/// and enqueue this job in the same transaction: each run writes the
/// records as they are then, so retries and any order of runs end with the
/// file equal to the records.
#[background_job(
    name = "index.sync_crate",
    queue = "index",
    unique,
    max_backoff = "15m"
)]
pub fn sync_crate(index: &Index, db: &mut PgConnection, name: String) -> Result<(), PerformError> {
    outcome(index.sync_crate(db, &name))
}

/// Adds a published version to the index (a job carrying its state:
/// prefer [`sync_crate`], which converges whatever the order of runs). A replay of the same version is
/// a no-op; the same version with other content is a permanent error.
#[background_job(name = "index.add_crate", queue = "index", max_backoff = "15m")]
pub fn add_crate(index: &Index, version: IndexVersion) -> Result<(), PerformError> {
    apply(index, Change::Add(version))
}

/// Marks a version yanked (prefer [`sync_crate`]). Yanking a yanked version is a no-op; an unknown
/// crate or version is a permanent error.
#[background_job(name = "index.yank", queue = "index", max_backoff = "15m")]
pub fn yank(index: &Index, name: String, version: String) -> Result<(), PerformError> {
    apply(
        index,
        Change::SetYanked {
            name,
            version,
            yanked: true,
        },
    )
}

/// Marks a version not yanked (prefer [`sync_crate`]). Unyanking an unyanked version is a no-op;
/// an unknown crate or version is a permanent error.
#[background_job(name = "index.unyank", queue = "index", max_backoff = "15m")]
pub fn unyank(index: &Index, name: String, version: String) -> Result<(), PerformError> {
    apply(
        index,
        Change::SetYanked {
            name,
            version,
            yanked: false,
        },
    )
}
