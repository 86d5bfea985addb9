//! Worker processes killed with SIGKILL: everything they had claimed is
//! released at once and another worker finishes the work; what runs again
//! is the running job and the completions of the last window, not a batch;
//! a job that kills its worker is charged for it and ends dead.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use skiplock::{Job, JobBatch};
use skiplock_tests::crash_jobs::{runs, HangOnce, KillsItsWorker, Record, Timed, RUNS_TABLE};
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
fn sigkilled_worker_releases_a_slow_jobs_lock_at_once() {
    // A releases the 4 unstarted jobs of its batch after 50 ms and keeps the
    // hanging one's lock: the kill releases that too.
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
        let a = spawn(&db, 1, 5, 50, a_slow_job_ms);
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
        // B's last completions commit with its next claim, a round trip
        // after their jobs logged "done" (each of its 2 workers may have one).
        wait_until(
            "the jobs A holds are all that is left",
            Duration::from_secs(10),
            || db.count_jobs("true") == held_before_kill,
        );
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

// --- what a SIGKILL runs again ------------------------------------------------

/// Runs `jobs` jobs of `job_ms` on one process of 4 workers (default
/// completion window, 50 ms), SIGKILLs it `kills` times at varying moments
/// and restarts it, then lets the last one drain the queue. Returns, for
/// each kill, how many jobs the killed process had run (or started) that
/// ran again afterwards.
fn reruns_per_kill(job_ms: u64, jobs: i64, kills: u64) -> Vec<usize> {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    db.execute(RUNS_TABLE);
    let mut batch = JobBatch::new();
    for key in 0..jobs {
        batch.push(&Timed { key, ms: job_ms }).unwrap();
    }
    batch.enqueue(&mut db.conn()).unwrap();

    let mut killed = Vec::new();
    for k in 0..kills {
        let worker = spawn(&db, 4, 100, 50, 60_000);
        killed.push(worker.pid() as i32);
        // Let it get going, then kill it at a moment that differs each time.
        let before = runs(&mut db.conn()).len();
        wait_until("the worker runs jobs", Duration::from_secs(10), || {
            runs(&mut db.conn()).len() >= before + 8
        });
        std::thread::sleep(Duration::from_millis(120 + 37 * k));
        worker.kill();
    }
    let last = spawn(&db, 4, 100, 50, 60_000);
    wait_until("the queue is empty", Duration::from_secs(60), || {
        db.count_jobs("true") == 0
    });
    drop(last);

    // A run again of a job is charged to the process that ran it before.
    let mut previous: HashMap<i64, i32> = HashMap::new();
    let mut reruns: HashMap<i32, usize> = HashMap::new();
    for run in runs(&mut db.conn()) {
        if let Some(before) = previous.insert(run.key, run.pid) {
            *reruns.entry(before).or_default() += 1;
        }
    }
    assert!(
        reruns.keys().all(|pid| killed.contains(pid)),
        "a job ran twice without a kill: {reruns:?}"
    );
    killed
        .iter()
        .map(|pid| reruns.get(pid).copied().unwrap_or(0))
        .collect()
}

/// At most the running job plus those completed in the last completion
/// window, per worker.
fn bound(workers: usize, job_ms: u64) -> usize {
    workers * (1 + 50_usize.div_ceil(job_ms as usize))
}

#[test]
fn a_sigkill_reruns_at_most_the_running_jobs_and_the_last_window_of_4_ms_jobs() {
    let reruns = reruns_per_kill(4, 3_000, 5);
    println!(
        "4 ms jobs, 4 workers: re-runs per kill {reruns:?} (bound {})",
        bound(4, 4)
    );
    assert!(reruns.iter().all(|&n| n <= bound(4, 4)), "{reruns:?}");
}

#[test]
fn a_sigkill_reruns_at_most_the_running_jobs_and_the_last_window_of_90_ms_jobs() {
    let reruns = reruns_per_kill(90, 150, 3);
    println!(
        "90 ms jobs, 4 workers: re-runs per kill {reruns:?} (bound {})",
        bound(4, 90)
    );
    assert!(reruns.iter().all(|&n| n <= bound(4, 90)), "{reruns:?}");
}

// --- a job that kills its worker ------------------------------------------------

#[test]
fn a_job_that_kills_its_worker_is_charged_for_it_and_ends_dead_while_the_rest_drains() {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    db.execute("CREATE TABLE crash_log (key TEXT NOT NULL, event TEXT NOT NULL, pid INT NOT NULL)");
    let mut conn = db.conn();
    let killer = KillsItsWorker.enqueue(&mut conn).unwrap().id().unwrap();
    let mut batch = JobBatch::new();
    for i in 0..30 {
        batch
            .push(&Record {
                key: format!("r{i}"),
            })
            .unwrap();
    }
    batch.enqueue(&mut conn).unwrap();

    // A supervisor: restart the worker process whenever it dies, until
    // nothing is left to run.
    let mut deaths = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count_jobs("dead_at IS NULL") > 0 {
        assert!(
            Instant::now() < deadline,
            "the queue never drained; deaths: {deaths:?}"
        );
        assert!(deaths.len() < 10, "the job crash-loops: {deaths:?}");
        let mut worker = spawn(&db, 2, 100, 50, 60_000);
        loop {
            if let Some(status) = worker.0.try_wait().unwrap() {
                deaths.push(status);
                break;
            }
            if db.count_jobs("dead_at IS NULL") == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    let job = skiplock::find_job(&mut conn, killer).unwrap();
    let error = job.last_error.clone().unwrap_or_default();
    println!(
        "deaths: {}; the job: attempts {}, {error}",
        deaths.len(),
        job.attempts
    );
    assert!(job.dead_at.is_some(), "{job:?}");
    assert_eq!(job.attempts, 3, "its max_attempts");
    assert!(
        error.contains("the worker running this job died (host ") && error.contains(", pid "),
        "{error}"
    );
    // The first death cannot be told from a lost batch; each later one is
    // charged once the next worker finds the job.
    assert_eq!(deaths.len(), 4, "{deaths:?}");
    let dead = skiplock::dead_jobs(&mut conn, 10).unwrap();
    assert_eq!(dead.iter().map(|j| j.id).collect::<Vec<_>>(), [killer.0]);
    let done = count(
        &mut conn,
        "SELECT count(DISTINCT key) AS n FROM crash_log WHERE event = 'done'",
    );
    assert_eq!(done, 30, "the other jobs all ran");
}

#[test]
fn a_sigkilled_runners_row_is_removed_by_the_living_within_a_few_poll_intervals() {
    let db = TestDb::create();
    let listed = |pid: u32| {
        skiplock::runners(&mut db.conn())
            .unwrap()
            .iter()
            .any(|r| r.pid == pid as i32)
    };
    // Polls every 50 ms: dead after max(3 x 50 ms, 2 s) without an announcement.
    let victim = spawn(&db, 1, 5, 50, 60_000);
    let pid = victim.pid();
    wait_until(
        "the runner announced itself",
        Duration::from_secs(10),
        || listed(pid),
    );
    victim.kill();
    let killed_at = Instant::now();
    let living = skiplock::Runner::builder(())
        .database_url(db.url())
        .queue("elsewhere", 1)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap()
        .start();
    wait_until(
        "the dead runner's row is gone",
        Duration::from_secs(10),
        || !listed(pid),
    );
    let took = killed_at.elapsed();
    println!("the dead runner's row went {took:?} after SIGKILL");
    // Not before it could be told from a slow one.
    assert!(took >= Duration::from_millis(1_900), "{took:?}");
    assert!(skiplock::runners(&mut db.conn()).unwrap().len() == 1);
    living.shutdown(Duration::from_secs(5));
}

/// A job type the test-worker binary (the "old" runner) does not register.
#[skiplock::background_job(queue = "crash", max_attempts = 2)]
fn only_in_the_new_binary(key: String) -> Result<(), skiplock::PerformError> {
    let _ = key;
    Ok(())
}

#[test]
fn an_old_runner_leaves_a_new_job_type_to_the_new_one_during_a_rolling_deploy() {
    let db = TestDb::create();
    db.execute("CREATE TABLE crash_log (key TEXT NOT NULL, event TEXT NOT NULL, pid INT NOT NULL)");
    let mut conn = db.conn();
    let new_job = only_in_the_new_binary("k".into())
        .enqueue(&mut conn)
        .unwrap()
        .id()
        .unwrap();
    Record { key: "old".into() }.enqueue(&mut conn).unwrap();
    // The old binary runs what it knows and leaves the rest untouched.
    let old = spawn(&db, 2, 5, 50, 60_000);
    wait_until(
        "the old runner ran its own job",
        Duration::from_secs(10),
        || events(&db, "done") == 1,
    );
    std::thread::sleep(Duration::from_millis(500));
    let job = skiplock::find_job(&mut conn, new_job).unwrap();
    assert_eq!(job.attempts, 0, "{:?}", job.last_error);
    assert!(job.last_error.is_none());
    assert!(job.dead_at.is_none());
    let row = |conn: &mut diesel::PgConnection| {
        skiplock::queue_status(conn, skiplock::RUNNER_FRESH_SECS)
            .unwrap()
            .into_iter()
            .find(|s| s.job_type == "only_in_the_new_binary")
            .unwrap()
    };
    let waiting = row(&mut conn);
    assert_eq!((waiting.ready, waiting.served), (1, false));
    // The new binary rolls out next to the old one and runs it, first try.
    let new = skiplock::Runner::builder(skiplock_tests::crash_jobs::WorkerContext)
        .database_url(db.url())
        .queue("crash", 1)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap()
        .start();
    wait_until(
        "the new runner ran the new type",
        Duration::from_secs(10),
        || db.count_jobs("job_type = 'only_in_the_new_binary'") == 0,
    );
    old.kill();
    new.shutdown(Duration::from_secs(5));
}
