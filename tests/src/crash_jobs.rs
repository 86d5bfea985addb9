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
