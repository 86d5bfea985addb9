//! A small application's jobs, defined with `#[background_job]` in modules
//! of their own: the demo's runner finds them without listing them anywhere.
//!
//! This crate depends on `skiplock` and diesel only: no serde, no inventory.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Instant;

use diesel::prelude::*;

pub mod bench;
pub mod billing;
pub mod images;
pub mod registry;
pub mod signup;

/// The context every job of the demo shares: in a real application an SMTP
/// client, an HTTP client, a payment gateway...
#[derive(Debug)]
pub struct App {
    started: Instant,
    /// Calls made to the (pretend) CRM; the first one fails.
    pub crm_calls: AtomicU32,
    /// Whether the (pretend) card has been updated; until then charges fail permanently.
    pub card_fixed: AtomicBool,
}

impl App {
    /// A fresh context: the CRM is down once, the card is expired.
    pub fn new() -> Self {
        App {
            started: Instant::now(),
            crm_calls: AtomicU32::new(0),
            card_fixed: AtomicBool::new(false),
        }
    }

    /// Prints a line of the demo with the time since start.
    pub fn say(&self, what: impl Display) {
        println!("  [{:>5.2}s] {what}", self.started.elapsed().as_secs_f64());
    }
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

/// Creates the application's own tables (idempotent).
pub fn create_app_tables(conn: &mut PgConnection) -> QueryResult<()> {
    for sql in [
        "CREATE TABLE IF NOT EXISTS users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL, \
         welcomed BOOLEAN NOT NULL DEFAULT false)",
        "CREATE TABLE IF NOT EXISTS stats (signups INT NOT NULL)",
        "INSERT INTO stats SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM stats)",
        "CREATE TABLE IF NOT EXISTS thumbnails (image TEXT NOT NULL, pid INT NOT NULL)",
    ] {
        diesel::sql_query(sql).execute(conn)?;
    }
    Ok(())
}

/// The value of a `SELECT ... AS n` query returning one BIGINT.
pub fn count(conn: &mut PgConnection, sql: &str) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    Ok(diesel::sql_query(sql).get_result::<Count>(conn)?.n)
}

/// Waits until `sql` (a `SELECT count(*) AS n ...`) counts 0, polling every
/// 50 ms. Returns `Ok(false)` early when SIGTERM or SIGINT arrives, so the
/// caller can shut its runner down gracefully; an error after `timeout`.
pub fn wait_for_zero(
    conn: &mut PgConnection,
    sql: &str,
    timeout: std::time::Duration,
) -> Result<bool, Box<dyn std::error::Error>> {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, OnceLock};
    static SIGNALLED: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    let signalled = SIGNALLED.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let _ = signal_hook::flag::register(signal, Arc::clone(&flag));
        }
        flag
    });
    let deadline = Instant::now() + timeout;
    while count(conn, sql)? > 0 {
        if signalled.load(Ordering::SeqCst) {
            println!("  signal received: stopping gracefully (running jobs finish first)");
            return Ok(false);
        }
        if Instant::now() > deadline {
            return Err(format!("the jobs did not finish within {timeout:?}").into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(true)
}

/// A demo's database, made afresh; keeps a throwaway server running while
/// the demo needs it.
#[derive(Debug)]
pub struct FreshDatabase {
    /// Its URL.
    pub url: String,
    _server: throwaway_pg::Server,
}

/// Logs the queue's warnings (or what `RUST_LOG` says) to stderr, for
/// examples that print their figures on stdout.
pub fn log_warnings_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiplock=warn".into()))
        .with_writer(std::io::stderr)
        .init();
}

/// The database `name`, dropped and created afresh so every demo run starts
/// empty, on `DATABASE_URL`'s server; without `DATABASE_URL`, on the local
/// server (`127.0.0.1:5432`), or, when nothing listens there, on a
/// throwaway cluster started from the installed PostgreSQL binaries and
/// deleted when the demo ends.
pub fn fresh_database(name: &str) -> Result<FreshDatabase, Box<dyn std::error::Error>> {
    use diesel::connection::SimpleConnection;
    let server = throwaway_pg::Server::from_env()?;
    if let throwaway_pg::Server::Throwaway(cluster) = &server {
        println!("no PostgreSQL at 127.0.0.1:5432 and no DATABASE_URL: using {cluster}");
    }
    let mut admin = PgConnection::establish(server.url()).map_err(|e| {
        let secrets = skiplock::connection_secrets(server.url());
        format!(
            "cannot connect to {}: {} (set DATABASE_URL)",
            skiplock::scrub_secrets(server.url(), &secrets),
            skiplock::scrub_secrets(&e.to_string(), &secrets)
        )
    })?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
    Ok(FreshDatabase {
        url: throwaway_pg::with_database(server.url(), name),
        _server: server,
    })
}

/// The jobs table as the benchmark's raw-SQL references see it.
pub mod bench_schema {
    diesel::table! {
        /// The queue's table (a copy of its columns for the raw references).
        queue_jobs (id) {
            /// Id.
            id -> Int8,
            /// Type name.
            job_type -> Text,
            /// Queue.
            queue -> Text,
            /// Payload.
            payload -> Jsonb,
        }
    }
}
