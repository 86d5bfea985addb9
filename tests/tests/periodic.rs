//! Periodic jobs across real runner processes: every tick enqueued exactly
//! once by whichever process takes it, whatever happens to the others; a
//! runner stalled in its tick transaction holds up no other schedule.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use skiplock_tests::{TestDb, WorkerProcess};

const WORKER: &str = env!("CARGO_BIN_EXE_periodic-worker");

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The ticks enqueued, in order, with how many jobs each got.
fn ticks(db: &TestDb) -> Vec<(i64, i64)> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        tick: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        jobs: i64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT (payload->>'at')::int8 AS tick, count(*) AS jobs FROM queue_jobs \
         WHERE job_type = 'tick' GROUP BY 1 ORDER BY 1",
    )
    .load(&mut db.conn())
    .unwrap();
    rows.into_iter().map(|r| (r.tick, r.jobs)).collect()
}

#[test]
fn three_runner_processes_enqueue_every_tick_exactly_once_even_when_one_is_killed() {
    let db = TestDb::create();
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|_| WorkerProcess::spawn(WORKER, &db, &[200]))
        .collect();
    let start = now();
    std::thread::sleep(Duration::from_secs(4));
    // SIGKILL one of them mid-run: the others go on, nothing doubles.
    workers.remove(1).kill();
    std::thread::sleep(Duration::from_secs(6));
    let end = now();
    drop(workers);

    let ticks = ticks(&db);
    let doubled: Vec<_> = ticks.iter().filter(|(_, jobs)| *jobs != 1).collect();
    assert!(
        doubled.is_empty(),
        "ticks enqueued more than once: {doubled:?}"
    );
    let seen: Vec<i64> = ticks.iter().map(|(tick, _)| *tick).collect();
    let expected: Vec<i64> = (start.ceil() as i64 + 1..end.floor() as i64).collect();
    assert!(expected.len() >= 8, "{expected:?}");
    let missed: Vec<_> = expected.iter().filter(|t| !seen.contains(t)).collect();
    assert!(
        missed.is_empty(),
        "ticks never enqueued: {missed:?} (seen {seen:?})"
    );
    // And status shows the schedule with its last and next tick.
    let schedule = skiplock::schedules(&mut db.conn(), skiplock::RUNNER_FRESH_SECS).unwrap();
    assert_eq!(schedule.len(), 1);
    assert_eq!(schedule[0].name, "every-second");
    assert_eq!(schedule[0].cron, "* * * * * *");
    assert_eq!(
        schedule[0].last_tick.map(|t| t.timestamp()),
        seen.last().copied()
    );
    assert!(schedule[0].next_tick > schedule[0].last_tick);
}

#[test]
fn five_seconds_without_any_runner_yield_exactly_one_catch_up_job() {
    let db = TestDb::create();
    let first = WorkerProcess::spawn(WORKER, &db, &[200]);
    std::thread::sleep(Duration::from_secs(3));
    first.kill();
    let before = ticks(&db);
    let last_before = before.last().expect("ticks before the downtime").0;
    std::thread::sleep(Duration::from_secs(5));
    // Restarted just after a second begins: the tick that began it passed
    // while no runner was alive, and only a catch-up enqueues it.
    let fraction = now().fract();
    std::thread::sleep(Duration::from_secs_f64((1.05 - fraction) % 1.0));
    let restarted_at = now();
    let second = WorkerProcess::spawn(WORKER, &db, &[200]);
    std::thread::sleep(Duration::from_secs(3));
    drop(second);

    let after: Vec<i64> = ticks(&db)
        .into_iter()
        .inspect(|(tick, jobs)| assert_eq!(*jobs, 1, "tick {tick}"))
        .map(|(tick, _)| tick)
        .filter(|tick| *tick > last_before)
        .collect();
    // The first job after the downtime stands for every tick missed: the
    // ones between were not enqueued one by one...
    let catch_up = after[0];
    assert!(
        catch_up - last_before >= 5,
        "the missed ticks were enqueued one by one: {after:?} after {last_before}"
    );
    assert!(
        (catch_up as f64) < restarted_at,
        "no catch-up job: the first tick enqueued after the restart is {catch_up}, the process \
         started at {restarted_at}"
    );
    // ...and from then on every tick, once.
    for pair in after.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "{after:?}");
    }
    assert!(after.len() >= 3, "{after:?}");
}

#[skiplock::background_job(queue = "ticks")]
fn ticked(schedule: String) {
    let _ = schedule;
}

/// Jobs enqueued by `schedule`.
fn enqueued_by(db: &TestDb, schedule: &str) -> i64 {
    db.count_jobs(&format!(
        "job_type = 'ticked' AND payload->>'schedule' = '{schedule}'"
    ))
}

#[test]
fn a_schedule_held_by_a_stalled_tick_transaction_holds_up_no_other_schedule() {
    use diesel::connection::SimpleConnection;
    use skiplock::{Periodic, Runner};
    let db = TestDb::create();
    let every_second = |name: &'static str| {
        Periodic::new("* * * * * *", move |_| ticked(name.to_owned())).name(name)
    };
    let running = Runner::builder(())
        .database_url(db.url())
        .queue("other", 1)
        .poll_interval(Duration::from_millis(100))
        .schedule(every_second("held"))
        .schedule(every_second("free"))
        .build()
        .unwrap()
        .start();
    skiplock_tests::wait_until("both schedules tick", Duration::from_secs(10), || {
        enqueued_by(&db, "held") >= 1 && enqueued_by(&db, "free") >= 1
    });
    // Another runner's tick transaction, stalled while it holds `held`.
    let mut stalled = db.conn();
    stalled
        .batch_execute("BEGIN; SELECT * FROM queue_schedules WHERE name = 'held' FOR UPDATE")
        .unwrap();
    let (held_before, free_before) = (enqueued_by(&db, "held"), enqueued_by(&db, "free"));
    std::thread::sleep(Duration::from_millis(3500));
    let free_during = enqueued_by(&db, "free") - free_before;
    assert_eq!(
        enqueued_by(&db, "held"),
        held_before,
        "the held schedule ticked"
    );
    stalled.batch_execute("COMMIT").unwrap();
    skiplock_tests::wait_until(
        "the held schedule ticks again",
        Duration::from_secs(5),
        || enqueued_by(&db, "held") > held_before,
    );
    running.shutdown(Duration::from_secs(10));
    assert!(
        free_during >= 3,
        "{free_during} ticks of the free schedule in 3.5 s while the other was held"
    );
}
