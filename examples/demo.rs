//! The queue end to end: a signup handler writes a user and enqueues its
//! jobs in one transaction, a runner works through them (a retry, a dead
//! job, a delayed job, a batch), and an operator retries the dead one.
//!
//! `cargo run -p queue-examples --example demo` (set `DATABASE_URL` to use
//! another server; the demo creates and recreates its own `queue_demo` database).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use queue::{
    ConnectionMode, EnqueueOptions, Job, JobBatch, JobConnection, PerformError, RetryPolicy, Runner,
};
use serde::{Deserialize, Serialize};

/// What the demo's jobs share: in a real app, an SMTP client, an HTTP client...
struct Demo {
    started: Instant,
    crm_calls: AtomicU32,
    card_fixed: AtomicBool,
}

impl Demo {
    fn say(&self, what: impl std::fmt::Display) {
        println!("  [{:>5.2}s] {what}", self.started.elapsed().as_secs_f64());
    }
}

/// Mails a new user (reads the address on its own pooled connection).
#[derive(Serialize, Deserialize)]
struct SendWelcomeMail {
    user_id: i64,
}

impl Job for SendWelcomeMail {
    const JOB_TYPE: &'static str = "send_welcome_mail";
    const QUEUE: &'static str = "mail";
    type Context = Demo;

    fn run(self, demo: &Demo, db: &mut JobConnection<'_>) -> Result<(), PerformError> {
        #[derive(QueryableByName)]
        struct Email {
            #[diesel(sql_type = Text)]
            email: String,
        }
        let user: Email = diesel::sql_query("SELECT email FROM users WHERE id = $1")
            .bind::<BigInt, _>(self.user_id)
            .get_result(db.get()?)?;
        demo.say(format!("send_welcome_mail: mailed {}", user.email));
        Ok(())
    }
}
queue::register_job!(SendWelcomeMail);

/// Counts a signup, on the transaction that holds the job's lock: the count
/// and the job's completion commit together (exactly once).
#[derive(Serialize, Deserialize)]
struct CountSignup;

impl Job for CountSignup {
    const JOB_TYPE: &'static str = "count_signup";
    const CONNECTION: ConnectionMode = ConnectionMode::JobTransaction;
    type Context = Demo;

    fn run(self, demo: &Demo, db: &mut JobConnection<'_>) -> Result<(), PerformError> {
        diesel::sql_query("UPDATE stats SET signups = signups + 1").execute(db.get()?)?;
        demo.say("count_signup: stats.signups += 1 (commits with the job)");
        Ok(())
    }
}
queue::register_job!(CountSignup);

/// Pushes a user to a CRM that is down at first: fails once, then succeeds.
#[derive(Serialize, Deserialize)]
struct SyncToCrm {
    user_id: i64,
}

impl Job for SyncToCrm {
    const JOB_TYPE: &'static str = "sync_to_crm";
    const RETRY_POLICY: RetryPolicy = RetryPolicy::DEFAULT.initial_backoff(Duration::from_secs(1));
    type Context = Demo;

    fn run(self, demo: &Demo, _db: &mut JobConnection<'_>) -> Result<(), PerformError> {
        if demo.crm_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            demo.say("sync_to_crm: CRM answered 503, will retry after the backoff");
            return Err(PerformError::msg("CRM answered 503 Service Unavailable"));
        }
        demo.say(format!("sync_to_crm: user {} synced", self.user_id));
        Ok(())
    }
}
queue::register_job!(SyncToCrm);

/// Charges a card; a declined card cannot succeed by retrying: permanent.
#[derive(Serialize, Deserialize)]
struct ChargeCard {
    cents: u32,
}

impl Job for ChargeCard {
    const JOB_TYPE: &'static str = "charge_card";
    type Context = Demo;

    fn run(self, demo: &Demo, _db: &mut JobConnection<'_>) -> Result<(), PerformError> {
        if !demo.card_fixed.load(Ordering::SeqCst) {
            demo.say("charge_card: card declined (permanent): the job is now dead");
            return Err(PerformError::permanent("card declined: expired card"));
        }
        demo.say(format!("charge_card: charged {} cents", self.cents));
        Ok(())
    }
}
queue::register_job!(ChargeCard);

/// Resizes an avatar (enqueued in a batch), or sends a reminder (delayed).
#[derive(Serialize, Deserialize)]
struct Resize {
    image: String,
}

impl Job for Resize {
    const JOB_TYPE: &'static str = "resize";
    type Context = Demo;

    fn run(self, demo: &Demo, _db: &mut JobConnection<'_>) -> Result<(), PerformError> {
        demo.say(format!("resize: {}", self.image));
        Ok(())
    }
}
queue::register_job!(Resize);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "queue=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .init();

    let url = demo_database()?;
    let mut conn = PgConnection::establish(&url)?;
    let report = queue::migrate(&mut conn)?;
    println!(
        "migrated {url}: applied {:?}, schema at {}",
        report.applied, report.current_version
    );
    diesel::sql_query("CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL)")
        .execute(&mut conn)?;
    diesel::sql_query("CREATE TABLE stats (signups INT NOT NULL)").execute(&mut conn)?;
    diesel::sql_query("INSERT INTO stats VALUES (0)").execute(&mut conn)?;

    println!("\nthe signup handler, one transaction per request:");
    let alice = signup(&mut conn, "alice@example.com", true)?;
    println!("  alice: user {alice} and its 3 jobs committed together");
    signup(&mut conn, "bob@example.com", false)?;
    println!("  bob:   rolled back; his user and jobs never existed");
    ChargeCard { cents: 1_999 }.enqueue(&mut conn)?;
    let mut batch = JobBatch::new();
    for image in ["a.png", "b.png", "c.png"] {
        batch.push(&Resize {
            image: image.into(),
        })?;
    }
    batch.push_with(
        &Resize {
            image: "later.png".into(),
        },
        &EnqueueOptions::new().delay(Duration::from_secs(2)),
    )?;
    let ids = batch.enqueue(&mut conn)?;
    println!(
        "  batch: {} resize jobs in one INSERT (one delayed by 2 s)",
        ids.len()
    );
    println!(
        "  queued: {} jobs",
        count(&mut conn, "SELECT count(*) AS n FROM queue_jobs")?
    );

    let demo = Demo {
        started: Instant::now(),
        crm_calls: AtomicU32::new(0),
        card_fixed: AtomicBool::new(false),
    };
    println!("\nrunner: queue `mail` with 1 worker, `default` with 2:");
    let runner = Runner::builder(demo)
        .database_url(url.as_str())
        .queue("mail", 1)
        .queue("default", 2)
        .poll_interval(Duration::from_millis(100))
        .build()?;
    let running = runner.start();
    wait_for(
        &mut conn,
        "SELECT count(*) AS n FROM queue_jobs WHERE dead_at IS NULL",
    )?;
    let report = running.shutdown(Duration::from_secs(10));
    println!(
        "  runner stopped ({} workers still busy)",
        report.workers_still_running
    );

    println!("\nwhat is left for an operator:");
    for job in queue::dead_jobs(&mut conn, 10)? {
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
        queue::retry_job(&mut conn, queue::JobId(job.id))?;
    }
    let runner = Runner::builder(Demo {
        started: Instant::now(),
        crm_calls: AtomicU32::new(1),
        card_fixed: AtomicBool::new(true),
    })
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
    let left = count(&mut conn, "SELECT count(*) AS n FROM queue_jobs")?;
    println!("\nstats.signups = {signups}; jobs left in the queue: {left}");
    Ok(())
}

/// Writes a user and enqueues its jobs in one transaction; `commit: false`
/// plays a request that fails validation after enqueueing.
fn signup(
    conn: &mut PgConnection,
    email: &str,
    commit: bool,
) -> Result<i64, Box<dyn std::error::Error>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let result = conn.transaction(|conn| {
        let user: Id = diesel::sql_query("INSERT INTO users (email) VALUES ($1) RETURNING id")
            .bind::<Text, _>(email)
            .get_result(conn)?;
        SendWelcomeMail { user_id: user.id }.enqueue(conn)?;
        CountSignup.enqueue(conn)?;
        SyncToCrm { user_id: user.id }.enqueue(conn)?;
        if !commit {
            return Err("validation failed after enqueueing".into());
        }
        Ok::<_, Box<dyn std::error::Error>>(user.id)
    });
    match result {
        Ok(id) => Ok(id),
        Err(_) if !commit => Ok(0),
        Err(e) => Err(e),
    }
}

fn count(conn: &mut PgConnection, sql: &str) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    Ok(diesel::sql_query(sql).get_result::<Count>(conn)?.n)
}

fn wait_for(conn: &mut PgConnection, sql: &str) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(conn, sql)? > 0 {
        if Instant::now() > deadline {
            return Err("the demo's jobs did not finish within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `DATABASE_URL` (default: the local server) with the database `queue_demo`,
/// dropped and created afresh so every run starts empty.
fn demo_database() -> Result<String, Box<dyn std::error::Error>> {
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut admin = PgConnection::establish(&server)
        .map_err(|e| format!("cannot connect to {server}: {e} (set DATABASE_URL)"))?;
    diesel::sql_query("DROP DATABASE IF EXISTS queue_demo WITH (FORCE)").execute(&mut admin)?;
    diesel::sql_query("CREATE DATABASE queue_demo").execute(&mut admin)?;
    let (base, query) = server
        .split_once('?')
        .map_or((server.as_str(), ""), |(b, q)| (b, q));
    let path_start = base
        .rfind('/')
        .filter(|i| *i > base.find("://").unwrap_or(0) + 2);
    let mut url = format!("{}/queue_demo", &base[..path_start.unwrap_or(base.len())]);
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    Ok(url)
}
