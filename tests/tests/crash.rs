//! A worker process killed with SIGKILL in the middle of a job releases
//! everything it had claimed at once; another worker finishes the work.

use std::time::{Duration, Instant};

use skiplock::{Job, JobBatch};
use skiplock_tests::crash_jobs::{HangOnce, Record};
use skiplock_tests::{count, wait_until, TestDb, WorkerProcess};

fn spawn(db: &TestDb, workers: u64, batch: u64, poll_ms: u64, slow_ms: u64) -> WorkerProcess {
    WorkerProcess::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        db,
        &[workers, batch, poll_ms, slow_ms],
    )
}

fn events(db: &TestDb, event: &str) -> i64 {
    count(
        &mut db.conn(),
        &format!("SELECT count(*) AS n FROM crash_log WHERE event = '{event}'"),
    )
}

#[test]
fn sigkilled_worker_releases_its_whole_batch_and_another_worker_finishes_it() {
    // A never hands its batch over: its 4 unstarted jobs stay held with the
    // hanging one until the kill.
    sigkill_mid_job(60_000, 16, 5);
}

#[test]
fn sigkilled_worker_releases_a_slow_jobs_moved_lock_at_once() {
    // A releases the 4 unstarted jobs of its batch after 50 ms and keeps the
    // hanging one's lock on another connection: the kill releases that too.
    sigkill_mid_job(50, 20, 1);
}

/// Worker A claims the hanging job with 4 quick ones (one batch), worker B
/// runs what it can; then A is SIGKILLed and B must finish everything.
fn sigkill_mid_job(a_slow_job_ms: u64, done_before_kill: i64, held_before_kill: i64) {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    db.execute("CREATE TABLE crash_log (key TEXT NOT NULL, event TEXT NOT NULL, pid INT NOT NULL)");

    // The hanging job first (higher priority), then 20 quick ones.
    let mut conn = db.conn();
    HangOnce {
        key: "victim".into(),
    }
    .enqueue(&mut conn)
    .unwrap();
    let mut batch = JobBatch::new();
    for i in 0..20 {
        batch
            .push(&Record {
                key: format!("r{i}"),
            })
            .unwrap();
    }
    batch.enqueue(&mut conn).unwrap();

    let victim_pid = {
        let mut a = spawn(&db, 1, 5, 50, a_slow_job_ms);
        wait_until(
            "worker A started the hanging job",
            Duration::from_secs(10),
            || events(&db, "started") == 1,
        );

        // Worker B runs what A does not hold, and cannot take what A holds.
        let b = spawn(&db, 2, 1, 100, 60_000);
        wait_until(
            "worker B ran the free jobs",
            Duration::from_secs(10),
            || events(&db, "done") == done_before_kill,
        );
        assert_eq!(events(&db, "finished"), 0, "the held job ran twice at once");
        assert_eq!(db.count_jobs("true"), held_before_kill, "the jobs A holds");
        assert_eq!(events(&db, "done"), done_before_kill, "B ran a job A holds");

        let pid = a.pid();
        a.kill();
        let killed_at = Instant::now();
        wait_until(
            "the hanging job finished elsewhere",
            Duration::from_secs(10),
            || events(&db, "finished") == 1,
        );
        let recovery = killed_at.elapsed();
        println!("job recovered {recovery:?} after SIGKILL");
        assert!(
            recovery < Duration::from_secs(3),
            "recovery took {recovery:?}"
        );
        wait_until("the queue is empty", Duration::from_secs(10), || {
            db.count_jobs("true") == 0
        });
        drop(b);
        pid
    };

    // Nothing else was lost: every quick job ran, and the hanging job was
    // finished by a process other than the one killed.
    let mut conn = db.conn();
    let distinct_done = count(
        &mut conn,
        "SELECT count(DISTINCT key) AS n FROM crash_log WHERE event = 'done'",
    );
    assert_eq!(distinct_done, 20);
    let finished_by_victim = count(
        &mut conn,
        &format!(
            "SELECT count(*) AS n FROM crash_log WHERE event = 'finished' AND pid = {victim_pid}"
        ),
    );
    assert_eq!(finished_by_victim, 0);
}
