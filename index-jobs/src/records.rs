//! What the index should say, read from the registry's own records.

use diesel::PgConnection;

use crate::model::IndexVersion;

/// The registry's records of its crates, as the index should show them.
///
/// The registry implements it on its own tables; [`sync_crate`](crate::sync_crate)
/// calls it and writes the crate's file to exactly what it returns. Its
/// publish, yank and unyank handlers change the tables and enqueue
/// `sync_crate` in the same transaction, so whatever order the queue runs
/// (and retries) the jobs in, the last sync writes what the records say.
///
/// ```
/// use diesel::prelude::*;
/// use index_jobs::{IndexVersion, RegistryRecords};
///
/// struct Registry;
///
/// impl RegistryRecords for Registry {
///     fn versions(
///         &self,
///         conn: &mut PgConnection,
///         name: &str,
///     ) -> Result<Vec<IndexVersion>, Box<dyn std::error::Error + Send + Sync>> {
///         // SELECT the crate's versions (as cargo compares names), oldest first,
///         // with their dependencies, features and yanked flag.
///         # let _ = (conn, name);
///         Ok(Vec::new())
///     }
/// }
/// ```
pub trait RegistryRecords: Send + Sync + 'static {
    /// Every version of the crate the index should list, in publish order,
    /// with its yanked flag; none when the registry has no such crate (its
    /// file is then removed). `name` is compared as cargo compares names:
    /// ASCII case-insensitively, `-` equal to `_`
    /// ([`cargo_key`](crate::cargo_key) gives the form to compare). Runs on
    /// a connection of the runner's pool; an error fails the job, which is
    /// retried.
    fn versions(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<Vec<IndexVersion>, Box<dyn std::error::Error + Send + Sync>>;
}
