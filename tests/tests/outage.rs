//! A database outage: the runner says so once per cause rather than at
//! every retry, and runs jobs again within a second of the database
//! accepting connections.

use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use skiplock::{Job, PerformError, Runner};
use skiplock_tests::{count, server_url, test_job, TestDb};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Warnings and errors logged by the runner (and its connection pool).
static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let ours = meta.target().starts_with("skiplock") || meta.target().starts_with("r2d2");
        if ours && *meta.level() <= tracing::Level::WARN {
            struct Text(String);
            impl Visit for Text {
                fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
            let mut text = Text(format!("{} {}", meta.level(), meta.target()));
            event.record(&mut text);
            EVENTS.lock().unwrap().push(text.0);
        }
    }
}

fn capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::registry()
            .with(Capture)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(tracing_subscriber::EnvFilter::from_default_env()),
            )
            .try_init();
    });
}

#[derive(Serialize, Deserialize)]
struct Stamp(u32);
test_job!(
    Stamp,
    "stamp",
    queue = "outage",
    context = Mutex<mpsc::Sender<(u32, Instant)>>,
    [],
    |self, ctx, db| {
        // A job that needs the database: a connection of the pool too.
        diesel::sql_query("SELECT 1").execute(db.get()?)?;
        ctx.lock()
            .unwrap()
            .send((self.0, Instant::now()))
            .map_err(PerformError::new)
    }
);

#[test]
fn after_a_20_s_outage_jobs_run_within_a_second_and_each_cause_is_logged_once() {
    capture();
    let db = TestDb::create();
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    let (sender, stamps) = mpsc::channel::<(u32, Instant)>();
    let poll_interval = Duration::from_secs(1);
    let running = Runner::builder(Mutex::new(sender))
        .database_url(db.url())
        .poll_interval(poll_interval)
        .queue("outage", 2)
        .build()
        .unwrap()
        .start();
    let mut inside = db.conn();
    Stamp(0).enqueue(&mut inside).unwrap();
    assert_eq!(stamps.recv_timeout(Duration::from_secs(10)).unwrap().0, 0);

    // The outage: no new session, every session but ours ended.
    let mut admin = PgConnection::establish(&server_url()).unwrap();
    let ours = count(&mut inside, "SELECT pg_backend_pid()::int8 AS n");
    diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .unwrap();
    count(
        &mut admin,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> {ours}"
        ),
    );
    let logged_before = EVENTS.lock().unwrap().len();
    Stamp(1).enqueue(&mut inside).unwrap();
    std::thread::sleep(Duration::from_secs(20));
    assert!(stamps.try_recv().is_err(), "a job ran during the outage");

    let back = Instant::now();
    diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .unwrap();
    let (n, ran_at) = stamps.recv_timeout(Duration::from_secs(30)).unwrap();
    let after = ran_at.duration_since(back);
    let logged: Vec<String> = EVENTS.lock().unwrap()[logged_before..].to_vec();
    println!(
        "the first job ran {after:?} after the database came back; {} warnings and errors \
         during the outage:\n{}",
        logged.len(),
        logged.join("\n")
    );
    assert_eq!(n, 1);
    assert!(
        after <= Duration::from_secs(1) + poll_interval,
        "the first job ran {after:?} after the database came back"
    );
    // Two workers, the wake-up thread (its checks and its listener): each
    // says once that it cannot reach the database, and a lost session is
    // an event of its own; retries (40 or so each in 20 s) say nothing.
    assert!(logged.len() <= 10, "{}", logged.join("\n"));
    assert_eq!(
        running
            .shutdown(Duration::from_secs(10))
            .workers_still_running,
        0
    );
}
