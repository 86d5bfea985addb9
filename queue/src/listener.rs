//! A `LISTEN` session of its own, so idle workers wake the moment a job is
//! enqueued instead of polling the database.
//!
//! `NOTIFY` does not pass through PgBouncer in transaction mode: point the
//! runner at PostgreSQL directly, or rely on the poll fallback.

use std::time::Duration;

use crate::pq::{Patience, Session, SessionError};
use crate::storage;

/// A session that listens on the channel the enqueue statements notify.
#[derive(Debug)]
pub(crate) struct Listener {
    session: Session,
    patience: Patience,
}

impl Listener {
    /// Connects to `url` and starts listening.
    pub(crate) fn connect(url: &str, patience: Patience) -> Result<Listener, SessionError> {
        let mut session = Session::connect(url, "skiplock listener", patience)?;
        storage::prepare_runner_session(&mut session)?;
        session.execute_simple(storage::LISTEN)?;
        Ok(Listener { session, patience })
    }

    /// Waits up to `timeout` for notifications; returns their payloads
    /// (queue names), empty on timeout. An error means the connection is
    /// lost: drop this listener and connect a new one.
    ///
    /// A listener hears nothing while nothing is enqueued, and a silent
    /// network looks the same: after five silence limits without a word,
    /// it asks the server (one round trip), and without an answer it is
    /// lost.
    /// A stop of the runner (its `bell`, see [`crate::shutdown::Signals`])
    /// ends the wait at once.
    pub(crate) fn wait(
        &mut self,
        timeout: Duration,
        bell: Option<std::os::fd::RawFd>,
    ) -> Result<Vec<String>, SessionError> {
        if self.session.silent_for() >= self.patience.silence * 5 {
            self.session.ping()?;
        }
        self.session.wait_for_notifications(timeout, bell)
    }
}
