//! Throughput and latency of the queue, next to raw SQL on the same server
//! in the same run.
//!
//! `cargo run --release -p skiplock-examples --example bench` (a few minutes;
//! `-- --quick` for a smoke run, `-- --million` adds the memory run over a
//! million jobs, `-- --claims` runs only the claim measurements, `-- --drain`
//! only the drains (at 1 and 8 workers, or `--workers 1,8,32,64`, each
//! next to the raw reference) and the pickup latency, to compare two builds;
//! `-- --backlog N` sets the drains' backlog, 20,000 jobs by default;
//! `-- --flow` drains with concurrency keys and limits next to the plain
//! drain, see [`flow_control`];
//! `-- --held-xmin` runs consecutive drains with and without a transaction
//! holding back VACUUM, see [`held_horizon`]; `--only skiplock` or `--only
//! raw` runs half of them). Uses `DATABASE_URL`'s server
//! and (re)creates the database `queue_bench`.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};
use skiplock::{Job, JobBatch, Runner};
use skiplock_examples::bench::{noop, sleep_ms, stamp, Stamps, NOOP_RUNS};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Settings {
    url: String,
    single: usize,
    backlog: usize,
    latency_jobs: usize,
    reps: usize,
    million: bool,
}

fn main() -> BenchResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let held_xmin = args.iter().any(|a| a == "--held-xmin");
    if held_xmin {
        claim_times::install();
    } else {
        skiplock_examples::log_warnings_to_stderr();
    }
    let claims_only = args.iter().any(|a| a == "--claims");
    let quick = args.iter().any(|a| a == "--quick");
    let database = skiplock_examples::fresh_database("queue_bench")?;
    let settings = Settings {
        url: database.url.clone(),
        single: if quick { 200 } else { 2_000 },
        backlog: flag_value(&args, "--backlog")?.unwrap_or(if quick {
            2_000
        } else if held_xmin {
            200_000
        } else {
            20_000
        }),
        latency_jobs: if quick { 50 } else { 500 },
        reps: if quick { 1 } else { 3 },
        million: args.iter().any(|a| a == "--million"),
    };
    skiplock::migrate(&mut connect(&settings)?)?;
    if claims_only {
        return claim_scaling(&settings);
    }
    if args.iter().any(|a| a == "--flow") {
        return flow_control(&settings);
    }
    if args.iter().any(|a| a == "--drain") {
        let workers = match args.iter().position(|a| a == "--workers") {
            None => vec![1, 8],
            Some(at) => args
                .get(at + 1)
                .map(|list| {
                    list.split(',')
                        .map(str::parse)
                        .collect::<Result<Vec<usize>, _>>()
                })
                .and_then(Result::ok)
                .filter(|list| !list.is_empty())
                .ok_or("--workers takes a list of worker counts: 1,8,32,64")?,
        };
        return drain_and_pickup(&settings, &workers);
    }
    if held_xmin {
        let drains = flag_value(&args, "--drains")?.unwrap_or(5);
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|at| args.get(at + 1))
            .map(String::as_str);
        return held_horizon(&settings, drains, only);
    }
    println!(
        "skiplock benchmark: {} ({} repetitions, median)",
        skiplock::redact_connection_string(&settings.url),
        settings.reps
    );

    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut row = |what: &str, ours: f64, reference: f64, unit: &str, reference_name: &str| {
        let ratio = ours / reference;
        rows.push((
            what.to_owned(),
            format!("{ours:.1} {unit}"),
            format!("{reference:.1} {unit} ({reference_name})"),
            format!("{:.0} %", ratio * 100.0),
        ));
        println!(
            "  {what}: {ours:.1} {unit} vs {reference:.1} ({:.0} %)",
            ratio * 100.0
        );
    };

    // Each repetition measures the queue and its reference back to back,
    // in alternating order, so both see the same disk weather.
    let reps = settings.reps;
    let mut pairs = (0..reps)
        .map(|_| enqueue_one_by_one_vs_insert(&settings))
        .collect::<BenchResult<Vec<_>>>()?;
    pairs.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
    let (ours, raw) = pairs[pairs.len() / 2];
    row(
        "enqueue one by one",
        ours,
        raw,
        "jobs/s",
        "prepared one-row INSERT",
    );
    let (ours, raw) = paired(
        reps,
        || enqueue_batches(&settings),
        || raw_insert_batches(&settings),
    )?;
    row(
        "batch enqueue (1,000 a batch)",
        ours,
        raw,
        "jobs/s",
        "INSERT … SELECT unnest($1::jsonb[]), plain table",
    );
    for workers in [1, 8] {
        let (ours, raw) = paired(
            reps,
            || drain(&settings, workers),
            || raw_delete_batches(&settings, workers),
        )?;
        row(
            &format!("drain, {workers} worker(s)"),
            ours,
            raw,
            "jobs/s",
            &format!(
                "prepared DELETE … SKIP LOCKED LIMIT 100 RETURNING, plain table, {workers} conn(s)"
            ),
        );
    }

    let raw_latency = raw_listen_latency(&settings)?;
    let latency = pickup_latency(&settings)?;
    for (name, index) in [("p50", 0), ("p95", 1), ("p99", 2)] {
        row(
            &format!("pickup latency {name}"),
            latency[index],
            raw_latency[index],
            "ms",
            "raw LISTEN + claim",
        );
    }

    let (alone, with_slow) = slow_job_among_fast(&settings)?;
    println!("  {} no-op jobs, 4 workers: {alone:.2} s alone, {with_slow:.2} s with one 5 s job among them", settings.backlog);

    claim_scaling(&settings)?;
    if settings.million {
        million_jobs_memory(&settings)?;
    }

    println!("\n| measure | skiplock | raw SQL reference | ratio |\n|---|---|---|---|");
    for (what, ours, reference, ratio) in rows {
        println!("| {what} | {ours} | {reference} | {ratio} |");
    }
    println!(
        "\nslow job among {} no-ops, 4 workers: {alone:.2} s alone, {with_slow:.2} s with the slow job",
        settings.backlog
    );
    Ok(())
}

fn connect(settings: &Settings) -> ConnectionResult<PgConnection> {
    let mut conn = PgConnection::establish(&settings.url)?;
    if std::env::var("BENCH_ASYNC").is_ok() {
        conn.batch_execute("SET synchronous_commit = off")
            .expect("set");
    }
    Ok(conn)
}

fn median(reps: usize, mut measure: impl FnMut() -> BenchResult<f64>) -> BenchResult<f64> {
    let mut values = (0..reps)
        .map(|_| measure())
        .collect::<BenchResult<Vec<f64>>>()?;
    values.sort_by(f64::total_cmp);
    Ok(values[values.len() / 2])
}

/// Medians of `ours` and `reference`, measured alternately.
fn paired(
    reps: usize,
    mut ours: impl FnMut() -> BenchResult<f64>,
    mut reference: impl FnMut() -> BenchResult<f64>,
) -> BenchResult<(f64, f64)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        if rep % 2 == 0 {
            a.push(ours()?);
            b.push(reference()?);
        } else {
            b.push(reference()?);
            a.push(ours()?);
        }
    }
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((mid(a), mid(b)))
}

fn clear(conn: &mut PgConnection) -> QueryResult<()> {
    conn.batch_execute("TRUNCATE queue_jobs")?;
    conn.batch_execute("VACUUM ANALYZE queue_jobs")
}

fn rate(jobs: usize, elapsed: Duration) -> f64 {
    jobs as f64 / elapsed.as_secs_f64()
}

/// Jobs/s of `noop().enqueue` and of the prepared one-row INSERT, each in
/// its own transaction, alternating in chunks of 50 so that both see the
/// same disk: a single commit costs 0.4 to 4 ms here, and drifts.
fn enqueue_one_by_one_vs_insert(settings: &Settings) -> BenchResult<(f64, f64)> {
    use skiplock_examples::bench_schema::queue_jobs::dsl as j;
    let mut conn = connect(settings)?;
    clear(&mut conn)?;
    let payload = serde_json::json!({});
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..settings.single / 50 {
        let started = Instant::now();
        for _ in 0..50 {
            noop().enqueue(&mut conn)?;
        }
        ours += started.elapsed();
        let started = Instant::now();
        for _ in 0..50 {
            diesel::insert_into(j::queue_jobs)
                .values((
                    j::job_type.eq("noop"),
                    j::queue.eq("bench"),
                    j::payload.eq(&payload),
                ))
                .execute(&mut conn)?;
        }
        raw += started.elapsed();
    }
    Ok((rate(settings.single, ours), rate(settings.single, raw)))
}

fn enqueue_batches(settings: &Settings) -> BenchResult<f64> {
    let mut conn = connect(settings)?;
    clear(&mut conn)?;
    let started = Instant::now();
    for _ in 0..settings.backlog / 1_000 {
        let mut batch = JobBatch::new();
        for _ in 0..1_000 {
            batch.push(&noop())?;
        }
        batch.enqueue(&mut conn)?;
    }
    Ok(rate(settings.backlog, started.elapsed()))
}

/// The strongest raw batch enqueue: 1,000 payloads a call in one
/// `INSERT .. SELECT unnest($1::jsonb[])` into a plain table.
fn raw_insert_batches(settings: &Settings) -> BenchResult<f64> {
    let mut conn = connect(settings)?;
    raw_table(&mut conn)?;
    let payloads = raw_payloads();
    let started = Instant::now();
    for _ in 0..settings.backlog / 1_000 {
        raw_insert(&mut conn, &payloads)?;
    }
    Ok(rate(settings.backlog, started.elapsed()))
}

/// The raw references' table, empty: what a queue of its own needs at
/// least (an id, a priority, a payload, the claim order's index), nothing
/// of this queue's.
fn raw_table(conn: &mut PgConnection) -> QueryResult<()> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS bench_raw_jobs ( \
             id BIGSERIAL PRIMARY KEY, \
             priority SMALLINT NOT NULL DEFAULT 0, \
             payload JSONB NOT NULL); \
         CREATE INDEX IF NOT EXISTS bench_raw_jobs_claim ON bench_raw_jobs (priority, id); \
         TRUNCATE bench_raw_jobs",
    )?;
    conn.batch_execute("VACUUM ANALYZE bench_raw_jobs")
}

/// A thousand payloads, what each raw insert takes.
fn raw_payloads() -> Vec<serde_json::Value> {
    (0..1_000).map(|_| serde_json::json!({})).collect()
}

fn raw_insert(conn: &mut PgConnection, payloads: &[serde_json::Value]) -> QueryResult<usize> {
    diesel::sql_query("INSERT INTO bench_raw_jobs (payload) SELECT unnest($1::jsonb[])")
        .bind::<diesel::sql_types::Array<diesel::sql_types::Jsonb>, _>(payloads)
        .execute(conn)
}

/// Adds `jobs` to the raw references' table, 1,000 an insert.
fn raw_fill(conn: &mut PgConnection, jobs: usize) -> QueryResult<()> {
    let payloads = raw_payloads();
    let mut left = jobs;
    while left > 0 {
        let n = left.min(1_000);
        raw_insert(conn, &payloads[..n])?;
        left -= n;
    }
    Ok(())
}

/// The number after `flag` on the command line, if the flag is there.
fn flag_value(args: &[String], flag: &str) -> BenchResult<Option<usize>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(at) => match args.get(at + 1).and_then(|v| v.parse().ok()) {
            Some(value) => Ok(Some(value)),
            None => Err(format!("{flag} takes a number of jobs").into()),
        },
    }
}

/// A fresh backlog of `jobs` no-op jobs, vacuumed.
fn backlog(settings: &Settings, jobs: usize) -> BenchResult<()> {
    backlog_with(settings, jobs, |_| skiplock::EnqueueOptions::new())
}

/// [`backlog`], each job enqueued with the options `options` gives job `i`.
fn backlog_with(
    settings: &Settings,
    jobs: usize,
    options: impl Fn(usize) -> skiplock::EnqueueOptions,
) -> BenchResult<()> {
    let mut conn = connect(settings)?;
    clear(&mut conn)?;
    let mut batch = JobBatch::new();
    for i in 0..jobs {
        batch.push_with(&noop(), &options(i))?;
    }
    batch.enqueue(&mut conn)?;
    conn.batch_execute("VACUUM ANALYZE queue_jobs")?;
    Ok(())
}

/// What flow control costs the drain, at 8 workers, each kind of backlog
/// drained in turn within each repetition (medians): no key (the plain
/// drain); one limit of 1,000 running that 8 workers never reach (the job
/// type's `max_concurrent`); 1,000 tenants taking turns without a limit;
/// 1,000 tenants limited to 1 running each.
fn flow_control(settings: &Settings) -> BenchResult<()> {
    type Options = fn(usize) -> skiplock::EnqueueOptions;
    let kinds: [(&str, Options); 4] = [
        ("no key, no limit", |_| skiplock::EnqueueOptions::new()),
        ("a limit of 1,000 never reached", |_| {
            skiplock::EnqueueOptions::new().max_concurrent(1_000)
        }),
        ("1,000 keys taking turns, no limit", |i| {
            skiplock::EnqueueOptions::new().concurrency_key(format!("tenant-{}", i % 1_000))
        }),
        ("1,000 keys limited to 1 running each", |i| {
            skiplock::EnqueueOptions::new()
                .concurrency_key(format!("tenant-{}", i % 1_000))
                .max_concurrent(1)
        }),
    ];
    let workers = 8;
    println!(
        "flow control: drains of {} jobs at {workers} workers, median of {}",
        settings.backlog, settings.reps
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for _ in 0..settings.reps {
        for (rates, (_, options)) in rates.iter_mut().zip(&kinds) {
            backlog_with(settings, settings.backlog, options)?;
            rates.push(drain_queued(settings, |builder| {
                builder.queue("bench", workers)
            })?);
        }
    }
    let medians: Vec<f64> = rates
        .iter_mut()
        .map(|rates| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        })
        .collect();
    for ((name, _), rate) in kinds.iter().zip(&medians) {
        println!(
            "  {name}: {rate:.0} jobs/s ({:.0} % of no key)",
            rate / medians[0] * 100.0
        );
    }
    Ok(())
}

fn queue_is_empty(conn: &mut PgConnection) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Empty {
        #[diesel(sql_type = Bool)]
        empty: bool,
    }
    Ok(
        diesel::sql_query("SELECT NOT EXISTS (SELECT 1 FROM queue_jobs) AS empty")
            .get_result::<Empty>(conn)?
            .empty,
    )
}

/// The queue's own figures that a change of the engine moves: drains at 1
/// and 8 workers (median of the repetitions) and the pickup latency.
fn drain_and_pickup(settings: &Settings, workers: &[usize]) -> BenchResult<()> {
    for &n in workers {
        let (ours, raw) = paired(
            settings.reps,
            || drain(settings, n),
            || raw_delete_batches(settings, n),
        )?;
        println!(
            "drain {n} worker(s): {ours:.0} jobs/s; raw reference {raw:.0} jobs/s ({:.0} %)",
            ours / raw * 100.0
        );
        let phases = std::mem::take(&mut *PHASES.lock().expect("phases"));
        let start = percentiles(phases.iter().map(|p| p.0).collect())[0];
        let stop = percentiles(phases.iter().map(|p| p.1).collect())[0];
        println!("  the runner's start to its first job {start:.1} ms, its last job to stopped {stop:.1} ms (medians)");
    }
    let latency = pickup_latency(settings)?;
    println!(
        "pickup p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        latency[0], latency[1], latency[2]
    );
    let exclusive = median(settings.reps, || drain_exclusive(settings))?;
    println!("drain of an exclusive queue (1 worker across every runner): {exclusive:.0} jobs/s");
    Ok(())
}

fn drain(settings: &Settings, workers: usize) -> BenchResult<f64> {
    drain_with(settings, |builder| builder.queue("bench", workers))
}

/// [`drain`] with the queue exclusive (`RunnerBuilder::exclusive_queue`).
fn drain_exclusive(settings: &Settings) -> BenchResult<f64> {
    drain_with(settings, |builder| builder.exclusive_queue("bench"))
}

fn drain_with(
    settings: &Settings,
    serve: impl FnOnce(skiplock::RunnerBuilder<()>) -> skiplock::RunnerBuilder<()>,
) -> BenchResult<f64> {
    backlog(settings, settings.backlog)?;
    drain_queued(settings, serve)
}

/// The strongest raw drain: batches of 100 deleted and returned by one
/// prepared statement per round trip, no `BEGIN`/`COMMIT` around it, on
/// the plain table of [`raw_table`]. (`id = ANY (ARRAY(..))` rather than
/// `id IN (..)`: once `VACUUM` has left statistics that say the table is
/// empty, as it does between the drains of `--held-xmin`, the planner runs
/// `IN` as a walk of the whole primary key, and the drain falls from
/// 136,000 to 25,000-32,000 jobs/s on a quiet table.)
const RAW_DRAIN: &str =
    "DELETE FROM bench_raw_jobs WHERE id = ANY (ARRAY(SELECT id FROM bench_raw_jobs \
     ORDER BY priority, id FOR UPDATE SKIP LOCKED LIMIT 100)) RETURNING payload";

/// [`RAW_DRAIN`] on `connections` connections over a fresh backlog: jobs/s.
fn raw_delete_batches(settings: &Settings, connections: usize) -> BenchResult<f64> {
    let mut conn = connect(settings)?;
    raw_table(&mut conn)?;
    raw_fill(&mut conn, settings.backlog)?;
    conn.batch_execute("VACUUM ANALYZE bench_raw_jobs")?;
    Ok(drain_raw(settings, connections, settings.backlog, RAW_DRAIN)?.0)
}

fn percentiles(mut millis: Vec<f64>) -> [f64; 3] {
    millis.sort_by(f64::total_cmp);
    let at = |p: f64| millis[((millis.len() as f64 - 1.0) * p).round() as usize];
    [at(0.50), at(0.95), at(0.99)]
}

fn pickup_latency(settings: &Settings) -> BenchResult<[f64; 3]> {
    let mut conn = connect(settings)?;
    clear(&mut conn)?;
    let (sender, started) = mpsc::channel();
    let running = Runner::builder(Stamps(Mutex::new(sender)))
        .database_url(settings.url.as_str())
        .queue("bench_latency", 4)
        .build()?
        .start();
    thread::sleep(Duration::from_millis(300)); // idle workers, listener connected
    let mut latencies = Vec::with_capacity(settings.latency_jobs);
    for seq in 0..settings.latency_jobs as u64 {
        let before = Instant::now();
        stamp(seq).enqueue(&mut conn)?;
        let (got, at) = started.recv_timeout(Duration::from_secs(10))?;
        assert_eq!(got, seq);
        latencies.push((at - before).as_secs_f64() * 1000.0);
        thread::sleep(Duration::from_millis(10)); // about 100 jobs/s
    }
    running.shutdown(Duration::from_secs(10));
    Ok(percentiles(latencies))
}

fn raw_listen_latency(settings: &Settings) -> BenchResult<[f64; 3]> {
    let mut conn = connect(settings)?;
    clear(&mut conn)?;
    let (sender, claimed) = mpsc::channel::<Instant>();
    let url = settings.url.clone();
    let ready = Arc::new(Barrier::new(2));
    let listener_ready = Arc::clone(&ready);
    let jobs = settings.latency_jobs;
    let listener = thread::spawn(move || -> QueryResult<()> {
        let mut conn = PgConnection::establish(&url).expect("connect");
        conn.batch_execute("LISTEN raw_bench")?;
        listener_ready.wait();
        for _ in 0..jobs {
            // Spin on the socket: the lowest latency LISTEN can give.
            loop {
                if conn.notifications_iter().next().transpose()?.is_some() {
                    break;
                }
            }
            // Claimed (the moment a job body would start), then completed.
            conn.transaction(|c| {
                diesel::sql_query(
                    "SELECT id FROM queue_jobs ORDER BY priority, id FOR UPDATE SKIP LOCKED LIMIT 1",
                )
                .execute(c)?;
                sender.send(Instant::now()).expect("send");
                diesel::sql_query("DELETE FROM queue_jobs").execute(c)
            })?;
        }
        Ok(())
    });
    ready.wait();
    let mut latencies = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let before = Instant::now();
        conn.batch_execute(
            "INSERT INTO queue_jobs (job_type, queue, payload) VALUES ('noop', 'raw', '{}'); \
             NOTIFY raw_bench",
        )?;
        let at = claimed.recv_timeout(Duration::from_secs(10))?;
        latencies.push((at - before).as_secs_f64() * 1000.0);
        thread::sleep(Duration::from_millis(10));
    }
    listener.join().expect("listener thread")?;
    Ok(percentiles(latencies))
}

/// Seconds to drain the no-op backlog with 4 workers, alone and with one
/// 5-second job enqueued first.
fn slow_job_among_fast(settings: &Settings) -> BenchResult<(f64, f64)> {
    let mut times = Vec::new();
    for with_slow in [false, true] {
        let mut conn = connect(settings)?;
        clear(&mut conn)?;
        if with_slow {
            sleep_ms(5_000).enqueue(&mut conn)?;
        }
        let mut batch = JobBatch::new();
        for _ in 0..settings.backlog {
            batch.push(&noop())?;
        }
        batch.enqueue(&mut conn)?;
        let runner = Runner::builder(())
            .database_url(settings.url.as_str())
            .queue("bench", 4)
            .build()?;
        let started = Instant::now();
        let running = runner.start();
        // Done when only the slow job (if any) is left.
        let left = |conn: &mut PgConnection| -> QueryResult<i64> {
            count(
                conn,
                "SELECT count(*) AS n FROM queue_jobs WHERE job_type = 'noop'",
            )
        };
        while left(&mut conn)? > 0 {
            thread::sleep(Duration::from_millis(2));
        }
        times.push(started.elapsed().as_secs_f64());
        running.shutdown(Duration::from_secs(10));
    }
    Ok((times[0], times[1]))
}

fn count(conn: &mut PgConnection, sql: &str) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    Ok(diesel::sql_query(sql).get_result::<Count>(conn)?.n)
}

/// The claim's lock scan as the queue sends it (`storage::claim_jobs`),
/// with literals for its binds and without the claim record. Its locks are
/// released after each run (`pg_advisory_unlock_all`).
const CLAIM: &str = "SELECT c.* FROM ( \
        SELECT id, job_type, payload, attempts, suspect, running_by FROM queue_jobs \
        WHERE queue = 'bench' AND dead_at IS NULL AND NOT scheduled \
          AND id <> ALL('{}'::int8[]) ORDER BY priority DESC, id OFFSET 0) c \
    WHERE pg_try_advisory_lock(((c.id >> 32) # 1936420972)::int4, \
                               (c.id % 4294967296 - 2147483648)::int4) \
    LIMIT 100";

/// The claim's plan and time with 10 k and 1 M jobs in the table, with the
/// extra jobs ready, scheduled for later, or on another queue.
fn claim_scaling(settings: &Settings) -> BenchResult<()> {
    let mut conn = connect(settings)?;
    println!("\nclaim (LIMIT 100) as the table grows:");
    println!("| table | claim ms (median of 20) | plan |\n|---|---|---|");
    for (label, ready, extra, extra_kind) in [
        ("10 k ready", 10_000, 0, ""),
        ("1 M ready", 1_000_000, 0, ""),
        (
            "10 k ready + 990 k scheduled later",
            10_000,
            990_000,
            "scheduled",
        ),
        (
            "10 k ready + 990 k on another queue",
            10_000,
            990_000,
            "other queue",
        ),
    ] {
        clear(&mut conn)?;
        conn.batch_execute(&format!(
            "INSERT INTO queue_jobs (job_type, queue, payload) \
             SELECT 'noop', 'bench', '{{}}' FROM generate_series(1, {ready})"
        ))?;
        match extra_kind {
            "scheduled" => conn.batch_execute(&format!(
                "INSERT INTO queue_jobs (job_type, queue, payload, run_at, scheduled) \
                 SELECT 'noop', 'bench', '{{}}', now() + interval '1 day', true FROM generate_series(1, {extra})"
            ))?,
            "other queue" => conn.batch_execute(&format!(
                "INSERT INTO queue_jobs (job_type, queue, payload) \
                 SELECT 'noop', 'other', '{{}}' FROM generate_series(1, {extra})"
            ))?,
            _ => {}
        }
        conn.batch_execute("VACUUM ANALYZE queue_jobs")?;
        let (millis, scan) = time_claim(&mut conn)?;
        println!("| {label} | {millis:.2} | {scan} |");
    }

    // Completed jobs leave dead rows that VACUUM cannot remove while any
    // transaction older than them is open (FIELD-NOTES: claims slowed from
    // 2-3 ms to 180 ms at 24 k dead tuples elsewhere).
    clear(&mut conn)?;
    conn.batch_execute(
        "INSERT INTO queue_jobs (job_type, queue, payload) \
         SELECT 'noop', 'bench', '{}' FROM generate_series(1, 110000)",
    )?;
    let mut long = connect(settings)?;
    long.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM queue_jobs")?;
    conn.batch_execute(
        "DELETE FROM queue_jobs WHERE id IN (SELECT id FROM queue_jobs ORDER BY id LIMIT 100000)",
    )?;
    conn.batch_execute("VACUUM ANALYZE queue_jobs")?;
    let (millis, scan) = time_claim(&mut conn)?;
    println!(
        "| 10 k ready behind 100 k dead rows, a long transaction open | {millis:.2} | {scan} |"
    );
    long.batch_execute("COMMIT")?;
    conn.batch_execute("VACUUM ANALYZE queue_jobs")?;
    let (millis, scan) = time_claim(&mut conn)?;
    println!("| the same once the transaction ended and VACUUM ran | {millis:.2} | {scan} |");
    clear(&mut conn)?;
    Ok(())
}

/// The median of 20 claims (their locks released after each), and the
/// claim's scan node, with the settings of a worker's lock session.
fn time_claim(conn: &mut PgConnection) -> BenchResult<(f64, String)> {
    conn.batch_execute("SET enable_sort = off; SET jit = off")?;
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        diesel::sql_query(CLAIM).execute(conn)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        conn.batch_execute("SELECT pg_advisory_unlock_all()")?;
    }
    times.sort_by(f64::total_cmp);
    #[derive(QueryableByName)]
    struct Plan {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let plan: Vec<Plan> =
        diesel::sql_query(format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {CLAIM}"))
            .load(conn)?;
    conn.batch_execute("SELECT pg_advisory_unlock_all(); RESET enable_sort; RESET jit")?;
    let scan = plan
        .iter()
        .map(|p| p.line.trim())
        .rfind(|l| l.contains("Scan"))
        .unwrap_or("?")
        .trim_start_matches("-> ")
        .to_owned();
    Ok((times[10], scan))
}

/// Peak RSS of this process (a runner with 8 workers) over a million jobs.
fn million_jobs_memory(settings: &Settings) -> BenchResult<()> {
    let mut conn = connect(settings)?;
    clear(&mut conn)?;
    let before = peak_rss_kib();
    let runner = Runner::builder(())
        .database_url(settings.url.as_str())
        .queue("bench", 8)
        .build()?;
    let running = runner.start();
    let started = Instant::now();
    let mut rss_after_first = 0;
    for chunk in 0..10 {
        conn.batch_execute(
            "INSERT INTO queue_jobs (job_type, queue, payload) \
             SELECT 'noop', 'bench', '{}' FROM generate_series(1, 100000)",
        )?;
        while !queue_is_empty(&mut conn)? {
            thread::sleep(Duration::from_millis(20));
        }
        if chunk == 0 {
            rss_after_first = peak_rss_kib();
        }
    }
    running.shutdown(Duration::from_secs(10));
    println!(
        "\n1,000,000 jobs through 8 workers in {:.1} s: peak RSS {} MiB before, {} MiB after 100 k jobs, {} MiB after 1 M",
        started.elapsed().as_secs_f64(),
        before / 1024,
        rss_after_first / 1024,
        peak_rss_kib() / 1024
    );
    Ok(())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The claims the runner's workers report (their debug event "claimed
/// jobs": `claim_us`, the round trip; `walked`, the entries of the ready
/// index its scan walked; `resumed`, whether it resumed at the runner's
/// position rather than sweeping from the head), collected by a tracing
/// layer.
mod claim_times {
    use std::sync::Mutex;

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    /// One claim.
    #[derive(Debug, Default, Clone, Copy)]
    pub(crate) struct Claim {
        pub(crate) micros: u64,
        pub(crate) walked: u64,
        pub(crate) resumed: bool,
    }

    static CLAIMS: Mutex<Vec<Claim>> = Mutex::new(Vec::new());

    struct Collect;

    struct Fields(Option<Claim>);

    impl tracing::field::Visit for Fields {
        fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
            match field.name() {
                "claim_us" => self.0.get_or_insert_default().micros = value,
                "walked" => self.0.get_or_insert_default().walked = value,
                _ => {}
            }
        }

        fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
            self.record_u64(field, u64::try_from(value).unwrap_or(0));
        }

        fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
            if field.name() == "resumed" {
                self.0.get_or_insert_default().resumed = value;
            }
        }

        fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S: tracing::Subscriber> Layer<S> for Collect {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = Fields(None);
            event.record(&mut fields);
            if let Some(claim) = fields.0.filter(|c| c.micros > 0) {
                CLAIMS.lock().expect("claims").push(claim);
            }
        }
    }

    /// Warnings to stderr, and the workers' claims collected.
    pub(crate) fn install() {
        let warnings = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(tracing_subscriber::EnvFilter::new("skiplock=warn"));
        let claims = Collect.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() == "skiplock::worker" && *meta.level() <= tracing::Level::DEBUG
        }));
        tracing_subscriber::registry()
            .with(warnings)
            .with(claims)
            .init();
    }

    /// The claims collected since the last call.
    pub(crate) fn take_claims() -> Vec<Claim> {
        std::mem::take(&mut *CLAIMS.lock().expect("claims"))
    }

    /// The claim times collected since the last call, in milliseconds.
    pub(crate) fn take() -> Vec<f64> {
        take_claims()
            .into_iter()
            .map(|claim| claim.micros as f64 / 1000.0)
            .collect()
    }
}

/// The jobs table's size, its indexes' size (MB) and its dead rows.
fn table_sizes(conn: &mut PgConnection, table: &str) -> QueryResult<(f64, f64, i64)> {
    #[derive(QueryableByName)]
    struct Sizes {
        #[diesel(sql_type = diesel::sql_types::Double)]
        table_mb: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        indexes_mb: f64,
        #[diesel(sql_type = BigInt)]
        dead: i64,
    }
    let sizes: Sizes = diesel::sql_query(
        "SELECT pg_table_size($1::regclass) / 1048576.0::float8 AS table_mb, \
                pg_indexes_size($1::regclass) / 1048576.0::float8 AS indexes_mb, \
                COALESCE((SELECT n_dead_tup FROM pg_stat_user_tables \
                          WHERE relid = $1::regclass), 0) AS dead",
    )
    .bind::<Text, _>(table)
    .get_result(conn)?;
    Ok((sizes.table_mb, sizes.indexes_mb, sizes.dead))
}

/// Consecutive drains of the backlog (200,000 jobs by default) at 1 and 8
/// workers, with no other transaction, then with one `REPEATABLE READ`
/// transaction left open meanwhile (it holds back the xmin horizon: VACUUM,
/// run after each drain as autovacuum would, can remove none of the rows
/// the drains leave). The table starts empty and analyzed, as a new one.
/// Each drain prints its rate, the claim round trip's p50 and p99, the
/// table's and its indexes' sizes and dead rows; then the raw reference
/// ([`RAW_DRAIN`] on its plain table, 1 and 8 connections) measured the
/// same way, its round trips as the claim's; and the sizes after the
/// transaction ended and VACUUM ran.
fn held_horizon(settings: &Settings, drains: usize, only: Option<&str>) -> BenchResult<()> {
    println!(
        "| drain | workers | horizon | jobs/s | claim p50 ms | claim p99 ms | sweeps / claims | entries walked per sweep | ms per sweep | table MB | indexes MB | dead rows |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut conn = connect(settings)?;
    for (what, workers) in [
        ("skiplock", 1),
        ("skiplock", 8),
        ("raw SQL", 1),
        ("raw SQL", 8),
    ] {
        let raw = what == "raw SQL";
        if only.is_some_and(|only| only != if raw { "raw" } else { "skiplock" }) {
            continue;
        }
        let table = if raw { "bench_raw_jobs" } else { "queue_jobs" };
        for held in [false, true] {
            if raw {
                raw_table(&mut conn)?;
            } else {
                clear(&mut conn)?;
            }
            let holder = if held {
                let mut holder = connect(settings)?;
                holder.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")?;
                Some(holder)
            } else {
                None
            };
            for round in 1..=drains {
                if raw {
                    raw_fill(&mut conn, settings.backlog)?;
                } else {
                    let mut batch = JobBatch::new();
                    for _ in 0..settings.backlog {
                        batch.push(&noop())?;
                    }
                    batch.enqueue(&mut conn)?;
                }
                claim_times::take();
                let (jobs_per_sec, raw_rounds) = if raw {
                    drain_raw(settings, workers, settings.backlog, RAW_DRAIN)?
                } else {
                    let rate = drain_queued(settings, |b| b.queue("bench", workers))?;
                    (rate, Vec::new())
                };
                let claims = claim_times::take_claims();
                let sweeps: Vec<_> = claims.iter().filter(|c| !c.resumed).collect();
                let (sweeps, swept, sweep_ms) = if raw {
                    (String::new(), String::new(), String::new())
                } else if sweeps.is_empty() {
                    (
                        format!("0 / {}", claims.len()),
                        String::new(),
                        String::new(),
                    )
                } else {
                    let n = sweeps.len() as f64;
                    let walked: u64 = sweeps.iter().map(|c| c.walked).sum();
                    let micros: u64 = sweeps.iter().map(|c| c.micros).sum();
                    (
                        format!("{} / {}", sweeps.len(), claims.len()),
                        format!("{:.0}", walked as f64 / n),
                        format!("{:.1}", micros as f64 / n / 1000.0),
                    )
                };
                let rounds = if raw {
                    raw_rounds
                } else {
                    claims.iter().map(|c| c.micros as f64 / 1000.0).collect()
                };
                let [p50, _, p99] = if rounds.is_empty() {
                    [f64::NAN; 3]
                } else {
                    percentiles(rounds)
                };
                // As autovacuum would, between drains: with the horizon held
                // it removes nothing, and the statistics it leaves say the
                // table is empty (what the next drain's plans see).
                conn.batch_execute(&format!("VACUUM {table}"))?;
                let (table_mb, indexes, dead) = table_sizes(&mut conn, table)?;
                println!(
                    "| {what} {round} | {workers} | {} | {jobs_per_sec:.0} | {p50:.2} | {p99:.2} | {sweeps} | {swept} | {sweep_ms} | {table_mb:.1} | {indexes:.1} | {dead} |",
                    if held { "held" } else { "free" }
                );
            }
            // The transaction ends (before its connection closes, which the
            // server learns of a moment later).
            if let Some(mut holder) = holder {
                holder.batch_execute("ROLLBACK")?;
            }
            conn.batch_execute(&format!("VACUUM ANALYZE {table}"))?;
            let (table_mb, indexes, _) = table_sizes(&mut conn, table)?;
            println!(
                "| {what}: after, VACUUM | {workers} | {} | | | | | | | {table_mb:.1} | {indexes:.1} | |",
                if held { "ended" } else { "free" }
            );
            if !raw {
                // What `skiplock reindex` gives back of the indexes.
                skiplock::rebuild_indexes(&mut conn, Duration::from_secs(30))?;
                let (table_mb, indexes, _) = table_sizes(&mut conn, table)?;
                println!(
                    "| {what}: after, `skiplock reindex` | {workers} | {} | | | | | | | {table_mb:.1} | {indexes:.1} | |",
                    if held { "ended" } else { "free" }
                );
            }
        }
    }
    Ok(())
}

/// Drains what `queue_jobs` holds now with a runner serving as `serve` says:
/// until every job ran, then until the runner has stopped, which commits
/// the last completions. (Querying the table all along would take a core
/// from the runner, and once dead rows pile up, a look for any row left
/// scans them all.)
/// Each drain's start (from `Runner::start` to the first job run, about a
/// millisecond late) and stop (from the last job run to `shutdown`'s
/// return, the last completions committed), in milliseconds.
static PHASES: Mutex<Vec<(f64, f64)>> = Mutex::new(Vec::new());

fn drain_queued(
    settings: &Settings,
    serve: impl FnOnce(skiplock::RunnerBuilder<()>) -> skiplock::RunnerBuilder<()>,
) -> BenchResult<f64> {
    let runner = serve(Runner::builder(()).database_url(settings.url.as_str())).build()?;
    NOOP_RUNS.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let running = runner.start();
    let mut first = None;
    while NOOP_RUNS.load(Ordering::Relaxed) < settings.backlog {
        if first.is_none() && NOOP_RUNS.load(Ordering::Relaxed) > 0 {
            first = Some(started.elapsed());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let ran = started.elapsed();
    running.shutdown(Duration::from_secs(10));
    let elapsed = started.elapsed();
    PHASES.lock().expect("phases").push((
        first.unwrap_or(ran).as_secs_f64() * 1000.0,
        (elapsed - ran).as_secs_f64() * 1000.0,
    ));
    assert!(
        queue_is_empty(&mut connect(settings)?)?,
        "the runner stopped with completions not committed"
    );
    Ok(rate(settings.backlog, elapsed))
}

/// Drains a table with `sql` (a statement that deletes a batch) on
/// `connections` connections, prepared once on each, one execution per
/// round trip until one deletes nothing: jobs/s over `jobs`, and each
/// round trip's duration (ms).
fn drain_raw(
    settings: &Settings,
    connections: usize,
    jobs: usize,
    sql: &'static str,
) -> BenchResult<(f64, Vec<f64>)> {
    let barrier = Arc::new(Barrier::new(connections + 1));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let url = settings.url.clone();
            thread::spawn(move || -> QueryResult<Vec<f64>> {
                let mut conn = PgConnection::establish(&url).expect("connect");
                conn.batch_execute(&format!("PREPARE raw_drain AS {sql}"))?;
                let mut rounds = Vec::new();
                barrier.wait();
                loop {
                    let began = Instant::now();
                    let deleted = diesel::sql_query("EXECUTE raw_drain").execute(&mut conn)?;
                    rounds.push(began.elapsed().as_secs_f64() * 1000.0);
                    if deleted == 0 {
                        return Ok(rounds);
                    }
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut rounds = Vec::new();
    for t in threads {
        rounds.extend(t.join().expect("raw drain thread")?);
    }
    Ok((rate(jobs, started.elapsed()), rounds))
}
