//! The working clone of the upstream index, through git2.

use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};

use git2::{
    Cred, CredentialType, ErrorCode, FetchOptions, PushOptions, RemoteCallbacks, Repository,
    ResetType, Signature, StatusOptions,
};
use tracing::{debug, info};

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    fn expose(&self) -> &str {
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
    /// a few refusals instead of looping.
    fn callbacks(&self) -> RemoteCallbacks<'_> {
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
                _ => Err(git2::Error::from_str(
                    "the index upstream asks for credentials and none are configured",
                )),
            }
        });
        callbacks
    }
}

/// Where the index lives and who writes to it.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// The upstream: any URL git2 supports, or a local path.
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
}

impl fmt::Debug for IndexRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexRepo")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl IndexRepo {
    /// Opens the working clone, cloning the upstream first if it is missing.
    pub(crate) fn open(config: RepoConfig) -> Result<Self, git2::Error> {
        let repo = match Repository::open(&config.checkout) {
            Ok(repo) => {
                repo.remote_set_url("origin", &config.upstream)?;
                repo
            }
            Err(_) => {
                // A URL may carry a token (`https://token:secret@host/...`).
                let upstream = skiplock::redact_connection_string(&config.upstream);
                info!(%upstream, checkout = %config.checkout.display(), "cloning the index");
                let mut fetch = FetchOptions::new();
                fetch.remote_callbacks(config.credentials.callbacks());
                git2::build::RepoBuilder::new()
                    .branch(&config.branch)
                    .fetch_options(fetch)
                    .clone(&config.upstream, &config.checkout)?
            }
        };
        Ok(IndexRepo { repo, config })
    }

    /// The root of the working tree.
    pub(crate) fn workdir(&self) -> &Path {
        self.repo.workdir().expect("the index clone is not bare")
    }

    /// Fetches the upstream branch and makes the working tree exactly it:
    /// local commits, changes and untracked files are dropped.
    pub(crate) fn sync(&self) -> Result<(), git2::Error> {
        let branch = &self.config.branch;
        let mut remote = self.repo.find_remote("origin")?;
        let mut fetch = FetchOptions::new();
        fetch.remote_callbacks(self.config.credentials.callbacks());
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        remote.fetch(&[&refspec], Some(&mut fetch), None)?;
        let upstream = self
            .repo
            .refname_to_id(&format!("refs/remotes/origin/{branch}"))?;
        let head = format!("refs/heads/{branch}");
        self.repo
            .reference(&head, upstream, true, "sync with upstream")?;
        self.repo.set_head(&head)?;
        let commit = self.repo.find_object(upstream, None)?;
        self.repo.reset(&commit, ResetType::Hard, None)?;
        self.remove_untracked()?;
        debug!(%upstream, "index synced with upstream");
        Ok(())
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

    /// Commits the file at `path` (relative to the root) on the branch, or
    /// its removal when the working tree no longer has it.
    pub(crate) fn commit(&self, path: &Path, message: &str) -> Result<git2::Oid, git2::Error> {
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

    /// Pushes the branch; a non-fast-forward refusal is `Pushed::Rejected`.
    pub(crate) fn push(&self) -> Result<Pushed, git2::Error> {
        let branch = &self.config.branch;
        let mut remote = self.repo.find_remote("origin")?;
        let rejection = std::cell::RefCell::new(None);
        let mut callbacks = self.config.credentials.callbacks();
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
