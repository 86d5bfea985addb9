//! What an upgrade of the queue's tables costs a live application: the
//! oldest schema (the first release's) with millions of jobs, upgraded by
//! `skiplock::migrate` while an application enqueues 200 jobs a second.
//! Prints the upgrade's duration and the longest any enqueue waited.
//!
//! `cargo run --release -p skiplock-examples --example upgrade` (5,000,000
//! jobs: a few minutes, most of it filling the table; `-- --rows N` for
//! another size). Uses `DATABASE_URL`'s server (or a throwaway one) and
//! (re)creates the database `queue_upgrade`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The statement every release's enqueue accepts (the oldest schema's
/// columns and defaults).
const ENQUEUE: &str = "INSERT INTO queue_jobs (job_type, payload) VALUES ('app', '{\"n\": 1}')";

fn main() -> BenchResult<()> {
    skiplock_examples::log_warnings_to_stderr();
    let args: Vec<String> = std::env::args().collect();
    let rows: u64 = match args.iter().position(|a| a == "--rows") {
        Some(i) => args.get(i + 1).ok_or("--rows needs a number")?.parse()?,
        None => 5_000_000,
    };
    let database = skiplock_examples::fresh_database("queue_upgrade")?;
    let mut conn = PgConnection::establish(&database.url)?;

    // The first release's schema, as an application that installed it has it.
    conn.batch_execute(include_str!(
        "../queue/migrations/2026-11-26-000001_create_queue_jobs/up.sql"
    ))?;
    conn.batch_execute(
        "CREATE TABLE queue_schema_migrations (version VARCHAR(50) PRIMARY KEY, \
         run_on TIMESTAMPTZ NOT NULL DEFAULT now()); \
         INSERT INTO queue_schema_migrations (version) VALUES ('20261126000001')",
    )?;
    let filling = Instant::now();
    // 98 % ready, 1 % due later, 1 % dead, with payloads of some size.
    let chunk = 500_000;
    let mut filled = 0;
    while filled < rows {
        let n = chunk.min(rows - filled);
        conn.batch_execute(&format!(
            "INSERT INTO queue_jobs (job_type, queue, payload, run_at, dead_at, attempts) \
             SELECT 'old', 'default', jsonb_build_object('n', i, 'text', repeat('x', 100)), \
                    CASE WHEN i % 100 = 0 THEN now() + interval '1 day' ELSE now() END, \
                    CASE WHEN i % 100 = 1 THEN now() END, \
                    CASE WHEN i % 100 = 1 THEN 5 ELSE 0 END \
             FROM generate_series({}, {}) i",
            filled + 1,
            filled + n
        ))?;
        filled += n;
    }
    conn.batch_execute("VACUUM ANALYZE queue_jobs")?;
    println!(
        "filled the oldest schema with {rows} jobs in {:.1} s",
        filling.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let application = {
        let stop = Arc::clone(&stop);
        let mut conn = PgConnection::establish(&database.url)?;
        thread::spawn(move || -> Result<Vec<Duration>, diesel::result::Error> {
            let mut waits = Vec::new();
            let period = Duration::from_millis(5);
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let began = Instant::now();
                conn.batch_execute(ENQUEUE)?;
                waits.push(began.elapsed());
                next += period;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(waits)
        })
    };
    // The application runs alone for a moment: its usual latency.
    thread::sleep(Duration::from_secs(1));
    let upgrading = Instant::now();
    let report = skiplock::migrate(&mut conn)?;
    let upgrade = upgrading.elapsed();
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let mut waits = application
        .join()
        .map_err(|_| "the application panicked")??;
    waits.sort();
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
    println!(
        "upgraded {rows} jobs through {} migrations in {:.1} s while the application enqueued \
         {} jobs (200/s): enqueue p50 {:.2} ms, p99 {:.2} ms, longest {:.0} ms",
        report.applied.len(),
        upgrade.as_secs_f64(),
        waits.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        waits.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}
