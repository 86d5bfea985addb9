//! A `LISTEN` session of its own, so idle workers wake the moment a job is
//! enqueued instead of polling the database.
//!
//! `NOTIFY` does not pass through PgBouncer in transaction mode: point the
//! runner at PostgreSQL directly, or rely on the poll fallback.

use std::time::Duration;

use crate::pq::{Session, SessionError};
use crate::storage;

/// A session that listens on the channel the enqueue statements notify.
#[derive(Debug)]
pub(crate) struct Listener {
    session: Session,
}

impl Listener {
    /// Connects to `url` and starts listening.
    pub(crate) fn connect(url: &str) -> Result<Listener, SessionError> {
        let mut session = Session::connect(url, "skiplock listener")?;
        storage::prepare_runner_session(&mut session)?;
        session.execute_simple(storage::LISTEN)?;
        Ok(Listener { session })
    }

    /// Waits up to `timeout` for notifications; returns their payloads
    /// (queue names), empty on timeout. An error means the connection is
    /// lost: drop this listener and connect a new one.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<Vec<String>, SessionError> {
        self.session.wait_for_notifications(timeout)
    }
}
