//! Applying one change to the index: sync, edit, commit, push, and again
//! after a rejected push.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde_json::Value;
use tracing::{info, warn};

use crate::git::{IndexRepo, Pushed, RepoConfig};
use crate::model::{IndexConfig, IndexVersion};
use crate::path::crate_path;
use crate::validate::{self, InvalidInput};

/// Why a change could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The input is not valid; nothing was touched.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// No such crate in the index.
    #[error("crate `{0}` is not in the index")]
    UnknownCrate(String),
    /// The crate has no such version.
    #[error("crate `{name}` has no version `{version}` in the index")]
    UnknownVersion {
        /// The crate.
        name: String,
        /// The missing version.
        version: String,
    },
    /// The version is already there with other content.
    #[error(
        "`{name}` {version} is already in the index with different content; published \
         versions are immutable: publish a new version instead"
    )]
    VersionConflict {
        /// The crate.
        name: String,
        /// The version.
        version: String,
    },
    /// The crate exists under the same name with other letter case.
    #[error("the index already has this crate as `{existing}`; publish it under that exact name, not `{given}`")]
    NameCase {
        /// The name in the index.
        existing: String,
        /// The name given.
        given: String,
    },
    /// A line already in the index is not a valid entry.
    #[error("line {line} of `{path}` in the index is not a valid index entry ({error}); fix the index by hand")]
    CorruptLine {
        /// The file, relative to the index root.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        error: String,
    },
    /// A git operation failed (network, credentials, upstream).
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// Reading or writing the working tree failed.
    #[error("cannot write `{path}` in the index checkout: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Other writers kept moving the upstream.
    #[error(
        "the upstream rejected the push {attempts} times (last: {reason}); the job will be retried"
    )]
    PushRejected {
        /// Pushes tried.
        attempts: u32,
        /// The last rejection.
        reason: String,
    },
}

impl IndexError {
    /// Whether retrying the same change can never succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            IndexError::Invalid(_)
                | IndexError::UnknownCrate(_)
                | IndexError::UnknownVersion { .. }
                | IndexError::VersionConflict { .. }
                | IndexError::NameCase { .. }
        )
    }
}

/// One change to the index, stated as the state to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This version is in the index (with this content).
    Add(IndexVersion),
    /// This version is yanked (`true`) or not (`false`).
    SetYanked {
        /// The crate.
        name: String,
        /// The version.
        version: String,
        /// Yanked or not.
        yanked: bool,
    },
}

impl Change {
    /// Checks the input, before anything touches the disk.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        match self {
            Change::Add(version) => validate::index_version(version).map(drop),
            Change::SetYanked { name, version, .. } => {
                validate::crate_name(name, "crate name")?;
                validate::version(version).map(drop)
            }
        }
    }

    fn commit_message(&self) -> String {
        match self {
            Change::Add(v) => format!("Updating crate `{}#{}`", v.name, v.vers),
            Change::SetYanked {
                name,
                version,
                yanked: true,
            } => format!("Yanking crate `{name}#{version}`"),
            Change::SetYanked {
                name,
                version,
                yanked: false,
            } => format!("Unyanking crate `{name}#{version}`"),
        }
    }

    /// Edits the working tree; `None` when it is already in the wanted state.
    fn apply_to(&self, root: &Path) -> Result<Option<PathBuf>, IndexError> {
        match self {
            Change::Add(new) => add_version(root, new),
            Change::SetYanked {
                name,
                version,
                yanked,
            } => set_yanked(root, name, version, *yanked),
        }
    }
}

/// What [`Index::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The change was committed and pushed.
    Committed {
        /// The commit id.
        commit: String,
        /// Pushes it took (more than 1 after rejections).
        push_attempts: u32,
    },
    /// The index already was in the wanted state: nothing committed.
    Unchanged,
}

/// Called after the local commit and before each push (see [`Index::before_push`]).
pub type PushHook = Box<dyn Fn() + Send + Sync>;

/// The index the jobs maintain: a working clone of the upstream. This is
/// the context of the index jobs' runner.
pub struct Index {
    repo: Mutex<IndexRepo>,
    max_push_attempts: u32,
    before_push: Option<PushHook>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("max_push_attempts", &self.max_push_attempts)
            .finish_non_exhaustive()
    }
}

impl Index {
    /// Opens (or clones) the working clone and syncs it with the upstream.
    pub fn open(config: RepoConfig) -> Result<Index, IndexError> {
        let repo = IndexRepo::open(config)?;
        repo.sync()?;
        Ok(Index {
            repo: Mutex::new(repo),
            max_push_attempts: 5,
            before_push: None,
        })
    }

    /// How many pushes one change tries before the job fails and the
    /// queue's backoff takes over (default 5).
    pub fn max_push_attempts(mut self, attempts: u32) -> Self {
        self.max_push_attempts = attempts.max(1);
        self
    }

    /// Runs `hook` after each local commit, just before its push (for
    /// tests that race another writer, or for metrics).
    pub fn before_push(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.before_push = Some(Box::new(hook));
        self
    }

    /// Brings the upstream index to the state `change` describes: fetch and
    /// hard-reset, edit, commit, push; after a rejected push, all of it
    /// again, up to the configured number of pushes. A change already in
    /// place commits nothing.
    pub fn apply(&self, change: &Change) -> Result<Outcome, IndexError> {
        change.validate()?;
        let repo = self.repo.lock().unwrap_or_else(PoisonError::into_inner);
        let mut last_rejection = String::new();
        for attempt in 1..=self.max_push_attempts {
            repo.sync()?;
            let Some(path) = change.apply_to(repo.workdir())? else {
                info!("index already up to date; nothing to commit");
                return Ok(Outcome::Unchanged);
            };
            let commit = repo.commit(&path, &change.commit_message())?;
            if let Some(hook) = &self.before_push {
                hook();
            }
            match repo.push()? {
                Pushed::Accepted => {
                    info!(%commit, attempt, message = %change.commit_message(), "index updated");
                    return Ok(Outcome::Committed {
                        commit: commit.to_string(),
                        push_attempts: attempt,
                    });
                }
                Pushed::Rejected(reason) => {
                    warn!(attempt, %reason, "push rejected: the upstream moved; fetching and re-applying");
                    last_rejection = reason;
                }
            }
        }
        Err(IndexError::PushRejected {
            attempts: self.max_push_attempts,
            reason: last_rejection,
        })
    }
}

/// Reads a crate file as lines; `None` if the crate has no file.
fn read_lines(root: &Path, path: &Path) -> Result<Option<Vec<String>>, IndexError> {
    match fs::read_to_string(root.join(path)) {
        Ok(text) => Ok(Some(
            text.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IndexError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn write_lines(root: &Path, path: &Path, lines: &[String]) -> Result<(), IndexError> {
    let full = root.join(path);
    let io_error = |source| IndexError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = full.parent() {
        fs::create_dir_all(dir).map_err(io_error)?;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(&full, text).map_err(io_error)
}

/// Each line parsed as a JSON object, with its name and version.
fn parse_lines(
    path: &Path,
    lines: &[String],
) -> Result<Vec<(Value, String, semver::Version)>, IndexError> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let corrupt = |error: String| IndexError::CorruptLine {
                path: path.display().to_string(),
                line: i + 1,
                error,
            };
            let value: Value = serde_json::from_str(line).map_err(|e| corrupt(e.to_string()))?;
            let name = value["name"]
                .as_str()
                .ok_or_else(|| corrupt("no `name`".into()))?
                .to_owned();
            let vers = value["vers"]
                .as_str()
                .ok_or_else(|| corrupt("no `vers`".into()))?;
            let vers = semver::Version::parse(vers).map_err(|e| corrupt(e.to_string()))?;
            Ok((value, name, vers))
        })
        .collect()
}

/// The same version for the index: build metadata does not make another one.
fn same_version(a: &semver::Version, b: &semver::Version) -> bool {
    (a.major, a.minor, a.patch, &a.pre) == (b.major, b.minor, b.patch, &b.pre)
}

fn without_yanked(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.shift_remove("yanked");
    }
    value
}

fn add_version(root: &Path, new: &IndexVersion) -> Result<Option<PathBuf>, IndexError> {
    let path = crate_path(&new.name)?;
    let new_version = validate::version(&new.vers)?;
    let mut lines = read_lines(root, &path)?.unwrap_or_default();
    let new_value = serde_json::to_value(new).expect("index entries serialize");
    for (value, name, vers) in parse_lines(&path, &lines)? {
        if name != new.name {
            return Err(IndexError::NameCase {
                existing: name,
                given: new.name.clone(),
            });
        }
        if same_version(&vers, &new_version) {
            // A replay of the same publish (perhaps yanked since): nothing to do.
            if without_yanked(value) == without_yanked(new_value.clone()) {
                return Ok(None);
            }
            return Err(IndexError::VersionConflict {
                name,
                version: new.vers.clone(),
            });
        }
    }
    lines.push(serde_json::to_string(new).expect("index entries serialize"));
    write_lines(root, &path, &lines)?;
    Ok(Some(path))
}

fn set_yanked(
    root: &Path,
    name: &str,
    version: &str,
    yanked: bool,
) -> Result<Option<PathBuf>, IndexError> {
    let path = crate_path(name)?;
    let wanted = validate::version(version)?;
    let Some(mut lines) = read_lines(root, &path)? else {
        return Err(IndexError::UnknownCrate(name.to_owned()));
    };
    let parsed = parse_lines(&path, &lines)?;
    let Some(index) = parsed
        .iter()
        .position(|(_, _, vers)| same_version(vers, &wanted))
    else {
        return Err(IndexError::UnknownVersion {
            name: name.to_owned(),
            version: version.to_owned(),
        });
    };
    let mut value = parsed[index].0.clone();
    if value["yanked"].as_bool() == Some(yanked) {
        return Ok(None);
    }
    value["yanked"] = Value::Bool(yanked);
    // Only this line changes; every other line stays byte for byte.
    lines[index] = serde_json::to_string(&value).expect("JSON values serialize");
    write_lines(root, &path, &lines)?;
    Ok(Some(path))
}

/// Creates a bare repository at `path` holding a new, empty index: one
/// commit on `branch` with `config.json`. For demos and tests; production
/// indexes already exist.
pub fn create_bare_index(
    path: &Path,
    config: &IndexConfig,
    branch: &str,
) -> Result<(), git2::Error> {
    let repo = git2::Repository::init_bare(path)?;
    let json = serde_json::to_string_pretty(config).expect("config serializes");
    let blob = repo.blob(json.as_bytes())?;
    let mut tree = repo.treebuilder(None)?;
    tree.insert("config.json", blob, 0o100644)?;
    let tree = repo.find_tree(tree.write()?)?;
    let author = git2::Signature::now("index setup", "index@localhost")?;
    let head = format!("refs/heads/{branch}");
    repo.commit(
        Some(&head),
        &author,
        &author,
        "Initialize the index",
        &tree,
        &[],
    )?;
    repo.set_head(&head)?;
    Ok(())
}
