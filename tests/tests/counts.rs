//! Running and ready as a runner's gauges and `skiplock status` count them:
//! right from the first look after the jobs start, not a poll interval later.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use skiplock::{Job, Runner, RunningRunner};
use skiplock_tests::{wait_until, TestDb};

const PATIENCE: Duration = Duration::from_secs(10);

/// Far longer than any test: an announcement made on the poll interval's
/// schedule cannot be what a test sees.
const NEVER: Duration = Duration::from_secs(600);

/// Per test: gates started, and the tests whose gates are open.
static STARTED: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
static OPEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Runs until `test` opens its gates.
#[skiplock::background_job(queue = "counts", priority = 10)]
fn gate(test: String) {
    *STARTED.lock().unwrap().entry(test.clone()).or_default() += 1;
    while !OPEN.lock().unwrap().contains(&test) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[skiplock::background_job(queue = "counts")]
fn filler() {}

fn started(test: &str) -> usize {
    STARTED.lock().unwrap().get(test).copied().unwrap_or(0)
}

/// Two workers taking one job at a time, polling only every ten minutes.
fn start_runner(db: &TestDb) -> RunningRunner {
    Runner::builder(())
        .database_url(db.url())
        .queue("counts", 2)
        .batch_size(1)
        .poll_interval(NEVER)
        .build()
        .unwrap()
        .start()
}

/// Opens `test`'s gates and waits for everything to run.
fn finish(test: &str, db: &TestDb, running: RunningRunner) {
    OPEN.lock().unwrap().insert(test.to_owned());
    wait_until("everything ran", PATIENCE, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
}

#[test]
fn the_ready_gauge_leaves_out_the_runners_own_running_jobs_before_it_announces_them() {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    let mut conn = db.conn();
    const TEST: &str = "gauge";
    for _ in 0..2 {
        gate(TEST.into()).enqueue(&mut conn).unwrap();
    }
    for _ in 0..4 {
        filler().enqueue(&mut conn).unwrap();
    }
    // The runner cannot announce anything (the table is locked against
    // writes, not reads): its gauge must know its running jobs by itself.
    let mut blocker = db.conn();
    blocker
        .batch_execute("BEGIN; LOCK TABLE queue_runners IN EXCLUSIVE MODE")
        .unwrap();
    let running = start_runner(&db);
    wait_until("both gates run", PATIENCE, || started(TEST) == 2);
    let announced: i64 = skiplock_tests::count(
        &mut conn,
        "SELECT count(*) AS n FROM queue_runners WHERE cardinality(running) > 0",
    );
    assert_eq!(announced, 0, "the runner announced its jobs after all");
    let metrics = running.metrics();
    assert!(
        metrics.contains("queue_ready_jobs{queue=\"counts\"} 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("queue_workers_busy{queue=\"counts\"} 2\n"),
        "{metrics}"
    );
    blocker.batch_execute("COMMIT").unwrap();
    finish(TEST, &db, running);
}

#[test]
fn status_counts_jobs_a_runner_starts_as_running_without_waiting_a_poll_interval() {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    let mut conn = db.conn();
    const TEST: &str = "status";
    let running = start_runner(&db);
    // The runner has said it runs nothing; the next announcement on the
    // poll interval's schedule is ten minutes away.
    wait_until("the runner announced itself", PATIENCE, || {
        skiplock::runners(&mut db.conn()).unwrap().len() == 1
    });
    for _ in 0..2 {
        gate(TEST.into()).enqueue(&mut conn).unwrap();
    }
    for _ in 0..3 {
        filler().enqueue(&mut conn).unwrap();
    }
    wait_until("both gates run", PATIENCE, || started(TEST) == 2);
    let counts = || {
        let status = skiplock::queue_status(&mut db.conn(), skiplock::RUNNER_FRESH_SECS).unwrap();
        let row = |job_type: &str| {
            status
                .iter()
                .find(|row| row.job_type == job_type)
                .map_or((0, 0), |row| (row.ready, row.running))
        };
        (row("gate"), row("filler"))
    };
    wait_until("status counts the gates as running", PATIENCE, || {
        counts().0 == (0, 2)
    });
    assert_eq!(counts().1, (3, 0), "the fillers wait");
    finish(TEST, &db, running);
}

#[test]
fn a_scrape_of_a_long_paused_queue_reads_a_bounded_number_of_rows() {
    let db = TestDb::create();
    // 50,000 ready jobs on a paused queue: the runner claims none of them.
    db.execute(
        "INSERT INTO queue_pauses (queue) VALUES ('counts'); \
         INSERT INTO queue_jobs (job_type, queue, payload) \
         SELECT 'filler', 'counts', '{}' FROM generate_series(1, 50000)",
    );
    db.execute("VACUUM ANALYZE queue_jobs");
    let running = start_runner(&db);
    // Rows read from the jobs table by every session, once each has
    // flushed its statistics (an idle session does within 10 s).
    let rows_read = |conn: &mut diesel::PgConnection| {
        std::thread::sleep(Duration::from_secs(11));
        skiplock_tests::count(
            conn,
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) AS n \
             FROM pg_stat_user_tables WHERE relname = 'queue_jobs'",
        )
    };
    let mut conn = db.conn();
    let before = rows_read(&mut conn);
    let metrics = running.metrics();
    let read = rows_read(&mut conn) - before;
    let ready: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("queue_ready_jobs{queue=\"counts\"} "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    // An estimate: counting every ready job would read all 50,000.
    assert!((40_000.0..60_000.0).contains(&ready), "{metrics}");
    assert!(read < 5_000, "{read} rows read for one scrape");
    running.shutdown(PATIENCE);
}
