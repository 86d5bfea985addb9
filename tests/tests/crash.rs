//! A worker process killed with SIGKILL in the middle of a job releases
//! everything it had claimed at once; another worker finishes the work.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use queue::{Job, JobBatch};
use queue_tests::crash_jobs::{HangOnce, Record};
use queue_tests::{count, wait_until, TestDb};

/// A worker process, killed when dropped (so a failing test leaves none behind).
struct WorkerProcess(Child);

impl WorkerProcess {
    fn spawn(db: &TestDb, workers: u32, batch: u32, poll_ms: u32) -> WorkerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_test-worker"))
            .args([
                db.url(),
                &workers.to_string(),
                &batch.to_string(),
                &poll_ms.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn test-worker");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .expect("read test-worker output");
        assert_eq!(line.trim(), "ready", "test-worker did not start");
        WorkerProcess(child)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn events(db: &TestDb, event: &str) -> i64 {
    count(
        &mut db.conn(),
        &format!("SELECT count(*) AS n FROM crash_log WHERE event = '{event}'"),
    )
}

#[test]
fn sigkilled_worker_releases_its_whole_batch_and_another_worker_finishes_it() {
    queue_tests::init_tracing();
    let db = TestDb::create();
    db.execute("CREATE TABLE crash_log (key TEXT NOT NULL, event TEXT NOT NULL, pid INT NOT NULL)");

    // The hanging job first (higher priority), then 20 quick ones. Worker A
    // claims the hanging job with 4 quick ones in one batch.
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
        let mut a = WorkerProcess::spawn(&db, 1, 5, 50);
        wait_until(
            "worker A started the hanging job",
            Duration::from_secs(10),
            || events(&db, "started") == 1,
        );

        // Worker B runs what A does not hold, and cannot take what A holds.
        let b = WorkerProcess::spawn(&db, 2, 1, 100);
        wait_until(
            "worker B ran the 16 free jobs",
            Duration::from_secs(10),
            || events(&db, "done") == 16,
        );
        assert_eq!(events(&db, "finished"), 0, "the held job ran twice at once");
        assert_eq!(db.count_jobs("true"), 5, "A's batch of 5 is still held");
        assert_eq!(events(&db, "done"), 16, "B ran a job of A's batch");

        let pid = a.0.id();
        a.0.kill().unwrap(); // SIGKILL
        a.0.wait().unwrap();
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
