//! Unique jobs: at most one job per key waits, decided by a unique index
//! under concurrent enqueuers; a job enqueued while its twin runs is kept.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use diesel::Connection;
use skiplock::{background_job, EnqueueError, EnqueueOptions, Enqueued, Job, JobBatch, Runner};
use skiplock_tests::{wait_until, TestDb};

const PATIENCE: Duration = Duration::from_secs(10);

/// What the jobs below share: how many ran, and a gate the blocking one
/// waits at.
#[derive(Default)]
struct Gate {
    runs: Arc<AtomicUsize>,
    started: Mutex<Option<mpsc::Sender<String>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

#[background_job(queue = "unique", unique)]
fn refresh(gate: &Gate, name: String) {
    gate.runs.fetch_add(1, Ordering::SeqCst);
    if let Some(started) = gate.started.lock().unwrap().as_ref() {
        started.send(name).unwrap();
        let release = gate.release.lock().unwrap();
        release.as_ref().unwrap().recv_timeout(PATIENCE).unwrap();
    }
}

#[background_job(queue = "unique")]
fn notify(gate: &Gate, user: i64) {
    let _ = user;
    gate.runs.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn eight_threads_enqueueing_the_same_key_at_once_store_exactly_one_job() {
    let db = TestDb::create();
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let url = db.url().to_owned();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut conn = diesel::PgConnection::establish(&url).unwrap();
                    conn.transaction(|conn| {
                        barrier.wait();
                        // Half by payload (the attribute), half by an explicit key.
                        let by_payload = refresh(format!("serde-{round}")).enqueue(conn)?;
                        let key = EnqueueOptions::new().unique_key(format!("user-{round}"));
                        let by_key = notify(i).enqueue_with(conn, &key)?;
                        // Held open a moment, so the others meet an uncommitted twin.
                        std::thread::sleep(Duration::from_millis(20));
                        Ok::<_, EnqueueError>((by_payload, by_key))
                    })
                    .unwrap()
                })
            })
            .collect();
        let outcomes: Vec<(Enqueued, Enqueued)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let inserted = |pick: fn(&(Enqueued, Enqueued)) -> Enqueued| {
            outcomes.iter().filter(|o| pick(o).inserted()).count()
        };
        assert_eq!(inserted(|o| o.0), 1, "round {round}: {outcomes:?}");
        assert_eq!(inserted(|o| o.1), 1, "round {round}: {outcomes:?}");
    }
    assert_eq!(db.count_jobs("job_type = 'refresh'"), 5);
    assert_eq!(db.count_jobs("job_type = 'notify'"), 5);
    // Other payloads, keys and job types are not twins.
    let mut conn = db.conn();
    assert!(refresh("other".into())
        .enqueue(&mut conn)
        .unwrap()
        .inserted());
    assert!(notify(1).enqueue(&mut conn).unwrap().inserted());
    assert!(
        notify(1).enqueue(&mut conn).unwrap().inserted(),
        "not unique without a key"
    );
    let key = EnqueueOptions::new().unique_key("serde-0");
    assert!(notify(2).enqueue_with(&mut conn, &key).unwrap().inserted());
    assert_eq!(
        notify(3).enqueue_with(&mut conn, &key).unwrap(),
        Enqueued::Duplicate
    );
}

#[test]
fn a_job_enqueued_while_its_twin_runs_is_stored_and_runs_after_it() {
    let db = TestDb::create();
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Gate {
        runs: runs.clone(),
        started: Mutex::new(Some(started_tx)),
        release: Mutex::new(Some(release_rx)),
    };
    let mut conn = db.conn();
    let first = refresh("tokio".into()).enqueue(&mut conn).unwrap();
    assert!(first.inserted());
    assert_eq!(
        refresh("tokio".into()).enqueue(&mut conn).unwrap(),
        Enqueued::Duplicate,
        "a twin waits: nothing more to store"
    );
    let runner = Runner::builder(gate)
        .database_url(db.url())
        .poll_interval(Duration::from_millis(20))
        .queue("unique", 1)
        .build()
        .unwrap();
    let running = runner.start();
    assert_eq!(started.recv_timeout(PATIENCE).unwrap(), "tokio");
    // The first runs (and may have read old state): an identical job is kept...
    let second = refresh("tokio".into()).enqueue(&mut conn).unwrap();
    assert!(
        second.inserted(),
        "enqueued while its twin runs: {second:?}"
    );
    assert_ne!(second.id(), first.id());
    // ...but only one.
    assert_eq!(
        refresh("tokio".into()).enqueue(&mut conn).unwrap(),
        Enqueued::Duplicate
    );
    assert_eq!(db.count_jobs("true"), 2);
    release.send(()).unwrap();
    // The second runs after the first (one worker), and reaches the gate too.
    assert_eq!(started.recv_timeout(PATIENCE).unwrap(), "tokio");
    release.send(()).unwrap();
    wait_until("both ran and completed", PATIENCE, || {
        db.count_jobs("true") == 0
    });
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    running.shutdown(PATIENCE);
}

#[test]
fn a_batch_stores_one_job_per_key_and_says_which_were_duplicates() {
    let db = TestDb::create();
    let mut conn = db.conn();
    refresh("waiting".into()).enqueue(&mut conn).unwrap();
    let mut batch = JobBatch::new();
    batch
        .push(&refresh("a".into()))
        .unwrap()
        .push(&notify(1))
        .unwrap()
        .push(&refresh("a".into()))
        .unwrap()
        .push(&refresh("waiting".into()))
        .unwrap()
        .push(&notify(2))
        .unwrap()
        .push_with(&notify(3), &EnqueueOptions::new().unique_key("k"))
        .unwrap()
        .push_with(&notify(4), &EnqueueOptions::new().unique_key("k"))
        .unwrap()
        .push(&refresh("b".into()))
        .unwrap();
    let outcomes = conn.transaction(|conn| batch.enqueue(conn)).unwrap();
    let inserted: Vec<bool> = outcomes.iter().map(|o| o.inserted()).collect();
    assert_eq!(
        inserted,
        [true, true, false, false, true, true, false, true],
        "{outcomes:?}"
    );
    // The ids given are those of the stored rows, in push order.
    let ids: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| o.id())
        .map(|id| id.0)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
    for id in &ids {
        assert_eq!(db.count_jobs(&format!("id = {id}")), 1);
    }
    assert_eq!(db.count_jobs("true"), 6);
    let users: Vec<String> = skiplock::testing::enqueued::<NotifyJob>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|job| job.user.to_string())
        .collect();
    assert_eq!(users, ["1", "2", "3"]);
}

#[test]
fn a_rolled_back_enqueue_leaves_its_key_free_and_hostile_keys_are_refused() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let rolled_back = conn.transaction(|conn| {
        assert!(refresh("x".into()).enqueue(conn)?.inserted());
        Err::<(), _>(EnqueueError::InvalidOptions("the request failed".into()))
    });
    assert!(rolled_back.is_err());
    assert!(refresh("x".into()).enqueue(&mut conn).unwrap().inserted());

    let huge = EnqueueOptions::new().unique_key("k".repeat(513));
    let error = notify(1)
        .enqueue_with(&mut conn, &huge)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("513 bytes") && error.contains("at most 512"),
        "{error}"
    );
    let nul = EnqueueOptions::new().unique_key("a\0b");
    let error = notify(1)
        .enqueue_with(&mut conn, &nul)
        .unwrap_err()
        .to_string();
    assert!(error.contains("NUL"), "{error}");
    // Quotes and SQL in a key are only text.
    let sql = EnqueueOptions::new().unique_key("'); DROP TABLE queue_jobs; --");
    assert!(notify(1).enqueue_with(&mut conn, &sql).unwrap().inserted());
    assert!(!notify(2).enqueue_with(&mut conn, &sql).unwrap().inserted());
    assert_eq!(db.count_jobs("true"), 2);
}
