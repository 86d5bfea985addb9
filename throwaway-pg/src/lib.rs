//! The PostgreSQL server the workspace's tests and demos use.
//!
//! - [`Server::from_env`]: `DATABASE_URL` when it is set; else [`DEFAULT_URL`]
//!   when a server accepts connections at its address; else a [`Cluster`]
//!   of its own.
//! - [`Cluster`]: a throwaway cluster made by the installed server binaries
//!   (`initdb`, `postgres`) in a temporary directory, listening on a free
//!   loopback port with trust authentication, stopped and deleted when
//!   dropped. As root it runs as the `postgres` user (PostgreSQL refuses
//!   root). It is in a process group of its own, so a Ctrl-C meant for the
//!   program does not stop the database under it, and it gets SIGINT (a fast
//!   shutdown) when the thread that started it dies without dropping it.
//!
//! Not a crate of the published queue: the `cargo xtask test` command and
//! the examples use it.
//!
//! (`pgtemp` does this too, but runs the binaries through `sudo` as root,
//! which a fresh Debian machine lacks, panics instead of returning errors,
//! and leaves the server's output in pipes nobody reads.)

use std::fmt;
use std::fs::File;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};

/// Where the tests and demos look for a server when `DATABASE_URL` is unset.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The address of [`DEFAULT_URL`].
pub const DEFAULT_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 5432);

/// How long a cluster may take to start or to stop.
const PATIENCE: Duration = Duration::from_secs(60);

/// Why no server could be had. Its `Debug` is its message, so a `main`
/// that returns it prints one readable line.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No `initdb` and `postgres` were found.
    #[error(
        "no PostgreSQL server binaries (`initdb` and `postgres`) in {searched}: install them \
         (`apt-get install postgresql` on Debian or Ubuntu), or set DATABASE_URL to a server"
    )]
    NoBinaries {
        /// The directories looked in.
        searched: String,
    },
    /// Running as root, with no unprivileged user to run the server as.
    #[error(
        "PostgreSQL does not run as root and there is no `postgres` user to run it as: create \
         one (`useradd --system postgres`), run as another user, or set DATABASE_URL to a server"
    )]
    NoUnprivilegedUser,
    /// A file or process operation failed.
    #[error("cannot {doing}: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` or the server failed; the end of what it printed.
    #[error("{what} failed: {output}")]
    Failed {
        /// `initdb`, or the server.
        what: &'static str,
        /// The last lines it printed.
        output: String,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn io(doing: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { doing, source }
}

/// The server to use: one given, one found, or one started here.
#[derive(Debug)]
pub enum Server {
    /// `DATABASE_URL`, or the default URL where a server answered.
    Url(String),
    /// A throwaway cluster, stopped when this value is dropped.
    Throwaway(Cluster),
}

impl Server {
    /// `DATABASE_URL` when set; else [`DEFAULT_URL`] when something accepts
    /// connections at its address; else a throwaway [`Cluster`].
    pub fn from_env() -> Result<Server, Error> {
        let given = std::env::var("DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty());
        Server::choose(given, DEFAULT_URL, DEFAULT_ADDR.into())
    }

    /// `given` when set; else `default_url` when something accepts connections
    /// at `default_addr` (within a second); else a throwaway [`Cluster`].
    pub fn choose(
        given: Option<String>,
        default_url: &str,
        default_addr: SocketAddr,
    ) -> Result<Server, Error> {
        if let Some(url) = given {
            return Ok(Server::Url(url));
        }
        if TcpStream::connect_timeout(&default_addr, Duration::from_secs(1)).is_ok() {
            return Ok(Server::Url(default_url.to_owned()));
        }
        Cluster::start().map(Server::Throwaway)
    }

    /// The URL of a database on it that exists (which one depends on the
    /// server: put the name you want in with [`with_database`]).
    pub fn url(&self) -> &str {
        match self {
            Server::Url(url) => url,
            Server::Throwaway(cluster) => cluster.url(),
        }
    }
}

/// `url` with its database name replaced by `database`, its query kept
/// (`postgres://u@h:5432/app?sslmode=x` -> `postgres://u@h:5432/DATABASE?sslmode=x`).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{}", &base[..path_start], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The directory holding `initdb` and `postgres`.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The first of: `PATH`, the newest `/usr/lib/postgresql/*/bin`
    /// (Debian's layout), `/usr/local/pgsql/bin` (a source build's), that
    /// holds both.
    pub fn find() -> Result<Binaries, Error> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect())
            .unwrap_or_default();
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        debian.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
        dirs.extend(debian.into_iter().map(|(_, dir)| dir));
        dirs.push("/usr/local/pgsql/bin".into());
        Binaries::find_in(dirs)
    }

    /// The first of `dirs` that holds both `initdb` and `postgres`.
    pub fn find_in(dirs: impl IntoIterator<Item = PathBuf>) -> Result<Binaries, Error> {
        let mut searched = Vec::new();
        for dir in dirs {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return Ok(Binaries { dir });
            }
            searched.push(dir.display().to_string());
        }
        Err(Error::NoBinaries {
            searched: if searched.is_empty() {
                "no directory".to_owned()
            } else {
                searched.join(", ")
            },
        })
    }

    /// Where they are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A throwaway PostgreSQL cluster; stopped, and its files deleted, when
/// dropped.
pub struct Cluster {
    server: Child,
    port: u16,
    url: String,
    binaries: Binaries,
    // Last: deleted after the server has stopped.
    dir: tempfile::TempDir,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a throwaway PostgreSQL cluster at {} (binaries in {}, files in {}, deleted at exit)",
            self.url,
            self.binaries.dir.display(),
            self.dir.path().display()
        )
    }
}

impl Cluster {
    /// Starts one with the binaries [`Binaries::find`] finds.
    pub fn start() -> Result<Cluster, Error> {
        Cluster::start_with(&Binaries::find()?)
    }

    /// Makes a cluster with `binaries` and starts it; returns once it
    /// accepts connections.
    pub fn start_with(binaries: &Binaries) -> Result<Cluster, Error> {
        let user = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("throwaway-pg-")
            .tempdir()
            .map_err(io("make a temporary directory"))?;
        if let Some(user) = &user {
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(io("give the temporary directory to the `postgres` user"))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(binaries.dir.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args(["--username=postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync"]);
        run_as(&mut initdb, user.as_ref());
        let made = initdb.output().map_err(io("run initdb"))?;
        if !made.status.success() {
            let mut output = String::from_utf8_lossy(&made.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&made.stderr));
            return Err(Error::Failed {
                what: "initdb",
                output: last_lines(&output),
            });
        }
        // A port found free may be taken before the server binds it: try
        // another then.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port()?;
            let mut server = start_server(binaries, dir.path(), &data, port, user.as_ref())?;
            match wait_until_ready(&mut server, dir.path()) {
                Ok(()) => {
                    return Ok(Cluster {
                        server,
                        port,
                        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                        binaries: binaries.clone(),
                        dir,
                    })
                }
                Err(error) => {
                    stop(&mut server);
                    let taken = matches!(&error, Error::Failed { output, .. }
                        if output.contains("could not bind"));
                    if !taken || attempts == 5 {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// A URL of its `postgres` database, as the superuser `postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop(&mut self.server);
    }
}

/// Waits until `postmaster.pid` in `dir` says "ready", or the server exits.
fn wait_until_ready(server: &mut Child, dir: &Path) -> Result<(), Error> {
    let pid_file = dir.join("data").join("postmaster.pid");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = server.try_wait().map_err(io("watch the server"))? {
            return Err(Error::Failed {
                what: "the PostgreSQL server",
                output: format!("it exited ({status}): {}", log_tail(dir)),
            });
        }
        // The eighth line of postmaster.pid is the server's state.
        let state = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if state.lines().nth(7).map(str::trim) == Some("ready") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Failed {
                what: "the PostgreSQL server",
                output: format!("not ready after {PATIENCE:?}: {}", log_tail(dir)),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_tail(dir: &Path) -> String {
    let mut log = String::new();
    let _ = File::open(dir.join("postgres.log")).and_then(|mut file| file.read_to_string(&mut log));
    last_lines(&log)
}

/// A fast shutdown (SIGINT: sessions ended, no waiting for clients);
/// SIGKILL if it has not exited in time.
fn stop(server: &mut Child) {
    if matches!(server.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = kill(Pid::from_raw(server.id() as i32), Signal::SIGINT);
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if !matches!(server.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// The user to run the server as: `postgres` when running as root.
fn server_user() -> Result<Option<User>, Error> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some(user)),
        _ => Err(Error::NoUnprivilegedUser),
    }
}

fn run_as(command: &mut Command, user: Option<&User>) {
    if let Some(user) = user {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
}

fn start_server(
    binaries: &Binaries,
    dir: &Path,
    data: &Path,
    port: u16,
    user: Option<&User>,
) -> Result<Child, Error> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .map_err(io("open the server's log"))?;
    let log_too = log.try_clone().map_err(io("open the server's log"))?;
    let mut server = Command::new(binaries.dir.join("postgres"));
    server
        .arg("-D")
        .arg(data)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", &format!("port={port}")])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_too)
        // Not in the terminal's process group: the program's Ctrl-C is the
        // program's to handle; it stops the server when done.
        .process_group(0);
    run_as(&mut server, user);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        server.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(std::io::Error::from)
        });
    }
    server.spawn().map_err(io("start the PostgreSQL server"))
}

fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io("find a free port"))
}

/// The last lines of `text`, on one line.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h:1/app", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            with_database("postgres://u@h/app?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
