//! Running and ready as a runner's gauges and `skiplock status` count them:
//! right from the first look after the jobs start, not a poll interval later.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use skiplock::{Job, Runner};
use skiplock_tests::{wait_until, TestDb};

const PATIENCE: Duration = Duration::from_secs(10);

/// Far longer than any test: an announcement made on the poll interval's
/// schedule cannot be what a test sees.
const NEVER: Duration = Duration::from_secs(600);

static GAUGE_STARTED: AtomicUsize = AtomicUsize::new(0);
static GAUGE_RELEASE: AtomicBool = AtomicBool::new(false);

/// Runs until released.
#[skiplock::background_job(queue = "gauge_counts", priority = 10)]
fn gauge_gate() {
    GAUGE_STARTED.fetch_add(1, Ordering::SeqCst);
    while !GAUGE_RELEASE.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[skiplock::background_job(queue = "gauge_counts")]
fn gauge_filler() {}

#[test]
fn the_ready_gauge_leaves_out_the_runners_own_running_jobs_before_it_announces_them() {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    let mut conn = db.conn();
    for _ in 0..2 {
        gauge_gate().enqueue(&mut conn).unwrap();
    }
    for _ in 0..4 {
        gauge_filler().enqueue(&mut conn).unwrap();
    }
    // The runner cannot announce anything (the table is locked against
    // writes, not reads): its gauge must know its running jobs by itself.
    let mut blocker = db.conn();
    blocker
        .batch_execute("BEGIN; LOCK TABLE queue_runners IN EXCLUSIVE MODE")
        .unwrap();
    let running = Runner::builder(())
        .database_url(db.url())
        .queue("gauge_counts", 2)
        .batch_size(1)
        .poll_interval(NEVER)
        .build()
        .unwrap()
        .start();
    wait_until("both gates run", PATIENCE, || {
        GAUGE_STARTED.load(Ordering::SeqCst) == 2
    });
    let announced: i64 = skiplock_tests::count(
        &mut conn,
        "SELECT count(*) AS n FROM queue_runners WHERE cardinality(running) > 0",
    );
    assert_eq!(announced, 0, "the runner announced its jobs after all");
    let metrics = running.metrics();
    assert!(
        metrics.contains("queue_ready_jobs{queue=\"gauge_counts\"} 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("queue_workers_busy{queue=\"gauge_counts\"} 2\n"),
        "{metrics}"
    );
    blocker.batch_execute("COMMIT").unwrap();
    GAUGE_RELEASE.store(true, Ordering::SeqCst);
    wait_until("everything ran", PATIENCE, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
}

static STATUS_STARTED: AtomicUsize = AtomicUsize::new(0);
static STATUS_RELEASE: AtomicBool = AtomicBool::new(false);

/// Runs until released.
#[skiplock::background_job(queue = "status_counts", priority = 10)]
fn status_gate() {
    STATUS_STARTED.fetch_add(1, Ordering::SeqCst);
    while !STATUS_RELEASE.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[skiplock::background_job(queue = "status_counts")]
fn status_filler() {}

#[test]
fn status_counts_jobs_a_runner_starts_as_running_without_waiting_a_poll_interval() {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    let mut conn = db.conn();
    let running = Runner::builder(())
        .database_url(db.url())
        .queue("status_counts", 2)
        .batch_size(1)
        .poll_interval(NEVER)
        .build()
        .unwrap()
        .start();
    // The runner has said it runs nothing; the next announcement on the
    // poll interval's schedule is ten minutes away.
    wait_until("the runner announced itself", PATIENCE, || {
        skiplock::runners(&mut db.conn()).unwrap().len() == 1
    });
    for _ in 0..2 {
        status_gate().enqueue(&mut conn).unwrap();
    }
    for _ in 0..3 {
        status_filler().enqueue(&mut conn).unwrap();
    }
    wait_until("both gates run", PATIENCE, || {
        STATUS_STARTED.load(Ordering::SeqCst) == 2
    });
    let counts = || {
        let status = skiplock::queue_status(&mut db.conn(), skiplock::RUNNER_FRESH_SECS).unwrap();
        let row = |job_type: &str| {
            status
                .iter()
                .find(|row| row.job_type == job_type)
                .map_or((0, 0), |row| (row.ready, row.running))
        };
        (row("status_gate"), row("status_filler"))
    };
    wait_until("status counts the gates as running", PATIENCE, || {
        counts().0 == (0, 2)
    });
    assert_eq!(counts().1, (3, 0), "the fillers wait");
    STATUS_RELEASE.store(true, Ordering::SeqCst);
    wait_until("everything ran", PATIENCE, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
}
