//! The dashboard's overview (`skiplock::overview`): exact where a state
//! holds few jobs, estimated past its cap and saying so, and reading a
//! bounded number of rows whatever the table holds.

use diesel::connection::SimpleConnection;
use diesel::PgConnection;
use skiplock::{Count, Overview, OverviewRow, QueueStatus, READY_HEAD, STATE_HEAD};

use skiplock_tests::TestDb;

fn find<'a>(overview: &'a Overview, queue: &str, job_type: &str) -> &'a OverviewRow {
    overview
        .rows
        .iter()
        .find(|r| r.queue == queue && r.job_type == job_type)
        .unwrap_or_else(|| panic!("no row {queue}/{job_type}: {overview:#?}"))
}

fn status_of<'a>(status: &'a [QueueStatus], queue: &str, job_type: &str) -> &'a QueueStatus {
    status
        .iter()
        .find(|r| r.queue == queue && r.job_type == job_type)
        .unwrap()
}

/// Jobs in every state: `ready` ready (one of them running), `scheduled`
/// scheduled, `failing` failing, `dead` dead, per (queue, type) given.
fn fill(db: &TestDb, queue: &str, job_type: &str, counts: [i64; 4]) {
    let [ready, scheduled, failing, dead] = counts;
    db.execute(&format!(
        "INSERT INTO queue_jobs (job_type, queue, payload, run_at) \
             SELECT '{job_type}', '{queue}', '{{}}', now() - n * interval '1 second' FROM generate_series(1, {ready}) n; \
         INSERT INTO queue_jobs (job_type, queue, payload, run_at, scheduled) \
             SELECT '{job_type}', '{queue}', '{{}}', now() + n * interval '1 minute', true FROM generate_series(1, {scheduled}) n; \
         INSERT INTO queue_jobs (job_type, queue, payload, run_at, scheduled, attempts, first_failed_at, last_failed_at, last_error) \
             SELECT '{job_type}', '{queue}', '{{}}', now() + interval '1 hour', true, 2, now() - n * interval '1 minute', now(), 'down' \
             FROM generate_series(1, {failing}) n; \
         INSERT INTO queue_jobs (job_type, queue, payload, attempts, first_failed_at, last_failed_at, last_error, dead_at) \
             SELECT '{job_type}', '{queue}', '{{}}', 5, now(), now(), 'gone', now() FROM generate_series(1, {dead}) n;"
    ));
}

#[test]
fn below_its_caps_the_overview_counts_exactly_what_counting_every_row_does() {
    let db = TestDb::create();
    fill(&db, "mail", "send_mail", [12, 3, 2, 1]);
    fill(&db, "mail", "bounce", [0, 0, 0, 4]);
    fill(&db, "index", "sync", [7, 0, 5, 0]);
    // One job running on a live runner that registers `sync` only.
    db.execute(
        "INSERT INTO queue_runners (id, hostname, pid, queues, job_types, running) \
         SELECT 'r1', 'h', 1, '{mail,index}', '{sync,send_mail}', ARRAY[min(id)] \
         FROM queue_jobs WHERE job_type = 'sync' AND attempts = 0",
    );
    let mut conn = db.conn();
    let overview = skiplock::overview(&mut conn, 30.0).unwrap();
    let status = skiplock::queue_status(&mut conn, 30.0).unwrap();
    assert_eq!(overview.rows.len(), status.len(), "{overview:#?}");
    assert_eq!(overview.statistics, None, "nothing estimated");
    for exact in &status {
        let row = find(&overview, &exact.queue, &exact.job_type);
        assert_eq!(
            (
                row.ready,
                row.scheduled,
                row.running,
                row.failing,
                row.dead,
                row.served
            ),
            (
                Count::Exact(exact.ready),
                Count::Exact(exact.scheduled),
                exact.running,
                Count::Exact(exact.failing),
                Count::Exact(exact.dead),
                exact.served
            ),
            "{}/{}",
            exact.queue,
            exact.job_type
        );
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 5.0,
            (a, b) => a.is_none() && b.is_none(),
        };
        assert!(close(row.oldest_ready_secs, exact.oldest_ready_secs));
        assert!(close(row.failing_for_secs, exact.failing_for_secs));
    }
    let sync = find(&overview, "index", "sync");
    assert_eq!((sync.ready, sync.running), (Count::Exact(6), 1));
    assert!(!find(&overview, "mail", "bounce").served);
}

#[test]
fn past_its_caps_the_overview_estimates_from_statistics_and_says_so() {
    let db = TestDb::create();
    // A long queue of two types, 3:1; more scheduled and failed jobs than
    // counted exactly; a short queue, exact whatever the others hold.
    let big = READY_HEAD * 12;
    fill(
        &db,
        "bulk",
        "a",
        [big * 3 / 4, STATE_HEAD * 2, STATE_HEAD, 0],
    );
    fill(&db, "bulk", "b", [big / 4, 0, 0, STATE_HEAD]);
    fill(&db, "short", "c", [10, 1, 1, 1]);
    let mut conn = db.conn();

    // Never analyzed: ready jobs past the head are only "at least".
    let overview = skiplock::overview(&mut conn, 30.0).unwrap();
    let a = find(&overview, "bulk", "a");
    assert!(
        matches!(a.ready, Count::AtLeast(n) if n <= READY_HEAD + 1),
        "{a:?}"
    );
    assert_eq!(find(&overview, "short", "c").ready, Count::Exact(10));

    conn.batch_execute("ANALYZE queue_jobs").unwrap();
    let overview = skiplock::overview(&mut conn, 30.0).unwrap();
    let status = skiplock::queue_status(&mut conn, 30.0).unwrap();
    let within = |count: Count, truth: i64, what: &str| {
        let Count::About(n) = count else {
            panic!("{what}: {count:?} is not an estimate");
        };
        let off = (n - truth).abs() as f64 / truth as f64;
        assert!(off < 0.15, "{what}: {n} estimated, {truth} there");
    };
    for (job_type, truth) in [("a", big * 3 / 4), ("b", big / 4)] {
        let row = find(&overview, "bulk", job_type);
        within(
            row.ready,
            status_of(&status, "bulk", job_type).ready,
            "ready",
        );
        assert_eq!(status_of(&status, "bulk", job_type).ready, truth);
    }
    // Scheduled and failed past their caps: per type, at least the jobs
    // counted (never more than there are); in all, about the index's size.
    for row in &overview.rows {
        let exact = status_of(&status, &row.queue, &row.job_type);
        for (count, truth) in [
            (row.scheduled, exact.scheduled),
            (row.failing, exact.failing),
            (row.dead, exact.dead),
        ] {
            assert!(matches!(count, Count::AtLeast(n) if n <= truth), "{row:?}");
        }
    }
    let sum = |pick: fn(&QueueStatus) -> i64| status.iter().map(pick).sum::<i64>();
    within(overview.scheduled, sum(|s| s.scheduled), "scheduled in all");
    within(
        overview.failed,
        sum(|s| s.failing + s.dead),
        "failed in all",
    );
    let short = find(&overview, "short", "c");
    assert_eq!(
        short.ready,
        Count::Exact(10),
        "another queue's head is exact"
    );
    let stats = overview.statistics.expect("estimates say how old they are");
    assert!(stats.analyzed_secs.is_some_and(|s| s < 60.0), "{stats:?}");
}

/// Rows the server read from the jobs table for this session so far: by
/// sequential scans and through indexes.
fn rows_read(conn: &mut PgConnection) -> (i64, i64) {
    conn.batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    let seq = skiplock_tests::count(
        conn,
        "SELECT coalesce(seq_tup_read, 0) AS n FROM pg_stat_user_tables WHERE relname = 'queue_jobs'",
    );
    let idx = skiplock_tests::count(
        conn,
        "SELECT coalesce(idx_tup_fetch, 0) AS n FROM pg_stat_user_tables WHERE relname = 'queue_jobs'",
    );
    (seq, idx)
}

#[test]
fn the_overview_reads_a_bounded_number_of_rows_whatever_the_table_holds() {
    let db = TestDb::create();
    fill(&db, "q1", "a", [40_000, 5_000, 3_000, 2_000]);
    fill(&db, "q2", "b", [30_000, 0, 0, 0]);
    // Three jobs running: found by their ids, not by a join over the table.
    db.execute(
        "INSERT INTO queue_runners (id, hostname, pid, queues, running) \
         SELECT 'r1', 'h', 1, '{q1,q2}', (SELECT array_agg(id) FROM (SELECT id FROM queue_jobs LIMIT 3) i)",
    );
    let mut conn = db.conn();
    // On this session, so that its reads are flushed before counting.
    conn.batch_execute("VACUUM ANALYZE queue_jobs").unwrap();
    let before = rows_read(&mut conn);
    let overview = skiplock::overview(&mut conn, 30.0).unwrap();
    let after = rows_read(&mut conn);
    let (seq, fetched) = (after.0 - before.0, after.1 - before.1);
    // Two queues' heads, the scheduled and failed heads, and the probes
    // of the skip scan; counting every row reads all 80,000.
    let bound = 2 * (READY_HEAD + 1) + 2 * (STATE_HEAD + 1) + 10;
    assert_eq!(seq, 0, "no sequential scan of the jobs table");
    assert!(fetched <= bound, "{fetched} rows read, bound {bound}");
    assert!(matches!(find(&overview, "q1", "a").ready, Count::About(_)));
    assert_eq!(
        overview.rows.iter().map(|r| r.running).sum::<i64>(),
        3,
        "{overview:#?}"
    );

    let before = rows_read(&mut conn);
    skiplock::queue_status(&mut conn, 30.0).unwrap();
    let after = rows_read(&mut conn);
    assert!(
        after.0 - before.0 + after.1 - before.1 >= 80_000,
        "counting every row reads them all: {before:?} -> {after:?}"
    );
}

#[test]
fn a_failed_list_or_count_of_one_type_or_queue_reads_only_its_failed_jobs() {
    let db = TestDb::create();
    // 20,000 failed jobs of another type and queue; 60 of the one asked for.
    fill(&db, "busy", "noisy", [0, 0, 10_000, 10_000]);
    fill(&db, "quiet", "rare", [0, 0, 30, 30]);
    let mut conn = db.conn();
    conn.batch_execute("VACUUM ANALYZE queue_jobs").unwrap();
    let read = |conn: &mut PgConnection, f: &dyn Fn(&mut PgConnection)| {
        let before = rows_read(conn);
        f(conn);
        let after = rows_read(conn);
        (after.0 - before.0) + (after.1 - before.1)
    };
    let listed = read(&mut conn, &|conn| {
        let page = skiplock::failed_jobs_page(
            conn,
            skiplock::JobState::Dead,
            None,
            Some("rare"),
            None,
            51,
        )
        .unwrap();
        assert_eq!(page.len(), 30);
    });
    assert!(listed <= 200, "{listed} rows read to list 30 dead jobs");
    let counted = read(&mut conn, &|conn| {
        let n = skiplock::count_failed_jobs(conn, skiplock::JobState::Failing, None, Some("quiet"))
            .unwrap();
        assert_eq!(n, 30);
    });
    assert!(
        counted <= 200,
        "{counted} rows read to count 30 failing jobs"
    );
}

#[test]
fn with_many_queues_the_overview_shares_its_budget_and_looks_at_a_thousand() {
    let db = TestDb::create();
    // 1,100 queues of 50 ready jobs each.
    db.execute(
        "INSERT INTO queue_jobs (job_type, queue, payload) \
         SELECT 't', 'q' || lpad((n % 1100)::text, 4, '0'), '{}' FROM generate_series(1, 55000) n",
    );
    let mut conn = db.conn();
    conn.batch_execute("VACUUM ANALYZE queue_jobs").unwrap();
    let before = rows_read(&mut conn);
    let overview = skiplock::overview(&mut conn, 30.0).unwrap();
    let after = rows_read(&mut conn);
    let fetched = (after.0 - before.0) + (after.1 - before.1);
    assert!(overview.queues_cut);
    assert_eq!(overview.ready_head, 20, "20,000 shared among 1,000 queues");
    assert_eq!(overview.rows.len(), skiplock::MAX_QUEUES as usize);
    assert_eq!(overview.rows[0].queue, "q0000");
    assert!(matches!(
        overview.rows[0].ready,
        Count::AtLeast(21) | Count::About(_)
    ));
    // 21 of each of 1,000 queues, and the skip scan's probes.
    assert!(
        fetched <= 23_000,
        "{fetched} rows read; counting reads 55,000"
    );
}
