//! The database connection a running job uses for its own queries.

use crate::pq::Patience;
use std::fmt;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel::PgConnection;

use crate::errors::PerformError;

/// The connection pool type the runner uses (r2d2 over diesel's `PgConnection`).
pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// Which connection [`JobConnection::get`] hands a job; set by [`Job::CONNECTION`](crate::Job::CONNECTION).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionMode {
    /// The default: a connection of the job's own, from the runner's pool,
    /// outside any transaction. Each write commits when it is made (or when
    /// the job's own `conn.transaction(..)` commits) and stays even if the job
    /// later fails, so a retried job must be idempotent. Nothing the job does
    /// can block, or be blocked by, the transaction that holds its lock.
    ///
    /// The connection is only taken from the pool when the job first calls
    /// [`JobConnection::get`], and returned when the job ends.
    Pooled,
    /// A transaction of the job's own, on a connection from the runner's
    /// pool, which also deletes the job's row: the job's writes commit in
    /// the same commit as its completion, and are rolled back if the job
    /// fails or panics (or its worker dies). Exactly once, for a job whose
    /// only effects are in this database.
    ///
    /// The writes stay invisible to others, and their row locks held, until
    /// the job ends: use it for short, database-only jobs. A long job that
    /// writes rows the application also writes can block requests or
    /// deadlock against them; give such jobs [`ConnectionMode::Pooled`].
    JobTransaction,
}

/// The database connection of a running job. See [`ConnectionMode`] for
/// which connection [`get`](JobConnection::get) returns.
pub struct JobConnection<'a> {
    source: Source<'a>,
    /// Where async jobs run, and their connections.
    #[cfg(feature = "tokio")]
    runtime: Option<&'a crate::asynchronous::AsyncRuntime>,
}

enum Source<'a> {
    /// A test's run of the body without a database.
    Nothing,
    Transaction(&'a mut PgConnection),
    Pool {
        pool: &'a PgPool,
        taken: Option<PooledConnection<ConnectionManager<PgConnection>>>,
    },
}

impl<'a> JobConnection<'a> {
    pub(crate) fn in_transaction(conn: &'a mut PgConnection) -> Self {
        JobConnection {
            source: Source::Transaction(conn),
            #[cfg(feature = "tokio")]
            runtime: None,
        }
    }

    /// No connection: `get` fails, saying so (`testing::perform`).
    pub(crate) fn none() -> Self {
        JobConnection {
            source: Source::Nothing,
            #[cfg(feature = "tokio")]
            runtime: None,
        }
    }

    pub(crate) fn from_pool(pool: &'a PgPool) -> Self {
        JobConnection {
            source: Source::Pool { pool, taken: None },
            #[cfg(feature = "tokio")]
            runtime: None,
        }
    }

    /// With the runner's runtime for async jobs.
    #[cfg(feature = "tokio")]
    pub(crate) fn with_runtime(
        mut self,
        runtime: Option<&'a crate::asynchronous::AsyncRuntime>,
    ) -> Self {
        self.runtime = runtime;
        self
    }

    /// The runner's runtime for async jobs.
    #[cfg(feature = "tokio")]
    pub(crate) fn runtime(&self) -> Option<&'a crate::asynchronous::AsyncRuntime> {
        self.runtime
    }

    /// The connection for the job's queries, taking one from the pool on first use.
    ///
    /// Fails (as a retryable error) only when the pool has no connection to give.
    pub fn get(&mut self) -> Result<&mut PgConnection, PerformError> {
        match &mut self.source {
            Source::Nothing => Err(PerformError::permanent(
                "this job asked for a database connection, and it ran through \
                 `skiplock::testing::perform`, which has none; run it through a runner \
                 (`skiplock::testing::run_all`) instead",
            )),
            Source::Transaction(conn) => Ok(conn),
            Source::Pool { pool, taken } => {
                if taken.is_none() {
                    *taken = Some(checked_get(pool)?);
                }
                Ok(taken.as_mut().expect("just filled"))
            }
        }
    }

    /// Which connection this is.
    pub fn mode(&self) -> ConnectionMode {
        match self.source {
            Source::Transaction(_) => ConnectionMode::JobTransaction,
            Source::Pool { .. } | Source::Nothing => ConnectionMode::Pooled,
        }
    }
}

impl fmt::Debug for JobConnection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobConnection")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

/// A connection from the pool that is not known to be dead.
///
/// A pool keeps idle connections that the server may have closed meanwhile
/// (a restart, an outage, a proxy's timeout); handing one to a job would
/// fail its first query. Whatever the server sent before closing is read
/// here without a round trip: the first read takes its farewell message, the
/// second sees the end of the stream. A dead connection is marked broken (a
/// query on it fails at once, which diesel records) so the pool drops it.
pub(crate) fn checked_get(
    pool: &PgPool,
) -> Result<PooledConnection<ConnectionManager<PgConnection>>, diesel::r2d2::PoolError> {
    for _ in 0..pool.max_size() {
        let mut conn = pool.get()?;
        let alive = (0..2).all(|_| conn.notifications_iter().all(|n| n.is_ok()));
        if alive {
            return Ok(conn);
        }
        let _ = conn.batch_execute("SELECT 1");
    }
    pool.get()
}

/// What the runner's own pool does with a connection it could not open:
/// nothing loud. While the database is down the pool retries every second,
/// and the runner's threads already say once that the database is
/// unreachable.
#[derive(Debug)]
pub(crate) struct QuietPoolErrors;

impl r2d2::HandleError<diesel::r2d2::Error> for QuietPoolErrors {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        tracing::debug!(%error, "the pool could not open a connection");
    }
}

/// Whether two open connections run on one server backend: they came
/// through a pooler that shares server sessions between clients
/// (PgBouncer in transaction or statement mode, which hands an idle server
/// connection to the next client, the most recently used first). A direct
/// connection, or a session-mode pool, never gives one backend to two open
/// clients. Asked three times: a pooler with several server connections
/// may give the two clients' first statements different ones (it had just
/// logged both in), and the same one from then on.
pub(crate) fn share_a_session(
    a: &mut PgConnection,
    b: &mut PgConnection,
) -> diesel::QueryResult<bool> {
    for _ in 0..3 {
        if crate::storage::backend_pid(a)? == crate::storage::backend_pid(b)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs the runner's own statements `f` (promotions, the reaper, its
/// announcement) in a transaction whose timeouts are the runner's
/// statement deadline rather than the role's or the database's: a
/// `statement_timeout` or `lock_timeout` a DBA sets for application
/// requests (10 ms, say) would otherwise cancel the promotion of a
/// thousand due jobs, or a reaper that waits a moment for a row, every
/// time. The jobs' own connections keep the server's settings.
pub(crate) fn as_runner<T>(
    conn: &mut PgConnection,
    patience: Patience,
    f: impl FnOnce(&mut PgConnection) -> diesel::QueryResult<T>,
) -> diesel::QueryResult<T> {
    diesel::Connection::transaction(conn, |conn| {
        crate::storage::runner_timeouts(conn, patience.statement)?;
        f(conn)
    })
}

/// `url` (a URL or a key=value string) with the TCP settings of the
/// runner's own sessions (see [`Patience`]) for those it does not set: the
/// connections of a pool the runner makes for itself then also notice a
/// silent network (a failover, a partition) within about the statement
/// deadline, rather than when the kernel gives up retransmitting (about 15
/// minutes).
pub(crate) fn with_tcp_defaults(url: &str, patience: Patience) -> String {
    let defaults = [
        ("keepalives", "1".to_owned()),
        (
            "keepalives_idle",
            patience.silence.as_secs().max(1).to_string(),
        ),
        ("keepalives_interval", "1".to_owned()),
        ("keepalives_count", "3".to_owned()),
        (
            "tcp_user_timeout",
            patience.statement.as_millis().max(1).to_string(),
        ),
    ];
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let mut url = url.to_owned();
    for (key, value) in defaults {
        // `keepalives` is in `keepalives_idle`: a URL setting any of them
        // keeps its own.
        if url.contains(key) {
            continue;
        }
        let separator = match (is_url, url.contains('?')) {
            (true, true) => '&',
            (true, false) => '?',
            (false, _) => ' ',
        };
        url.push(separator);
        url.push_str(key);
        url.push('=');
        url.push_str(&value);
    }
    url
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const PATIENCE: Patience = Patience {
        silence: Duration::from_secs(2),
        statement: Duration::from_secs(30),
    };

    #[test]
    fn tcp_defaults_join_a_url_or_a_key_value_string_and_never_override() {
        assert_eq!(
            with_tcp_defaults("postgres://u@h/db", PATIENCE),
            "postgres://u@h/db?keepalives=1&keepalives_idle=2&keepalives_interval=1\
             &keepalives_count=3&tcp_user_timeout=30000"
        );
        assert_eq!(
            with_tcp_defaults(
                "postgresql://h/db?sslmode=require&tcp_user_timeout=5",
                PATIENCE
            ),
            "postgresql://h/db?sslmode=require&tcp_user_timeout=5&keepalives=1\
             &keepalives_idle=2&keepalives_interval=1&keepalives_count=3"
        );
        assert_eq!(
            with_tcp_defaults("host=h dbname=db keepalives_idle=60", PATIENCE),
            "host=h dbname=db keepalives_idle=60 keepalives_interval=1 keepalives_count=3 \
             tcp_user_timeout=30000"
        );
    }
}
