//! Flow control across processes: per-key and per-type concurrency limits
//! enforced by the claim, a dead process's share freed at once, and keys
//! taking turns, with three worker processes of eight workers each.

use std::collections::{BTreeMap, HashSet};

use std::path::Path;
use std::time::Duration;

use skiplock::{EnqueueOptions, JobBatch};
use skiplock_tests::crash_jobs::micros;
use skiplock_tests::flow_jobs::{
    failing_job, fair_job, most_at_once, plain_job, runs, tenant_job, type_limited, Run,
};
use skiplock_tests::{count, wait_until, TestDb, WorkerProcess};

const WORKERS: u64 = 8;
const BATCH: u64 = 10;

fn spawn(db: &TestDb, log: &Path) -> WorkerProcess {
    spawn_claiming(db, log, BATCH)
}

/// A worker process whose workers claim `batch` jobs at most at once.
fn spawn_claiming(db: &TestDb, log: &Path, batch: u64) -> WorkerProcess {
    WorkerProcess::spawn_with_env(
        env!("CARGO_BIN_EXE_flow-worker"),
        db,
        &[WORKERS, batch],
        &[("SKIPLOCK_TEST_RUNS", log.to_str().unwrap())],
    )
}

fn wait_for_runs(log: &Path, n: usize, timeout: Duration) -> Vec<Run> {
    wait_until(&format!("{n} runs logged"), timeout, || {
        runs(log).len() >= n
    });
    runs(log)
}

/// Every job ran once (no process died).
fn once_each(runs: &[Run]) {
    let mut seen = std::collections::HashMap::new();
    for run in runs {
        if let Some(first) = seen.insert((&run.key, run.n), run) {
            panic!("{} {} ran twice: {first:?} and {run:?}", run.key, run.n);
        }
    }
}

#[test]
fn limits_per_key_and_per_type_hold_across_three_processes_at_every_instant() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let mut conn = db.conn();
    let workers: Vec<WorkerProcess> = (0..3).map(|_| spawn(&db, &log)).collect();
    let mut batch = JobBatch::new();
    let mut total = 0;
    for tenant in ["a", "b", "c", "d"] {
        for n in 0..40 {
            batch.push(&tenant_job(tenant.to_owned(), n, 20)).unwrap();
            total += 1;
        }
    }
    // A limit given at enqueue, over the type's.
    for n in 0..40 {
        batch
            .push_with(
                &tenant_job("e".to_owned(), n, 20),
                &EnqueueOptions::new().max_concurrent(3),
            )
            .unwrap();
        total += 1;
    }
    for n in 0..60 {
        batch.push(&type_limited(n, 20)).unwrap();
        total += 1;
    }
    for n in 0..100 {
        batch.push(&plain_job(n, 5)).unwrap();
        total += 1;
    }
    batch.enqueue(&mut conn).unwrap();
    let runs = wait_for_runs(&log, total, Duration::from_secs(120));
    // (The last completions commit a moment after their runs are logged.)
    wait_until("every job deleted", Duration::from_secs(10), || {
        db.count_jobs("true") == 0
    });
    drop(workers);
    once_each(&runs);
    assert_eq!(runs.len(), total);
    let pids: HashSet<u32> = runs.iter().map(|run| run.pid).collect();
    assert_eq!(pids.len(), 3, "every process ran jobs");
    // Never over the limit; and more than one at once (the limit is not a
    // queue's worth of runs one after the other).
    let most: Vec<usize> = ["a", "b", "c", "d"]
        .iter()
        .map(|tenant| most_at_once(&runs, tenant))
        .collect();
    assert!(
        most.iter().all(|&n| n <= 2),
        "tenants a-d, limit 2: {most:?}"
    );
    assert!(most.contains(&2), "tenants a-d, limit 2: {most:?}");
    let e = most_at_once(&runs, "e");
    assert!(
        (2..=3).contains(&e),
        "tenant e, limit 3 given at enqueue: {e}"
    );
    let typed = most_at_once(&runs, "type_limited");
    assert!((2..=3).contains(&typed), "the type's limit 3: {typed}");
    // Jobs without a key are not limited.
    assert!(most_at_once(&runs, "plain") > 3);
}

#[test]
fn a_sigkilled_process_frees_its_share_of_a_key_within_a_second() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let mut conn = db.conn();
    // The first process takes both slots of tenant k with long jobs, one
    // a worker (its workers claim one job at a time: a worker holding a
    // key's slot takes as many of the key's jobs as its claim wants).
    let first = spawn_claiming(&db, &log, 1);
    let mut batch = JobBatch::new();
    for n in 0..2 {
        batch.push(&tenant_job("k".to_owned(), n, 3_000)).unwrap();
    }
    for n in 2..22 {
        batch.push(&tenant_job("k".to_owned(), n, 50)).unwrap();
    }
    batch.enqueue(&mut conn).unwrap();
    wait_until("both long jobs running", Duration::from_secs(20), || {
        count(
            &mut conn,
            "SELECT COALESCE(sum(cardinality(running)), 0) AS n FROM queue_runners",
        ) == 2
    });
    let others: Vec<WorkerProcess> = (0..2).map(|_| spawn(&db, &log)).collect();
    // Tenant k is full: the others run none of its jobs.
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(runs(&log).is_empty(), "{:?}", runs(&log));
    let first_pid = first.pid();
    first.kill();
    let killed_at = micros();
    // The two long jobs run again (they were in flight) and the rest run.
    let runs = wait_for_runs(&log, 22, Duration::from_secs(60));
    drop(others);
    once_each(&runs);
    assert!(runs.iter().all(|run| run.pid != first_pid));
    let first_start = runs.iter().map(|run| run.started_us).min().unwrap();
    let waited_ms = (first_start - killed_at) / 1_000;
    assert!(
        waited_ms < 1_000,
        "the dead process's slots were taken {waited_ms} ms after its death"
    );
    assert!(most_at_once(&runs, "k") <= 2);
    eprintln!("a slot of the killed process taken {waited_ms} ms after SIGKILL");
}

#[test]
fn a_tenant_enqueued_behind_another_tenants_100000_jobs_runs_within_one_turn() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let mut conn = db.conn();
    let backlog = 100_000;
    for chunk in 0..backlog / 10_000 {
        let mut batch = JobBatch::new();
        for n in 0..10_000 {
            batch
                .push(&fair_job("a".to_owned(), chunk * 10_000 + n, 0))
                .unwrap();
        }
        batch.enqueue(&mut conn).unwrap();
    }
    let mut batch = JobBatch::new();
    for n in 0..100 {
        batch.push(&fair_job("b".to_owned(), n, 0)).unwrap();
        batch.push(&plain_job(n, 0)).unwrap();
    }
    batch.enqueue(&mut conn).unwrap();
    let workers: Vec<WorkerProcess> = (0..3).map(|_| spawn(&db, &log)).collect();
    wait_until(
        "tenant b's and the plain jobs run",
        Duration::from_secs(120),
        || {
            let runs = runs(&log);
            ["b", "plain"]
                .iter()
                .all(|key| runs.iter().filter(|run| run.key == *key).count() == 100)
        },
    );
    // Runs that start once the processes are being killed may be re-runs
    // of jobs a killed one was running (at-least-once): not counted.
    let stopping = micros();
    drop(workers);
    let runs: Vec<Run> = runs(&log)
        .into_iter()
        .filter(|run| run.started_us < stopping)
        .collect();
    once_each(&runs);
    let mut before: BTreeMap<&str, usize> = BTreeMap::new();
    for key in ["b", "plain"] {
        let last = runs
            .iter()
            .filter(|run| run.key == key)
            .map(|run| run.started_us)
            .max()
            .unwrap();
        let of_a = runs
            .iter()
            .filter(|run| run.key == "a" && run.started_us < last)
            .count();
        before.insert(key, of_a);
    }
    eprintln!("tenant a's jobs started before the last of: {before:?}");
    // The bound: every worker's claim gives each waiting key a turn, so
    // b's 100 jobs wait behind at most their own number of a's, plus what
    // the 24 workers hold (a claim's worth each).
    let bound = 100 + 3 * WORKERS as usize * BATCH as usize;
    for (key, of_a) in before {
        assert!(
            of_a <= bound,
            "{of_a} of a's jobs started before {key}'s last"
        );
    }
}

#[test]
fn a_batch_that_completes_nothing_still_lets_go_of_its_keys_slots() {
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let mut conn = db.conn();
    let _worker = spawn(&db, &log);
    let mut batch = JobBatch::new();
    for n in 0..20 {
        batch.push(&failing_job("k".to_owned(), n)).unwrap();
    }
    batch.enqueue(&mut conn).unwrap();
    wait_until("every job dead", Duration::from_secs(30), || {
        db.count_jobs("dead_at IS NOT NULL") == 20
    });
    // Slots are advisory locks keyed (-3 - slot, hash), in this database:
    // the first key shows as an unsigned number in pg_locks.
    let slots_held = || {
        count(
            &mut db.conn(),
            "SELECT count(*) AS n FROM pg_locks \
             WHERE locktype = 'advisory' AND objsubid = 2 AND classid::int8 = 4294967293 \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    };
    wait_until("the slot let go", Duration::from_secs(5), || {
        slots_held() == 0
    });
}
