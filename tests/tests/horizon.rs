//! Claims while another transaction holds back the xmin horizon: VACUUM can
//! remove none of the rows completed jobs leave, and the statistics it
//! leaves say the table is empty. The runner's statements still look its
//! jobs up by id. (Rates are the benchmark's:
//! `cargo run --release -p skiplock-examples --example bench -- --held-xmin`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use skiplock::{JobBatch, Runner};
use skiplock_tests::{count, wait_until, TestDb};

#[skiplock::background_job(queue = "horizon")]
fn tick(done: &Arc<AtomicUsize>) {
    done.fetch_add(1, Ordering::SeqCst);
}

/// Index entries of the jobs' primary key read so far, by every session
/// that has reported its statistics.
fn primary_key_reads(db: &TestDb) -> (i64, i64) {
    let mut conn = db.conn();
    let mut read = |column: &str| {
        count(
            &mut conn,
            &format!(
                "SELECT {column} AS n FROM pg_stat_user_indexes \
                 WHERE indexrelid = 'queue_jobs_pkey'::regclass"
            ),
        )
    };
    (read("idx_scan"), read("idx_tup_read"))
}

#[test]
fn a_claim_looks_up_its_jobs_by_id_whatever_the_statistics_say() {
    const DEAD: i64 = 20_000;
    let db = TestDb::create();
    // A new table, analyzed empty.
    db.execute("VACUUM ANALYZE queue_jobs");
    // A transaction holds the horizon; the rows of 20,000 ended jobs stay,
    // and VACUUM (as autovacuum would run it) leaves statistics that say
    // the table is empty.
    let mut holder = db.conn();
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    db.execute(&format!(
        "INSERT INTO queue_jobs (job_type, queue, payload) \
         SELECT 'ended', 'horizon', 'null' FROM generate_series(1, {DEAD}); \
         DELETE FROM queue_jobs"
    ));
    db.execute("VACUUM queue_jobs");
    let mut batch = JobBatch::new();
    for _ in 0..200 {
        batch.push(&tick()).unwrap();
    }
    batch.enqueue(&mut db.conn()).unwrap();

    // The statistics of the sessions so far are in once they stop moving.
    let mut before = primary_key_reads(&db);
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let now = primary_key_reads(&db);
        if now == before {
            break;
        }
        before = now;
    }
    let done = Arc::new(AtomicUsize::new(0));
    let runner = Runner::builder(done.clone())
        .database_url(db.url())
        .queue("horizon", 1)
        .batch_size(20)
        .build()
        .unwrap();
    let running = runner.start();
    // (Counting the table's rows here would walk the primary key itself.)
    wait_until("every job ran", Duration::from_secs(60), || {
        done.load(Ordering::SeqCst) == 200
    });
    running.shutdown(Duration::from_secs(10));
    // The runner's sessions have ended: their statistics are in.
    let mut after = primary_key_reads(&db);
    wait_until(
        "the statistics of the runner's sessions",
        Duration::from_secs(20),
        || {
            after = primary_key_reads(&db);
            after.0 > before.0
        },
    );
    // Ten claims of 20 jobs, their completions, and the wake-up thread's
    // look for due scheduled jobs look up a few hundred entries. A claim, or
    // that look, that walks the primary key (its 20,200 entries) reads
    // 20,000 at a time: 242,600 in all before the fix.
    let read = after.1 - before.1;
    eprintln!("{read} primary key entries read");
    assert!(read < DEAD, "{read} primary key entries read");
    assert_eq!(db.count_jobs("true"), 0, "every completion was recorded");
    holder.batch_execute("ROLLBACK").unwrap();
}
