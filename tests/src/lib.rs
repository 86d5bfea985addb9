//! Support for the integration tests: a fresh database per test, and the
//! jobs shared between the tests and the `test-worker` binary.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};

pub mod crash_jobs;
pub mod flow_jobs;
pub mod git_http;
pub mod process;
pub mod relay;
pub mod traced;

/// The server the tests use: `DATABASE_URL` (`cargo xtask test` sets it),
/// or the local PostgreSQL.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| throwaway_pg::DEFAULT_URL.to_owned())
}

pub use throwaway_pg::with_database;

/// A database of its own for one test, migrated, dropped when the value is.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDb {
    /// Creates and migrates a new database on the test server.
    pub fn create() -> TestDb {
        let db = Self::create_empty();
        skiplock::migrate(&mut db.conn()).expect("migrate test database");
        db
    }

    /// Creates a new database on the test server, without the queue's schema.
    pub fn create_empty() -> TestDb {
        Self::create_with("")
    }

    /// Creates a new database with `options` after `CREATE DATABASE name`
    /// (an encoding, say), without the queue's schema.
    pub fn create_with(options: &str) -> TestDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "queue_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let admin_url = server_url();
        let mut admin = PgConnection::establish(&admin_url)
            .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
        diesel::sql_query(format!("CREATE DATABASE {name} {options}"))
            .execute(&mut admin)
            .expect("create test database");
        TestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// The test database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to the test database.
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to test database")
    }

    /// A pool on the test database.
    pub fn pool(&self, size: u32) -> skiplock::PgPool {
        Pool::builder()
            .max_size(size)
            .min_idle(Some(0))
            .build(ConnectionManager::new(&self.url))
            .expect("pool")
    }

    /// Runs SQL statements (test set-up) on a fresh connection.
    pub fn execute(&self, sql: &str) {
        self.conn()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Number of rows in `queue_jobs` matching a SQL condition.
    pub fn count_jobs(&self, condition: &str) -> i64 {
        count(
            &mut self.conn(),
            &format!("SELECT count(*) AS n FROM queue_jobs WHERE {condition}"),
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

/// The value of a `SELECT count(*) AS n ...` query.
pub fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `test-worker` process (see `src/bin/test_worker.rs`), killed when
/// dropped so a failing test leaves none behind. What it prints after
/// `ready` (its log, with `RUST_LOG` set) is collected as it comes, so it
/// never blocks on a full pipe.
#[derive(Debug)]
pub struct WorkerProcess(pub std::process::Child, Arc<Mutex<String>>);

impl WorkerProcess {
    /// Starts `test-worker` (the binary at `path`) with these arguments
    /// after the URL, and waits until its runner has started.
    pub fn spawn(path: &str, db: &TestDb, args: &[u64]) -> WorkerProcess {
        Self::spawn_with_env(path, db, args, &[])
    }

    /// [`spawn`](Self::spawn) with these environment variables set.
    pub fn spawn_with_env(
        path: &str,
        db: &TestDb,
        args: &[u64],
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        Self::spawn_at(path, db.url(), args, env)
    }

    /// [`spawn_with_env`](Self::spawn_with_env) connecting to `url`.
    pub fn spawn_at(path: &str, url: &str, args: &[u64], env: &[(&str, &str)]) -> WorkerProcess {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(path);
        command
            .envs(env.iter().copied())
            .arg(url)
            .args(args.iter().map(u64::to_string))
            .stdout(std::process::Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe. A worker that aborts on
        // purpose leaves no core file behind.
        unsafe {
            command.pre_exec(|| {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn test-worker");
        let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        output
            .read_line(&mut line)
            .expect("read test-worker output");
        assert_eq!(line.trim(), "ready", "test-worker did not start");
        let collected = Arc::new(Mutex::new(String::new()));
        let collecting = Arc::clone(&collected);
        std::thread::spawn(move || {
            let mut line = String::new();
            while output.read_line(&mut line).is_ok_and(|n| n > 0) {
                collecting.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        WorkerProcess(child, collected)
    }

    /// What it printed after `ready` so far.
    pub fn output(&self) -> String {
        self.1.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every regular file under `dir`, at any depth, as full paths.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|entry| entry.expect("read the directory"))
        .filter(|entry| entry.file_type().is_file())
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// Starts `runner`, prints `ready` (what the tests wait for), and runs
/// until the process is killed.
pub fn run_until_killed<C: std::any::Any + Send + Sync>(runner: skiplock::Runner<C>) -> ! {
    let _running = runner.start();
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// Logs of the runner go to the test's captured output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A reusable meeting point for `parties` threads, with a timeout: proves
/// that that many jobs run at the same time (without sleeping and hoping).
#[derive(Debug)]
pub struct Rendezvous {
    parties: usize,
    state: Mutex<(usize, u64)>,
    all_here: std::sync::Condvar,
}

impl Rendezvous {
    /// A meeting point for `parties` threads.
    pub fn new(parties: usize) -> Self {
        Rendezvous {
            parties,
            state: Mutex::new((0, 0)),
            all_here: std::sync::Condvar::new(),
        }
    }

    /// Waits until `parties` threads are here; `false` if `timeout` passed first.
    pub fn meet(&self, timeout: Duration) -> bool {
        let mut state = self.state.lock().unwrap();
        let generation = state.1;
        state.0 += 1;
        if state.0 == self.parties {
            *state = (0, generation + 1);
            self.all_here.notify_all();
            return true;
        }
        let (state, result) = self
            .all_here
            .wait_timeout_while(state, timeout, |s| s.1 == generation)
            .unwrap();
        drop(state);
        !result.timed_out()
    }
}

/// Counts how many threads are inside at once, and the most ever.
#[derive(Debug, Default)]
pub struct Gauge {
    inside: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl Gauge {
    /// Enters; leaves when the guard drops.
    pub fn enter(&self) -> GaugeGuard<'_> {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self)
    }

    /// The most threads ever inside at once.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

/// Leaves the gauge on drop.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Implements and registers a `skiplock::Job` tersely, for tests:
/// `test_job!(Type, "name", queue = "q", context = Ctx, [consts], |self, ctx, db| body);`
#[macro_export]
macro_rules! test_job {
    ($ty:ty, $name:literal, queue = $queue:literal, context = $ctx:ty, [$($item:item)*],
     |$this:ident, $c:ident, $db:ident| $body:block) => {
        impl ::skiplock::Job for $ty {
            const JOB_TYPE: &'static str = $name;
            const QUEUE: &'static str = $queue;
            $($item)*
            type Context = $ctx;
            #[allow(unused_variables)]
            fn run(
                $this,
                $c: &$ctx,
                $db: &mut ::skiplock::JobConnection<'_>,
            ) -> ::std::result::Result<(), ::skiplock::PerformError> $body
        }
        ::skiplock::register_job!($ty);
    };
}

/// A real PgBouncer (Debian's `pgbouncer`) in front of the test server, in
/// transaction mode, on a free local port, run as an unprivileged user;
/// stopped when dropped.
#[derive(Debug)]
pub struct PgBouncer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts it and waits until it accepts connections.
    pub fn start() -> PgBouncer {
        use std::os::unix::fs::PermissionsExt;
        let binary = "/usr/sbin/pgbouncer";
        assert!(
            std::path::Path::new(binary).exists(),
            "{binary} is missing: `apt-get install pgbouncer` (`cargo xtask test` does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        // The unprivileged user must read the files and write its log there.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let server = url::Url::parse(&server_url()).expect("DATABASE_URL is a URL");
        let (host, server_port) = (
            server.host_str().unwrap_or("127.0.0.1").to_owned(),
            server.port().unwrap_or(5432),
        );
        let users = dir.path().join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n\"root\" \"\"\n").unwrap();
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 max_client_conn = 500\ndefault_pool_size = 20\n\
                 logfile = {log}\npidfile = {pid}\n",
                users = users.display(),
                log = dir.path().join("pgbouncer.log").display(),
                pid = dir.path().join("pgbouncer.pid").display(),
            ),
        )
        .unwrap();
        for file in [&users, &config] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        // PgBouncer refuses to run as root: as `postgres` then.
        let mut command = std::process::Command::new(binary);
        if nix::unistd::Uid::effective().is_root() {
            use std::os::unix::process::CommandExt;
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("no `postgres` user to run pgbouncer as");
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let child = command
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let bouncer = PgBouncer {
            child,
            port,
            _dir: dir,
        };
        wait_until(
            "pgbouncer accepts connections",
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        bouncer
    }

    /// `db`'s URL through this PgBouncer.
    pub fn url(&self, db: &TestDb) -> String {
        let mut url = url::Url::parse(db.url()).expect("a URL");
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
