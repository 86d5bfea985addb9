//! Writes that end a job's claim and that the database refuses: a trigger's
//! error, a statement cancelled while it waits for a row. The job's lock is
//! released only once its outcome is recorded, so a completed job never
//! runs again and a failed one is retried with its attempt counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use skiplock::{Job, Runner};
use skiplock_tests::{count, wait_until, TestDb};

const PATIENCE: Duration = Duration::from_secs(30);

/// How many times each job ran, by key.
#[derive(Default)]
struct Seen(Mutex<BTreeMap<String, usize>>);

impl Seen {
    fn add(&self, key: String) {
        *self.0.lock().unwrap().entry(key).or_default() += 1;
    }

    fn runs(&self) -> BTreeMap<String, usize> {
        self.0.lock().unwrap().clone()
    }
}

#[skiplock::background_job(queue = "refused")]
fn tally(seen: &Arc<Seen>, key: String) {
    seen.add(key);
}

#[skiplock::background_job(queue = "refused", backoff = "1h")]
fn flunk(seen: &Arc<Seen>, key: String) -> Result<(), skiplock::BoxError> {
    seen.add(key);
    Err("flunked on purpose".into())
}

/// Each of `keys` seen once.
fn once(keys: &[String]) -> BTreeMap<String, usize> {
    keys.iter().map(|k| (k.clone(), 1)).collect()
}

fn runner(seen: &Arc<Seen>, db: &TestDb) -> skiplock::RunningRunner {
    Runner::builder(seen.clone())
        .database_url(db.url())
        .queue("refused", 2)
        .build()
        .unwrap()
        .start()
}

/// The id of the job whose payload holds `key`.
fn id_of(db: &TestDb, key: &str) -> i64 {
    count(
        &mut db.conn(),
        &format!("SELECT id AS n FROM queue_jobs WHERE payload->>'key' = '{key}'"),
    )
}

#[test]
fn a_completion_or_failure_the_database_refuses_keeps_its_job_locked_until_recorded() {
    let db = TestDb::create();
    // The test refuses chosen writes to chosen jobs' rows.
    db.execute(
        "CREATE TABLE refuse (id int8 NOT NULL, op text NOT NULL); \
         CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF EXISTS (SELECT 1 FROM refuse WHERE id = OLD.id AND op = TG_OP) THEN \
                 RAISE EXCEPTION 'the test refuses to % job %', TG_OP, OLD.id; \
             END IF; \
             RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END; \
         END $$; \
         CREATE TRIGGER refuse BEFORE DELETE OR UPDATE ON queue_jobs \
             FOR EACH ROW EXECUTE FUNCTION refuse_writes()",
    );
    let mut conn = db.conn();
    let keys: Vec<String> = (0..30).map(|n| format!("tally {n}")).collect();
    for key in &keys {
        tally(key.clone()).enqueue(&mut conn).unwrap();
    }
    flunk("flunk".into()).enqueue(&mut conn).unwrap();
    let refused: Vec<i64> = ["tally 3", "tally 11", "tally 25"]
        .iter()
        .map(|key| id_of(&db, key))
        .collect();
    let flunked = id_of(&db, "flunk");
    for id in &refused {
        db.execute(&format!("INSERT INTO refuse VALUES ({id}, 'DELETE')"));
    }
    db.execute(&format!("INSERT INTO refuse VALUES ({flunked}, 'UPDATE')"));

    let seen = Arc::new(Seen::default());
    let running = runner(&seen, &db);
    wait_until("every job ran", PATIENCE, || seen.runs().len() == 31);
    // Several tries of the refused writes, and as many chances for another
    // worker to run their jobs again.
    std::thread::sleep(Duration::from_secs(2));
    let mut expected = once(&keys);
    expected.insert("flunk".into(), 1);
    assert_eq!(seen.runs(), expected, "no job ran twice while refused");
    assert_eq!(db.count_jobs("true"), 4, "the refused jobs' rows are there");
    assert_eq!(
        db.count_jobs(&format!("id = {flunked} AND attempts = 0")),
        1,
        "the refused failure is not recorded yet"
    );

    db.execute("DELETE FROM refuse");
    wait_until("the refused completions were recorded", PATIENCE, || {
        db.count_jobs("job_type = 'tally'") == 0
    });
    wait_until("the refused failure was recorded", PATIENCE, || {
        db.count_jobs(&format!("id = {flunked} AND attempts = 1")) == 1
    });
    assert_eq!(
        db.count_jobs(&format!(
            "id = {flunked} AND scheduled AND last_error LIKE '%flunked on purpose%' \
             AND run_at > now() + interval '50 minutes'"
        )),
        1,
        "the failure's error and backoff are recorded"
    );
    running.shutdown(PATIENCE);
    assert_eq!(seen.runs(), expected, "each job ran once");
}

#[test]
fn a_completion_cancelled_while_it_waits_for_its_row_is_recorded_not_run_again() {
    let db = TestDb::create();
    let mut conn = db.conn();
    let keys: Vec<String> = (0..40).map(|n| format!("tally {n}")).collect();
    for key in &keys {
        tally(key.clone()).enqueue(&mut conn).unwrap();
    }
    // Another session holds one job's row: the worker's deletion of it
    // waits, and the test cancels the waiting statement (as an operator's
    // `pg_cancel_backend`, or a deadlock's victim, would end it).
    let held = id_of(&db, "tally 5");
    let mut holder = db.conn();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM queue_jobs WHERE id = {held} FOR UPDATE"
        ))
        .unwrap();
    let seen = Arc::new(Seen::default());
    let running = runner(&seen, &db);
    let waiting = || {
        count(
            &mut db.conn(),
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE application_name LIKE 'skiplock worker%' AND wait_event_type = 'Lock' \
               AND query LIKE '%DELETE FROM queue_jobs%'",
        )
    };
    wait_until("a deletion waits for the held row", PATIENCE, || {
        waiting() == 1
    });
    let cancelled = count(
        &mut db.conn(),
        "SELECT count(pg_cancel_backend(pid)) AS n FROM pg_stat_activity \
         WHERE application_name LIKE 'skiplock worker%' AND wait_event_type = 'Lock' \
           AND query LIKE '%DELETE FROM queue_jobs%'",
    );
    assert_eq!(cancelled, 1);
    // The queue goes on meanwhile (more jobs come, the workers claim), and
    // the held job's deletion is tried again.
    let mut keys = keys;
    for n in 40..60 {
        let key = format!("tally {n}");
        tally(key.clone()).enqueue(&mut conn).unwrap();
        keys.push(key);
    }
    wait_until("every job ran", PATIENCE, || seen.runs().len() == 60);
    std::thread::sleep(Duration::from_millis(500));
    holder.batch_execute("COMMIT").unwrap();
    wait_until("every job's completion was recorded", PATIENCE, || {
        db.count_jobs("true") == 0
    });
    running.shutdown(PATIENCE);
    assert_eq!(seen.runs(), once(&keys), "each job ran once");
}
