//! The working clone of the upstream index, through git2.

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use git2::{
    Cred, CredentialType, ErrorCode, FetchOptions, Oid, PushOptions, RemoteCallbacks, Repository,
    ResetType, Signature, StatusOptions,
};
use tracing::{debug, info, warn};

use crate::remote::{self, Upstream};

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to authenticate to the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// No credentials (a local path, or a public https URL for fetching).
    #[default]
    None,
    /// An https token, sent as the password of `username`.
    Token {
        /// The user name (many hosts accept any, e.g. `x-access-token`).
        username: String,
        /// The token.
        token: Secret,
    },
    /// An ssh private key file.
    SshKey {
        /// The ssh user (usually `git`).
        username: String,
        /// Path of the private key.
        private_key: PathBuf,
        /// Its passphrase, if any.
        passphrase: Option<Secret>,
    },
    /// Keys from the running ssh-agent.
    SshAgent,
}

impl Credentials {
    /// Reads credentials from the environment:
    /// `INDEX_GIT_TOKEN` (with `INDEX_GIT_USERNAME`, default `x-access-token`) for https;
    /// `INDEX_GIT_SSH_KEY` (a key file, with `INDEX_GIT_SSH_PASSPHRASE`) for ssh;
    /// otherwise the ssh-agent for `ssh://` and `git@` URLs, and none for the rest.
    pub fn from_env(url: &str) -> Credentials {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(token) = var("INDEX_GIT_TOKEN") {
            return Credentials::Token {
                username: var("INDEX_GIT_USERNAME").unwrap_or_else(|| "x-access-token".into()),
                token: Secret::new(token),
            };
        }
        if let Some(key) = var("INDEX_GIT_SSH_KEY") {
            return Credentials::SshKey {
                username: var("INDEX_GIT_SSH_USERNAME").unwrap_or_else(|| "git".into()),
                private_key: key.into(),
                passphrase: var("INDEX_GIT_SSH_PASSPHRASE").map(Secret::new),
            };
        }
        if url.starts_with("ssh://") || url.starts_with("git@") {
            return Credentials::SshAgent;
        }
        Credentials::None
    }

    /// Callbacks that answer libgit2's credential requests, giving up after
    /// a few refusals instead of looping. `login` is the user info the
    /// upstream URL carried, used when no credentials are configured.
    fn callbacks<'a>(&'a self, login: Option<&'a (Secret, Secret)>) -> RemoteCallbacks<'a> {
        let mut callbacks = RemoteCallbacks::new();
        let tries = Cell::new(0);
        callbacks.credentials(move |_url, username_from_url, allowed| {
            tries.set(tries.get() + 1);
            if tries.get() > 3 {
                return Err(git2::Error::from_str(
                    "authentication to the index upstream failed; check the credentials \
                     (INDEX_GIT_TOKEN or INDEX_GIT_SSH_KEY)",
                ));
            }
            match self {
                Credentials::Token { username, token }
                    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
                {
                    Cred::userpass_plaintext(username, token.expose())
                }
                Credentials::SshKey {
                    username,
                    private_key,
                    passphrase,
                } => Cred::ssh_key(
                    username_from_url.unwrap_or(username),
                    None,
                    private_key,
                    passphrase.as_ref().map(Secret::expose),
                ),
                Credentials::SshAgent => {
                    Cred::ssh_key_from_agent(username_from_url.unwrap_or("git"))
                }
                Credentials::None if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
                    match login {
                        Some((user, password)) => {
                            Cred::userpass_plaintext(user.expose(), password.expose())
                        }
                        None => Err(git2::Error::from_str(
                            "the index upstream asks for credentials and none are configured",
                        )),
                    }
                }
                _ => Err(git2::Error::from_str(
                    "the index upstream asks for credentials and none are configured",
                )),
            }
        });
        callbacks
    }
}

/// Where the index lives and who writes to it.
#[derive(Clone)]
pub struct RepoConfig {
    /// The upstream: any URL git2 supports, or a local path. User info in
    /// an http(s) URL (`https://TOKEN@host/..`, `https://user:TOKEN@host/..`)
    /// is taken out: git and the logs see the address without it, and it
    /// is given to the server through the credential callback when no
    /// [`Credentials`] are configured.
    pub upstream: String,
    /// The directory of the local working clone (created if missing).
    pub checkout: PathBuf,
    /// The branch cargo reads (`master` for most indexes).
    pub branch: String,
    /// The commit author's name.
    pub author_name: String,
    /// The commit author's email.
    pub author_email: String,
    /// How to authenticate.
    pub credentials: Credentials,
}

impl fmt::Debug for RepoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoConfig")
            .field("upstream", &remote::shown(&self.upstream))
            .field("checkout", &self.checkout)
            .field("branch", &self.branch)
            .field("author_name", &self.author_name)
            .field("author_email", &self.author_email)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The upstream accepted it.
    Accepted,
    /// The upstream moved meanwhile: fetch, reset, re-apply.
    Rejected(String),
}

/// The local working clone.
pub(crate) struct IndexRepo {
    repo: Repository,
    config: RepoConfig,
    upstream: Upstream,
    /// Held for the clone's life: one process per checkout.
    _checkout: File,
}

impl fmt::Debug for IndexRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexRepo")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl IndexRepo {
    /// Opens the working clone, cloning the upstream first if it is
    /// missing, and takes it for this process (waiting, and saying so,
    /// while another process has it).
    pub(crate) fn open(config: RepoConfig) -> Result<Self, git2::Error> {
        let upstream =
            Upstream::parse(&config.upstream).map_err(|e| git2::Error::from_str(&e.to_string()))?;
        let repo = match Repository::open(&config.checkout) {
            Ok(repo) => {
                // Also takes out a token an older release wrote there.
                repo.remote_set_url("origin", &upstream.address)?;
                repo
            }
            Err(_) => {
                info!(upstream = %upstream.address, checkout = %config.checkout.display(), "cloning the index");
                let mut fetch = FetchOptions::new();
                fetch.remote_callbacks(config.credentials.callbacks(upstream.login.as_ref()));
                git2::build::RepoBuilder::new()
                    .branch(&config.branch)
                    .fetch_options(fetch)
                    .clone(&upstream.address, &config.checkout)?
            }
        };
        let checkout = take_checkout(&repo, &config.checkout)?;
        Ok(IndexRepo {
            repo,
            config,
            upstream,
            _checkout: checkout,
        })
    }

    /// The root of the working tree.
    pub(crate) fn workdir(&self) -> &Path {
        self.repo.workdir().expect("the index clone is not bare")
    }

    /// Fetches the upstream branch into `refs/remotes/origin/{branch}` and
    /// returns where it is.
    pub(crate) fn fetch(&self) -> Result<Oid, git2::Error> {
        let branch = &self.config.branch;
        let mut remote = self.repo.find_remote("origin")?;
        let mut fetch = FetchOptions::new();
        fetch.remote_callbacks(
            self.config
                .credentials
                .callbacks(self.upstream.login.as_ref()),
        );
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        remote.fetch(&[&refspec], Some(&mut fetch), None)?;
        self.repo
            .refname_to_id(&format!("refs/remotes/origin/{branch}"))
    }

    /// Fetches the upstream branch and makes the working tree exactly it:
    /// local commits, changes and untracked files are dropped. Returns the
    /// commit.
    pub(crate) fn sync(&self) -> Result<Oid, git2::Error> {
        let upstream = self.fetch()?;
        let head = format!("refs/heads/{}", self.config.branch);
        self.repo
            .reference(&head, upstream, true, "sync with upstream")?;
        self.repo.set_head(&head)?;
        let commit = self.repo.find_object(upstream, None)?;
        self.repo.reset(&commit, ResetType::Hard, None)?;
        self.remove_untracked()?;
        debug!(%upstream, "index synced with upstream");
        Ok(upstream)
    }

    fn remove_untracked(&self) -> Result<(), git2::Error> {
        let mut options = StatusOptions::new();
        options.include_untracked(true).recurse_untracked_dirs(true);
        for entry in self.repo.statuses(Some(&mut options))?.iter() {
            if entry.status().is_wt_new() {
                if let Some(path) = entry.path() {
                    let _ = std::fs::remove_file(self.workdir().join(path));
                }
            }
        }
        Ok(())
    }

    /// The commit checked out.
    pub(crate) fn head_commit(&self) -> Result<Oid, git2::Error> {
        Ok(self.repo.head()?.peel_to_commit()?.id())
    }

    /// The file at `path` in `commit`'s tree, if it has one.
    pub(crate) fn file_at(&self, commit: Oid, path: &Path) -> Result<Option<Vec<u8>>, git2::Error> {
        let tree = self.repo.find_commit(commit)?.tree()?;
        let entry = match tree.get_path(path) {
            Ok(entry) => entry,
            Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match entry.to_object(&self.repo)?.into_blob() {
            Ok(blob) => Ok(Some(blob.content().to_vec())),
            Err(_) => Ok(None),
        }
    }

    /// Every file of `commit`'s tree, as paths from the root with their
    /// blob ids, in the tree's order.
    pub(crate) fn files_at(&self, commit: Oid) -> Result<Vec<(PathBuf, Oid)>, git2::Error> {
        let tree = self.repo.find_commit(commit)?.tree()?;
        let mut files = Vec::new();
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                if let Some(name) = entry.name() {
                    files.push((Path::new(dir).join(name), entry.id()));
                }
            }
            git2::TreeWalkResult::Ok
        })?;
        Ok(files)
    }

    /// The content of blob `id`.
    pub(crate) fn blob(&self, id: Oid) -> Result<Vec<u8>, git2::Error> {
        Ok(self.repo.find_blob(id)?.content().to_vec())
    }

    /// Whether this clone has `commit`.
    pub(crate) fn has_commit(&self, commit: Oid) -> bool {
        self.repo.find_commit(commit).is_ok()
    }

    /// Whether `commit` comes after `ancestor` in history (not equal).
    pub(crate) fn is_after(&self, commit: Oid, ancestor: Oid) -> Result<bool, git2::Error> {
        self.repo.graph_descendant_of(commit, ancestor)
    }

    /// Commits the file at `path` (relative to the root) on the branch, or
    /// its removal when the working tree no longer has it.
    pub(crate) fn commit(&self, path: &Path, message: &str) -> Result<Oid, git2::Error> {
        let mut index = self.repo.index()?;
        if self.workdir().join(path).exists() {
            index.add_path(path)?;
        } else {
            index.remove_path(path)?;
        }
        index.write()?;
        let tree = self.repo.find_tree(index.write_tree()?)?;
        let parent = self.repo.head()?.peel_to_commit()?;
        let author = Signature::now(&self.config.author_name, &self.config.author_email)?;
        self.repo
            .commit(Some("HEAD"), &author, &author, message, &tree, &[&parent])
    }

    /// Pushes the branch (a commit on top of the upstream's last fetched
    /// state); a refusal because the upstream moved is `Pushed::Rejected`.
    pub(crate) fn push(&self) -> Result<Pushed, git2::Error> {
        if let Some(path) = self.upstream.local_path() {
            return self.push_to_path(&path);
        }
        let branch = &self.config.branch;
        let mut remote = self.repo.find_remote("origin")?;
        let rejection = std::cell::RefCell::new(None);
        let mut callbacks = self
            .config
            .credentials
            .callbacks(self.upstream.login.as_ref());
        callbacks.push_update_reference(|refname, status| {
            if let Some(status) = status {
                *rejection.borrow_mut() = Some(format!("{refname}: {status}"));
            }
            Ok(())
        });
        let mut options = PushOptions::new();
        options.remote_callbacks(callbacks);
        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
        match remote.push(&[&refspec], Some(&mut options)) {
            Ok(()) => {}
            Err(e) if e.code() == ErrorCode::NotFastForward => {
                return Ok(Pushed::Rejected(e.message().to_owned()))
            }
            Err(e) => return Err(e),
        }
        drop(options);
        Ok(match rejection.into_inner() {
            Some(reason) => Pushed::Rejected(reason),
            None => Pushed::Accepted,
        })
    }

    /// A push to an upstream on this machine. libgit2's local transport
    /// moves the branch whatever it points at (a push that would not
    /// fast-forward replaces the other writer's commits), so this one
    /// copies the new objects into the upstream and moves the branch
    /// only if it still points at the commit ours was made on top of:
    /// a compare-and-swap under the ref's lock file, which git's own
    /// `receive-pack` takes too.
    fn push_to_path(&self, path: &Path) -> Result<Pushed, git2::Error> {
        let upstream = Repository::open(path)?;
        let commit = self.repo.head()?.peel_to_commit()?;
        let expected = commit.parent_id(0)?;
        copy_objects(&self.repo, &upstream, &commit)?;
        let branch = format!("refs/heads/{}", self.config.branch);
        let message = format!("push: {}", commit.summary().unwrap_or_default());
        let moved = upstream
            .reference_matching(&branch, commit.id(), true, expected, &message)
            .map(drop);
        match moved {
            Ok(()) => Ok(Pushed::Accepted),
            Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Locked) => Ok(
                Pushed::Rejected(format!("{branch}: the upstream moved ({})", e.message())),
            ),
            Err(e) => Err(e),
        }
    }
}

/// Copies into `to` the objects of `commit` that it lacks: the commit, and
/// the trees and blobs under it that are new (a tree `to` has comes with
/// everything under it). Children first, the commit last.
fn copy_objects(
    from: &Repository,
    to: &Repository,
    commit: &git2::Commit<'_>,
) -> Result<(), git2::Error> {
    let (source, target) = (from.odb()?, to.odb()?);
    let copy = |id: Oid| -> Result<(), git2::Error> {
        let object = source.read(id)?;
        target.write(object.kind(), object.data())?;
        Ok(())
    };
    let mut trees = vec![(commit.tree_id(), false)];
    while let Some((id, expanded)) = trees.pop() {
        if target.exists(id) {
            continue;
        }
        if expanded {
            copy(id)?;
            continue;
        }
        trees.push((id, true));
        for entry in from.find_tree(id)?.iter() {
            match entry.kind() {
                Some(git2::ObjectType::Tree) => trees.push((entry.id(), false)),
                _ if !target.exists(entry.id()) => copy(entry.id())?,
                _ => {}
            }
        }
    }
    copy(commit.id())
}

/// Locks the checkout for this process: a lock file in its `.git`, held
/// while the clone is open (released by the kernel when the process ends).
fn take_checkout(repo: &Repository, checkout: &Path) -> Result<File, git2::Error> {
    let io = |e: std::io::Error| {
        git2::Error::from_str(&format!(
            "cannot lock the index checkout {}: {e}",
            checkout.display()
        ))
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(repo.path().join("skiplock-checkout.lock"))
        .map_err(io)?;
    if !file.try_lock_exclusive().map_err(io)? {
        warn!(
            checkout = %checkout.display(),
            "another process has this index checkout open; waiting until it ends \
             (give each index worker, and each sparse fill, a checkout of its own)"
        );
        file.lock_exclusive().map_err(io)?;
        info!(checkout = %checkout.display(), "the index checkout is free");
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let credentials = Credentials::Token {
            username: "x-access-token".into(),
            token: Secret::new("ghp_s3cret"),
        };
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("Secret(***)"));
    }
}
