//! Jobs defined with `#[background_job]` in another crate (`skiplock-examples`,
//! in modules of its own) are found by runners that link it, in this process
//! and in others.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use skiplock::{Job, Runner};
use skiplock_examples::{billing, images, signup, App};
use skiplock_tests::{count, wait_until, TestDb};

#[test]
fn a_runner_finds_and_runs_jobs_from_another_crates_modules_without_listing_them() {
    let db = TestDb::create();
    let mut conn = db.conn();
    skiplock_examples::create_app_tables(&mut conn).unwrap();
    db.execute("INSERT INTO users (email) VALUES ('ada@example.com')");
    signup::send_welcome_mail(1).enqueue(&mut conn).unwrap();
    signup::count_signup().enqueue(&mut conn).unwrap();
    images::resize("a.png".into()).enqueue(&mut conn).unwrap();
    let charge = billing::charge_card(100)
        .enqueue(&mut conn)
        .unwrap()
        .id()
        .unwrap();

    let app = App::new();
    app.crm_calls.store(1, Ordering::SeqCst);
    let runner = Runner::builder(app)
        .database_url(db.url())
        .queue("mail", 1)
        .queue("images", 1)
        .queue("default", 1)
        .build()
        .unwrap();
    let summary = runner.run_pending().unwrap();
    assert_eq!(summary.succeeded.len(), 3, "{summary:?}");
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(
        (summary.failed[0].id, summary.failed[0].dead),
        (charge, true)
    );
    assert_eq!(summary.failed[0].job_type, "billing.charge_card");

    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM users WHERE welcomed"),
        1
    );
    assert_eq!(
        count(&mut conn, "SELECT signups::BIGINT AS n FROM stats"),
        1
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM thumbnails"), 1);
}

#[test]
fn a_job_enqueued_by_one_process_is_run_by_another_processs_runner() {
    let db = TestDb::create();
    skiplock_examples::create_app_tables(&mut db.conn()).unwrap();

    // Process 1 only builds and enqueues the jobs (no runner, no context).
    let enqueue = Command::new(env!("CARGO_BIN_EXE_demo-enqueue"))
        .args([db.url(), "x.png", "y.png"])
        .output()
        .expect("run demo-enqueue");
    assert!(enqueue.status.success(), "{enqueue:?}");
    assert_eq!(String::from_utf8_lossy(&enqueue.stdout).lines().count(), 2);
    assert_eq!(db.count_jobs("job_type = 'resize' AND queue = 'images'"), 2);

    // Process 2 runs them.
    let mut worker = Command::new(env!("CARGO_BIN_EXE_demo-worker"))
        .arg(db.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn demo-worker");
    let mut stdout = BufReader::new(worker.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let worker_pid = worker.id();
    wait_until("both thumbnails exist", Duration::from_secs(10), || {
        count(&mut db.conn(), "SELECT count(*) AS n FROM thumbnails") == 2
    });
    drop(worker.stdin.take()); // graceful shutdown
    assert!(worker.wait().unwrap().success());

    let by_worker = count(
        &mut db.conn(),
        &format!("SELECT count(*) AS n FROM thumbnails WHERE pid = {worker_pid}"),
    );
    assert_eq!(by_worker, 2);
    assert_eq!(db.count_jobs("true"), 0);
}
