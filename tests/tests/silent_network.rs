//! A network that goes silent under one worker process: no FIN, no RST,
//! while the server ends that worker's sessions (as a failover would) and
//! another worker process goes on. No job may start without its lock, and
//! the cut-off worker must come back once the network does.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use skiplock::JobBatch;
use skiplock_tests::crash_jobs::{file_runs, micros, FileRun, FileTimed};
use skiplock_tests::relay::Relay;
use skiplock_tests::{count, wait_until, TestDb, WorkerProcess};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");
/// How long each job runs.
const JOB_MS: u64 = 50;

fn enqueue(db: &TestDb, keys: std::ops::Range<i64>) {
    let mut batch = JobBatch::new();
    for key in keys {
        batch.push(&FileTimed { key, ms: JOB_MS }).unwrap();
    }
    batch.enqueue(&mut db.conn()).unwrap();
}

/// Runs of the same job that overlap in time, leaving out those where one
/// run was already under way at `blackhole_us`.
fn overlaps(runs: &[FileRun], blackhole_us: i64) -> Vec<(FileRun, FileRun)> {
    let mut by_key: BTreeMap<i64, Vec<FileRun>> = BTreeMap::new();
    for run in runs {
        by_key.entry(run.key).or_default().push(*run);
    }
    let running_at_blackhole =
        |r: &FileRun| r.started_us <= blackhole_us && r.ended_us > blackhole_us;
    let mut found = Vec::new();
    for runs in by_key.values() {
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                let overlap = a.started_us < b.ended_us && b.started_us < a.ended_us;
                if overlap && !running_at_blackhole(a) && !running_at_blackhole(b) {
                    found.push((*a, *b));
                }
            }
        }
    }
    found
}

#[test]
fn a_worker_cut_off_by_a_silent_network_starts_no_job_without_its_lock_and_comes_back() {
    skiplock_tests::init_tracing();
    let db = TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let log_text = log.to_str().unwrap();
    let url = url::Url::parse(db.url()).unwrap();
    let server = (url.host_str().unwrap(), url.port().unwrap_or(5432))
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    let relay = Relay::start(server);

    const FIRST: i64 = 800;
    enqueue(&db, 0..FIRST);
    // A reaches the server through the relay. Its workers claim batches of
    // 100 jobs (five seconds of work each) and commit completions every 10
    // seconds: left to itself, it would go on starting jobs of its batch
    // long after the silence.
    let env = [
        ("SKIPLOCK_TEST_RUNS", log_text),
        ("RUST_LOG", "skiplock=warn"),
    ];
    let a = WorkerProcess::spawn_at(
        WORKER,
        &relay.url_for(db.url()),
        &[2, 100, 50, 60_000, 10_000],
        &env,
    );
    let a_pid = a.pid();
    let b = WorkerProcess::spawn_at(WORKER, db.url(), &[2, 10, 50, 100, 50], &env);
    let runs_by = |pid: u32| file_runs(&log).iter().filter(|r| r.pid == pid).count();
    wait_until("A ran jobs", Duration::from_secs(20), || {
        runs_by(a_pid) >= 10
    });

    relay.go_silent();
    let blackhole_us = micros();
    // The server ends A's sessions three seconds later, as a failover
    // would: their locks go, and B may claim A's jobs.
    std::thread::sleep(Duration::from_secs(3));
    let ports: Vec<String> = relay.upstream_ports().iter().map(u16::to_string).collect();
    let ended = count(
        &mut db.conn(),
        &format!(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE client_port IN ({})",
            ports.join(",")
        ),
    );
    assert!(ended >= 2, "A's lock sessions were ended ({ended})");
    std::thread::sleep(Duration::from_secs(5));

    relay.resume();
    let resumed = Instant::now();
    let resumed_us = micros();
    // What A ran while cut off (a job logs its run when it ends).
    let a_late: Vec<FileRun> = file_runs(&log)
        .into_iter()
        .filter(|r| r.pid == a_pid && r.started_us > blackhole_us)
        .collect();
    let last_start = a_late.iter().map(|r| r.started_us - blackhole_us).max();
    println!(
        "A started {} job(s) after the silence, the last {:?} µs after it",
        a_late.len(),
        last_start
    );
    assert!(
        last_start.is_none_or(|us| us < 2_500_000),
        "A started a job {last_start:?} µs after it last heard from its server"
    );
    // More work, for both.
    enqueue(&db, FIRST..FIRST + 400);
    wait_until(
        "A runs jobs again after the network came back",
        Duration::from_secs(30),
        || {
            file_runs(&log)
                .iter()
                .any(|r| r.pid == a_pid && r.started_us > resumed_us)
        },
    );
    println!(
        "A ran jobs again {:?} after the network came back",
        resumed.elapsed()
    );
    wait_until("every job ran", Duration::from_secs(60), || {
        db.count_jobs("true") == 0
    });

    let runs = file_runs(&log);
    let overlapping = overlaps(&runs, blackhole_us);
    assert!(
        overlapping.is_empty(),
        "runs of the same job overlapped: {overlapping:?}"
    );
    let keys: std::collections::BTreeSet<i64> = runs.iter().map(|r| r.key).collect();
    assert_eq!(keys.len() as i64, FIRST + 400, "every job ran");
    drop(b);
    let output = a.output();
    assert!(
        output.contains("did not answer") || output.contains("lost the database session"),
        "A logged the loss; it printed:\n{output}"
    );
}
