//! The queue end to end: a signup handler writes a user and enqueues its
//! jobs in one transaction, a runner works through them (a retry, a dead
//! job, a delayed job, a batch), and an operator retries the dead one.
//!
//! `cargo run -p skiplock-examples --example demo` (set `DATABASE_URL` to use
//! another server; the demo drops and creates its own `queue_demo` database).

use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use skiplock::{EnqueueOptions, Job, JobBatch, Runner};
use skiplock_examples::billing::charge_card;
use skiplock_examples::images::resize;
use skiplock_examples::signup::{count_signup, send_welcome_mail, sync_to_crm};
use skiplock_examples::{count, create_app_tables, App};

type DemoResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> DemoResult<()> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "skiplock=info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .init();

    let database = skiplock_examples::fresh_database("queue_demo")?;
    let url = database.url.clone();
    let mut conn = PgConnection::establish(&url)?;
    let report = skiplock::migrate(&mut conn)?;
    println!(
        "migrated {url}: applied {:?}, schema at {}",
        report.applied, report.current_version
    );
    create_app_tables(&mut conn)?;

    println!("\nthe signup handler, one transaction per request:");
    let alice = signup(&mut conn, "alice@example.com", true)?;
    println!("  alice: user {alice:?} and its 3 jobs committed together");
    let bob = signup(&mut conn, "bob@example.com", false)?;
    println!("  bob:   {bob:?}: rolled back, his user and jobs never existed");
    charge_card(1_999).enqueue(&mut conn)?;
    let mut batch = JobBatch::new();
    for image in ["a.png", "b.png", "c.png"] {
        batch.push(&resize(image.into()))?;
    }
    batch.push_with(
        &resize("later.png".into()),
        &EnqueueOptions::new().delay(Duration::from_secs(2)),
    )?;
    let ids = batch.enqueue(&mut conn)?;
    println!(
        "  batch: {} resize jobs in one INSERT (one delayed by 2 s)",
        ids.len()
    );
    let queued = count(&mut conn, "SELECT count(*) AS n FROM queue_jobs")?;
    println!("  queued: {queued} jobs");

    println!("\nrunner: queue `mail` with 1 worker, `images` with 2, `default` with 2:");
    let runner = Runner::builder(App::new())
        .database_url(url.as_str())
        .queue("mail", 1)
        .queue("images", 2)
        .queue("default", 2)
        .poll_interval(Duration::from_millis(100))
        .build()?;
    let running = runner.start();
    let finished = skiplock_examples::wait_for_zero(
        &mut conn,
        "SELECT count(*) AS n FROM queue_jobs WHERE dead_at IS NULL",
        Duration::from_secs(30),
    )?;
    let report = running.shutdown(Duration::from_secs(10));
    println!(
        "  runner stopped ({} workers still busy)",
        report.workers_still_running
    );
    if !finished {
        return Ok(());
    }

    println!("\nwhat is left for an operator:");
    for job in skiplock::dead_jobs(&mut conn, 10)? {
        println!(
            "  dead job {} `{}` after {} attempt(s): {}",
            job.id,
            job.job_type,
            job.attempts,
            job.last_error.unwrap_or_default()
        );
        println!(
            "  the customer updates the card; the operator retries job {}",
            job.id
        );
        skiplock::retry_job(&mut conn, skiplock::JobId(job.id))?;
    }
    let app = App::new();
    app.card_fixed.store(true, Ordering::SeqCst);
    let runner = Runner::builder(app)
        .database_url(url.as_str())
        .queue("default", 1)
        .build()?;
    let summary = runner.run_pending()?;
    println!(
        "  run_pending: {} succeeded, {} failed",
        summary.succeeded.len(),
        summary.failed.len()
    );

    let signups = count(&mut conn, "SELECT signups::BIGINT AS n FROM stats")?;
    let welcomed = count(&mut conn, "SELECT count(*) AS n FROM users WHERE welcomed")?;
    let left = count(&mut conn, "SELECT count(*) AS n FROM queue_jobs")?;
    println!(
        "\nusers welcomed: {welcomed}; stats.signups = {signups}; jobs left in the queue: {left}"
    );
    Ok(())
}

/// Writes a user and enqueues its jobs in one transaction; `commit: false`
/// plays a request that fails validation after enqueueing.
fn signup(conn: &mut PgConnection, email: &str, commit: bool) -> DemoResult<Option<i64>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let result = conn.transaction(|conn| -> DemoResult<i64> {
        let user: Id = diesel::sql_query("INSERT INTO users (email) VALUES ($1) RETURNING id")
            .bind::<Text, _>(email)
            .get_result(conn)?;
        send_welcome_mail(user.id).enqueue(conn)?;
        count_signup().enqueue(conn)?;
        sync_to_crm(user.id).enqueue(conn)?;
        if !commit {
            return Err("validation failed after enqueueing".into());
        }
        Ok(user.id)
    });
    match result {
        Ok(id) => Ok(Some(id)),
        Err(_) if !commit => Ok(None),
        Err(e) => Err(e),
    }
}
