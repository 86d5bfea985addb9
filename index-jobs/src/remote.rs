//! The upstream's address, split from the credentials it may carry.
//!
//! `https://TOKEN@host/index.git` and `https://user:TOKEN@host/index.git`
//! are how hosts tell users to put a token in a git URL. Given to libgit2
//! as they are, the token is written into the checkout's `.git/config`
//! (`remote.origin.url`) and shows wherever the URL is printed. Here the
//! user info is taken out: libgit2 gets the bare address, and the user and
//! password come back through the credential callback when the server
//! asks for them.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

use crate::git::Secret;

/// An upstream address without credentials, and those it carried.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    /// What libgit2 and the logs see: no password, no token.
    pub(crate) address: String,
    /// The user info of an http(s) URL: a user (perhaps a token) and a password.
    pub(crate) login: Option<(Secret, Secret)>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("address", &self.address)
            .field("login", &self.login.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why an upstream URL was refused. Never holds the URL itself: a URL that
/// does not parse may still hold a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the index URL is not a valid URL ({0}); give a URL git understands, or a path")]
pub(crate) struct InvalidUpstream(String);

impl Upstream {
    /// Splits `url`: scp-like ssh addresses (`git@host:path`) and paths are
    /// kept as they are (an ssh user name is an account, not a secret; ssh
    /// takes no password in the address); in a URL with a scheme, the user
    /// info goes (for ssh, the password only: the user name stays, as ssh
    /// needs it).
    pub(crate) fn parse(url: &str) -> Result<Upstream, InvalidUpstream> {
        if !url.contains("://") {
            return Ok(Upstream {
                address: url.to_owned(),
                login: None,
            });
        }
        let mut parsed = url::Url::parse(url).map_err(|e| InvalidUpstream(e.to_string()))?;
        let decode = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
        let user = decode(parsed.username());
        let password = parsed.password().map(decode);
        let ssh = matches!(parsed.scheme(), "ssh" | "git+ssh" | "ssh+git");
        let login = if ssh || (user.is_empty() && password.is_none()) {
            None
        } else {
            Some((
                Secret::new(user.clone()),
                Secret::new(password.clone().unwrap_or_default()),
            ))
        };
        let refused = |()| InvalidUpstream("it cannot hold user info".into());
        if password.is_some() {
            parsed.set_password(None).map_err(refused)?;
        }
        if !ssh && !user.is_empty() {
            parsed.set_username("").map_err(refused)?;
        }
        Ok(Upstream {
            address: parsed.into(),
            login,
        })
    }

    /// The directory of a local upstream (a path, or a `file://` URL).
    pub(crate) fn local_path(&self) -> Option<PathBuf> {
        let address = &self.address;
        if let Some(rest) = address.strip_prefix("file://") {
            let path = percent_decode_str(rest).decode_utf8_lossy().into_owned();
            return Some(PathBuf::from(path));
        }
        if address.contains("://") {
            return None;
        }
        // scp-like: `[user@]host:path`, a `:` before any `/`.
        let scp = match (address.find(':'), address.find('/')) {
            (Some(colon), Some(slash)) => colon < slash,
            (Some(_), None) => true,
            _ => false,
        };
        (!scp).then(|| PathBuf::from(address))
    }
}

/// What the logs may show of an upstream URL: its address without user
/// info, or a placeholder when it does not parse.
pub(crate) fn shown(url: &str) -> String {
    Upstream::parse(url).map_or_else(|_| "(an invalid URL)".to_owned(), |u| u.address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<(String, String)>) {
        let upstream = Upstream::parse(url).unwrap();
        let login = upstream
            .login
            .map(|(u, p)| (u.expose().to_owned(), p.expose().to_owned()));
        (upstream.address, login)
    }

    #[test]
    fn a_token_in_either_place_leaves_the_address_and_comes_back_as_the_login() {
        assert_eq!(
            split("https://ghp_T0KEN@git.example/reg/index.git"),
            (
                "https://git.example/reg/index.git".into(),
                Some(("ghp_T0KEN".into(), String::new()))
            )
        );
        assert_eq!(
            split("https://x-access-token:s%40cret@git.example:8443/index"),
            (
                "https://git.example:8443/index".into(),
                Some(("x-access-token".into(), "s@cret".into()))
            )
        );
        assert_eq!(
            split("ssh://git:pw@git.example/index.git"),
            ("ssh://git@git.example/index.git".into(), None)
        );
        assert_eq!(
            split("git@git.example:reg/index.git"),
            ("git@git.example:reg/index.git".into(), None)
        );
        assert_eq!(split("/srv/index.git"), ("/srv/index.git".into(), None));
        assert_eq!(
            split("https://git.example/index.git"),
            ("https://git.example/index.git".into(), None)
        );
    }

    #[test]
    fn an_unparsable_url_is_refused_without_showing_it() {
        let error = Upstream::parse("https://tok3n@[::1/index.git").unwrap_err();
        assert!(!error.to_string().contains("tok3n"), "{error}");
        assert_eq!(shown("https://tok3n@[::1/index.git"), "(an invalid URL)");
    }

    #[test]
    fn local_upstreams_are_paths_and_file_urls() {
        let local = |url: &str| Upstream::parse(url).unwrap().local_path();
        assert_eq!(local("/srv/index.git"), Some("/srv/index.git".into()));
        assert_eq!(local("index.git"), Some("index.git".into()));
        assert_eq!(
            local("file:///srv/my%20index.git"),
            Some("/srv/my index.git".into())
        );
        assert_eq!(local("https://git.example/index.git"), None);
        assert_eq!(local("git@git.example:index.git"), None);
        assert_eq!(local("git.example:index.git"), None);
    }
}
