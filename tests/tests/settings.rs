//! Server settings a DBA might set: a database in another encoding whose
//! sessions default to it, and role-level timeouts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use skiplock::{Job, Runner};
use skiplock_tests::crash_jobs::Record;
use skiplock_tests::{wait_until, TestDb, WorkerProcess};

const PATIENCE: Duration = Duration::from_secs(20);

/// What the jobs saw, by argument.
#[derive(Default)]
struct Seen(Mutex<BTreeMap<String, usize>>);

impl Seen {
    fn runs(&self) -> BTreeMap<String, usize> {
        self.0.lock().unwrap().clone()
    }
}

#[skiplock::background_job]
fn remember(seen: &Arc<Seen>, text: String) {
    *seen.0.lock().unwrap().entry(text).or_default() += 1;
}

/// Runs every `remember` job queued in `db` through a runner connecting with
/// `url` (after `hold`, called once the runner has started); what they saw.
fn run_all(db: &TestDb, url: &str, hold: impl FnOnce()) -> BTreeMap<String, usize> {
    let seen = Arc::new(Seen::default());
    let running = Runner::builder(seen.clone())
        .database_url(url)
        .queue("default", 2)
        .build()
        .unwrap()
        .start();
    hold();
    wait_until("every job ran", PATIENCE, || db.count_jobs("true") == 0);
    running.shutdown(PATIENCE);
    seen.runs()
}

/// Each of `texts` seen once.
fn once<T: ToString>(texts: &[T]) -> BTreeMap<String, usize> {
    texts.iter().map(|t| (t.to_string(), 1)).collect()
}

/// A login role of one test's own (roles belong to the server, not the
/// database), dropped when the value is, even when the test fails.
struct Role<'a>(&'a TestDb, String);

impl<'a> Role<'a> {
    /// A role of its own whose sessions have a DBA's 10 ms `lock_timeout`
    /// and `statement_timeout`, and the URL that logs in as it.
    fn with_short_timeouts(db: &'a TestDb, purpose: &str) -> (Role<'a>, String) {
        let role = Role(db, format!("skiplock_{purpose}_{}", std::process::id()));
        db.execute(&format!(
            "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN SUPERUSER; \
             ALTER ROLE {name} SET lock_timeout = '10ms'; \
             ALTER ROLE {name} SET statement_timeout = '10ms'",
            name = role.1
        ));
        let mut url = url::Url::parse(db.url()).unwrap();
        url.set_username(&role.1).unwrap();
        (role, url.to_string())
    }
}

impl Drop for Role<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .conn()
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", self.1));
    }
}

#[test]
fn a_latin1_database_whose_sessions_default_to_latin1_runs_non_ascii_payloads() {
    let db =
        TestDb::create_with("ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
    skiplock::migrate(&mut db.conn()).unwrap();
    // Every new session of this database now speaks LATIN1 unless it asks
    // otherwise (as `PGCLIENTENCODING=LATIN1` or `ALTER ROLE` would make it).
    db.execute(&format!(
        "ALTER DATABASE {} SET client_encoding = 'LATIN1'",
        db.name()
    ));
    let texts = ["Crème brûlée", "Größe", "¿señor?", "plain"];
    let mut conn = db.conn();
    for text in texts {
        remember(text.into()).enqueue(&mut conn).unwrap();
    }
    assert_eq!(run_all(&db, db.url(), || ()), once(&texts));
}

#[test]
fn a_role_level_lock_timeout_does_not_cancel_a_completion_that_waits_for_its_row() {
    let db = TestDb::create();
    let (_role, url) = Role::with_short_timeouts(&db, "timeouts");

    let mut conn = db.conn();
    let texts: Vec<String> = (0..20).map(|n| format!("job {n}")).collect();
    for text in &texts {
        remember(text.clone()).enqueue(&mut conn).unwrap();
    }
    // Another session holds every job's row for a while: the runner's writes
    // to them wait longer than the role's lock timeout.
    let mut holder = db.conn();
    holder
        .batch_execute("BEGIN; SELECT id FROM queue_jobs FOR UPDATE")
        .unwrap();
    let runs = run_all(&db, &url, || {
        std::thread::sleep(Duration::from_millis(500));
        holder.batch_execute("COMMIT").unwrap();
    });
    assert_eq!(runs, once(&texts), "each job ran once");
}

#[test]
fn a_worker_process_started_with_pgclientencoding_latin1_runs_non_ascii_payloads() {
    let db =
        TestDb::create_with("ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
    skiplock::migrate(&mut db.conn()).unwrap();
    db.execute("CREATE TABLE crash_log (key TEXT NOT NULL, event TEXT NOT NULL, pid INT NOT NULL)");
    let keys = ["Größe", "crème", "plain"];
    let mut conn = db.conn();
    for key in keys {
        Record { key: key.into() }.enqueue(&mut conn).unwrap();
    }
    // libpq in the worker process reads PGCLIENTENCODING: every session it
    // opens speaks LATIN1 unless it asks otherwise.
    let _worker = WorkerProcess::spawn_with_env(
        env!("CARGO_BIN_EXE_test-worker"),
        &db,
        &[2, 10, 50, 0],
        &[("PGCLIENTENCODING", "LATIN1")],
    );
    wait_until("every job ran", PATIENCE, || db.count_jobs("true") == 0);
    let logged = skiplock_tests::count(
        &mut conn,
        "SELECT count(*) AS n FROM crash_log \
         WHERE event = 'done' AND key IN ('Größe', 'crème', 'plain')",
    );
    assert_eq!(logged, 3);
}

#[test]
fn a_role_level_statement_timeout_does_not_cancel_the_runners_promotions() {
    let db = TestDb::create();
    let (_role, url) = Role::with_short_timeouts(&db, "promotions");
    // Slow storage, as a busy disk makes it: each updated row of the jobs
    // table costs 0.1 ms, so promoting a thousand due jobs takes 100 ms.
    db.execute(
        "CREATE FUNCTION slow_update() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep(0.0001); RETURN NEW; END $$; \
         CREATE TRIGGER slow_update BEFORE UPDATE ON queue_jobs \
             FOR EACH ROW EXECUTE FUNCTION slow_update()",
    );
    let texts: Vec<String> = (0..2_000).map(|n| format!("later {n}")).collect();
    let mut conn = db.conn();
    let mut batch = skiplock::JobBatch::new();
    let later = skiplock::EnqueueOptions::new().delay(Duration::from_millis(300));
    for text in &texts {
        batch.push_with(&remember(text.clone()), &later).unwrap();
    }
    batch.enqueue(&mut conn).unwrap();
    assert_eq!(db.count_jobs("scheduled"), 2_000);
    assert_eq!(run_all(&db, &url, || ()), once(&texts));
}
