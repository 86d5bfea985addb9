//! Behind a real PgBouncer (Debian's, transaction mode): the application
//! enqueues through it on its diesel connections configured as such a
//! pooler needs (no named prepared statements: diesel's statement cache
//! disabled), and a runner refuses to run its sessions through it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use skiplock::{background_job, EnqueueError, EnqueueOptions, Job, JobBatch, Runner, RunnerError};
use skiplock_tests::{count, wait_until, PgBouncer, TestDb};

#[background_job(queue = "bounced")]
fn bounced(db: &mut PgConnection, thread: i32, n: i32) -> Result<(), diesel::result::Error> {
    diesel::sql_query("INSERT INTO ran (thread, n) VALUES ($1, $2)")
        .bind::<Integer, _>(thread)
        .bind::<Integer, _>(n)
        .execute(db)?;
    Ok(())
}

/// A connection as an application behind PgBouncer in transaction mode
/// configures it: no named prepared statements, which live in one server
/// session while the pooler hands each transaction whichever is free (its
/// own queries need this as much as the queue's). What the README says.
fn application_connection(url: &str) -> PgConnection {
    let mut conn = PgConnection::establish(url).unwrap();
    conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
    conn
}

/// Each committed enqueue's job, once; none of the rolled back ones.
fn assert_exactly_the_committed(db: &TestDb, threads: i32, per_thread: i32) {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        jobs: i64,
        #[diesel(sql_type = BigInt)]
        distinct_jobs: i64,
        #[diesel(sql_type = BigInt)]
        rolled_back: i64,
    }
    let row: Row = diesel::sql_query(
        "SELECT count(*) AS jobs, \
                count(DISTINCT (payload->>'thread', payload->>'n')) AS distinct_jobs, \
                count(*) FILTER (WHERE (payload->>'n')::int % 3 = 0) AS rolled_back \
         FROM queue_jobs WHERE job_type = 'bounced'",
    )
    .get_result(&mut db.conn())
    .unwrap();
    let committed = i64::from(threads) * i64::from(per_thread - (per_thread + 2) / 3);
    assert_eq!(row.rolled_back, 0, "a rolled-back enqueue was stored");
    assert_eq!(
        row.distinct_jobs, committed,
        "a committed enqueue is missing"
    );
    assert_eq!(row.jobs, committed, "a job was stored twice");
}

#[test]
fn concurrent_enqueues_and_rollbacks_through_pgbouncer_store_each_job_exactly_once() {
    let bouncer = PgBouncer::start();
    let db = TestDb::create();
    let url = bouncer.url(&db);
    const THREADS: i32 = 8;
    const PER_THREAD: i32 = 250;
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let failures = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (url, barrier, failures) = (url.clone(), barrier.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut conn = application_connection(&url);
                barrier.wait();
                for n in 0..PER_THREAD {
                    let result = conn.transaction(|conn| {
                        match n % 4 {
                            // One job, a job with options, a batch of one.
                            0 | 1 => {
                                bounced(thread, n).enqueue(conn)?;
                            }
                            2 => {
                                let options = EnqueueOptions::new().priority(3);
                                bounced(thread, n).enqueue_with(conn, &options)?;
                            }
                            _ => {
                                let mut batch = JobBatch::new();
                                batch.push(&bounced(thread, n))?;
                                batch.enqueue(conn)?;
                            }
                        }
                        if n % 3 == 0 {
                            return Err(EnqueueError::InvalidOptions("rolled back".into()));
                        }
                        Ok(())
                    });
                    if let Err(error) = result {
                        if !error.to_string().contains("rolled back") {
                            eprintln!("enqueue failed through pgbouncer: {error}");
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "enqueues failed");
    assert_exactly_the_committed(&db, THREADS, PER_THREAD);

    // Outside a transaction too.
    let mut conn = application_connection(&url);
    for n in 0..50 {
        bounced(100, 3 * n + 1).enqueue(&mut conn).unwrap();
    }
    assert_eq!(db.count_jobs("payload->>'thread' = '100'"), 50);
}

#[test]
fn a_runner_given_pgbouncer_refuses_to_build_and_says_what_to_do() {
    let bouncer = PgBouncer::start();
    let db = TestDb::create();
    let through = bouncer.url(&db);
    let refusal = |builder: skiplock::RunnerBuilder<()>| match builder.queue("bounced", 2).build() {
        Err(RunnerError::Config(message)) => message,
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("a runner was built through pgbouncer in transaction mode"),
    };
    let message = refusal(Runner::builder(()).database_url(&through));
    assert!(
        message.contains("database_url reaches PostgreSQL through a pooler")
            && message.contains("direct connection"),
        "{message}"
    );
    let message = refusal(
        Runner::builder(())
            .database_url(db.url())
            .listen_url(&through),
    );
    assert!(message.contains("listen_url"), "{message}");
    let pool = diesel::r2d2::Pool::builder()
        .max_size(6)
        .build(diesel::r2d2::ConnectionManager::<PgConnection>::new(
            &through,
        ))
        .unwrap();
    let message = refusal(Runner::builder(()).database_url(db.url()).pool(pool));
    assert!(message.contains("pool"), "{message}");
    // The same database, directly: built.
    Runner::builder(())
        .database_url(db.url())
        .queue("bounced", 2)
        .build()
        .expect("a direct connection is fine");
}

#[test]
fn a_direct_runner_picks_up_jobs_enqueued_through_pgbouncer_at_once_and_runs_each_once() {
    let bouncer = PgBouncer::start();
    let db = TestDb::create();
    db.execute("CREATE TABLE ran (thread INT NOT NULL, n INT NOT NULL)");
    let through = bouncer.url(&db);
    let running = Runner::builder(())
        .database_url(db.url())
        .queue("bounced", 4)
        // The fallback poll is far: a job picked up in time came by NOTIFY.
        .poll_interval(Duration::from_secs(30))
        .build()
        .unwrap()
        .start();
    let mut app = application_connection(&through);
    for round in 0..5 {
        let mut batch = JobBatch::new();
        for n in 0..400 {
            batch.push(&bounced(round, n)).unwrap();
        }
        app.transaction(|conn| batch.enqueue(conn)).unwrap();
    }
    wait_until("2,000 jobs ran", Duration::from_secs(60), || {
        db.count_jobs("true") == 0
    });
    let ran = count(&mut db.conn(), "SELECT count(*) AS n FROM ran");
    let distinct = count(
        &mut db.conn(),
        "SELECT count(DISTINCT (thread, n)) AS n FROM ran",
    );
    assert_eq!((ran, distinct), (2000, 2000), "each job ran exactly once");
    // One more, alone: picked up long before the poll would find it.
    bounced(9, 9).enqueue(&mut app).unwrap();
    wait_until("the new job ran", Duration::from_secs(5), || {
        count(
            &mut db.conn(),
            "SELECT count(*) AS n FROM ran WHERE thread = 9",
        ) == 1
    });
    running.shutdown(Duration::from_secs(10));
}
