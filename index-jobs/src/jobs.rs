//! The index jobs. They run on the [`INDEX_QUEUE`] queue, which must have
//! exactly one worker: two would fight over the working clone.

use skiplock::{background_job, PerformError};
use tracing::info;

use crate::index::{Change, Index, IndexError, Outcome};
use crate::model::IndexVersion;

/// The queue of the index jobs. Serve it with one worker.
pub const INDEX_QUEUE: &str = "index";

fn apply(index: &Index, change: Change) -> Result<(), PerformError> {
    match index.apply(&change) {
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

/// Adds a published version to the index. A replay of the same version is
/// a no-op; the same version with other content is a permanent error.
#[background_job(name = "index.add_crate", queue = "index", max_backoff = "15m")]
pub fn add_crate(index: &Index, version: IndexVersion) -> Result<(), PerformError> {
    apply(index, Change::Add(version))
}

/// Marks a version yanked. Yanking a yanked version is a no-op; an unknown
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

/// Marks a version not yanked. Unyanking an unyanked version is a no-op;
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
