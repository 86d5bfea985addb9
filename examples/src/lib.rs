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

/// `DATABASE_URL` (default: the local server) with the database `name`,
/// dropped and created afresh so every demo run starts empty.
pub fn fresh_database(name: &str) -> Result<String, Box<dyn std::error::Error>> {
    use diesel::connection::SimpleConnection;
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut admin = PgConnection::establish(&server)
        .map_err(|e| format!("cannot connect to {server}: {e} (set DATABASE_URL)"))?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
    Ok(with_database(&server, name))
}

/// `url` with its database name replaced by `database`
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

#[cfg(test)]
mod tests {
    #[test]
    fn with_database_replaces_only_the_database_name() {
        use super::with_database;
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
