//! A worker's lock session: what happens when the server ends it, when the
//! server's timeouts would, and what the next claimer learns from a job
//! whose worker died.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use skiplock::{Job, JobBatch, PerformError, RetryPolicy, Runner};
use skiplock_tests::crash_jobs::{micros, runs, Timed, RUNS_TABLE};
use skiplock_tests::{count, test_job, wait_until, TestDb, WorkerProcess};

const PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn once_its_lock_session_is_gone_a_worker_starts_nothing_more_of_its_batch() {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    db.execute(RUNS_TABLE);
    let mut batch = JobBatch::new();
    for key in 0..100 {
        batch.push(&Timed { key, ms: 50 }).unwrap();
    }
    batch.enqueue(&mut db.conn()).unwrap();
    let worker = env!("CARGO_BIN_EXE_test-worker");

    // A claims all 100 in one batch (no completion commits for 10 s: the
    // case where a worker goes on alone the longest).
    let a = WorkerProcess::spawn(worker, &db, &[1, 100, 50, 60_000, 10_000]);
    wait_until("A ran a few jobs", PATIENCE, || {
        runs(&mut db.conn()).len() >= 10
    });
    // B finds nothing free; it looks again every 10 ms.
    let b = WorkerProcess::spawn(worker, &db, &[1, 100, 10, 60_000, 10_000]);
    let a_pid = a.pid() as i32;
    let backend = backend_named(&db, &format!("skiplock worker pid {} ", a.pid()));
    assert!(backend > 0, "A's lock session is not in pg_stat_activity");
    assert!(
        runs(&mut db.conn()).iter().all(|r| r.pid == a_pid),
        "B ran a job A holds"
    );

    count(
        &mut db.conn(),
        &format!("SELECT pg_terminate_backend({backend})::int::int8 AS n"),
    );
    wait_until("A's lock session is gone", PATIENCE, || {
        count(
            &mut db.conn(),
            &format!("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = {backend}"),
        ) == 0
    });
    let gone_us = micros();
    wait_until("every job ran", Duration::from_secs(60), || {
        db.count_jobs("true") == 0
    });

    let runs = runs(&mut db.conn());
    let (by_a, by_b): (Vec<_>, Vec<_>) = runs.iter().partition(|r| r.pid == a_pid);
    println!(
        "A ran {} jobs, B {}; A's session ended {} ms after A's first start",
        by_a.len(),
        by_b.len(),
        (gone_us - by_a[0].started_us) / 1000
    );
    // Two runs of one job at once: only the one A was running when its
    // session ended (B, holding the lock, may start it again meanwhile).
    let mut overlapping = Vec::new();
    for (i, first) in runs.iter().enumerate() {
        for second in &runs[i + 1..] {
            let first_end = first.ended_us.unwrap_or(i64::MAX);
            if first.key == second.key && second.started_us < first_end {
                overlapping.push((first.clone(), second.clone()));
            }
        }
    }
    assert!(overlapping.len() <= 1, "{overlapping:?}");
    for (first, _) in &overlapping {
        assert!(
            first.pid == a_pid && first.started_us <= gone_us,
            "{first:?}"
        );
    }
    // Every job ran. A job ran again only if A had run it (a completion A
    // could not commit before B took it) or was running it: nothing of the
    // rest of A's batch started twice.
    let mut keys: Vec<i64> = runs.iter().map(|r| r.key).collect();
    keys.sort_unstable();
    let total = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), 100, "every job ran");
    let started_by_a: Vec<i64> = by_a
        .iter()
        .filter(|r| r.started_us <= gone_us)
        .map(|r| r.key)
        .collect();
    let twice: Vec<i64> = keys
        .iter()
        .copied()
        .filter(|k| runs.iter().filter(|r| r.key == *k).count() > 1)
        .collect();
    println!("{total} runs of 100 jobs; ran twice: {twice:?}");
    assert!(
        twice.iter().all(|k| started_by_a.contains(k)),
        "{twice:?} ran twice but A never started them before its session ended"
    );
    // A is alive: it lost a session, not its life.
    let mut a = a;
    assert!(a.0.try_wait().unwrap().is_none(), "A died");
    drop(b);
}

// --- server-wide timeouts ------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Long;
test_job!(Long, "long", queue = "timeouts", context = Arc<AtomicUsize>, [], |self, ctx, db| {
    ctx.fetch_add(1, Ordering::SeqCst);
    // A pooled connection that idled past the server's timeout is replaced.
    diesel::sql_query("SELECT 1").execute(db.get()?)?;
    // The lock session idles, holding this job's lock, for longer than
    // every timeout the server sets.
    std::thread::sleep(Duration::from_millis(2_500));
    Ok(())
});

/// The backend of the session whose application name starts so.
fn backend_named(db: &TestDb, prefix: &str) -> i64 {
    count(
        &mut db.conn(),
        &format!(
            "SELECT COALESCE(min(pid), 0)::int8 AS n FROM pg_stat_activity \
             WHERE application_name LIKE '{prefix}%'"
        ),
    )
}

#[test]
fn server_wide_timeouts_end_none_of_the_runners_own_sessions() {
    let db = TestDb::create();
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    db.execute(&format!(
        "ALTER DATABASE {name} SET idle_in_transaction_session_timeout = '500ms'; \
         ALTER DATABASE {name} SET idle_session_timeout = '500ms'; \
         ALTER DATABASE {name} SET statement_timeout = '500ms'"
    ));
    let ran = Arc::new(AtomicUsize::new(0));
    let running = Runner::builder(Arc::clone(&ran))
        .database_url(db.url())
        .poll_interval(Duration::from_millis(100))
        .queue("timeouts", 1)
        .build()
        .unwrap()
        .start();
    let worker = format!("skiplock worker pid {} ", std::process::id());
    wait_until("the worker's lock session is open", PATIENCE, || {
        backend_named(&db, &worker) != 0
    });
    let lock_session = backend_named(&db, &worker);
    let listener = backend_named(&db, "skiplock listener");
    // Every session of the runner idles past the timeouts before the job.
    std::thread::sleep(Duration::from_millis(1_500));
    let id = Long.enqueue(&mut db.conn()).unwrap().id().unwrap();
    wait_until("the long job completed", PATIENCE, || {
        db.count_jobs("true") == 0
    });
    assert!(skiplock::find_job(&mut db.conn(), id).is_err());
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "it ran once, and did not fail"
    );
    assert_eq!(
        backend_named(&db, &worker),
        lock_session,
        "the lock session was ended"
    );
    assert_ne!(listener, 0);
    assert_eq!(
        backend_named(&db, "skiplock listener"),
        listener,
        "the listener was ended"
    );
    assert_eq!(running.shutdown(PATIENCE).workers_still_running, 0);
}

// --- what the next claimer learns ---------------------------------------------

#[derive(Serialize, Deserialize)]
struct Charged;
test_job!(
    Charged,
    "charged",
    queue = "charged",
    context = (),
    [const RETRY_POLICY: RetryPolicy = RetryPolicy::DEFAULT
        .max_attempts(2)
        .initial_backoff(Duration::from_secs(3600));],
    |self, ctx, db| { Err(PerformError::msg("the body ran")) }
);

#[test]
fn a_free_job_that_a_dead_worker_was_running_counts_as_a_failed_attempt() {
    let db = TestDb::create();
    let id = Charged.enqueue(&mut db.conn()).unwrap().id().unwrap();
    // What a worker that died in a careful run leaves behind.
    let dead_worker = "UPDATE queue_jobs SET running_by = 'host gone, pid 4242'";
    db.execute(dead_worker);
    let running = Runner::builder(())
        .database_url(db.url())
        .poll_interval(Duration::from_millis(20))
        .queue("charged", 1)
        .build()
        .unwrap()
        .start();
    wait_until("the death was charged", PATIENCE, || {
        db.count_jobs("attempts = 1") == 1
    });
    let job = skiplock::find_job(&mut db.conn(), id).unwrap();
    let error = job.last_error.clone().unwrap();
    assert!(
        error.starts_with("the worker running this job died (host gone, pid 4242)"),
        "{error}"
    );
    // Retried after its backoff (an hour), not at once; the body did not run.
    assert!(job.run_at > chrono::Utc::now() + chrono::Duration::minutes(59));
    assert!(job.dead_at.is_none());
    assert_eq!(db.count_jobs("scheduled AND running_by IS NULL"), 1);
    let metrics = running.metrics();
    assert!(
        metrics.contains("queue_jobs_failed_total{job_type=\"charged\"} 1"),
        "{metrics}"
    );
    // Its last attempt dies the same way: dead, like any failure.
    db.execute(&format!("{dead_worker}, scheduled = false, run_at = now()"));
    wait_until("the job is dead", PATIENCE, || {
        db.count_jobs("dead_at IS NOT NULL AND attempts = 2") == 1
    });
    running.shutdown(PATIENCE);
    let dead = skiplock::dead_jobs(&mut db.conn(), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].last_error.as_deref().unwrap().contains("pid 4242"));
}

struct CarefulContext {
    marks: Mutex<Vec<(u32, Option<String>)>>,
    release: Mutex<mpsc::Receiver<()>>,
}

#[derive(Serialize, Deserialize)]
struct Careful(u32);
test_job!(
    Careful,
    "careful",
    queue = "careful",
    context = Arc<CarefulContext>,
    [],
    |self, ctx, db| {
        #[derive(QueryableByName)]
        struct Mark {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            running_by: Option<String>,
        }
        let mark: Mark =
            diesel::sql_query("SELECT running_by FROM queue_jobs WHERE payload = $1::jsonb")
                .bind::<diesel::sql_types::Text, _>(self.0.to_string())
                .get_result(db.get()?)?;
        ctx.marks.lock().unwrap().push((self.0, mark.running_by));
        if self.0 == 2 {
            // Hold the batch open until the test has looked.
            let _ = ctx.release.lock().unwrap().recv_timeout(PATIENCE);
        }
        Ok(())
    }
);

#[test]
fn a_job_abandoned_by_a_dead_worker_runs_with_its_runner_recorded_and_completes_at_once() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let abandoned = Careful(1).enqueue(&mut conn).unwrap().id().unwrap();
    Careful(2).enqueue(&mut conn).unwrap();
    // What a worker that died holding job 1 leaves behind: its last claim,
    // under a session number nobody holds any more.
    db.execute(&format!(
        "INSERT INTO queue_claims (holder, jobs) VALUES (-5, '{{{}}}')",
        abandoned.0
    ));
    let (release, wait) = mpsc::channel();
    let context = Arc::new(CarefulContext {
        marks: Mutex::new(Vec::new()),
        release: Mutex::new(wait),
    });
    // A long completion window: job 1's completion commits before job 2
    // ends only because its run is careful.
    let running = Runner::builder(Arc::clone(&context))
        .database_url(db.url())
        .completion_window(Duration::from_secs(60))
        .queue("careful", 1)
        .build()
        .unwrap()
        .start();
    wait_until("job 1 completed while job 2 runs", PATIENCE, || {
        skiplock::find_job(&mut db.conn(), abandoned).is_err()
    });
    assert_eq!(db.count_jobs("true"), 1, "job 2 is still running");
    release.send(()).unwrap();
    wait_until("job 2 completed", PATIENCE, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
    let marks = context.marks.lock().unwrap().clone();
    let ours = format!(", pid {}", std::process::id());
    assert_eq!(marks.len(), 2, "{marks:?}");
    assert_eq!(marks[0].0, 1);
    assert!(
        marks[0]
            .1
            .as_deref()
            .is_some_and(|m| m.starts_with("host ") && m.ends_with(&ours)),
        "job 1 ran with its runner recorded: {marks:?}"
    );
    assert_eq!(marks[1], (2, None), "job 2 ran as usual");
}
