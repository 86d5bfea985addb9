//! A `LISTEN` session of its own, so idle workers wake the moment a job is
//! enqueued instead of polling the database.
//!
//! It is a plain libpq connection (the same library diesel uses, so the
//! same URLs, TLS and authentication work): diesel does not expose the
//! socket, and waiting on it is the whole point. `NOTIFY` does not pass
//! through PgBouncer in transaction mode: point the runner at PostgreSQL
//! directly, or rely on the poll fallback.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;

use pq_sys::{
    ConnStatusType, ExecStatusType, PGconn, PQclear, PQconnectdb, PQconsumeInput, PQerrorMessage,
    PQexec, PQfinish, PQfreemem, PQnotifies, PQresultStatus, PQsocket, PQstatus,
};

/// The channel the enqueue statements notify, with the queue name as payload.
pub(crate) const CHANNEL: &str = "queue_jobs";

/// A connection that listens on [`CHANNEL`].
pub(crate) struct Listener {
    conn: NonNull<PGconn>,
}

// SAFETY: a PGconn may move between threads as long as one thread at a time
// uses it; `Listener` is only used through `&mut self`.
unsafe impl Send for Listener {}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

impl Listener {
    /// Connects to `url` and starts listening.
    pub(crate) fn connect(url: &str) -> Result<Listener, String> {
        let url =
            CString::new(url).map_err(|_| "the database URL contains a NUL byte".to_owned())?;
        // SAFETY: `url` is a valid C string; PQconnectdb returns NULL only when
        // out of memory, and otherwise a connection we own until PQfinish.
        let conn = NonNull::new(unsafe { PQconnectdb(url.as_ptr()) })
            .ok_or_else(|| "out of memory creating the listener connection".to_owned())?;
        let listener = Listener { conn };
        // SAFETY: the connection is valid until `listener` drops.
        if unsafe { PQstatus(listener.conn.as_ptr()) } != ConnStatusType::CONNECTION_OK {
            return Err(listener.error());
        }
        let listen = CString::new(format!("LISTEN {CHANNEL}")).expect("no NUL");
        // SAFETY: valid connection and C string; the result is cleared below.
        let result = unsafe { PQexec(listener.conn.as_ptr(), listen.as_ptr()) };
        // SAFETY: PQresultStatus accepts NULL (reported as a fatal error).
        let ok = unsafe { PQresultStatus(result) } == ExecStatusType::PGRES_COMMAND_OK;
        // SAFETY: `result` came from PQexec and is not used again.
        unsafe { PQclear(result) };
        if !ok {
            return Err(listener.error());
        }
        Ok(listener)
    }

    fn error(&self) -> String {
        // SAFETY: PQerrorMessage returns a C string owned by the connection.
        let message = unsafe { CStr::from_ptr(PQerrorMessage(self.conn.as_ptr())) };
        message.to_string_lossy().trim().to_owned()
    }

    /// Waits up to `timeout` for notifications; returns their payloads
    /// (queue names), empty on timeout. An error means the connection is
    /// lost: drop this listener and connect a new one.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<Vec<String>, String> {
        let mut payloads = self.drain()?;
        if !payloads.is_empty() {
            return Ok(payloads);
        }
        // SAFETY: valid connection.
        let fd = unsafe { PQsocket(self.conn.as_ptr()) };
        if fd < 0 {
            return Err("the listener connection has no socket".into());
        }
        let mut poll_fd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, millis) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(format!("waiting on the listener connection: {error}"));
        }
        if ready > 0 {
            payloads = self.drain()?;
        }
        Ok(payloads)
    }

    /// Reads what the socket holds and returns the notifications received.
    fn drain(&mut self) -> Result<Vec<String>, String> {
        // SAFETY: valid connection.
        if unsafe { PQconsumeInput(self.conn.as_ptr()) } == 0 {
            return Err(self.error());
        }
        let mut payloads = Vec::new();
        loop {
            // SAFETY: valid connection; a non-NULL result is ours to free.
            let notify = unsafe { PQnotifies(self.conn.as_ptr()) };
            if notify.is_null() {
                break;
            }
            // SAFETY: libpq fills `extra` with a valid C string; the struct is
            // freed right after copying it.
            unsafe {
                payloads.push(
                    CStr::from_ptr((*notify).extra)
                        .to_string_lossy()
                        .into_owned(),
                );
                PQfreemem(notify.cast());
            }
        }
        // The server closed the session (a restart, pg_terminate_backend).
        // SAFETY: valid connection.
        if unsafe { PQstatus(self.conn.as_ptr()) } != ConnStatusType::CONNECTION_OK {
            return Err(self.error());
        }
        Ok(payloads)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: the connection is ours and not used after this.
        unsafe { PQfinish(self.conn.as_ptr()) };
    }
}
