//! Background jobs that maintain a crates.io-format git registry index:
//! [`add_crate`], [`yank`] and [`unyank`], on the [`INDEX_QUEUE`] queue.
//!
//! A registry's web handler records a version in its database and enqueues
//! the matching job in the same transaction; a runner serving [`INDEX_QUEUE`]
//! as an exclusive queue (one worker across every runner) with an [`Index`]
//! as context brings the git index
//! up to date: fetch and hard-reset, converge the crate's file to the wanted
//! state (nothing to commit when it already is), commit, push, and after a
//! rejected push start over, a bounded number of times.
//!
//! ```no_run
//! use index_jobs::{Credentials, Index, RepoConfig, INDEX_QUEUE};
//!
//! let index = Index::open(RepoConfig {
//!     upstream: "https://git.example.com/registry/index.git".into(),
//!     checkout: "/var/lib/registry/index".into(),
//!     branch: "master".into(),
//!     author_name: "registry".into(),
//!     author_email: "registry@example.com".into(),
//!     credentials: Credentials::from_env("https://git.example.com"),
//! })?;
//! let runner = skiplock::Runner::builder(index)
//!     .database_url("postgres://registry@db/registry")
//!     .exclusive_queue(INDEX_QUEUE)
//!     .build()?;
//! let running = runner.start();
//! # running.shutdown(std::time::Duration::from_secs(30));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod git;
mod index;
mod jobs;
mod model;
mod path;
mod records;
mod remote;
mod sparse;
mod validate;

pub use crate::git::{Credentials, RepoConfig, Secret};
pub use crate::index::{create_bare_index, Change, Index, IndexError, Outcome, PushHook};
pub use crate::jobs::{
    add_crate, sync_crate, unyank, yank, AddCrateJob, SyncCrateJob, UnyankJob, YankJob, INDEX_QUEUE,
};
pub use crate::model::{DependencyKind, IndexConfig, IndexDependency, IndexVersion};
pub use crate::path::crate_path;
pub use crate::records::RegistryRecords;
pub use crate::sparse::{FillProgress, FillReport, SparseCheck, SparseError};
pub use crate::validate::{cargo_key, InvalidInput, RESERVED_NAMES};
