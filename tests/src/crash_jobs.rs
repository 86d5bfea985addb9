//! Jobs of the crash test, run by the `test-worker` binary. They log what
//! they do in the `crash_log` table (created by the test).

use std::time::Duration;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use skiplock::{Job, JobConnection, PerformError};

/// The queue of the crash test.
pub const QUEUE: &str = "crash";

/// The context of the test worker (none needed).
#[derive(Debug, Default)]
pub struct WorkerContext;

/// Logs its start; on its first run it then hangs (the test kills the
/// worker), on any later run it logs `finished`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HangOnce {
    /// The key in `crash_log`.
    pub key: String,
}

impl Job for HangOnce {
    const JOB_TYPE: &'static str = "hang_once";
    const QUEUE: &'static str = QUEUE;
    const PRIORITY: i16 = 10;
    type Context = WorkerContext;

    fn run(self, _: &WorkerContext, db: &mut JobConnection<'_>) -> Result<(), PerformError> {
        let conn = db.get()?;
        log(conn, &self.key, "started")?;
        let starts = crate::count(
            conn,
            &format!(
                "SELECT count(*) AS n FROM crash_log WHERE key = '{}' AND event = 'started'",
                self.key
            ),
        );
        if starts == 1 {
            std::thread::sleep(Duration::from_secs(120));
            return Err(PerformError::msg("the test should have killed this worker"));
        }
        log(conn, &self.key, "finished")?;
        Ok(())
    }
}
skiplock::register_job!(HangOnce);

/// Logs `done`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// The key in `crash_log`.
    pub key: String,
}

impl Job for Record {
    const JOB_TYPE: &'static str = "record";
    const QUEUE: &'static str = QUEUE;
    type Context = WorkerContext;

    fn run(self, _: &WorkerContext, db: &mut JobConnection<'_>) -> Result<(), PerformError> {
        log(db.get()?, &self.key, "done")?;
        Ok(())
    }
}
skiplock::register_job!(Record);

fn log(conn: &mut PgConnection, key: &str, event: &str) -> QueryResult<usize> {
    diesel::sql_query("INSERT INTO crash_log (key, event, pid) VALUES ($1, $2, $3)")
        .bind::<diesel::sql_types::Text, _>(key)
        .bind::<diesel::sql_types::Text, _>(event)
        .bind::<diesel::sql_types::Integer, _>(std::process::id() as i32)
        .execute(conn)
}

/// Sleeps `ms`, logging its run in `runs` (created by the test): a row when
/// it starts, its end when it ends, with this process's clock in µs.
#[derive(Debug, Serialize, Deserialize)]
pub struct Timed {
    /// Which job this is, in `runs`.
    pub key: i64,
    /// How long it runs.
    pub ms: u64,
}

impl Job for Timed {
    const JOB_TYPE: &'static str = "timed";
    const QUEUE: &'static str = QUEUE;
    type Context = WorkerContext;

    fn run(self, _: &WorkerContext, db: &mut JobConnection<'_>) -> Result<(), PerformError> {
        #[derive(QueryableByName)]
        struct Run {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let conn = db.get()?;
        // The log's own commits need not wait for the disk: the server keeps
        // them when this process is killed.
        let run: Run = diesel::sql_query(
            "WITH r AS (INSERT INTO runs (key, pid, started_us) VALUES ($1, $2, $3) RETURNING id) \
             SELECT r.id FROM r, set_config('synchronous_commit', 'off', true) d",
        )
        .bind::<diesel::sql_types::BigInt, _>(self.key)
        .bind::<diesel::sql_types::Integer, _>(std::process::id() as i32)
        .bind::<diesel::sql_types::BigInt, _>(micros())
        .get_result(conn)?;
        std::thread::sleep(Duration::from_millis(self.ms));
        diesel::sql_query(
            "WITH r AS (UPDATE runs SET ended_us = $2 WHERE id = $1 RETURNING 1) \
             SELECT count(*) FROM r, set_config('synchronous_commit', 'off', true) d",
        )
        .bind::<diesel::sql_types::BigInt, _>(run.id)
        .bind::<diesel::sql_types::BigInt, _>(micros())
        .execute(conn)?;
        Ok(())
    }
}
skiplock::register_job!(Timed);

/// Sleeps `ms` without touching the database, then appends its run to the
/// file named by `SKIPLOCK_TEST_RUNS` as one line: key, pid, start and end
/// (µs since the epoch). For tests where the database is out of reach of
/// the worker for a while.
#[derive(Debug, Serialize, Deserialize)]
pub struct FileTimed {
    /// Which job this is.
    pub key: i64,
    /// How long it runs.
    pub ms: u64,
}

impl Job for FileTimed {
    const JOB_TYPE: &'static str = "file_timed";
    const QUEUE: &'static str = QUEUE;
    type Context = WorkerContext;

    fn run(self, _: &WorkerContext, _: &mut JobConnection<'_>) -> Result<(), PerformError> {
        log_timed_run(&self.key.to_string(), self.ms)
    }
}
skiplock::register_job!(FileTimed);

/// Sleeps `ms`, then appends the run to the file named by
/// `SKIPLOCK_TEST_RUNS`: `who`, the pid, start and end (µs since the epoch).
pub fn log_timed_run(who: &str, ms: u64) -> Result<(), PerformError> {
    use std::io::Write;
    let started = micros();
    std::thread::sleep(Duration::from_millis(ms));
    let line = format!("{who} {} {started} {}\n", std::process::id(), micros());
    let path = std::env::var("SKIPLOCK_TEST_RUNS")
        .map_err(|_| PerformError::new("SKIPLOCK_TEST_RUNS is not set"))?;
    // One write of one short line to a file opened for appending: lines
    // of several processes do not mix.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|e| PerformError::new(e.to_string()))
}

/// One run of a [`FileTimed`] job, as its line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRun {
    /// The job's key.
    pub key: i64,
    /// The process that ran it.
    pub pid: u32,
    /// When it started (µs since the epoch).
    pub started_us: i64,
    /// When it ended.
    pub ended_us: i64,
}

/// The runs logged in `path` so far.
pub fn file_runs(path: &std::path::Path) -> Vec<FileRun> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            Some(FileRun {
                key: fields.next()?.parse().ok()?,
                pid: fields.next()?.parse().ok()?,
                started_us: fields.next()?.parse().ok()?,
                ended_us: fields.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The wall clock in µs since the epoch (the same clock in every process of
/// the machine).
pub fn micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Kills the process running it, as an abort in a C library or the kernel's
/// OOM killer would. Dead after three such deaths.
#[derive(Debug, Serialize, Deserialize)]
pub struct KillsItsWorker;

impl Job for KillsItsWorker {
    const JOB_TYPE: &'static str = "kills_its_worker";
    const QUEUE: &'static str = QUEUE;
    const PRIORITY: i16 = 10;
    const RETRY_POLICY: skiplock::RetryPolicy = skiplock::RetryPolicy::DEFAULT
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(100));
    type Context = WorkerContext;

    fn run(self, _: &WorkerContext, _: &mut JobConnection<'_>) -> Result<(), PerformError> {
        std::process::abort()
    }
}
skiplock::register_job!(KillsItsWorker);

/// The table [`Timed`] logs its runs in.
pub const RUNS_TABLE: &str = "CREATE TABLE runs (id BIGSERIAL PRIMARY KEY, key BIGINT NOT NULL, \
     pid INT NOT NULL, started_us BIGINT NOT NULL, ended_us BIGINT)";

/// One run of a [`Timed`] job.
#[derive(Debug, Clone, QueryableByName)]
pub struct Run {
    /// The job's key.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub key: i64,
    /// The process that ran it.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub pid: i32,
    /// When it started (µs since the epoch).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub started_us: i64,
    /// When it ended; `None` if it never did (its process died).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub ended_us: Option<i64>,
}

/// Every run logged so far, in the order they started.
pub fn runs(conn: &mut PgConnection) -> Vec<Run> {
    diesel::sql_query("SELECT key, pid, started_us, ended_us FROM runs ORDER BY started_us, id")
        .load(conn)
        .expect("read runs")
}

/// The async twin of [`HangOnce`]: logs its start on its own async
/// connection; on its first run it then waits (the test kills the worker),
/// on any later run it logs `finished`.
#[skiplock::background_job(queue = "crash", priority = 10)]
pub async fn async_hang_once(
    conn: &mut diesel_async::AsyncPgConnection,
    key: String,
) -> Result<(), PerformError> {
    let log = |event: &'static str| {
        diesel::sql_query("INSERT INTO crash_log (key, event, pid) VALUES ($1, $2, $3)")
            .bind::<diesel::sql_types::Text, _>(key.clone())
            .bind::<diesel::sql_types::Text, _>(event)
            .bind::<diesel::sql_types::Integer, _>(std::process::id() as i32)
    };
    diesel_async::RunQueryDsl::execute(log("started"), conn).await?;
    #[derive(QueryableByName)]
    struct Starts {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let starts: Starts = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT count(*) AS n FROM crash_log WHERE key = $1 AND event = 'started'",
        )
        .bind::<diesel::sql_types::Text, _>(key.clone()),
        conn,
    )
    .await?;
    if starts.n == 1 {
        tokio::time::sleep(Duration::from_secs(120)).await;
        return Err(PerformError::msg("the test should have killed this worker"));
    }
    diesel_async::RunQueryDsl::execute(log("finished"), conn).await?;
    Ok(())
}
