//! A claim's snapshot is taken before its locks, so a job that ended while
//! the claim ran may look ready to it; the claim reads what it locked again
//! when a release was counted meanwhile. These tests check that every way a
//! job ends (or changes) outside a worker's own release is counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skiplock::__private::releases_counted;
use skiplock::{discard_job, retry_job, Job, JobId, Runner};
use skiplock_tests::{count, wait_until, TestDb};

const PATIENCE: Duration = Duration::from_secs(20);

#[skiplock::background_job(queue = "recheck")]
fn quick(done: &Arc<AtomicUsize>, n: u32) {
    let _ = n;
    done.fetch_add(1, Ordering::SeqCst);
}

#[skiplock::background_job(queue = "recheck", priority = -1)]
fn slow(done: &Arc<AtomicUsize>, millis: u64) {
    std::thread::sleep(Duration::from_millis(millis));
    done.fetch_add(1, Ordering::SeqCst);
}

fn counted(db: &TestDb) -> i64 {
    releases_counted(&mut db.conn()).unwrap()
}

#[test]
fn the_first_release_in_a_new_database_is_counted() {
    let db = TestDb::create();
    quick(1).enqueue(&mut db.conn()).unwrap();
    let before = counted(&db);
    let done = Arc::new(AtomicUsize::new(0));
    let running = Runner::builder(done.clone())
        .database_url(db.url())
        .queue("recheck", 1)
        .build()
        .unwrap()
        .start();
    wait_until("the job ran", PATIENCE, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
    assert!(counted(&db) > before, "the first release was not counted");
}

#[test]
fn an_operators_retry_and_discard_are_counted() {
    let db = TestDb::create();
    let mut conn = db.conn();
    quick(1).enqueue(&mut conn).unwrap();
    quick(2).enqueue(&mut conn).unwrap();
    db.execute("UPDATE queue_jobs SET dead_at = now(), attempts = 1");
    let ids: Vec<i64> = (1..=2)
        .map(|n| {
            count(
                &mut conn,
                &format!("SELECT id AS n FROM queue_jobs WHERE payload->>'n' = '{n}'"),
            )
        })
        .collect();

    let before = counted(&db);
    retry_job(&mut conn, JobId(ids[0])).unwrap();
    let retried = counted(&db);
    assert!(retried > before, "a retry was not counted");
    discard_job(&mut conn, JobId(ids[1])).unwrap();
    assert!(counted(&db) > retried, "a discard was not counted");
}

#[test]
fn completions_recorded_after_the_session_was_lost_are_counted() {
    let db = TestDb::create();
    let mut conn = db.conn();
    // One batch: five quick jobs, then a slow one; the quick ones' completions
    // wait (a long completion window) while the slow one runs.
    for n in 0..5 {
        quick(n).enqueue(&mut conn).unwrap();
    }
    slow(3_000).enqueue(&mut conn).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let running = Runner::builder(done.clone())
        .database_url(db.url())
        .queue("recheck", 1)
        .completion_window(Duration::from_secs(60))
        .slow_job_threshold(Duration::from_secs(60))
        .build()
        .unwrap()
        .start();
    wait_until("the quick jobs ran", PATIENCE, || {
        done.load(Ordering::SeqCst) == 5
    });
    assert_eq!(db.count_jobs("true"), 6, "their completions wait");
    let before = counted(&db);
    // The server ends the lock session while the slow job runs: the
    // completions are recorded on another connection.
    let ended = count(
        &mut conn,
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE application_name LIKE 'skiplock worker%'",
    );
    assert_eq!(ended, 1);
    wait_until("the completions were recorded elsewhere", PATIENCE, || {
        db.count_jobs("job_type = 'quick'") == 0
    });
    assert_eq!(done.load(Ordering::SeqCst), 5, "the slow job still runs");
    assert!(
        counted(&db) > before,
        "the completions recorded elsewhere were not counted"
    );
    running.shutdown(PATIENCE);
}
