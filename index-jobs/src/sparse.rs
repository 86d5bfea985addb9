//! The sparse index: the git index's files in a directory a web server
//! serves (cargo's `sparse+https://` protocol), written so that several
//! writers can share it.
//!
//! Every writer (the index workers of a rolling deploy's overlap, replicas
//! on one volume, a fill) follows one protocol, under an exclusive lock on
//! `.skiplock/lock` that each write holds for a few milliseconds:
//!
//! - each file's commit, the one whose tree it was copied from, is kept in
//!   `.skiplock/commits/{path}`; a writer replaces a file only when its own
//!   commit comes after that one in the upstream's history (or the file has
//!   none, or its commit is no longer in the upstream's history, which was
//!   rewritten), so an older version never goes back over a newer one;
//! - the commit is written before the file (a crash between the two leaves
//!   a commit newer than the file, which only holds back writers older than
//!   it; the crate's next job or a fill repairs the file);
//! - every file is written to a temporary file of a name of its own in the
//!   same directory, flushed to disk (`fsync`), renamed over the old one,
//!   and the directory flushed: a reader sees the old file or the new one,
//!   and after a power cut the file is whole.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use fs4::fs_std::FileExt;
use git2::Oid;

use crate::git::IndexRepo;

/// Where the writers' shared state lives, inside the sparse directory.
const STATE: &str = ".skiplock";

/// Why the sparse index could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SparseError {
    /// A file of the sparse directory.
    #[error("cannot write `{path}` in the sparse index {dir}: {source}")]
    Io {
        /// The sparse directory.
        dir: String,
        /// The file, relative to it.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Reading the git index.
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The file was written (or removed).
    Changed,
    /// The file already was this version (its commit may have moved on).
    Same,
    /// A newer version is there, written by another writer: kept.
    Newer,
}

/// How far a fill has come, as its progress callback sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FillProgress {
    /// Files looked at so far.
    pub done: usize,
    /// Files to look at: the git index's, and those only the sparse
    /// directory has.
    pub total: usize,
    /// Files written or removed so far.
    pub changed: usize,
}

/// What a fill did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FillReport {
    /// The upstream commit the sparse directory was filled from.
    pub commit: String,
    /// Files of the git index at that commit (crate files and `config.json`).
    pub files: usize,
    /// Files written (new or different).
    pub written: usize,
    /// Files removed: the sparse directory had them, the git index not.
    pub removed: usize,
    /// Files left as they were because another writer had put a newer
    /// version there.
    pub newer: usize,
}

/// What a verification found: the sparse directory against the git index.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SparseCheck {
    /// The upstream commit it was compared with.
    pub commit: String,
    /// Files of the git index at that commit.
    pub files: usize,
    /// Files the git index has and the sparse directory lacks.
    pub missing: Vec<PathBuf>,
    /// Files whose bytes differ.
    pub different: Vec<PathBuf>,
    /// Files only the sparse directory has.
    pub extra: Vec<PathBuf>,
    /// Differences written from a commit after the one compared with (a
    /// worker wrote a newer version meanwhile): not faults, not listed.
    pub newer: usize,
}

impl SparseCheck {
    /// Whether the sparse directory is exactly the git index.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.different.is_empty() && self.extra.is_empty()
    }
}

/// The sparse directory.
#[derive(Debug, Clone)]
pub(crate) struct SparseDir {
    root: PathBuf,
}

/// Holds the writers' lock while alive.
struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.0);
    }
}

impl SparseDir {
    pub(crate) fn new(root: PathBuf) -> Result<SparseDir, SparseError> {
        let dir = SparseDir { root };
        fs::create_dir_all(dir.root.join(STATE).join("commits"))
            .map_err(dir.io(Path::new(STATE)))?;
        Ok(dir)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn io<'a>(&'a self, path: &'a Path) -> impl FnOnce(io::Error) -> SparseError + 'a {
        move |source| SparseError::Io {
            dir: self.root.display().to_string(),
            path: path.display().to_string(),
            source,
        }
    }

    /// The writers' lock (a file opened for each hold, so that two holders
    /// in one process exclude each other as two processes do).
    fn lock(&self) -> Result<Locked, SparseError> {
        let path = Path::new(STATE).join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(&path))
            .map_err(self.io(&path))?;
        file.lock_exclusive().map_err(self.io(&path))?;
        Ok(Locked(file))
    }

    fn commit_path(path: &Path) -> PathBuf {
        Path::new(STATE).join("commits").join(path)
    }

    /// The commit the file at `path` was copied from, if known.
    fn commit_of(&self, path: &Path) -> Option<Oid> {
        let text = fs::read_to_string(self.root.join(Self::commit_path(path))).ok()?;
        Oid::from_str(text.trim()).ok()
    }

    /// Makes `path` the file of `commit` (`content`; `None`: no file),
    /// unless a newer version is there.
    pub(crate) fn write(
        &self,
        repo: &IndexRepo,
        commit: Oid,
        path: &Path,
        content: Option<&[u8]>,
    ) -> Result<Written, SparseError> {
        let _locked = self.lock()?;
        let theirs = self.commit_of(path);
        if !replaces(repo, theirs, commit)? {
            return Ok(Written::Newer);
        }
        let current = match fs::read(self.root.join(path)) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.io(path)(e)),
        };
        let same = current.as_deref() == content;
        if theirs != Some(commit) {
            // Even for the same bytes: a writer older than this commit
            // but newer than the recorded one must not write its version.
            let hex = format!("{commit}\n");
            let commit_path = Self::commit_path(path);
            self.put(&commit_path, hex.as_bytes())?;
        }
        if same {
            return Ok(Written::Same);
        }
        match content {
            Some(content) => self.put(path, content)?,
            None => self.remove(path)?,
        }
        Ok(Written::Changed)
    }

    /// Writes `path` whole: a temporary file of its own name, flushed,
    /// renamed over the old one, the directory flushed.
    fn put(&self, path: &Path, content: &[u8]) -> Result<(), SparseError> {
        let target = self.root.join(path);
        let dir = target.parent().unwrap_or(&self.root);
        self.make_dirs(path, dir)?;
        let io = self.io(path);
        let write = || -> io::Result<()> {
            let mut temporary = tempfile::Builder::new()
                .prefix(".")
                .suffix(".tmp")
                .permissions(Permissions::from_mode(0o644))
                .tempfile_in(dir)?;
            temporary.write_all(content)?;
            temporary.as_file().sync_all()?;
            temporary.persist(&target).map_err(|e| e.error)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(io)
    }

    fn remove(&self, path: &Path) -> Result<(), SparseError> {
        let target = self.root.join(path);
        match fs::remove_file(&target) {
            Ok(()) => {
                let dir = target.parent().unwrap_or(&self.root);
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(self.io(path))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(path)(e)),
        }
    }

    /// Creates `dir` and the directories above it that are missing, each
    /// one's entry flushed in its parent.
    fn make_dirs(&self, path: &Path, dir: &Path) -> Result<(), SparseError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut at = dir;
        while !at.is_dir() && at != self.root {
            missing.push(at.to_owned());
            at = at.parent().unwrap_or(&self.root);
        }
        fs::create_dir_all(dir).map_err(self.io(path))?;
        for created in missing {
            if let Some(parent) = created.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(self.io(path))?;
            }
        }
        Ok(())
    }

    /// The files a web server serves from the directory: all but the
    /// writers' state and temporary files (names starting with `.`).
    fn served_files(&self) -> Result<Vec<PathBuf>, SparseError> {
        let mut files = Vec::new();
        let walk = walkdir::WalkDir::new(&self.root)
            .min_depth(1)
            .into_iter()
            .filter_entry(|e| !e.file_name().to_string_lossy().starts_with('.'));
        for entry in walk {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&self.root).to_owned();
                SparseError::Io {
                    dir: self.root.display().to_string(),
                    path: path.display().to_string(),
                    source: e.into(),
                }
            })?;
            if entry.file_type().is_file() {
                let path = entry
                    .path()
                    .strip_prefix(&self.root)
                    .unwrap_or(entry.path());
                files.push(path.to_owned());
            }
        }
        Ok(files)
    }

    /// Makes the directory the git index at `commit`: every file written
    /// unless it is already there (so a fill cut short and run again
    /// carries on where it stopped), files the index lacks removed, each
    /// under the writers' protocol. `repo` is taken for each file only, so
    /// that the jobs of a worker sharing it keep running.
    pub(crate) fn fill(
        &self,
        repo: &Mutex<IndexRepo>,
        commit: Oid,
        progress: &mut dyn FnMut(&FillProgress),
    ) -> Result<FillReport, SparseError> {
        let repo = || repo.lock().unwrap_or_else(PoisonError::into_inner);
        let files = shown(repo().files_at(commit)?);
        let known: std::collections::HashSet<&PathBuf> = files.iter().map(|(p, _)| p).collect();
        let extra: Vec<PathBuf> = self
            .served_files()?
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect();
        let mut report = FillReport {
            commit: commit.to_string(),
            files: files.len(),
            written: 0,
            removed: 0,
            newer: 0,
        };
        let total = files.len() + extra.len();
        let wanted = files
            .iter()
            .map(|(path, blob)| (path, Some(*blob)))
            .chain(extra.iter().map(|path| (path, None)));
        for (done, (path, blob)) in (1..).zip(wanted) {
            let repo = repo();
            let content = blob.map(|id| repo.blob(id)).transpose()?;
            // Already there (and its commit known): nothing to take the
            // lock for. A recorded commit older than this one stays: a fill
            // run again rewrites nothing.
            let there = fs::read(self.root.join(path)).ok();
            if there != content || self.commit_of(path).is_none() {
                match self.write(&repo, commit, path, content.as_deref())? {
                    Written::Changed if content.is_some() => report.written += 1,
                    Written::Changed => report.removed += 1,
                    Written::Newer => report.newer += 1,
                    Written::Same => {}
                }
            }
            drop(repo);
            progress(&FillProgress {
                done,
                total,
                changed: report.written + report.removed,
            });
        }
        Ok(report)
    }

    /// Compares the directory with the git index at `commit`, writing nothing.
    pub(crate) fn verify(&self, repo: &IndexRepo, commit: Oid) -> Result<SparseCheck, SparseError> {
        let files = shown(repo.files_at(commit)?);
        let mut check = SparseCheck {
            commit: commit.to_string(),
            files: files.len(),
            missing: Vec::new(),
            different: Vec::new(),
            extra: Vec::new(),
            newer: 0,
        };
        let newer = |path: &Path| {
            self.commit_of(path)
                .is_some_and(|theirs| repo.is_after(theirs, commit).unwrap_or(false))
        };
        let known: std::collections::HashSet<&PathBuf> = files.iter().map(|(p, _)| p).collect();
        for (path, blob) in &files {
            match fs::read(self.root.join(path)) {
                Ok(bytes) if bytes == repo.blob(*blob)? => {}
                _ if newer(path) => check.newer += 1,
                Ok(_) => check.different.push(path.clone()),
                Err(_) => check.missing.push(path.clone()),
            }
        }
        for path in self.served_files()? {
            if !known.contains(&path) {
                if newer(&path) {
                    check.newer += 1;
                } else {
                    check.extra.push(path);
                }
            }
        }
        Ok(check)
    }
}

/// The files of the git index a web server would serve: not those whose
/// path has a part starting with `.` (`.github/..`, `.gitattributes`).
fn shown(files: Vec<(PathBuf, Oid)>) -> Vec<(PathBuf, Oid)> {
    files
        .into_iter()
        .filter(|(path, _)| {
            !path
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        })
        .collect()
}

/// Whether the version of commit `ours` may replace the one recorded as
/// `theirs`: when it comes later in the upstream's history, when none is
/// recorded, or when the recorded commit is no longer in the upstream's
/// history (it was rewritten). A commit this clone does not know, or one
/// unrelated to ours, is looked up in the upstream after a fetch.
fn replaces(repo: &IndexRepo, theirs: Option<Oid>, ours: Oid) -> Result<bool, git2::Error> {
    let Some(theirs) = theirs else {
        return Ok(true);
    };
    if theirs == ours {
        return Ok(true);
    }
    if repo.has_commit(theirs) {
        if repo.is_after(ours, theirs)? {
            return Ok(true);
        }
        if repo.is_after(theirs, ours)? {
            return Ok(false);
        }
    }
    let head = repo.fetch()?;
    let in_history = repo.has_commit(theirs) && (head == theirs || repo.is_after(head, theirs)?);
    Ok(!in_history || repo.is_after(ours, theirs)?)
}
