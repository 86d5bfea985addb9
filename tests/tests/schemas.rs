//! Two applications using the queue in two schemas of one database (each
//! through its `search_path`): their lock sessions and job locks are their
//! own, though advisory locks are per database and both number their jobs
//! and sessions from 1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use diesel::{Connection, PgConnection};
use skiplock::{Job, Runner};
use skiplock_tests::{count, wait_until, TestDb};

const PATIENCE: Duration = Duration::from_secs(20);

/// Jobs that wait until the test opens the gate.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicUsize,
}

#[skiplock::background_job(queue = "schema_a")]
fn wait_at_gate(gate: &Arc<Gate>, n: u32) {
    let _ = n;
    gate.waiting.fetch_add(1, Ordering::SeqCst);
    let open = gate.open.lock().unwrap();
    drop(
        gate.opened
            .wait_timeout_while(open, PATIENCE, |open| !*open)
            .unwrap(),
    );
}

#[skiplock::background_job(queue = "schema_b")]
fn tally(done: &Arc<AtomicUsize>, n: u32) {
    let _ = n;
    done.fetch_add(1, Ordering::SeqCst);
}

/// `url` with the session's `search_path` set to `schema`.
fn in_schema(url: &str, schema: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.query_pairs_mut()
        .append_pair("options", &format!("-csearch_path={schema}"));
    url.to_string()
}

#[test]
fn two_applications_in_two_schemas_drain_their_own_jobs_without_waiting_on_each_other() {
    let db = TestDb::create_empty();
    db.execute("CREATE SCHEMA app_a; CREATE SCHEMA app_b");
    let (url_a, url_b) = (in_schema(db.url(), "app_a"), in_schema(db.url(), "app_b"));
    let mut conn_a = PgConnection::establish(&url_a).unwrap();
    let mut conn_b = PgConnection::establish(&url_b).unwrap();
    skiplock::migrate(&mut conn_a).unwrap();
    skiplock::migrate(&mut conn_b).unwrap();

    // A's four jobs (ids 1 to 4 of its table) run and hold their locks, on
    // A's lock sessions (numbers 1 to 4 of its own).
    for n in 0..4 {
        wait_at_gate(n).enqueue(&mut conn_a).unwrap();
    }
    let gate = Arc::new(Gate::default());
    let a = Runner::builder(gate.clone())
        .database_url(url_a.as_str())
        .queue("schema_a", 4)
        .build()
        .unwrap()
        .start();
    wait_until("A's jobs are all running", PATIENCE, || {
        gate.waiting.load(Ordering::SeqCst) == 4
    });

    // B's jobs have the same ids, and its sessions the same numbers.
    for n in 0..40 {
        tally(n).enqueue(&mut conn_b).unwrap();
    }
    let done = Arc::new(AtomicUsize::new(0));
    let b = Runner::builder(done.clone())
        .database_url(url_b.as_str())
        .queue("schema_b", 2)
        .build()
        .unwrap()
        .start();
    wait_until("B drained its jobs while A's run", PATIENCE, || {
        count(&mut conn_b, "SELECT count(*) AS n FROM queue_jobs") == 0
    });
    assert_eq!(done.load(Ordering::SeqCst), 40);
    assert_eq!(
        count(&mut conn_a, "SELECT count(*) AS n FROM queue_jobs"),
        4,
        "A's jobs are still running"
    );

    *gate.open.lock().unwrap() = true;
    gate.opened.notify_all();
    wait_until("A drained its jobs", PATIENCE, || {
        count(&mut conn_a, "SELECT count(*) AS n FROM queue_jobs") == 0
    });
    assert_eq!(
        gate.waiting.load(Ordering::SeqCst),
        4,
        "each of A's jobs ran once"
    );
    a.shutdown(PATIENCE);
    b.shutdown(PATIENCE);
}
