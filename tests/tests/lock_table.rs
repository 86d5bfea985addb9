//! Every claimed job is an advisory lock in the server's shared lock table
//! (`max_locks_per_transaction` x (`max_connections` +
//! `max_prepared_transactions`) entries), which the application's sessions
//! share: a runner with many workers claiming full batches must not fill it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use skiplock::{JobBatch, Runner};
use skiplock_tests::{count, wait_until, TestDb};

const WORKERS: usize = 64;
const JOBS: usize = 12_000;

#[skiplock::background_job(queue = "lock_table")]
fn short(runs: &Arc<AtomicUsize>, n: u32) {
    let _ = n;
    std::thread::sleep(Duration::from_millis(1));
    runs.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn sixty_four_workers_leave_the_applications_sessions_room_in_the_lock_table() {
    let db = TestDb::create();
    let capacity = count(
        &mut db.conn(),
        "SELECT current_setting('max_locks_per_transaction')::int8 \
             * (current_setting('max_connections')::int8 \
                + current_setting('max_prepared_transactions')::int8) AS n",
    );
    let mut batch = JobBatch::new();
    for n in 0..JOBS {
        batch.push(&short(n as u32)).unwrap();
    }
    batch.enqueue(&mut db.conn()).unwrap();

    // The application: transactions that each take half of the table.
    let stop = Arc::new(AtomicBool::new(false));
    let application = {
        let stop = Arc::clone(&stop);
        let mut conn = db.conn();
        let locks = capacity / 2;
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let taken = conn.batch_execute(&format!(
                    "BEGIN; SELECT count(pg_advisory_xact_lock(k)) \
                     FROM generate_series(1000000000000, 1000000000000 + {locks} - 1) k; COMMIT"
                ));
                match taken {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed.push(e.to_string());
                        let _ = conn.batch_execute("ROLLBACK");
                    }
                }
            }
            (ok, failed)
        })
    };

    let runs = Arc::new(AtomicUsize::new(0));
    // Workers that claim full batches (100 jobs of 1 ms fit a 1 s window).
    let running = Runner::builder(runs.clone())
        .database_url(db.url())
        .queue("lock_table", WORKERS)
        .completion_window(Duration::from_secs(1))
        .build()
        .unwrap()
        .start();
    let mut most_held = 0;
    wait_until("every job ran", Duration::from_secs(120), || {
        let held = count(
            &mut db.conn(),
            // The queue's locks take two int4 keys (objsubid 2), the
            // application's one int8 key.
            "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2",
        );
        most_held = most_held.max(held);
        db.count_jobs("true") == 0
    });
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = application.join().unwrap();
    running.shutdown(Duration::from_secs(30));
    println!(
        "lock table of {capacity}: the runner held at most {most_held} locks; \
         the application took {} locks {ok} times",
        capacity / 2
    );
    assert!(
        failed.is_empty(),
        "the application's transactions failed {} time(s): {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ok > 0, "the application took its locks");
    assert!(
        most_held <= capacity / 4,
        "the runner held {most_held} locks, more than a quarter of {capacity}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), JOBS, "each job ran once");
}
