//! How long the dashboard's pages take with 1,000,000 jobs in the table:
//! 985,000 ready on 4 queues and 12 job types, 10,000 scheduled, 4,000
//! failing, 1,000 dead. Each page is requested through the router itself
//! (no network), 7 times; the median is printed. Then the overview's
//! estimates are compared with counting every row (`skiplock status`).
//!
//! `cargo run --release -p skiplock-examples --example web-pages [-- JOBS]`

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use diesel::prelude::*;
use tower::ServiceExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs: i64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |n| n.parse())?;
    let database = skiplock_examples::fresh_database("queue_web_pages")?;
    let url = database.url.clone();
    let mut conn = PgConnection::establish(&url)?;
    skiplock::migrate(&mut conn)?;
    let started = Instant::now();
    diesel::sql_query(
        "INSERT INTO queue_jobs (job_type, queue, payload, run_at, scheduled, attempts, \
                                 first_failed_at, last_failed_at, last_error, dead_at) \
         SELECT 'type_' || (n % 12), 'queue_' || (n % 4), jsonb_build_object('n', n), \
                CASE WHEN n % 100 = 1 THEN now() + interval '1 hour' ELSE now() END, \
                n % 100 = 1, \
                CASE WHEN n % 1000 IN (2, 3, 4, 5, 6) THEN 3 ELSE 0 END, \
                CASE WHEN n % 1000 IN (2, 3, 4, 5, 6) THEN now() - interval '1 hour' END, \
                CASE WHEN n % 1000 IN (2, 3, 4, 5, 6) THEN now() - (n % 3600) * interval '1 second' END, \
                CASE WHEN n % 1000 IN (2, 3, 4, 5, 6) THEN 'connection refused by upstream ' || n END, \
                CASE WHEN n % 1000 = 6 THEN now() END \
         FROM generate_series(1, $1) n",
    )
    .bind::<diesel::sql_types::BigInt, _>(jobs)
    .execute(&mut conn)?;
    diesel::sql_query("VACUUM ANALYZE queue_jobs").execute(&mut conn)?;
    println!(
        "{jobs} jobs inserted and analyzed in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // As `skiplock web` sets its connections: no JIT compilation.
    let pool = diesel::r2d2::Pool::builder()
        .max_size(2)
        .connection_customizer(Box::new(NoJit))
        .build(diesel::r2d2::ConnectionManager::<PgConnection>::new(&url))?;
    // Readable without signing in: the pages' own cost, not a session's lookup.
    let router = skiplock::web::Dashboard::new(pool).public_read().router();
    let failing_id: i64 = skiplock_examples::count(
        &mut conn,
        "SELECT max(id) AS n FROM queue_jobs WHERE attempts > 0 AND dead_at IS NULL",
    )?;
    let pages = [
        ("overview", "/".to_owned()),
        ("failing jobs", "/jobs?state=failing".to_owned()),
        ("failing jobs, page 2", String::new()),
        (
            "dead jobs of one type",
            "/jobs?state=dead&type=type_6".to_owned(),
        ),
        (
            "failing jobs of one queue",
            "/jobs?state=failing&queue=queue_2".to_owned(),
        ),
        ("one job", format!("/jobs/{failing_id}")),
        ("runners", "/runners".to_owned()),
        (
            "bulk confirmation (counts)",
            "/bulk?action=retry&state=failing&queue=queue_2".to_owned(),
        ),
        // `{"n": 7}`: the newest 20,000 jobs examined, none matching.
        (
            "search: payload contains, one window",
            "/search?payload=%7B%22n%22%3A%207%7D".to_owned(),
        ),
        (
            "search: failing of one type, one window",
            "/search?state=failing&type=type_2".to_owned(),
        ),
    ];
    let mut next_page = String::new();
    println!("page                          median of 7");
    for (name, path) in pages {
        let path = if path.is_empty() {
            next_page.clone()
        } else {
            path
        };
        let mut times = Vec::new();
        let mut body = Vec::new();
        for _ in 0..7 {
            let request = Request::get(&path)
                .header("host", "localhost")
                .body(Body::empty())?;
            let t = Instant::now();
            let response = router.clone().oneshot(request).await?;
            let status = response.status();
            body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await?
                .to_vec();
            times.push(t.elapsed());
            if status != StatusCode::OK {
                return Err(format!("{path}: {status}").into());
            }
        }
        if name == "failing jobs" {
            let html = String::from_utf8_lossy(&body);
            next_page = html
                .split("id=\"next\" href=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(|href| href.replace("&amp;", "&"))
                .ok_or("no next page link")?;
        }
        times.sort();
        let median: Duration = times[times.len() / 2];
        println!("{name:<30}{:>6.1} ms", median.as_secs_f64() * 1000.0);
    }
    estimates_against_counts(&mut conn)?;
    Ok(())
}

/// How far the overview's estimates are from counting every row.
fn estimates_against_counts(conn: &mut PgConnection) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let exact = skiplock::queue_status(conn, skiplock::RUNNER_FRESH_SECS)?;
    let counting = started.elapsed();
    let overview = skiplock::overview(conn, skiplock::RUNNER_FRESH_SECS)?;
    println!(
        "the overview's estimates against counting every row ({:.0} ms):",
        counting.as_secs_f64() * 1000.0
    );
    for (state, pick) in [
        ("ready", 0usize),
        ("scheduled", 1),
        ("failing", 2),
        ("dead", 3),
    ] {
        let (mut exact_rows, mut at_least, mut estimated, mut worst) = (0, 0, 0, 0.0f64);
        for row in &overview.rows {
            let truth = exact
                .iter()
                .find(|e| e.queue == row.queue && e.job_type == row.job_type)
                .map_or(0, |e| [e.ready, e.scheduled, e.failing, e.dead][pick]);
            let count = [row.ready, row.scheduled, row.failing, row.dead][pick];
            match count {
                skiplock::Count::Exact(n) if n != truth => {
                    return Err(format!(
                        "{state} of {}/{}: {n} counted, {truth} there",
                        row.queue, row.job_type
                    )
                    .into())
                }
                skiplock::Count::AtLeast(n) if n > truth => {
                    return Err(format!(
                        "{state} of {}/{}: at least {n}, {truth} there",
                        row.queue, row.job_type
                    )
                    .into())
                }
                skiplock::Count::Exact(_) => exact_rows += 1,
                skiplock::Count::AtLeast(_) => at_least += 1,
                skiplock::Count::About(n) => {
                    estimated += 1;
                    worst = worst.max((n - truth).abs() as f64 / truth.max(1) as f64);
                }
            }
        }
        println!(
            "  {state:<10} per queue and type: {exact_rows} exact, {at_least} at least (each at most the truth), \
             {estimated} estimated (worst {:.1} % off)",
            worst * 100.0
        );
    }
    for (state, count, truth) in [
        (
            "scheduled",
            overview.scheduled,
            exact.iter().map(|e| e.scheduled).sum::<i64>(),
        ),
        (
            "failed",
            overview.failed,
            exact.iter().map(|e| e.failing + e.dead).sum(),
        ),
    ] {
        println!(
            "  {state:<10} in all: {count} against {truth} ({:+.1} %)",
            (count.value() - truth) as f64 * 100.0 / truth.max(1) as f64
        );
    }
    Ok(())
}

/// Turns JIT compilation off on each connection, as `skiplock web` does.
#[derive(Debug)]
struct NoJit;

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for NoJit {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute("SET jit = off")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}
