//! Applying one change to the index: sync, edit, commit, push, and again
//! after a rejected push.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde_json::Value;
use tracing::{info, warn};

use diesel::PgConnection;

use crate::git::{IndexRepo, Pushed, RepoConfig};
use crate::model::{IndexConfig, IndexVersion};
use crate::path::crate_path;
use crate::records::RegistryRecords;
use crate::sparse::{FillProgress, FillReport, SparseCheck, SparseDir, SparseError, Written};
use crate::validate::{self, cargo_key, InvalidInput};

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
    /// The crate exists under a name cargo takes for the same one (other
    /// letter case, `-` for `_`).
    #[error(
        "the index already has this crate as `{existing}`, which cargo takes for the same name \
         as `{given}` (names compare case-insensitively, `-` equal to `_`); use `{existing}`"
    )]
    NameSpelling {
        /// The name in the index.
        existing: String,
        /// The name given.
        given: String,
    },
    /// The registry's records for the crate are not a valid crate file.
    #[error("the registry's records for `{name}` cannot be written to the index: {problem}")]
    InvalidRecords {
        /// The crate.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Reading the registry's records failed (the job is retried).
    #[error("cannot read the registry's records of `{name}`: {error}")]
    Records {
        /// The crate.
        name: String,
        /// The error, as the registry gave it.
        error: String,
    },
    /// The index was opened without registry records.
    #[error("this index has no registry records to sync from; give it some with `Index::records`")]
    NoRecords,
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
    /// Writing or reading the sparse index failed.
    #[error(transparent)]
    Sparse(#[from] SparseError),
    /// A fill or verification of the sparse index on an index without one.
    #[error("this index has no sparse directory; give it one with `Index::sparse_dir`")]
    NoSparseDir,
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
                | IndexError::NameSpelling { .. }
                | IndexError::InvalidRecords { .. }
                | IndexError::NoRecords
                | IndexError::NoSparseDir
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
    /// The crate's file lists exactly these versions, in this order (none:
    /// the crate has no file). What [`sync_crate`](crate::sync_crate) writes.
    Replace {
        /// The crate.
        name: String,
        /// Its versions, as the registry's records say.
        versions: Vec<IndexVersion>,
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
            Change::Replace { name, versions } => {
                validate::crate_name(name, "crate name")?;
                versions
                    .iter()
                    .try_for_each(|v| validate::index_version(v).map(drop))
            }
        }
    }

    /// Edits the working tree; `None` when it is already in the wanted
    /// state. Returns the file and the commit message (with the crate's
    /// name as the index spells it).
    fn apply_to(&self, root: &Path) -> Result<Option<(PathBuf, String)>, IndexError> {
        match self {
            Change::Add(new) => add_version(root, new),
            Change::SetYanked {
                name,
                version,
                yanked,
            } => set_yanked(root, name, version, *yanked),
            Change::Replace { name, versions } => replace(root, name, versions),
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

/// The index the jobs maintain: a working clone of the upstream (and, if
/// asked, a sparse index directory served over HTTP). This is the context
/// of the index jobs' runner.
pub struct Index {
    repo: Mutex<IndexRepo>,
    max_push_attempts: u32,
    before_push: Option<PushHook>,
    records: Option<Box<dyn RegistryRecords>>,
    sparse: Option<SparseDir>,
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
            records: None,
            sparse: None,
        })
    }

    /// Where [`sync_crate`](crate::sync_crate) reads what the index should
    /// say: the registry's own records.
    pub fn records(mut self, records: impl RegistryRecords) -> Self {
        self.records = Some(Box::new(records));
        self
    }

    /// Also keeps a sparse index (cargo's `sparse+https://` protocol) in
    /// `dir`: the same files as the git index, and `config.json`, for a web
    /// server to serve as static files. Each job writes its crate's file
    /// there once the upstream has it, and again on every later job of the
    /// crate, so a write that failed is repaired by the retry. The crates no
    /// job touched since are not there: fill the directory once with
    /// [`Index::fill_sparse`] (`index-worker fill-sparse`).
    ///
    /// Writers may share the directory (workers of a rolling deploy's
    /// overlap, replicas on one volume, a fill beside them): each file is
    /// written whole under a name of its own, flushed, and renamed into
    /// place (a reader sees the old file or the new one), and a file is
    /// never replaced by the version of an older commit. The writers keep
    /// what they need for that in `dir/.skiplock/` (no need to serve it).
    pub fn sparse_dir(mut self, dir: impl Into<PathBuf>) -> Result<Self, IndexError> {
        let sparse = SparseDir::new(dir.into())?;
        let repo = self.repo.lock().unwrap_or_else(PoisonError::into_inner);
        let head = repo.head_commit()?;
        write_sparse(&sparse, &repo, head, Path::new("config.json"))?;
        drop(repo);
        self.sparse = Some(sparse);
        Ok(self)
    }

    /// Fills the sparse directory from the git index as the upstream has it
    /// now: every crate file and `config.json`, each written unless it is
    /// already there, and files the git index does not have removed, all as
    /// the jobs write them (whole, flushed, never over a newer version).
    /// Run it once after enabling [`Index::sparse_dir`] on an existing index,
    /// and whenever [`Index::verify_sparse`] finds differences. Restartable:
    /// a fill cut short and run again writes only what is still missing.
    /// `progress` is called after each file. The jobs of a runner sharing
    /// this `Index` keep running meanwhile.
    pub fn fill_sparse(
        &self,
        mut progress: impl FnMut(&FillProgress),
    ) -> Result<FillReport, IndexError> {
        let sparse = self.sparse.as_ref().ok_or(IndexError::NoSparseDir)?;
        let head = self
            .repo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fetch()?;
        let report = sparse.fill(&self.repo, head, &mut progress)?;
        info!(
            commit = %report.commit,
            files = report.files,
            written = report.written,
            removed = report.removed,
            newer = report.newer,
            sparse = %sparse.root().display(),
            "sparse index filled"
        );
        Ok(report)
    }

    /// Compares the sparse directory with the git index as the upstream has
    /// it now, writing nothing: the files missing, different, or not in
    /// the git index (differences a worker made by writing a newer version
    /// meanwhile are counted apart, not as faults).
    pub fn verify_sparse(&self) -> Result<SparseCheck, IndexError> {
        let sparse = self.sparse.as_ref().ok_or(IndexError::NoSparseDir)?;
        let repo = self.repo.lock().unwrap_or_else(PoisonError::into_inner);
        let head = repo.fetch()?;
        Ok(sparse.verify(&repo, head)?)
    }

    /// Brings the crate's file in the index to exactly what the registry's
    /// records say (see [`sync_crate`](crate::sync_crate)).
    pub fn sync_crate(&self, conn: &mut PgConnection, name: &str) -> Result<Outcome, IndexError> {
        validate::crate_name(name, "crate name")?;
        let records = self.records.as_ref().ok_or(IndexError::NoRecords)?;
        let versions = records
            .versions(conn, name)
            .map_err(|error| IndexError::Records {
                name: name.to_owned(),
                error: error.to_string(),
            })?;
        self.apply(&Change::Replace {
            name: name.to_owned(),
            versions,
        })
    }

    /// The crate file `change` is about.
    fn path_of(change: &Change) -> Result<PathBuf, IndexError> {
        let name = match change {
            Change::Add(version) => &version.name,
            Change::SetYanked { name, .. } => name,
            Change::Replace { name, versions } => versions.first().map_or(name, |v| &v.name),
        };
        Ok(crate_path(name)?)
    }

    /// The sparse copies of `config.json` and `path` as `commit` has them.
    fn mirror(&self, repo: &IndexRepo, commit: git2::Oid, path: &Path) -> Result<(), IndexError> {
        if let Some(sparse) = &self.sparse {
            write_sparse(sparse, repo, commit, Path::new("config.json"))?;
            write_sparse(sparse, repo, commit, path)?;
        }
        Ok(())
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
            let base = repo.sync()?;
            let Some((path, message)) = change.apply_to(repo.workdir())? else {
                info!("index already up to date; nothing to commit");
                self.mirror(&repo, base, &Self::path_of(change)?)?;
                return Ok(Outcome::Unchanged);
            };
            let commit = repo.commit(&path, &message)?;
            if let Some(hook) = &self.before_push {
                hook();
            }
            match repo.push()? {
                Pushed::Accepted => {
                    info!(%commit, attempt, %message, "index updated");
                    self.mirror(&repo, commit, &path)?;
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
    if let Some(dir) = full.parent() {
        fs::create_dir_all(dir).map_err(io_error(path))?;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(&full, text).map_err(io_error(path))
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

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The sparse copy of `path` as `commit` has it.
fn write_sparse(
    sparse: &SparseDir,
    repo: &IndexRepo,
    commit: git2::Oid,
    path: &Path,
) -> Result<Written, IndexError> {
    let content = repo.file_at(commit, path)?;
    Ok(sparse.write(repo, commit, path, content.as_deref())?)
}

/// The crates in the index that cargo takes for `name` (other case, `-`
/// for `_`): their files and names as their first lines spell them. The
/// file of a name lives under directories named after its first letters,
/// so only the few directories those letters' spellings name are read.
fn spellings(root: &Path, name: &str) -> Result<Vec<(PathBuf, String)>, IndexError> {
    let key = cargo_key(name);
    let variants = |part: &str| -> Vec<String> {
        part.chars().fold(vec![String::new()], |acc, c| {
            let options: &[char] = if c == '-' { &['-', '_'] } else { &[c] };
            acc.iter()
                .flat_map(|prefix| options.iter().map(move |o| format!("{prefix}{o}")))
                .collect()
        })
    };
    let dirs: Vec<PathBuf> = match key.len() {
        1 => vec![PathBuf::from("1")],
        2 => vec![PathBuf::from("2")],
        3 => variants(&key[..1])
            .into_iter()
            .map(|a| Path::new("3").join(a))
            .collect(),
        _ => variants(&key[..2])
            .into_iter()
            .flat_map(|a| {
                variants(&key[2..4])
                    .into_iter()
                    .map(move |b| Path::new(&a).join(b))
            })
            .collect(),
    };
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            if cargo_key(file) != key || !entry.path().is_file() {
                continue;
            }
            let path = dir.join(file);
            let lines = read_lines(root, &path)?.unwrap_or_default();
            let spelled = match parse_lines(&path, &lines)?.into_iter().next() {
                Some((_, name, _)) => name,
                None => file.to_owned(),
            };
            found.push((path, spelled));
        }
    }
    Ok(found)
}

/// Refuses `name` when the index has the crate under another file (`-`
/// for `_`); returns the name as the index spells it, if it has the crate.
fn existing_spelling(root: &Path, name: &str) -> Result<Option<String>, IndexError> {
    let own = crate_path(name)?;
    let mut existing = None;
    for (path, spelled) in spellings(root, name)? {
        if path != own {
            return Err(IndexError::NameSpelling {
                existing: spelled,
                given: name.to_owned(),
            });
        }
        existing = Some(spelled);
    }
    Ok(existing)
}

/// Dependency names looked up in one job: how the index spells each (`None`: not there).
type Spellings = std::collections::HashMap<String, Option<String>>;

/// Writes each dependency on a crate of this index under the name the
/// index spells it with (cargo finds `Abc` in the file of `abc`, and then
/// refuses it). A renamed dependency keeps its name and gets its `package`
/// spelled right; an unrenamed one is renamed everywhere, features included.
fn canonical_dependencies(
    root: &Path,
    version: &mut IndexVersion,
    known: &mut Spellings,
) -> Result<(), IndexError> {
    let mut renames = Vec::new();
    for dep in &mut version.deps {
        let target = dep.package.as_deref().unwrap_or(&dep.name);
        let spelled = match known.get(target) {
            Some(spelled) => spelled.clone(),
            None => {
                let spelled = spellings(root, target)?.into_iter().next().map(|(_, s)| s);
                known.insert(target.to_owned(), spelled.clone());
                spelled
            }
        };
        let Some(spelled) = spelled else {
            continue;
        };
        if spelled == target {
            continue;
        }
        if dep.package.is_some() {
            dep.package = Some(spelled);
        } else {
            renames.push((std::mem::replace(&mut dep.name, spelled.clone()), spelled));
        }
    }
    for (old, new) in renames {
        let rename = |value: &mut String| {
            let rest = value.strip_prefix("dep:").map(|r| ("dep:", r));
            let (prefix, body) = rest.unwrap_or(("", value.as_str()));
            let (head, tail) = match body.find(['/', '?']) {
                Some(at) => body.split_at(at),
                None => (body, ""),
            };
            if head == old {
                *value = format!("{prefix}{new}{tail}");
            }
        };
        let maps = std::iter::once(&mut version.features).chain(version.features2.iter_mut());
        for map in maps {
            map.values_mut().flatten().for_each(rename);
        }
    }
    Ok(())
}

/// What a version line becomes in the index: dependencies spelled as the
/// index spells them, new-syntax features in `features2`, all checked.
fn prepare(
    root: &Path,
    version: &IndexVersion,
    known: &mut Spellings,
) -> Result<IndexVersion, IndexError> {
    let mut version = version.clone();
    canonical_dependencies(root, &mut version, known)?;
    validate::move_new_syntax_features(&mut version);
    validate::index_version(&version)?;
    Ok(version)
}

fn add_version(root: &Path, new: &IndexVersion) -> Result<Option<(PathBuf, String)>, IndexError> {
    let new = &prepare(root, new, &mut Spellings::new())?;
    if let Some(existing) = existing_spelling(root, &new.name)? {
        if existing != new.name {
            return Err(IndexError::NameSpelling {
                existing,
                given: new.name.clone(),
            });
        }
    }
    let path = crate_path(&new.name)?;
    let new_version = validate::version(&new.vers)?;
    let mut lines = read_lines(root, &path)?.unwrap_or_default();
    let new_value = serde_json::to_value(new).expect("index entries serialize");
    for (value, name, vers) in parse_lines(&path, &lines)? {
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
    let message = format!("Updating crate `{}#{}`", new.name, new.vers);
    Ok(Some((path, message)))
}

fn set_yanked(
    root: &Path,
    name: &str,
    version: &str,
    yanked: bool,
) -> Result<Option<(PathBuf, String)>, IndexError> {
    let path = crate_path(name)?;
    let wanted = validate::version(version)?;
    let Some(mut lines) = read_lines(root, &path)? else {
        return Err(IndexError::UnknownCrate(name.to_owned()));
    };
    let parsed = parse_lines(&path, &lines)?;
    let spelled = parsed
        .first()
        .map_or(name, |(_, n, _)| n.as_str())
        .to_owned();
    // The exact version: `1.0.0+build` is not `1.0.0`.
    let Some(index) = parsed
        .iter()
        .position(|(_, _, vers)| *vers == wanted && vers.build == wanted.build)
    else {
        return Err(IndexError::UnknownVersion {
            name: spelled,
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
    let verb = if yanked { "Yanking" } else { "Unyanking" };
    Ok(Some((path, format!("{verb} crate `{spelled}#{version}`"))))
}

/// Makes the crate's file exactly `versions` (see [`Change::Replace`]).
fn replace(
    root: &Path,
    name: &str,
    versions: &[IndexVersion],
) -> Result<Option<(PathBuf, String)>, IndexError> {
    let refuse = |problem: String| IndexError::InvalidRecords {
        name: name.to_owned(),
        problem,
    };
    // A spelling whose file is not the one the index has: refused. (The
    // same file in other letter case is rewritten as the records say.)
    // Records that spell it two ways: the one the index does not have is refused.
    let spelled = versions.first().map_or(name, |v| v.name.as_str());
    let mixed = versions.iter().any(|v| v.name != spelled);
    if let Some((path, existing)) = spellings(root, name)?.into_iter().next() {
        let refused = versions.iter().find(|v| {
            crate_path(&v.name).is_ok_and(|p| p != path) || (mixed && v.name != existing)
        });
        if let Some(other) = refused {
            return Err(IndexError::NameSpelling {
                existing,
                given: other.name.clone(),
            });
        }
    }
    if cargo_key(spelled) != cargo_key(name) {
        return Err(refuse(format!("they are about the crate `{spelled}`")));
    }
    if let Some(other) = versions.iter().find(|v| v.name != spelled) {
        return Err(refuse(format!(
            "they spell the crate both `{spelled}` and `{}`",
            other.name
        )));
    }
    let path = crate_path(spelled)?;
    // Another spelling's file: refused. Ours in other case: rewritten.
    existing_spelling(root, spelled)?;
    let mut lines = Vec::with_capacity(versions.len());
    // Each version without its build metadata, which does not count.
    let mut seen = std::collections::HashMap::with_capacity(versions.len());
    let mut known = Spellings::new();
    for version in versions {
        let version = prepare(root, version, &mut known)?;
        let mut parsed = validate::version(&version.vers)?;
        parsed.build = semver::BuildMetadata::EMPTY;
        if let Some(twin) = seen.insert(parsed, version.vers.clone()) {
            return Err(refuse(format!(
                "`{}` and `{twin}` are one version to cargo (build metadata does not count)",
                version.vers
            )));
        }
        lines.push(serde_json::to_string(&version).expect("index entries serialize"));
    }
    let old = read_lines(root, &path)?;
    let message = sync_message(spelled, old.as_deref().unwrap_or_default(), &lines);
    match old {
        Some(old) if old == lines => return Ok(None),
        None if lines.is_empty() => return Ok(None),
        _ => {}
    }
    if lines.is_empty() {
        fs::remove_file(root.join(&path)).map_err(io_error(&path))?;
    } else {
        write_lines(root, &path, &lines)?;
    }
    Ok(Some((path, message)))
}

/// A commit message saying what a sync changed, in the words of the
/// per-change jobs when it is one version's publish, yank or unyank.
fn sync_message(name: &str, old: &[String], new: &[String]) -> String {
    let fields = |line: &String| {
        let value: Value = serde_json::from_str(line).unwrap_or_default();
        let vers = value["vers"].as_str().unwrap_or_default().to_owned();
        (vers, value["yanked"].as_bool().unwrap_or(false))
    };
    if new.is_empty() {
        return format!("Deleting crate `{name}`");
    }
    // Only the lines that differ need reading.
    let unchanged: std::collections::HashSet<&String> = old.iter().collect();
    let old: std::collections::HashMap<String, bool> = old.iter().map(fields).collect();
    let new: Vec<_> = new
        .iter()
        .filter(|l| !unchanged.contains(l))
        .map(fields)
        .collect();
    let mut added = new.iter().filter(|(v, _)| !old.contains_key(v));
    let mut flipped = new
        .iter()
        .filter(|(v, y)| old.get(v).is_some_and(|oy| oy != y));
    match (added.next(), flipped.next(), added.next(), flipped.next()) {
        (Some((vers, _)), None, None, None) => format!("Updating crate `{name}#{vers}`"),
        (None, Some((vers, true)), None, None) => format!("Yanking crate `{name}#{vers}`"),
        (None, Some((vers, false)), None, None) => format!("Unyanking crate `{name}#{vers}`"),
        _ => format!("Syncing crate `{name}`"),
    }
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
