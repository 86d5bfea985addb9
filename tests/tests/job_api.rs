//! Jobs as Rust users write them: the error types they reach for, and one
//! application state whose parts the jobs take.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use diesel::prelude::*;
use skiplock::{background_job, BoxError, FromState, Job, PerformError, Runner, RunnerError};
use skiplock_tests::TestDb;

// --- error types ------------------------------------------------------------

/// An application's own error, with a cause.
#[derive(Debug)]
struct IndexError(std::io::Error);

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot update the index")
    }
}

impl std::error::Error for IndexError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

static CANNOT_FAIL_RUNS: AtomicUsize = AtomicUsize::new(0);

#[background_job(queue = "errors", max_attempts = 1)]
fn with_anyhow() -> anyhow::Result<()> {
    Err(anyhow::anyhow!("disk full").context("writing the index"))
}

#[background_job(queue = "errors", max_attempts = 1)]
fn with_eyre() -> eyre::Result<()> {
    Err(eyre::eyre!("disk full").wrap_err("writing the index"))
}

#[background_job(queue = "errors", max_attempts = 1)]
fn with_box_dyn_error() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("a boxed error".into())
}

#[background_job(queue = "errors", max_attempts = 1)]
fn with_box_error() -> Result<(), BoxError> {
    Err(Box::new(IndexError(std::io::Error::other("disk full"))))
}

#[background_job(queue = "errors", max_attempts = 1)]
fn with_query_result(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT * FROM no_such_table").execute(conn)?;
    Ok(())
}

#[background_job(queue = "errors", max_attempts = 1)]
fn with_diesel_error() -> Result<(), diesel::result::Error> {
    Err(diesel::result::Error::NotFound)
}

#[background_job(queue = "errors", max_attempts = 1)]
fn with_own_error() -> Result<(), IndexError> {
    Err(IndexError(std::io::Error::other("disk full")))
}

#[background_job(queue = "errors", max_attempts = 5)]
fn with_permanent_error() -> Result<(), PerformError> {
    Err(PerformError::permanent("no such crate"))
}

#[background_job(queue = "errors")]
fn cannot_fail() {
    CANNOT_FAIL_RUNS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_job_returns_the_error_types_rust_users_reach_for_and_keeps_the_chain() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let ids = [
        with_anyhow().enqueue(&mut conn).unwrap().id().unwrap(),
        with_eyre().enqueue(&mut conn).unwrap().id().unwrap(),
        with_box_dyn_error()
            .enqueue(&mut conn)
            .unwrap()
            .id()
            .unwrap(),
        with_box_error().enqueue(&mut conn).unwrap().id().unwrap(),
        with_query_result()
            .enqueue(&mut conn)
            .unwrap()
            .id()
            .unwrap(),
        with_diesel_error()
            .enqueue(&mut conn)
            .unwrap()
            .id()
            .unwrap(),
        with_own_error().enqueue(&mut conn).unwrap().id().unwrap(),
        with_permanent_error()
            .enqueue(&mut conn)
            .unwrap()
            .id()
            .unwrap(),
    ];
    let done = cannot_fail().enqueue(&mut conn).unwrap().id().unwrap();
    let runner = Runner::builder(())
        .database_url(db.url())
        .queue("errors", 1)
        .build()
        .unwrap();
    let summary = runner.run_pending().unwrap();
    assert_eq!(summary.succeeded, vec![done]);
    assert_eq!(CANNOT_FAIL_RUNS.load(Ordering::SeqCst), 1);

    let anyhow_text = format!(
        "{:#}",
        anyhow::anyhow!("disk full").context("writing the index")
    );
    assert_eq!(anyhow_text, "writing the index: disk full");
    let expected = [
        anyhow_text.as_str(),
        "writing the index: disk full",
        "a boxed error",
        "cannot update the index: disk full",
        "relation \"no_such_table\" does not exist",
        "Record not found",
        "cannot update the index: disk full",
        "no such crate",
    ];
    for (id, expected) in ids.iter().zip(expected) {
        let job = skiplock::find_job(&mut conn, *id).unwrap();
        assert_eq!(
            job.last_error.as_deref(),
            Some(expected),
            "{}",
            job.job_type
        );
        // Every one of them failed once and is dead (max_attempts = 1, or permanent).
        assert_eq!(job.attempts, 1, "{}", job.job_type);
        assert!(job.dead_at.is_some(), "{}", job.job_type);
    }
}

// --- one application state, jobs taking its parts --------------------------

#[derive(Debug, Default)]
struct Mailer {
    sent: Mutex<Vec<String>>,
}

#[derive(Debug, Default)]
struct SearchIndex {
    updates: AtomicUsize,
}

#[derive(Debug, Default)]
struct Metrics {
    events: AtomicUsize,
}

/// Given by hand, not by the derive.
#[derive(Debug, Default)]
struct Clock {
    ticks: AtomicUsize,
}

#[derive(Debug, Default, FromState)]
struct AppState {
    mailer: Mailer,
    index: SearchIndex,
    metrics: Metrics,
    #[from_state(skip)]
    clock: Clock,
}

impl FromState<AppState> for Clock {
    fn from_state(state: &AppState) -> &Clock {
        &state.clock
    }
}
skiplock::state_part!(AppState => Clock);

static STATELESS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[background_job(queue = "parts")]
fn send_mail(mailer: &Mailer, to: String) -> Result<(), PerformError> {
    mailer.sent.lock().unwrap().push(to);
    Ok(())
}

#[background_job(queue = "parts")]
fn update_index(index: &SearchIndex) -> Result<(), PerformError> {
    index.updates.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[background_job(queue = "parts")]
fn count_event(metrics: &Metrics) -> Result<(), PerformError> {
    metrics.events.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[background_job(queue = "parts")]
fn tick(clock: &Clock) -> Result<(), PerformError> {
    clock.ticks.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[background_job(queue = "parts")]
fn whole_state(state: &AppState) -> Result<(), PerformError> {
    state.metrics.events.fetch_add(100, Ordering::SeqCst);
    Ok(())
}

#[background_job(queue = "parts")]
fn stateless() -> Result<(), PerformError> {
    STATELESS_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[test]
fn one_runner_serves_jobs_taking_different_parts_of_one_state_and_none() {
    let db = TestDb::create();
    let mut conn = db.conn();
    send_mail("ferris@example.com".into())
        .enqueue(&mut conn)
        .unwrap();
    update_index().enqueue(&mut conn).unwrap();
    count_event().enqueue(&mut conn).unwrap();
    tick().enqueue(&mut conn).unwrap();
    whole_state().enqueue(&mut conn).unwrap();
    stateless().enqueue(&mut conn).unwrap();
    let runner = Runner::builder(AppState::default())
        .database_url(db.url())
        .queue("parts", 2)
        .build()
        .unwrap();
    let summary = runner.run_pending().unwrap();
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_eq!(summary.succeeded.len(), 6);
    let state = runner.context();
    assert_eq!(*state.mailer.sent.lock().unwrap(), ["ferris@example.com"]);
    assert_eq!(state.index.updates.load(Ordering::SeqCst), 1);
    assert_eq!(state.metrics.events.load(Ordering::SeqCst), 101);
    assert_eq!(state.clock.ticks.load(Ordering::SeqCst), 1);
    assert_eq!(STATELESS_RUNS.load(Ordering::SeqCst), 1);
}

static ANYWHERE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[background_job(queue = "anywhere")]
fn runs_anywhere() {
    ANYWHERE_RUNS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_job_without_a_context_runs_on_a_runner_of_any_state() {
    let db = TestDb::create();
    let id = runs_anywhere()
        .enqueue_with(
            &mut db.conn(),
            &skiplock::EnqueueOptions::new().queue("anywhere"),
        )
        .unwrap()
        .id()
        .unwrap();
    let runner = Runner::builder(42_u64)
        .database_url(db.url())
        .queue("anywhere", 1)
        .build()
        .unwrap();
    assert_eq!(runner.run_pending().unwrap().succeeded, vec![id]);
    assert_eq!(ANYWHERE_RUNS.load(Ordering::SeqCst), 1);
}

/// A part no state gives.
#[derive(Debug)]
struct PaymentGateway;

#[background_job(queue = "payments")]
fn charge(gateway: &PaymentGateway) -> Result<(), PerformError> {
    let _ = gateway;
    Ok(())
}

#[test]
fn a_runner_refuses_a_job_whose_part_its_state_does_not_give() {
    let db = TestDb::create();
    let error = Runner::builder(AppState::default())
        .database_url(db.url())
        .queue("payments", 1)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            error,
            RunnerError::ContextMismatch {
                job_type: "charge",
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("PaymentGateway`")
            && message.contains("AppState`")
            && message.contains("FromState"),
        "{message}"
    );
    // The job enqueued on a served queue anyway is a recorded failure that
    // says the same, not a crash.
    let id = charge()
        .enqueue_with(
            &mut db.conn(),
            &skiplock::EnqueueOptions::new().queue("parts"),
        )
        .unwrap()
        .id()
        .unwrap();
    let runner = Runner::builder(AppState::default())
        .database_url(db.url())
        .queue("parts", 1)
        .build()
        .unwrap();
    let summary = runner.run_pending().unwrap();
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(summary.failed[0].id, id);
    assert!(
        summary.failed[0].error.contains("PaymentGateway`"),
        "{}",
        summary.failed[0].error
    );
}

// --- testing helpers ----------------------------------------------------------

/// Fails its first run, then succeeds; retried an hour later.
#[derive(Debug, Default)]
struct Flaky {
    runs: AtomicUsize,
}

#[background_job(queue = "testing", backoff = "1h")]
fn flaky(flaky: &Flaky, label: String) -> Result<(), PerformError> {
    let _ = label;
    if flaky.runs.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(PerformError::msg("first run fails"));
    }
    Ok(())
}

#[background_job(queue = "testing")]
fn needs_database(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT 1").execute(conn)?;
    Ok(())
}

#[test]
fn run_all_skips_delays_and_backoffs_forward_where_run_pending_leaves_them() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let id = flaky("a".into()).enqueue(&mut conn).unwrap().id().unwrap();
    let delayed = flaky("later".into())
        .enqueue_with(
            &mut conn,
            &skiplock::EnqueueOptions::new().delay(std::time::Duration::from_secs(3600)),
        )
        .unwrap()
        .id()
        .unwrap();
    let runner = Runner::builder(Flaky::default())
        .database_url(db.url())
        .queue("testing", 1)
        .build()
        .unwrap();
    // run_pending: the first run fails; its retry, an hour away, waits, and so
    // does the delayed job.
    let first = runner.run_pending().unwrap();
    assert_eq!(first.failed.len(), 1);
    assert_eq!(first.failed[0].id, id);
    assert!(runner.run_pending().unwrap().succeeded.is_empty());
    assert_eq!(runner.context().runs.load(Ordering::SeqCst), 1);
    // run_all: both run now, the retry and the delayed job, without sleeping.
    let all = skiplock::testing::run_all(&runner).unwrap();
    let mut ran = all.succeeded.clone();
    ran.sort();
    assert_eq!(ran, vec![id, delayed]);
    assert!(all.failed.is_empty(), "{:?}", all.failed);
    assert_eq!(runner.context().runs.load(Ordering::SeqCst), 3);
}

#[test]
fn enqueued_lists_the_jobs_of_a_type_typed_and_perform_runs_a_body_without_a_database() {
    let db = TestDb::create();
    let mut conn = db.conn();
    flaky("one".into()).enqueue(&mut conn).unwrap();
    needs_database().enqueue(&mut conn).unwrap();
    flaky("two".into()).enqueue(&mut conn).unwrap();
    let listed = skiplock::testing::enqueued::<FlakyJob>(&mut conn).unwrap();
    let labels: Vec<&str> = listed.iter().map(|job| job.label.as_str()).collect();
    assert_eq!(labels, ["one", "two"]);
    assert_eq!(
        skiplock::testing::enqueued::<NeedsDatabaseJob>(&mut conn)
            .unwrap()
            .len(),
        1
    );

    let state = Flaky::default();
    let mut listed = listed.into_iter();
    let first = skiplock::testing::perform(listed.next().unwrap(), &state);
    assert_eq!(first.unwrap_err().to_string(), "first run fails");
    skiplock::testing::perform(listed.next().unwrap(), &state).unwrap();
    assert_eq!(state.runs.load(Ordering::SeqCst), 2);

    let error = skiplock::testing::perform(needs_database(), &()).unwrap_err();
    assert!(error.is_permanent());
    assert!(
        error.to_string().contains("skiplock::testing::run_all"),
        "{error}"
    );
}
