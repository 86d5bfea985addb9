//! Behaviour of the runtime core against a real PostgreSQL. Each test has
//! its own database, queues and context type, so they run in parallel.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use skiplock::{
    AdminError, ConnectionMode, EnqueueError, EnqueueOptions, Job, JobBatch, JobId, PerformError,
    RetryPolicy, Runner, RunnerError,
};
use skiplock_tests::{count, test_job, wait_until, Gauge, Rendezvous, TestDb};

const PATIENCE: Duration = Duration::from_secs(10);

fn runner<C: Send + Sync + 'static>(
    db: &TestDb,
    context: C,
    queues: &[(&str, usize)],
) -> Runner<C> {
    runner_with(db, context, queues, |builder| builder)
}

/// A runner polling every 20 ms, configured further by `configure`.
fn runner_with<C: Send + Sync + 'static>(
    db: &TestDb,
    context: C,
    queues: &[(&str, usize)],
    configure: impl FnOnce(skiplock::RunnerBuilder<C>) -> skiplock::RunnerBuilder<C>,
) -> Runner<C> {
    skiplock_tests::init_tracing();
    let mut builder = configure(
        Runner::builder(context)
            .database_url(db.url())
            .poll_interval(Duration::from_millis(20)),
    );
    for (queue, workers) in queues {
        builder = builder.queue(*queue, *workers);
    }
    builder.build().expect("runner builds")
}

fn last_error(db: &TestDb, id: JobId) -> String {
    skiplock::find_job(&mut db.conn(), id)
        .unwrap()
        .last_error
        .unwrap_or_default()
}

// --- a job held by one worker is skipped by another ---------------------

#[derive(Serialize, Deserialize)]
struct Meet {
    n: u32,
}
test_job!(
    Meet,
    "meet",
    queue = "skip_locked",
    context = Rendezvous,
    [],
    |self, ctx, db| {
        if ctx.meet(PATIENCE) {
            Ok(())
        } else {
            Err(PerformError::msg(format!(
                "job {} waited alone: its partner never started",
                self.n
            )))
        }
    }
);

#[test]
fn a_job_held_by_one_worker_is_skipped_by_another() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let first = Meet { n: 1 }.enqueue(&mut conn).unwrap().id().unwrap();
    let second = Meet { n: 2 }.enqueue(&mut conn).unwrap().id().unwrap();
    // Both jobs must be running at once to meet: the worker that does not
    // hold the first job's lock must skip it and claim the second. (One job
    // per claim, so the first worker cannot take both.)
    let running = runner_with(&db, Rendezvous::new(2), &[("skip_locked", 2)], |b| {
        b.batch_size(1)
    })
    .start();
    wait_until("both jobs completed", PATIENCE * 2, || {
        db.count_jobs("true") == 0
    });
    running.shutdown(PATIENCE);
    assert!(first < second);
}

// --- the caller's transaction decides whether the job exists -----------

#[derive(Serialize, Deserialize)]
struct Noop;
test_job!(
    Noop,
    "noop",
    queue = "rollback",
    context = (),
    [],
    |self, ctx, db| { Ok(()) }
);

#[test]
fn the_callers_rollback_removes_the_enqueued_job() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let rolled_back = conn.transaction(|conn| {
        Noop.enqueue(conn).unwrap();
        assert_eq!(
            db.count_jobs("true"),
            0,
            "visible before the caller commits"
        );
        Err::<(), _>(diesel::result::Error::RollbackTransaction)
    });
    assert!(rolled_back.is_err());
    assert_eq!(db.count_jobs("true"), 0);

    let id = conn
        .transaction(|conn| Noop.enqueue(conn))
        .unwrap()
        .id()
        .unwrap();
    assert_eq!(
        db.count_jobs(&format!("id = {id} AND job_type = 'noop'")),
        1
    );
}

// --- retries wait for their backoff -------------------------------------

#[derive(Default)]
struct Attempts {
    runs: Mutex<Vec<(Instant, Instant)>>,
}

#[derive(Serialize, Deserialize)]
struct FailOnce;
test_job!(
    FailOnce,
    "fail_once",
    queue = "backoff",
    context = Arc<Attempts>,
    [const RETRY_POLICY: RetryPolicy = RetryPolicy::DEFAULT.initial_backoff(Duration::from_secs(1));],
    |self, ctx, db| {
        let started = Instant::now();
        let mut runs = ctx.runs.lock().unwrap();
        runs.push((started, Instant::now()));
        if runs.len() == 1 {
            Err(PerformError::msg("first attempt fails"))
        } else {
            Ok(())
        }
    }
);

#[test]
fn a_failed_job_is_not_rerun_before_its_backoff_and_is_rerun_after_it() {
    let db = TestDb::create();
    let id = FailOnce.enqueue(&mut db.conn()).unwrap().id().unwrap();
    let attempts = Arc::new(Attempts::default());
    let runner = runner(&db, Arc::clone(&attempts), &[("backoff", 1)]);
    let summary = runner.run_pending().unwrap();
    assert_eq!(summary.failed.len(), 1);

    // The row says when the next attempt is due: 1 s (+ up to 10 %) later.
    let record = skiplock::find_job(&mut db.conn(), id).unwrap();
    assert_eq!(record.attempts, 1);
    let wait = record.run_at - record.last_failed_at.unwrap();
    assert!(
        wait >= chrono::Duration::seconds(1) && wait <= chrono::Duration::milliseconds(1100),
        "{wait}"
    );
    assert_eq!(
        runner.run_pending().unwrap().succeeded.len(),
        0,
        "ran before its backoff"
    );

    // Polling every 20 ms, the worker reruns it once the backoff has passed.
    let running = runner.start();
    wait_until("the retry succeeded", PATIENCE, || {
        db.count_jobs("true") == 0
    });
    running.shutdown(PATIENCE);
    let runs = attempts.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 2);
    let gap = runs[1].0 - runs[0].1;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(3), "retried only after {gap:?}");
}

// --- a job scheduled for later does not run early -----------------------

#[derive(Serialize, Deserialize)]
struct Stamp;
test_job!(Stamp, "stamp", queue = "delayed", context = Arc<Mutex<Vec<Instant>>>, [], |self, ctx, db| {
    ctx.lock().unwrap().push(Instant::now());
    Ok(())
});

#[test]
fn a_delayed_job_does_not_run_before_its_time() {
    let db = TestDb::create();
    let starts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let running = runner(&db, Arc::clone(&starts), &[("delayed", 1)]).start();
    let before = Instant::now();
    Stamp
        .enqueue_with(
            &mut db.conn(),
            &EnqueueOptions::new().delay(Duration::from_millis(800)),
        )
        .unwrap();
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(400);
    Stamp
        .enqueue_with(&mut db.conn(), &EnqueueOptions::new().run_at(at))
        .unwrap();
    wait_until("both ran", PATIENCE, || starts.lock().unwrap().len() == 2);
    running.shutdown(PATIENCE);
    let starts = starts.lock().unwrap();
    let (first, second) = (starts[0] - before, starts[1] - before);
    assert!(
        first >= Duration::from_millis(395),
        "run_at job ran after {first:?}"
    );
    assert!(
        second >= Duration::from_millis(795),
        "delayed job ran after {second:?}"
    );
    assert!(
        second < Duration::from_secs(3),
        "delayed job ran only after {second:?}"
    );
}

// --- panics are failures, and the worker goes on -------------------------

#[derive(Serialize, Deserialize)]
struct Panicker;
test_job!(
    Panicker,
    "panicker",
    queue = "panics",
    context = AtomicUsize,
    [],
    |self, ctx, db| { panic!("boom {}", 42) }
);

#[derive(Serialize, Deserialize)]
struct Tally;
test_job!(
    Tally,
    "tally",
    queue = "panics",
    context = AtomicUsize,
    [],
    |self, ctx, db| {
        ctx.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
);

#[test]
fn a_panicking_job_is_recorded_as_failed_and_other_jobs_keep_running() {
    let db = TestDb::create();
    let mut conn = db.conn();
    Tally.enqueue(&mut conn).unwrap();
    let panicked = Panicker.enqueue(&mut conn).unwrap().id().unwrap();
    for _ in 0..4 {
        Tally.enqueue(&mut conn).unwrap();
    }
    // On a started runner with a single worker: the worker survives the panic.
    let runner = runner(&db, AtomicUsize::new(0), &[("panics", 1)]);
    let running = runner.start();
    wait_until("only the panicked job is left", PATIENCE, || {
        db.count_jobs("true") == 1 && db.count_jobs("attempts = 1") == 1
    });
    running.shutdown(PATIENCE);
    let record = skiplock::find_job(&mut conn, panicked).unwrap();
    assert_eq!(record.attempts, 1);
    assert_eq!(record.last_error.as_deref(), Some("job panicked: boom 42"));
    assert!(record.dead_at.is_none(), "a panic is retryable");
}

// --- rows the runner cannot run are recorded failures -------------------

#[derive(Serialize, Deserialize)]
struct Typed {
    count: u32,
}
test_job!(
    Typed,
    "typed",
    queue = "bad_rows",
    context = (),
    [],
    |self, ctx, db| { Ok(()) }
);

#[test]
fn malformed_payloads_are_recorded_failures_and_unknown_types_wait_untouched() {
    let db = TestDb::create();
    let mut conn = db.conn();
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload) VALUES \
         ('no_such_job', 'bad_rows', '{}'), \
         ('typed', 'bad_rows', '{\"count\": \"three\"}')",
    );
    let good = Typed { count: 3 }.enqueue(&mut conn).unwrap().id().unwrap();
    let summary = runner(&db, (), &[("bad_rows", 1)]).run_pending().unwrap();
    assert_eq!(summary.succeeded, vec![good]);
    assert_eq!(summary.failed.len(), 1);
    assert!(
        summary.failed.iter().all(|f| !f.dead),
        "retryable: a deploy may fix it"
    );

    // No runner of this binary registers the type: the row waits for one
    // that does, no attempt spent, no error recorded.
    assert_eq!(
        db.count_jobs(
            "job_type = 'no_such_job' AND attempts = 0 AND last_error IS NULL \
             AND NOT scheduled AND dead_at IS NULL"
        ),
        1
    );
    let malformed = summary
        .failed
        .iter()
        .find(|f| f.job_type == "typed")
        .unwrap();
    let error = last_error(&db, malformed.id);
    assert!(
        error.contains("does not deserialize into `runtime::Typed`")
            && error.contains("invalid type: string \"three\", expected u32"),
        "{error}"
    );
}

// --- dead jobs, retry and discard ------------------------------------

#[derive(Serialize, Deserialize)]
struct TwoStrikes;
test_job!(
    TwoStrikes,
    "two_strikes",
    queue = "dead",
    context = AtomicBool,
    [const RETRY_POLICY: RetryPolicy = RetryPolicy::DEFAULT.max_attempts(2).initial_backoff(Duration::ZERO);],
    |self, ctx, db| {
        if ctx.load(Ordering::SeqCst) { Ok(()) } else { Err(PerformError::msg("strike")) }
    }
);

#[derive(Serialize, Deserialize)]
struct Hopeless;
test_job!(
    Hopeless,
    "hopeless",
    queue = "dead",
    context = AtomicBool,
    [],
    |self, ctx, db| {
        if ctx.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(PerformError::permanent(
                "version 1.0.0 already exists with other content",
            ))
        }
    }
);

#[test]
fn max_attempts_and_permanent_errors_make_jobs_dead_and_operators_retry_or_discard_them() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let strikes = TwoStrikes.enqueue(&mut conn).unwrap().id().unwrap();
    let hopeless = Hopeless.enqueue(&mut conn).unwrap().id().unwrap();
    let runner = runner(&db, AtomicBool::new(false), &[("dead", 1)]);

    let first = runner.run_pending().unwrap();
    assert_eq!(
        first
            .failed
            .iter()
            .map(|f| (f.id, f.dead))
            .collect::<Vec<_>>(),
        [(strikes, false), (hopeless, true)]
    );
    let failing = skiplock::failing_jobs(&mut conn, 10).unwrap();
    assert_eq!(
        failing.iter().map(|j| j.id).collect::<Vec<_>>(),
        [strikes.0]
    );

    let second = runner.run_pending().unwrap();
    assert_eq!(
        second
            .failed
            .iter()
            .map(|f| (f.id, f.dead))
            .collect::<Vec<_>>(),
        [(strikes, true)]
    );
    let dead = skiplock::dead_jobs(&mut conn, 10).unwrap();
    assert_eq!(dead.len(), 2);
    assert!(skiplock::failing_jobs(&mut conn, 10).unwrap().is_empty());
    let record = skiplock::find_job(&mut conn, hopeless).unwrap();
    assert_eq!(record.attempts, 1);
    assert_eq!(
        record.last_error.as_deref(),
        Some("version 1.0.0 already exists with other content")
    );
    assert!(
        runner.run_pending().unwrap() == Default::default(),
        "a dead job ran"
    );

    // The operator fixes the cause, retries one and discards the other.
    runner.context().store(true, Ordering::SeqCst);
    skiplock::retry_job(&mut conn, hopeless).unwrap();
    skiplock::discard_job(&mut conn, strikes).unwrap();
    assert_eq!(runner.run_pending().unwrap().succeeded, vec![hopeless]);
    assert_eq!(db.count_jobs("true"), 0);
    assert!(
        matches!(skiplock::retry_job(&mut conn, strikes), Err(AdminError::NotFound(id)) if id == strikes)
    );
    assert!(matches!(
        skiplock::discard_job(&mut conn, JobId(-1)),
        Err(AdminError::NotFound(_))
    ));
}

/// Lets a test know a job has started, and tell it when to finish.
struct Handshake {
    started: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Handshake {
    fn new() -> (Handshake, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let handshake = Handshake {
            started: Mutex::new(started_tx),
            release: Mutex::new(release_rx),
        };
        (handshake, started_rx, release_tx)
    }

    fn started_then_wait(&self) -> Result<(), PerformError> {
        self.started
            .lock()
            .unwrap()
            .send(())
            .map_err(PerformError::new)?;
        self.release
            .lock()
            .unwrap()
            .recv_timeout(PATIENCE)
            .map_err(PerformError::new)
    }
}

#[derive(Serialize, Deserialize)]
struct Blocker;
test_job!(
    Blocker,
    "blocker",
    queue = "admin_running",
    context = Handshake,
    [],
    |self, ctx, db| { ctx.started_then_wait() }
);

#[test]
fn failed_jobs_are_listed_a_page_at_a_time_each_once_whatever_the_ties() {
    use skiplock::{JobState, PageAfter};
    let db = TestDb::create();
    // 130 failing jobs, 60 of them failed at the same instant, and a dead one.
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload, attempts, first_failed_at, last_failed_at) \
         SELECT 'flaky', 'pages', '{}', 1, now(), \
                CASE WHEN i <= 60 THEN timestamptz '2026-06-01' ELSE now() - i * interval '1 minute' END \
         FROM generate_series(1, 130) i; \
         INSERT INTO queue_jobs (job_type, queue, payload, attempts, first_failed_at, last_failed_at, dead_at) \
         VALUES ('flaky', 'pages', '{}', 1, now(), now(), now())",
    );
    let mut conn = db.conn();
    let (mut seen, mut after) = (Vec::new(), None);
    loop {
        let page = skiplock::failed_jobs_page(&mut conn, JobState::Failing, None, None, after, 50)
            .unwrap();
        seen.extend(page.iter().map(|job| (job.last_failed_at.unwrap(), job.id)));
        match page.last() {
            Some(last) if page.len() == 50 => {
                after = Some(PageAfter {
                    last_failed_at: last.last_failed_at.unwrap(),
                    id: JobId(last.id),
                })
            }
            _ => break,
        }
    }
    let mut expected = seen.clone();
    expected.sort_by(|a, b| b.cmp(a));
    expected.dedup();
    assert_eq!(seen.len(), 130);
    assert_eq!(
        seen, expected,
        "most recent failure first, then the highest id, each once"
    );
}

#[test]
fn a_bulk_change_takes_one_statement_per_thousand_jobs_and_leaves_running_ones() {
    use skiplock::{BulkChange, JobState};
    let db = TestDb::create();
    let mut conn = db.conn();
    let id = Blocker.enqueue(&mut conn).unwrap().id().unwrap();
    db.execute(&format!(
        "UPDATE queue_jobs SET attempts = 1, first_failed_at = now(), last_failed_at = now() \
         WHERE id = {}",
        id.0
    ));
    // 2,500 dead jobs on two queues; 1,000 of them failed at the same
    // instant, so pages end among ties.
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload, attempts, first_failed_at, last_failed_at, dead_at) \
         SELECT 'gone', CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, '{}', 1, now(), \
                CASE WHEN i <= 1000 THEN timestamptz '2026-01-01' ELSE now() - i * interval '1 second' END, now() \
         FROM generate_series(1, 2500) i",
    );
    let (handshake, started, release) = Handshake::new();
    let running = runner(&db, handshake, &[("admin_running", 1)]).start();
    started.recv_timeout(PATIENCE).unwrap();
    let count = |conn: &mut PgConnection, state, queue| {
        skiplock::count_failed_jobs(conn, state, None, queue).unwrap()
    };
    assert_eq!(count(&mut conn, JobState::Dead, Some("a")), 1_250);
    assert_eq!(count(&mut conn, JobState::Failing, None), 1);
    assert_eq!(count(&mut conn, JobState::Failed, None), 2_501);
    // This session's commits, as the statistics count them once it has
    // flushed its own.
    let commits = |conn: &mut PgConnection| {
        conn.batch_execute("SELECT pg_stat_force_next_flush()")
            .unwrap();
        skiplock_tests::count(
            conn,
            "SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database()",
        )
    };
    let before = commits(&mut conn);
    let outcome = skiplock::change_failed_jobs(
        &mut conn,
        BulkChange::Discard,
        JobState::Dead,
        None,
        Some("a"),
    )
    .unwrap();
    let transactions = commits(&mut conn) - before;
    assert_eq!((outcome.changed, outcome.left), (1_250, 0));
    // Two pages: a couple of transactions each (the page, the release
    // counted after it) and the schema's check, and the idle runner's own
    // (the count is the database's); one per job would be 1,250 and more.
    assert!(transactions < 100, "{transactions} transactions");
    assert_eq!(db.count_jobs("queue = 'a'"), 0);
    let outcome = skiplock::change_failed_jobs(
        &mut conn,
        BulkChange::Retry,
        JobState::Failed,
        Some("gone"),
        None,
    )
    .unwrap();
    assert_eq!((outcome.changed, outcome.left), (1_250, 0));
    assert_eq!(
        db.count_jobs("queue = 'b' AND attempts = 0 AND dead_at IS NULL"),
        1_250
    );
    // The running job is selected and left.
    let outcome =
        skiplock::change_failed_jobs(&mut conn, BulkChange::Retry, JobState::Failing, None, None)
            .unwrap();
    assert_eq!((outcome.changed, outcome.left), (0, 1));
    let outcome =
        skiplock::change_failed_jobs(&mut conn, BulkChange::Discard, JobState::Failed, None, None)
            .unwrap();
    assert_eq!((outcome.changed, outcome.left), (0, 1));
    assert!(matches!(
        skiplock::change_failed_jobs(&mut conn, BulkChange::Retry, JobState::Any, None, None),
        Err(AdminError::Invalid(_))
    ));
    release.send(()).unwrap();
    let blocker = format!("id = {}", id.0);
    wait_until("the job completed", PATIENCE, || {
        db.count_jobs(&blocker) == 0
    });
    running.shutdown(PATIENCE);
}

#[test]
fn operators_cannot_retry_or_discard_a_running_job() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let id = Blocker.enqueue(&mut conn).unwrap().id().unwrap();
    let (handshake, started, release) = Handshake::new();
    let running = runner(&db, handshake, &[("admin_running", 1)]).start();
    started.recv_timeout(PATIENCE).unwrap();
    assert!(matches!(skiplock::retry_job(&mut conn, id), Err(AdminError::Running(r)) if r == id));
    assert!(matches!(skiplock::discard_job(&mut conn, id), Err(AdminError::Running(r)) if r == id));
    assert_eq!(db.count_jobs("attempts = 0"), 1, "the job was changed");
    release.send(()).unwrap();
    wait_until("the job completed", PATIENCE, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
}

// --- per-queue worker counts -------------------------------------------

#[derive(Default)]
struct Concurrency {
    narrow: Gauge,
    wide: Gauge,
    wide_meeting: Option<Rendezvous>,
}

#[derive(Serialize, Deserialize)]
struct Narrow;
test_job!(Narrow, "narrow", queue = "narrow", context = Arc<Concurrency>, [], |self, ctx, db| {
    let _inside = ctx.narrow.enter();
    std::thread::sleep(Duration::from_millis(30));
    Ok(())
});

#[derive(Serialize, Deserialize)]
struct Wide;
test_job!(Wide, "wide", queue = "wide", context = Arc<Concurrency>, [], |self, ctx, db| {
    let _inside = ctx.wide.enter();
    // Three at once must meet; a fourth would push the gauge to 4.
    if !ctx.wide_meeting.as_ref().unwrap().meet(PATIENCE) {
        return Err(PerformError::msg("fewer than 3 wide jobs ran at once"));
    }
    std::thread::sleep(Duration::from_millis(30));
    Ok(())
});

#[test]
fn each_queue_runs_exactly_its_number_of_workers_at_once() {
    let db = TestDb::create();
    let mut batch = JobBatch::new();
    for _ in 0..6 {
        batch.push(&Narrow).unwrap().push(&Wide).unwrap();
    }
    batch.enqueue(&mut db.conn()).unwrap();
    let context = Arc::new(Concurrency {
        wide_meeting: Some(Rendezvous::new(3)),
        ..Default::default()
    });
    let running = runner_with(
        &db,
        Arc::clone(&context),
        &[("narrow", 1), ("wide", 3)],
        |b| b.batch_size(1),
    )
    .start();
    wait_until("all ran", PATIENCE * 2, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
    assert_eq!(db.count_jobs("attempts > 0"), 0);
    assert_eq!(context.narrow.most(), 1, "queue `narrow` has one worker");
    assert_eq!(context.wide.most(), 3, "queue `wide` has three workers");
}

// --- writes on the lock-holding transaction ----------------------------

#[derive(Serialize, Deserialize)]
struct Write {
    key: String,
    fail: bool,
}

fn write_effect(
    db: &mut skiplock::JobConnection<'_>,
    key: &str,
    fail: bool,
) -> Result<(), PerformError> {
    diesel::sql_query("INSERT INTO effects (key) VALUES ($1)")
        .bind::<diesel::sql_types::Text, _>(key)
        .execute(db.get()?)?;
    if fail {
        return Err(PerformError::msg("failing after the write"));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct TxWrite(Write);
test_job!(
    TxWrite,
    "tx_write",
    queue = "tx",
    context = (),
    [const CONNECTION: ConnectionMode = ConnectionMode::JobTransaction;],
    |self, ctx, db| {
        assert_eq!(db.mode(), ConnectionMode::JobTransaction);
        write_effect(db, &self.0.key, self.0.fail)
    }
);

#[derive(Serialize, Deserialize)]
struct TxPanic;
test_job!(
    TxPanic,
    "tx_panic",
    queue = "tx",
    context = (),
    [const CONNECTION: ConnectionMode = ConnectionMode::JobTransaction;],
    |self, ctx, db| {
        write_effect(db, "panicked", false)?;
        panic!("after the write")
    }
);

#[derive(Serialize, Deserialize)]
struct PooledWrite(Write);
test_job!(
    PooledWrite,
    "pooled_write",
    queue = "tx",
    context = (),
    [],
    |self, ctx, db| {
        assert_eq!(db.mode(), ConnectionMode::Pooled);
        write_effect(db, &self.0.key, self.0.fail)
    }
);

fn effects(db: &TestDb) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Effect {
        #[diesel(sql_type = diesel::sql_types::Text)]
        key: String,
    }
    diesel::sql_query("SELECT key FROM effects ORDER BY key")
        .load::<Effect>(&mut db.conn())
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect()
}

#[test]
fn a_job_writing_in_its_own_transaction_leaves_nothing_behind_when_it_fails() {
    let db = TestDb::create();
    db.execute("CREATE TABLE effects (key TEXT PRIMARY KEY)");
    let mut conn = db.conn();
    let write = |key: &str, fail| Write {
        key: key.into(),
        fail,
    };
    TxWrite(write("tx-ok", false)).enqueue(&mut conn).unwrap();
    let tx_failed = TxWrite(write("tx-failed", true))
        .enqueue(&mut conn)
        .unwrap()
        .id()
        .unwrap();
    let panicked = TxPanic.enqueue(&mut conn).unwrap().id().unwrap();
    // The contrast: on its own connection, a write stays even if the job fails.
    PooledWrite(write("pooled-failed", true))
        .enqueue(&mut conn)
        .unwrap();

    let summary = runner(&db, (), &[("tx", 1)]).run_pending().unwrap();
    assert_eq!(summary.succeeded.len(), 1);
    assert_eq!(summary.failed.len(), 3);
    assert_eq!(effects(&db), ["pooled-failed", "tx-ok"]);
    // The failures were still recorded, after the job's writes rolled back.
    assert_eq!(last_error(&db, tx_failed), "failing after the write");
    assert_eq!(last_error(&db, panicked), "job panicked: after the write");
}

// --- priorities ----------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Ordered(u32);
test_job!(Ordered, "ordered", queue = "priority", context = Mutex<Vec<u32>>, [], |self, ctx, db| {
    ctx.lock().unwrap().push(self.0);
    Ok(())
});

#[test]
fn higher_priority_runs_first_and_ties_run_in_enqueue_order() {
    let db = TestDb::create();
    let mut conn = db.conn();
    for (n, priority) in [(1, 0), (2, 5), (3, 0), (4, -3), (5, 5)] {
        Ordered(n)
            .enqueue_with(&mut conn, &EnqueueOptions::new().priority(priority))
            .unwrap();
    }
    let runner = runner(&db, Mutex::new(Vec::<u32>::new()), &[("priority", 1)]);
    runner.run_pending().unwrap();
    assert_eq!(*runner.context().lock().unwrap(), [2, 5, 1, 3, 4]);
}

// --- enqueueing ------------------------------------------------------------

#[test]
fn a_batch_is_inserted_in_one_statement_with_each_jobs_options() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let mut batch = JobBatch::new();
    batch.push(&Ordered(1)).unwrap();
    batch
        .push_with(&Noop, &EnqueueOptions::new().queue("elsewhere").priority(7))
        .unwrap();
    batch
        .push_with(
            &Ordered(3),
            &EnqueueOptions::new().delay(Duration::from_secs(3600)),
        )
        .unwrap();
    let ids: Vec<JobId> = conn
        .transaction(|conn| batch.enqueue(conn))
        .unwrap()
        .into_iter()
        .map(|enqueued| enqueued.id().expect("not unique: always stored"))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let jobs: Vec<_> = ids
        .iter()
        .map(|id| skiplock::find_job(&mut conn, *id).unwrap())
        .collect();
    assert_eq!(
        (jobs[0].job_type.as_str(), jobs[0].queue.as_str()),
        ("ordered", "priority")
    );
    assert_eq!(jobs[0].payload, serde_json::json!(1));
    assert_eq!(
        (
            jobs[1].job_type.as_str(),
            jobs[1].queue.as_str(),
            jobs[1].priority
        ),
        ("noop", "elsewhere", 7)
    );
    let delay = jobs[2].run_at - jobs[2].created_at;
    assert!(delay >= chrono::Duration::seconds(3599), "{delay}");
    assert!(JobBatch::new().enqueue(&mut conn).unwrap().is_empty());
}

#[test]
fn invalid_enqueue_options_are_refused_with_a_clear_error_and_insert_nothing() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let error = Noop
        .enqueue_with(&mut conn, &EnqueueOptions::new().queue(""))
        .unwrap_err();
    assert!(matches!(error, EnqueueError::InvalidOptions(_)));
    assert!(error.to_string().contains("queue name is empty"), "{error}");
    let error = Noop
        .enqueue_with(&mut conn, &EnqueueOptions::new().delay(Duration::MAX))
        .unwrap_err();
    assert!(error.to_string().contains("is too long"), "{error}");
    assert_eq!(db.count_jobs("true"), 0);
}

// --- the runner refuses what cannot work -----------------------------------

#[derive(Serialize, Deserialize)]
struct NeedsString;
test_job!(
    NeedsString,
    "needs_string",
    queue = "mismatch",
    context = String,
    [],
    |self, ctx, db| { Ok(()) }
);

#[test]
fn a_runner_refuses_to_build_when_a_job_on_its_queues_needs_another_context() {
    let db = TestDb::create();
    let error = Runner::builder(42_u64)
        .database_url(db.url())
        .queue("mismatch", 1)
        .build()
        .unwrap_err();
    assert!(matches!(
        error,
        RunnerError::ContextMismatch {
            job_type: "needs_string",
            ..
        }
    ));
    let message = error.to_string();
    assert!(
        message.contains("`alloc::string::String`") && message.contains("`u64`"),
        "{message}"
    );
}

#[test]
fn a_runner_refuses_bad_configurations_with_what_to_do() {
    let db = TestDb::create();
    let build = |builder: skiplock::RunnerBuilder<()>| builder.build().unwrap_err().to_string();
    let base = || Runner::builder(()).database_url(db.url());
    assert!(build(base()).contains("no queue to serve"));
    assert!(build(base().queue("rollback", 0)).contains("give it at least 1"));
    assert!(build(base().queue("rollback", 1).queue("rollback", 2)).contains("configured twice"));
    let small = base().queue("rollback", 3).pool(db.pool(5));
    assert!(build(small).contains("at most 5 connections but 3 workers need 6"));
    // A pool serves the jobs' connections; the lock sessions need the URL.
    let pool_only = Runner::builder(()).queue("rollback", 1).pool(db.pool(4));
    assert!(build(pool_only).contains("no database; give one with `.database_url(..)`"));
    let no_window = base()
        .queue("rollback", 1)
        .completion_window(Duration::ZERO);
    assert!(build(no_window).contains("completion window 0"));
    let unreachable = Runner::builder(())
        .database_url("postgres://nobody@127.0.0.1:1/none")
        .queue("rollback", 1);
    let message = build(unreachable);
    assert!(
        message.contains("cannot connect to the database") && message.contains("refused"),
        "{message}"
    );
}

// --- graceful shutdown ------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Slow;
test_job!(
    Slow,
    "slow",
    queue = "shutdown",
    context = Handshake,
    [],
    |self, ctx, db| { ctx.started_then_wait() }
);

#[test]
fn shutdown_stops_claiming_and_lets_the_running_job_finish() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let first = Slow.enqueue(&mut conn).unwrap().id().unwrap();
    let (handshake, started, release) = Handshake::new();
    let running = runner(&db, handshake, &[("shutdown", 1)]).start();
    started.recv_timeout(PATIENCE).unwrap();
    let second = Slow.enqueue(&mut conn).unwrap().id().unwrap();

    let stopper = std::thread::spawn(move || running.shutdown(PATIENCE));
    // The runner waits for the running job, then stops without claiming more.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !stopper.is_finished(),
        "shutdown did not wait for the running job"
    );
    release.send(()).unwrap();
    let report = stopper.join().unwrap();
    assert_eq!(report.workers_still_running, 0);
    assert!(
        skiplock::find_job(&mut conn, first).is_err(),
        "the running job completed"
    );
    assert_eq!(
        skiplock::find_job(&mut conn, second).unwrap().attempts,
        0,
        "not claimed"
    );
    assert!(started.try_recv().is_err(), "a job started after shutdown");
}

#[test]
fn shutdown_gives_up_waiting_after_its_timeout() {
    let db = TestDb::create();
    Slow.enqueue(&mut db.conn()).unwrap();
    let (handshake, started, release) = Handshake::new();
    let running = runner(&db, handshake, &[("shutdown", 1)]).start();
    started.recv_timeout(PATIENCE).unwrap();
    let report = running.shutdown(Duration::from_millis(50));
    assert_eq!(report.workers_still_running, 1);
    release.send(()).unwrap();
}

// --- schema ----------------------------------------------------------------

#[test]
fn migrate_is_idempotent_and_records_the_schema_version() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let again = skiplock::migrate(&mut conn).unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(again.current_version, "20261203000018");
    let versions = count(
        &mut conn,
        "SELECT count(*) AS n FROM queue_schema_migrations",
    );
    assert_eq!(versions, 29);
}

/// A database with the first release's schema, as `migrate` left it.
fn first_schema() -> TestDb {
    let db = TestDb::create_empty();
    db.execute(include_str!(
        "../../queue/migrations/2026-11-26-000001_create_queue_jobs/up.sql"
    ));
    db.execute(
        "CREATE TABLE queue_schema_migrations (version VARCHAR(50) PRIMARY KEY, \
         run_on TIMESTAMPTZ NOT NULL DEFAULT now()); \
         INSERT INTO queue_schema_migrations (version) VALUES ('20261126000001')",
    );
    db
}

#[test]
fn migrate_upgrades_a_live_table_of_the_first_schema_in_place() {
    // The first release's schema, with jobs in it.
    let db = first_schema();
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload, run_at) VALUES \
           ('noop', 'rollback', 'null', now() - interval '1 minute'), \
           ('noop', 'rollback', 'null', now() + interval '1 hour')",
    );
    let report = skiplock::migrate(&mut db.conn()).unwrap();
    assert_eq!(
        report.applied,
        [
            "20261126000002",
            "202611260000021",
            "202611260000022",
            "202611260000023",
            "202611260000024",
            "20261126000003",
            "20261127000004",
            "20261127000005",
            "20261127000006",
            "20261127000007",
            "202611270000071",
            "20261127000008",
            "20261127000009",
            "20261202000010",
            "20261203000011",
            "20261203000012",
            "20261203000013",
            "202612030000131",
            "20261203000014",
            "20261203000015",
            "20261203000016",
            "202612030000161",
            "20261203000017",
            "202612030000171",
            "202612030000172",
            "202612030000173",
            "202612030000174",
            "20261203000018"
        ]
    );
    assert_eq!(
        db.count_jobs("scheduled"),
        1,
        "the future job waits in the scheduled set"
    );
    assert_eq!(db.count_jobs("NOT scheduled AND run_at < now()"), 1);
    // The upgraded queue runs the ready job and keeps the scheduled one.
    let summary = runner(&db, (), &[("rollback", 1)]).run_pending().unwrap();
    assert_eq!(summary.succeeded.len(), 1);
    assert_eq!(db.count_jobs("true"), 1);
}

#[test]
fn migrate_behind_a_long_transaction_does_not_hold_up_enqueues() {
    // The first release's schema, live: an application enqueues into it
    // (with the statement every release's enqueue accepts) while a report
    // reads the table in a transaction that stays open for seconds.
    let db = first_schema();
    db.execute(
        "INSERT INTO queue_jobs (job_type, payload) \
         SELECT 'noop', 'null' FROM generate_series(1, 10000)",
    );
    let mut report = db.conn();
    report
        .batch_execute("BEGIN; SELECT count(*) FROM queue_jobs")
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let enqueuer = {
        let stop = Arc::clone(&stop);
        let mut conn = db.conn();
        std::thread::spawn(move || {
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let began = Instant::now();
                conn.batch_execute(
                    "INSERT INTO queue_jobs (job_type, payload) VALUES ('noop', 'null')",
                )
                .unwrap();
                longest = longest.max(began.elapsed());
                std::thread::sleep(Duration::from_millis(5));
            }
            longest
        })
    };
    let migrating = {
        let mut conn = db.conn();
        std::thread::spawn(move || skiplock::migrate(&mut conn))
    };
    // The report runs for 3 s: a migration's ALTER TABLE waits for it, and
    // while it waits every enqueue queues behind it.
    std::thread::sleep(Duration::from_secs(3));
    report.batch_execute("COMMIT").unwrap();
    let migrated = migrating.join().unwrap().unwrap();
    stop.store(true, Ordering::SeqCst);
    let longest = enqueuer.join().unwrap();
    println!("longest enqueue during the migration: {longest:?}");
    assert_eq!(migrated.current_version, "20261203000018");
    assert!(
        longest < Duration::from_millis(1500),
        "an enqueue waited {longest:?} behind the migration"
    );
}

// --- wake-ups: LISTEN/NOTIFY, reconnection, the poll fallback -------------

#[derive(Serialize, Deserialize)]
struct Ping(u32);
test_job!(Ping, "ping", queue = "wakeups", context = Mutex<mpsc::Sender<(u32, Instant)>>, [], |self, ctx, db| {
    ctx.lock().unwrap().send((self.0, Instant::now())).map_err(PerformError::new)
});

fn listener_backends(db: &TestDb) -> i64 {
    count(
        &mut db.conn(),
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
         AND query = 'LISTEN queue_jobs' AND pid <> pg_backend_pid()",
    )
}

#[test]
fn idle_workers_wake_on_notify_and_the_listener_reconnects_by_itself() {
    let db = TestDb::create();
    let (sender, ran) = mpsc::channel::<(u32, Instant)>();
    // A poll interval far longer than the test: only notifications wake workers.
    let running = runner_with(&db, Mutex::new(sender), &[("wakeups", 1)], |b| {
        b.poll_interval(Duration::from_secs(60))
    })
    .start();
    wait_until("the runner listens", PATIENCE, || {
        listener_backends(&db) == 1
    });
    let mut conn = db.conn();
    // Let the first (start-up) check pass, so only a notification can wake the worker.
    std::thread::sleep(Duration::from_millis(200));

    let enqueued = Instant::now();
    Ping(1).enqueue(&mut conn).unwrap();
    let (n, started) = ran
        .recv_timeout(Duration::from_secs(5))
        .expect("woken by NOTIFY");
    assert_eq!(n, 1);
    println!("pickup after NOTIFY: {:?}", started - enqueued);

    // The listener's session dies (a database restart, a proxy timeout...).
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query = 'LISTEN queue_jobs'",
    )
    .execute(&mut conn)
    .unwrap();
    wait_until("the listener reconnected", PATIENCE, || {
        listener_backends(&db) == 1
    });
    Ping(2).enqueue(&mut conn).unwrap();
    let (n, _) = ran
        .recv_timeout(Duration::from_secs(5))
        .expect("woken after reconnecting");
    assert_eq!(n, 2);
    running.shutdown(PATIENCE);
}

#[test]
fn a_job_inserted_without_a_notification_waits_at_most_the_poll_interval() {
    let db = TestDb::create();
    let (sender, ran) = mpsc::channel::<(u32, Instant)>();
    let poll = Duration::from_millis(300);
    let running = runner_with(&db, Mutex::new(sender), &[("wakeups", 1)], |b| {
        b.poll_interval(poll)
    })
    .start();
    wait_until("the runner listens", PATIENCE, || {
        listener_backends(&db) == 1
    });
    // Inserted by hand: no NOTIFY is sent.
    let inserted = Instant::now();
    db.execute("INSERT INTO queue_jobs (job_type, queue, payload) VALUES ('ping', 'wakeups', '7')");
    let (n, started) = ran
        .recv_timeout(PATIENCE)
        .expect("found by the poll fallback");
    assert_eq!(n, 7);
    let waited = started - inserted;
    assert!(
        waited < poll + Duration::from_millis(500),
        "waited {waited:?}"
    );
    running.shutdown(PATIENCE);
}

// --- a slow job holds no ready job hostage ----------------------------------

#[derive(Serialize, Deserialize)]
struct Hostage(u32);
test_job!(Hostage, "hostage", queue = "hostage", context = Arc<(Handshake, AtomicUsize)>, [], |self, ctx, db| {
    if self.0 == 0 {
        ctx.0.started_then_wait()
    } else {
        ctx.1.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
});

#[test]
fn a_slow_job_releases_the_rest_of_its_batch_to_other_workers() {
    let db = TestDb::create();
    let mut batch = JobBatch::new();
    for n in 0..51 {
        batch.push(&Hostage(n)).unwrap();
    }
    batch.enqueue(&mut db.conn()).unwrap();
    let (handshake, started, release) = Handshake::new();
    let context = Arc::new((handshake, AtomicUsize::new(0)));
    // One claim takes all 51 jobs; the first never ends until released.
    // A long poll interval: the release itself must wake the idle worker.
    let running = runner_with(&db, Arc::clone(&context), &[("hostage", 2)], |b| {
        b.slow_job_threshold(Duration::from_millis(50))
            .poll_interval(Duration::from_secs(60))
    })
    .start();
    started.recv_timeout(PATIENCE).unwrap();
    wait_until("the other 50 ran while the slow job runs", PATIENCE, || {
        context.1.load(Ordering::SeqCst) == 50
    });
    wait_until("their rows are deleted", PATIENCE, || {
        db.count_jobs("true") == 1
    });
    // The slow job's row is still locked (moved, not released).
    let slow = JobId(count(&mut db.conn(), "SELECT min(id) AS n FROM queue_jobs"));
    assert!(matches!(
        skiplock::discard_job(&mut db.conn(), slow),
        Err(AdminError::Running(_))
    ));
    release.send(()).unwrap();
    wait_until("the slow job completed", PATIENCE, || {
        db.count_jobs("true") == 0
    });
    running.shutdown(PATIENCE);
}

// --- completions without waiting for the disk, when asked -------------------

#[derive(Serialize, Deserialize)]
struct ReadDurability;
test_job!(
    ReadDurability,
    "read_durability",
    queue = "durability",
    context = Mutex<Vec<String>>,
    [const CONNECTION: ConnectionMode = ConnectionMode::JobTransaction;],
    |self, ctx, db| {
        #[derive(QueryableByName)]
        struct Setting {
            #[diesel(sql_type = diesel::sql_types::Text)]
            value: String,
        }
        let setting: Setting =
            diesel::sql_query("SELECT current_setting('synchronous_commit') AS value").get_result(db.get()?)?;
        ctx.lock().unwrap().push(setting.value);
        Ok(())
    }
);

#[test]
fn completions_skip_the_disk_flush_only_when_configured() {
    let db = TestDb::create();
    for wait_for_disk in [true, false] {
        ReadDurability.enqueue(&mut db.conn()).unwrap();
        let runner = runner_with(
            &db,
            Mutex::new(Vec::<String>::new()),
            &[("durability", 1)],
            |b| b.synchronous_commit(wait_for_disk),
        );
        assert_eq!(runner.run_pending().unwrap().succeeded.len(), 1);
        let expected = if wait_for_disk { "on" } else { "off" };
        assert_eq!(*runner.context().lock().unwrap(), [expected]);
    }
    // The caller's enqueue keeps its own durability.
    let mut conn = db.conn();
    let setting = count(
        &mut conn,
        "SELECT (current_setting('synchronous_commit') = 'on')::int::int8 AS n",
    );
    assert_eq!(setting, 1);
}

// --- runners announce themselves and their running jobs ------------------

#[derive(Serialize, Deserialize)]
struct Announced;
test_job!(
    Announced,
    "announced",
    queue = "announce",
    context = Handshake,
    [],
    |self, ctx, db| { ctx.started_then_wait() }
);

#[test]
fn runners_announce_themselves_with_their_running_jobs_and_retire_on_shutdown() {
    let db = TestDb::create();
    let id = Announced.enqueue(&mut db.conn()).unwrap().id().unwrap();
    let (handshake, started, release) = Handshake::new();
    let running = runner(&db, handshake, &[("announce", 1)]).start();
    started.recv_timeout(PATIENCE).unwrap();
    wait_until("the runner announced the running job", PATIENCE, || {
        let runners = skiplock::runners(&mut db.conn()).unwrap();
        runners.len() == 1 && runners[0].running == [id.0]
    });
    let runners = skiplock::runners(&mut db.conn()).unwrap();
    assert_eq!(runners[0].queues, ["announce"]);
    assert_eq!(runners[0].pid, std::process::id() as i32);
    let status = skiplock::queue_status(&mut db.conn(), 60.0).unwrap();
    assert_eq!((status[0].running, status[0].ready), (1, 0), "{status:?}");
    assert_eq!(
        status[0].oldest_ready_secs, None,
        "a running job is not waiting"
    );

    release.send(()).unwrap();
    running.shutdown(PATIENCE);
    assert!(
        skiplock::runners(&mut db.conn()).unwrap().is_empty(),
        "retired on shutdown"
    );
}

// --- metrics ---------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Measured {
    outcome: String,
}
test_job!(
    Measured,
    "measured",
    queue = "metrics",
    context = (),
    [],
    |self, ctx, db| {
        match self.outcome.as_str() {
            "ok" => Ok(()),
            "retry" => Err(PerformError::msg("try again")),
            _ => Err(PerformError::permanent("never")),
        }
    }
);

fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// `name{labels}` -> value, from a Prometheus text exposition.
fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn a_running_runner_serves_prometheus_metrics() {
    let db = TestDb::create();
    let mut batch = JobBatch::new();
    for outcome in ["ok", "ok", "ok", "retry", "dead"] {
        batch
            .push(&Measured {
                outcome: outcome.into(),
            })
            .unwrap();
    }
    batch.enqueue(&mut db.conn()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let running = runner_with(&db, (), &[("metrics", 2)], |b| b.metrics_listener(listener)).start();
    wait_until("all ran once", PATIENCE, || {
        db.count_jobs("attempts = 0") == 0
    });

    let response = scrape(addr, "/metrics");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.contains("text/plain; version=0.0.4"),
        "{head}"
    );
    let metrics = samples(body);
    let get = |key: &str| {
        metrics
            .get(key)
            .copied()
            .unwrap_or_else(|| panic!("no {key} in\n{body}"))
    };
    assert_eq!(
        get("queue_jobs_completed_total{job_type=\"measured\"}"),
        3.0
    );
    assert_eq!(get("queue_jobs_failed_total{job_type=\"measured\"}"), 2.0);
    assert_eq!(get("queue_job_retries_total{job_type=\"measured\"}"), 1.0);
    assert_eq!(get("queue_jobs_dead_total{job_type=\"measured\"}"), 1.0);
    assert_eq!(
        get("queue_job_duration_seconds_count{job_type=\"measured\"}"),
        5.0
    );
    assert_eq!(
        get("queue_job_duration_seconds_bucket{job_type=\"measured\",le=\"+Inf\"}"),
        5.0
    );
    assert_eq!(get("queue_ready_jobs{queue=\"metrics\"}"), 0.0);
    assert_eq!(get("queue_workers_busy{queue=\"metrics\"}"), 0.0);
    assert!(body.contains("# TYPE queue_job_duration_seconds histogram"));
    assert!(running
        .metrics()
        .contains("queue_jobs_completed_total{job_type=\"measured\"} 3"));
    assert!(scrape(addr, "/other").starts_with("HTTP/1.1 404"));
    running.shutdown(PATIENCE);
}

#[test]
fn a_runner_that_cannot_connect_never_shows_the_password() {
    const SECRET: &str = "hunter2-Sw0rdfish";
    for url in [
        format!("postgres://app:{SECRET}@[::1/queue"),
        format!("postgres://app:{SECRET}@127.0.0.1:1/queue"),
        format!("host=127.0.0.1 port=1 password={SECRET} dbname=queue sslmode=bogus"),
    ] {
        let error = Runner::builder(())
            .database_url(url.as_str())
            .queue("default", 1)
            .build()
            .unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(shown.contains("cannot connect to the database"), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
    }
}

// --- gauges count ready jobs as `skiplock status` does ----------------------

static GATE_STARTED: AtomicUsize = AtomicUsize::new(0);
static GATE_OPEN: AtomicBool = AtomicBool::new(false);

#[skiplock::background_job(queue = "gauges", priority = 10)]
fn hold_the_gate() {
    GATE_STARTED.fetch_add(1, Ordering::SeqCst);
    while !GATE_OPEN.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[skiplock::background_job(queue = "gauges")]
fn behind_the_gate() {}

fn gauge(metrics: &str, name: &str, queue: &str) -> f64 {
    let prefix = format!("{name}{{queue=\"{queue}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
        .parse()
        .unwrap()
}

#[test]
fn the_ready_gauges_leave_out_running_jobs_like_status_and_sql() {
    let db = TestDb::create();
    let mut conn = db.conn();
    // Two jobs due an hour ago that will run for as long as the test likes,
    // and three behind them with no free worker.
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    for _ in 0..2 {
        hold_the_gate()
            .enqueue_with(&mut conn, &EnqueueOptions::new().run_at(an_hour_ago))
            .unwrap();
    }
    for _ in 0..3 {
        behind_the_gate().enqueue(&mut conn).unwrap();
    }
    let runner = runner_with(&db, (), &[("gauges", 2)], |b| b.batch_size(1));
    let running = runner.start();
    wait_until("both workers hold the gate", PATIENCE, || {
        GATE_STARTED.load(Ordering::SeqCst) == 2
    });
    wait_until("the runner announced them as running", PATIENCE, || {
        skiplock::queue_status(&mut conn, skiplock::RUNNER_FRESH_SECS)
            .unwrap()
            .iter()
            .filter(|s| s.queue == "gauges")
            .map(|s| s.running)
            .sum::<i64>()
            == 2
    });
    let metrics = running.metrics();
    let status_ready: i64 = skiplock::queue_status(&mut conn, skiplock::RUNNER_FRESH_SECS)
        .unwrap()
        .iter()
        .filter(|s| s.queue == "gauges")
        .map(|s| s.ready)
        .sum();
    let sql_ready = count(
        &mut conn,
        "SELECT count(*) AS n FROM queue_jobs WHERE queue = 'gauges' AND dead_at IS NULL \
         AND NOT scheduled AND id NOT IN (SELECT unnest(running) FROM queue_runners)",
    );
    assert_eq!(status_ready, 3);
    assert_eq!(sql_ready, 3);
    assert_eq!(gauge(&metrics, "queue_ready_jobs", "gauges"), 3.0);
    // The jobs due an hour ago are running: the oldest ready job is seconds old.
    let oldest = gauge(&metrics, "queue_oldest_ready_age_seconds", "gauges");
    assert!(oldest < 600.0, "{oldest}");
    GATE_OPEN.store(true, Ordering::SeqCst);
    wait_until("everything ran", PATIENCE, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
}

// --- pausing a queue ---------------------------------------------------------

static PAUSE_GATE_OPEN: AtomicBool = AtomicBool::new(false);
static PAUSE_GATE_STARTED: AtomicUsize = AtomicUsize::new(0);
static BEHIND_PAUSE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[skiplock::background_job(queue = "pausable", priority = 10)]
fn pause_gate() {
    PAUSE_GATE_STARTED.fetch_add(1, Ordering::SeqCst);
    while !PAUSE_GATE_OPEN.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[skiplock::background_job(queue = "pausable")]
fn behind_the_pause() {
    BEHIND_PAUSE_RUNS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_paused_queue_finishes_what_runs_starts_nothing_on_any_runner_and_stays_paused_across_restarts()
{
    let db = TestDb::create();
    let mut conn = db.conn();
    pause_gate().enqueue(&mut conn).unwrap();
    for _ in 0..5 {
        behind_the_pause().enqueue(&mut conn).unwrap();
    }
    // One batch holds the gate and the five behind it (no slow-job release).
    let start = || {
        runner_with(&db, (), &[("pausable", 1)], |b| {
            b.batch_size(10).slow_job_threshold(Duration::from_secs(60))
        })
        .start()
    };
    let first = start();
    wait_until("the gate job runs", PATIENCE, || {
        PAUSE_GATE_STARTED.load(Ordering::SeqCst) == 1
    });
    assert!(skiplock::pause_queue(&mut conn, "pausable").unwrap());
    assert!(
        !skiplock::pause_queue(&mut conn, "pausable").unwrap(),
        "already paused"
    );
    wait_until("the runner knows", PATIENCE, || {
        first
            .metrics()
            .contains("queue_paused{queue=\"pausable\"} 1")
    });
    // The running job finishes; the five claimed with it do not start.
    PAUSE_GATE_OPEN.store(true, Ordering::SeqCst);
    wait_until("the running job completed", PATIENCE, || {
        db.count_jobs("job_type = 'pause_gate'") == 0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(BEHIND_PAUSE_RUNS.load(Ordering::SeqCst), 0);
    assert_eq!(db.count_jobs("job_type = 'behind_the_pause'"), 5);
    let status = skiplock::queue_status(&mut conn, skiplock::RUNNER_FRESH_SECS).unwrap();
    assert!(status.iter().all(|s| s.queue != "pausable" || s.paused));
    assert_eq!(
        skiplock::paused_queues(&mut conn).unwrap()[0].queue,
        "pausable"
    );

    // Restarted, and a second runner besides: still paused.
    first.shutdown(PATIENCE);
    let second = start();
    let third = start();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(BEHIND_PAUSE_RUNS.load(Ordering::SeqCst), 0);
    assert!(second
        .metrics()
        .contains("queue_paused{queue=\"pausable\"} 1"));

    assert!(skiplock::resume_queue(&mut conn, "pausable").unwrap());
    wait_until("everything ran once resumed", PATIENCE, || {
        db.count_jobs("true") == 0
    });
    assert_eq!(BEHIND_PAUSE_RUNS.load(Ordering::SeqCst), 5);
    // (The other runner may have run them all before this one's wake-up
    // thread read the notification.)
    wait_until("the second runner knows", PATIENCE, || {
        second
            .metrics()
            .contains("queue_paused{queue=\"pausable\"} 0")
    });
    second.shutdown(PATIENCE);
    third.shutdown(PATIENCE);
}

#[test]
fn a_silent_client_and_a_slow_one_do_not_hold_up_a_scrape() {
    use std::io::Write;
    let db = TestDb::create();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let running = runner_with(&db, (), &[("metrics", 1)], |b| b.metrics_listener(listener)).start();
    // One client connects and never says a word; another drips its request.
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    let dripping = std::thread::spawn(move || {
        for byte in b"GET /metrics HTTP/1.1\r\nHost: slow\r\n".iter().take(12) {
            if slow.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let response = scrape(addr, "/metrics");
        slowest = slowest.max(started.elapsed());
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("queue_workers_busy{queue=\"metrics\"}"));
    }
    println!("slowest of 5 scrapes beside a silent and a dripping client: {slowest:?}");
    // The previous server waited out the silent client's 5 s read timeout.
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    dripping.join().unwrap();
    running.shutdown(PATIENCE);
}

static FULL_LOAD_HELD: AtomicUsize = AtomicUsize::new(0);
static FULL_LOAD_RELEASE: AtomicBool = AtomicBool::new(false);

/// Holds its pooled connection until released.
#[skiplock::background_job(queue = "full_load", priority = 10)]
fn hold_a_connection(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT 1").execute(conn)?;
    FULL_LOAD_HELD.fetch_add(1, Ordering::SeqCst);
    while !FULL_LOAD_RELEASE.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[skiplock::background_job(queue = "full_load")]
fn waits_for_a_worker() {}

#[test]
fn a_scrape_under_full_load_gets_a_connection_of_its_own() {
    let db = TestDb::create();
    let mut conn = db.conn();
    for _ in 0..2 {
        hold_a_connection().enqueue(&mut conn).unwrap();
    }
    for _ in 0..4 {
        waits_for_a_worker().enqueue(&mut conn).unwrap();
    }
    // A pool of exactly the size the runner asks for (2 workers + 3), one
    // connection of it held as the watchdog holds one while it records a
    // lost session's completions.
    let pool = db.pool(2 + 3);
    let _watchdogs = pool.get().unwrap();
    let running = runner_with(&db, (), &[("full_load", 2)], |b| {
        b.batch_size(1)
            .poll_interval(Duration::from_millis(10))
            .pool(pool.clone())
    })
    .start();
    wait_until("both workers hold a connection", PATIENCE, || {
        FULL_LOAD_HELD.load(Ordering::SeqCst) == 2
    });
    // Every worker holds a pooled connection and the wake-up thread polls
    // every 10 ms: a scrape still counts the queue at once.
    for _ in 0..20 {
        let started = Instant::now();
        let metrics = running.metrics();
        assert!(
            metrics.contains("queue_ready_jobs{queue=\"full_load\"} 4"),
            "{metrics}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    FULL_LOAD_RELEASE.store(true, Ordering::SeqCst);
    wait_until("everything ran", PATIENCE, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
}
