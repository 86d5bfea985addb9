//! The command's database connection: bounded in time, and never showing
//! the password it was given.
//!
//! The connection string is the user's: a URL (`postgres://user:pw@host/db`)
//! or libpq's `key=value` form, well-formed or not. The password it holds is
//! taken out of every message the command prints (libpq's own errors quote
//! a malformed string whole), and the connection gives up after
//! `--connect-timeout` (a server that accepts and never answers) and each
//! statement after `--statement-timeout`.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::{Connection, PgConnection};

use crate::Failure;

/// Connects within `connect_timeout`; statements are cancelled after
/// `statement_timeout`.
pub(crate) fn connect(
    url: Option<&str>,
    connect_timeout: Duration,
    statement_timeout: Duration,
) -> Result<PgConnection, Failure> {
    let url = url.ok_or_else(|| {
        Failure("no database: set DATABASE_URL or pass --database-url postgres://...".into())
    })?;
    let mut conn =
        PgConnection::establish(&with_connect_timeout(url, connect_timeout)).map_err(|e| {
            Failure(format!(
                "cannot connect to the database at {}: {e}",
                skiplock::redact_connection_string(url)
            ))
        })?;
    conn.batch_execute(&session_settings(statement_timeout))?;
    Ok(conn)
}

/// A pool of `size` such connections (for the dashboard).
pub(crate) fn pool(
    url: Option<&str>,
    connect_timeout: Duration,
    statement_timeout: Duration,
    size: u32,
) -> Result<skiplock::PgPool, Failure> {
    let url = url.ok_or_else(|| {
        Failure("no database: set DATABASE_URL or pass --database-url postgres://...".into())
    })?;
    // The first connection now, so a wrong URL fails here with a clear message.
    drop(connect(Some(url), connect_timeout, statement_timeout)?);
    let manager = ConnectionManager::new(with_connect_timeout(url, connect_timeout));
    Pool::builder()
        .max_size(size)
        .connection_timeout(connect_timeout.max(Duration::from_secs(1)))
        .connection_customizer(Box::new(StatementTimeout(statement_timeout)))
        .build(manager)
        .map_err(|e| {
            Failure(format!(
                "cannot connect to the database at {}: {e}",
                skiplock::redact_connection_string(url)
            ))
        })
}

/// The statement timeout, and no JIT compilation: the commands' and the
/// pages' queries read indexes and are planned as costly on a big table,
/// where compiling them took 21 ms of a 70 ms page (10,000,000 jobs).
fn session_settings(statement_timeout: Duration) -> String {
    format!(
        "SET statement_timeout = {}; SET jit = off",
        statement_timeout.as_millis().max(1)
    )
}

/// Sets the statement timeout on each new connection of the pool.
#[derive(Debug)]
struct StatementTimeout(Duration);

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for StatementTimeout {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&session_settings(self.0))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// `url` with libpq's `connect_timeout` (whole seconds, at least 2, as
/// libpq reads it), unless it says one itself.
fn with_connect_timeout(url: &str, timeout: Duration) -> String {
    if url.contains("connect_timeout") {
        return url.to_owned();
    }
    let seconds = timeout.as_secs().max(2);
    if is_url(url) {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}connect_timeout={seconds}")
    } else {
        format!("{url} connect_timeout={seconds}")
    }
}

fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_timeout_is_added_to_each_form_unless_given() {
        let five = Duration::from_secs(5);
        assert_eq!(
            with_connect_timeout("postgres://h/db", five),
            "postgres://h/db?connect_timeout=5"
        );
        assert_eq!(
            with_connect_timeout("postgres://h/db?sslmode=disable", five),
            "postgres://h/db?sslmode=disable&connect_timeout=5"
        );
        assert_eq!(
            with_connect_timeout("host=h dbname=db", five),
            "host=h dbname=db connect_timeout=5"
        );
        assert_eq!(
            with_connect_timeout("postgres://h/db?connect_timeout=9", five),
            "postgres://h/db?connect_timeout=9"
        );
    }
}
