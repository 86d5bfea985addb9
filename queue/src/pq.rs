//! A libpq session of the runner's own: the worker's lock session and the
//! `LISTEN` session.
//!
//! Why not a diesel connection: a worker must know, before it starts each
//! job, that the session holding the job's lock is still alive, and asking
//! the server costs a round trip per job (the queue runs a no-op job in
//! about 20 µs; a round trip is 50 to 150 µs). libpq reads the socket only
//! when asked, so a session the server has ended (a terminated backend, an
//! idle timeout, a restart, a proxy dropping it) looks healthy until the
//! next query. With the socket in hand, [`Session::is_lost`] is one
//! `poll(2)` with no wait: an idle session receives nothing unless the
//! server is ending it. diesel does not expose the socket, so the runner's
//! own sessions use libpq directly (the same library diesel links, so the
//! same URLs, key=value strings, TLS, `.pgpass` and service files work).
//!
//! Statements are `'static` SQL text (all of it in `storage`), prepared
//! once per session and run with text parameters.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use pq_sys::{
    ConnStatusType, ExecStatusType, PGconn, PGresult, PQbackendPID, PQclear, PQconnectdbParams,
    PQconsumeInput, PQenterPipelineMode, PQerrorMessage, PQexitPipelineMode, PQfinish, PQfreemem,
    PQgetResult, PQgetisnull, PQgetvalue, PQisBusy, PQnotifies, PQntuples, PQpipelineSync,
    PQresultErrorField, PQresultErrorMessage, PQresultStatus, PQsendPrepare, PQsendQuery,
    PQsendQueryPrepared, PQsetNoticeReceiver, PQsocket, PQstatus, PG_DIAG_MESSAGE_PRIMARY,
    PG_DIAG_SEVERITY_NONLOCALIZED,
};
use tracing::debug;

/// A statement or connection failure of a [`Session`]. After a failure the
/// session counts as lost (the runner never goes on with a session in an
/// unknown state, since closing it is what releases its locks), except for
/// a statement that [`Session::pipeline`] reports refused: its
/// transaction was rolled back and the session is idle, its locks held.
#[derive(Debug, Clone)]
pub(crate) struct SessionError {
    message: String,
}

impl SessionError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        SessionError {
            message: message.into(),
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SessionError {}

/// One parameter of a statement, sent in PostgreSQL's text format.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    Int(i64),
    Text(&'a str),
    Ints(&'a [i64]),
    /// A `text[]`.
    Texts(&'a [&'a str]),
}

impl Param<'_> {
    fn encode(&self) -> Result<CString, SessionError> {
        let text = match self {
            Param::Int(n) => n.to_string(),
            Param::Text(s) => (*s).to_owned(),
            Param::Ints(ns) => {
                let items: Vec<String> = ns.iter().map(i64::to_string).collect();
                format!("{{{}}}", items.join(","))
            }
            // Each element quoted, its `"` and `\` escaped: any text is one element.
            Param::Texts(texts) => {
                let items: Vec<String> = texts
                    .iter()
                    .map(|t| format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect();
                format!("{{{}}}", items.join(","))
            }
        };
        CString::new(text)
            .map_err(|_| SessionError::new("a statement parameter contains a NUL byte"))
    }
}

/// One step of a [`Session::pipeline`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'a> {
    /// A statement and its parameters.
    Run(&'static str, &'a [Param<'a>]),
    /// The end of an implicit transaction: the statements before it commit.
    Sync,
}

/// What the server told the session outside any statement: set by the
/// notice receiver while libpq parses input.
#[derive(Default)]
struct Notices {
    /// The server announced it is ending the session (FATAL or PANIC).
    ending: Cell<Option<String>>,
}

/// How long a session waits on its server. A network that goes silent (a
/// failover moving the primary's address, a partition, a NAT dropping the
/// flow) sends no FIN or RST: without these a statement would wait until
/// the kernel gives up retransmitting, about 15 minutes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Patience {
    /// Without a word from the server for longer than half this, a worker
    /// asks before it starts a job, and the answer must come within this
    /// (see [`Session::ping`]). Also the TCP keepalive idle time.
    pub(crate) silence: Duration,
    /// The longest any statement (or the connection) waits for an answer:
    /// then the session counts as lost. Also `tcp_user_timeout`.
    pub(crate) statement: Duration,
}

/// A libpq connection owned by one thread at a time.
pub(crate) struct Session {
    conn: NonNull<PGconn>,
    /// Boxed so its address, given to libpq, stays put.
    notices: Box<Notices>,
    /// Prepared statement names, by the address of their `'static` text.
    prepared: HashMap<usize, CString>,
    lost: bool,
    /// The last mark handed out (see [`Session::next_mark`]).
    marks: i64,
    patience: Patience,
    /// When the server last answered.
    last_heard: Instant,
}

// SAFETY: a PGconn may move between threads as long as one thread at a time
// uses it; `Session` is only used through `&mut self` (or moved whole), and
// `Notices` is only touched from inside libpq calls made through `&mut self`.
unsafe impl Send for Session {}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("backend_pid", &self.backend_pid())
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

/// libpq hands every notice and warning, and an error the server sends
/// while the session is idle (why it is about to close it), to this.
unsafe extern "C" fn receive_notice(arg: *mut c_void, result: *const PGresult) {
    // SAFETY: `arg` is the session's boxed `Notices`, alive while the
    // connection is; `result` is valid for the duration of the call.
    let notices = unsafe { &*(arg as *const Notices) };
    let field = |code: u8| {
        // SAFETY: a valid result; the field is NULL or a C string it owns.
        let value = unsafe { PQresultErrorField(result, c_int::from(code)) };
        (!value.is_null()).then(|| {
            unsafe { CStr::from_ptr(value) }
                .to_string_lossy()
                .into_owned()
        })
    };
    let severity = field(PG_DIAG_SEVERITY_NONLOCALIZED).unwrap_or_default();
    let message = field(PG_DIAG_MESSAGE_PRIMARY).unwrap_or_default();
    if severity == "FATAL" || severity == "PANIC" {
        notices.ending.set(Some(message));
    } else {
        debug!(%severity, %message, "notice from the database");
    }
}

impl Session {
    /// Connects to `url` (a URL or a key=value string, as libpq takes them).
    /// `application_name` applies unless the URL sets its own, and so do
    /// the TCP keepalives, `tcp_user_timeout` and `connect_timeout` that
    /// `patience` sets.
    pub(crate) fn connect(
        url: &str,
        application_name: &str,
        patience: Patience,
    ) -> Result<Session, SessionError> {
        let secrets = crate::redact::connection_secrets(url);
        let url = CString::new(url)
            .map_err(|_| SessionError::new("the database URL contains a NUL byte"))?;
        let name =
            CString::new(application_name.replace('\0', "")).expect("NUL bytes were just removed");
        // `client_encoding` comes after `dbname`, so it wins over the URL,
        // `PGCLIENTENCODING`, and the role's or database's default (which the
        // server applies before what the client asks): the session's text
        // is UTF-8 whatever the database's encoding, as Rust reads it.
        // The TCP settings come before `dbname`: the URL's own win.
        let number = |n: u128| CString::new(n.to_string()).expect("digits");
        let idle = number(patience.silence.as_secs().max(1).into());
        let user_timeout = number(patience.statement.as_millis().max(1));
        let connect_timeout = number((patience.silence * 5).as_secs().max(2).into());
        let keywords = [
            c"keepalives".as_ptr(),
            c"keepalives_idle".as_ptr(),
            c"keepalives_interval".as_ptr(),
            c"keepalives_count".as_ptr(),
            c"tcp_user_timeout".as_ptr(),
            c"connect_timeout".as_ptr(),
            c"dbname".as_ptr(),
            c"fallback_application_name".as_ptr(),
            c"client_encoding".as_ptr(),
            ptr::null(),
        ];
        let values = [
            c"1".as_ptr(),
            idle.as_ptr(),
            c"1".as_ptr(),
            c"3".as_ptr(),
            user_timeout.as_ptr(),
            connect_timeout.as_ptr(),
            url.as_ptr(),
            name.as_ptr(),
            c"UTF8".as_ptr(),
            ptr::null(),
        ];
        // SAFETY: NULL-terminated arrays of valid C strings; `expand_dbname`
        // makes libpq read the URL or key=value string given as `dbname`.
        // libpq returns NULL only when out of memory.
        let conn =
            NonNull::new(unsafe { PQconnectdbParams(keywords.as_ptr(), values.as_ptr(), 1) })
                .ok_or_else(|| SessionError::new("out of memory creating a database session"))?;
        let session = Session {
            conn,
            notices: Box::default(),
            prepared: HashMap::new(),
            lost: false,
            marks: 0,
            patience,
            last_heard: Instant::now(),
        };
        // SAFETY: the connection is valid until `session` drops.
        if unsafe { PQstatus(session.conn.as_ptr()) } != ConnStatusType::CONNECTION_OK {
            // libpq quotes a malformed connection string whole.
            return Err(SessionError::new(crate::redact::scrub_secrets(
                &session.connection_error(),
                &secrets,
            )));
        }
        let notices: *const Notices = &*session.notices;
        // SAFETY: the receiver's argument outlives the connection (dropped
        // after PQfinish in `Drop`).
        unsafe {
            PQsetNoticeReceiver(
                session.conn.as_ptr(),
                Some(receive_notice),
                notices as *mut c_void,
            )
        };
        Ok(session)
    }

    fn connection_error(&self) -> String {
        // SAFETY: PQerrorMessage returns a C string owned by the connection.
        let message = unsafe { CStr::from_ptr(PQerrorMessage(self.conn.as_ptr())) };
        message.to_string_lossy().trim().to_owned()
    }

    /// The server process serving this session.
    pub(crate) fn backend_pid(&self) -> i32 {
        // SAFETY: valid connection.
        unsafe { PQbackendPID(self.conn.as_ptr()) }
    }

    /// Whether the server has ended this session (or the connection broke),
    /// as far as can be known without a round trip: one `poll(2)` that does
    /// not wait. An idle session receives nothing unless the server is
    /// ending it, so anything readable is read and examined.
    pub(crate) fn is_lost(&mut self) -> bool {
        if !self.lost && self.readable(Duration::ZERO) {
            // Reading is what marks the connection bad on EOF, and parsing
            // is what hands a FATAL message to the notice receiver.
            let _ = self.read_notifications();
        }
        self.lost
    }

    /// Waits up to `timeout` for the socket to become readable.
    fn readable(&mut self, timeout: Duration) -> bool {
        self.readable_or(timeout, None)
    }

    /// Waits up to `timeout` for the socket, or `also`, to become readable;
    /// whether the socket did (or may have: an error counts).
    fn readable_or(&mut self, timeout: Duration, also: Option<c_int>) -> bool {
        // SAFETY: valid connection.
        let fd = unsafe { PQsocket(self.conn.as_ptr()) };
        if fd < 0 {
            self.lost = true;
            return false;
        }
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: also.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let count: libc::nfds_t = if also.is_some() { 2 } else { 1 };
        let millis = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `count` valid pollfds for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, millis) };
        // An interrupted poll reads as "nothing yet"; anything else counts.
        if ready < 0 {
            return std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted;
        }
        ready > 0 && fds[0].revents != 0
    }

    /// Reads what the socket holds and returns the notifications received
    /// (their payloads). An error means the session is gone.
    fn read_notifications(&mut self) -> Result<Vec<String>, SessionError> {
        // SAFETY: valid connection.
        if unsafe { PQconsumeInput(self.conn.as_ptr()) } == 0 {
            return Err(self.lose(self.connection_error()));
        }
        let mut payloads = Vec::new();
        loop {
            // SAFETY: valid connection; a non-NULL result is ours to free.
            let notify = unsafe { PQnotifies(self.conn.as_ptr()) };
            if notify.is_null() {
                break;
            }
            // SAFETY: libpq fills `extra` with a valid C string; the struct
            // is freed right after copying it.
            unsafe {
                payloads.push(
                    CStr::from_ptr((*notify).extra)
                        .to_string_lossy()
                        .into_owned(),
                );
                PQfreemem(notify.cast());
            }
        }
        if let Some(reason) = self.notices.ending.take() {
            return Err(self.lose(format!("the server is ending the session: {reason}")));
        }
        // SAFETY: valid connection.
        if unsafe { PQstatus(self.conn.as_ptr()) } != ConnStatusType::CONNECTION_OK {
            return Err(self.lose(self.connection_error()));
        }
        Ok(payloads)
    }

    /// Waits up to `timeout` for notifications (`LISTEN`), or until `bell`
    /// (a descriptor) becomes readable; empty when none came.
    pub(crate) fn wait_for_notifications(
        &mut self,
        timeout: Duration,
        bell: Option<c_int>,
    ) -> Result<Vec<String>, SessionError> {
        if self.lost {
            return Err(SessionError::new("the session is gone"));
        }
        let payloads = self.read_notifications()?;
        if !payloads.is_empty() || !self.readable_or(timeout, bell) {
            return Ok(payloads);
        }
        let payloads = self.read_notifications()?;
        self.last_heard = Instant::now();
        Ok(payloads)
    }

    /// How long since the server last answered (or sent anything).
    pub(crate) fn silent_for(&self) -> Duration {
        self.last_heard.elapsed()
    }

    /// One round trip that must come back within the patience's silence
    /// limit; `Err`: the session is lost.
    pub(crate) fn ping(&mut self) -> Result<(), SessionError> {
        let deadline = Instant::now() + self.patience.silence;
        self.run_until(c"SELECT 1", deadline).map(drop)
    }

    /// Waits until libpq has a result to give without blocking, reading
    /// what arrives; at `deadline`, the session is lost.
    fn ready_by(&mut self, deadline: Instant) -> Result<(), SessionError> {
        let conn = self.conn.as_ptr();
        // What libpq has read already may hold the result: no system call
        // until it needs more.
        // SAFETY: valid connection.
        while unsafe { PQisBusy(conn) } == 1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.lose(format!(
                    "no answer from the database server for {} ms (the network may be down, \
                     or the server gone)",
                    self.last_heard.elapsed().as_millis()
                )));
            }
            if !self.readable(left) {
                continue;
            }
            // SAFETY: valid connection.
            if unsafe { PQconsumeInput(conn) } == 0 {
                return Err(self.lose(self.connection_error()));
            }
            self.last_heard = Instant::now();
        }
        Ok(())
    }

    /// The next result of what was sent (NULL: none left), waiting until
    /// `deadline` at most.
    fn next_result(&mut self, deadline: Instant) -> Result<*mut PGresult, SessionError> {
        self.ready_by(deadline)?;
        // SAFETY: valid connection, and not busy: this does not block.
        Ok(unsafe { PQgetResult(self.conn.as_ptr()) })
    }

    /// The one result of a statement sent outside a pipeline, the rest of
    /// its results drained.
    fn finish(&mut self, sent: c_int, deadline: Instant) -> Result<Rows, SessionError> {
        if sent != 1 {
            return Err(self.lose(self.connection_error()));
        }
        let first = self.next_result(deadline)?;
        let rows = self.check(first);
        loop {
            let more = self.next_result(deadline)?;
            if more.is_null() {
                break;
            }
            // SAFETY: a result we own and do not use.
            unsafe { PQclear(more) };
        }
        rows
    }

    /// Runs a statement without parameters (the simple protocol).
    fn run_until(&mut self, sql: &CStr, deadline: Instant) -> Result<Rows, SessionError> {
        if self.lost {
            return Err(SessionError::new("the session is gone"));
        }
        // SAFETY: valid connection and C string.
        let sent = unsafe { PQsendQuery(self.conn.as_ptr(), sql.as_ptr()) };
        self.finish(sent, deadline)
            .map_err(|e| self.lose(e.message))
    }

    /// When a statement sent now must have been answered.
    fn deadline(&self) -> Instant {
        Instant::now() + self.patience.statement
    }

    fn lose(&mut self, message: String) -> SessionError {
        self.lost = true;
        SessionError::new(message)
    }

    /// Runs a statement without parameters through the simple protocol
    /// (for utility statements such as `LISTEN`).
    pub(crate) fn execute_simple(&mut self, sql: &'static CStr) -> Result<(), SessionError> {
        self.run_until(sql, self.deadline()).map(drop)
    }

    /// Runs a statement with `$1`, `$2`... bound to `params`, preparing it
    /// on its first use in this session, and returns its rows.
    pub(crate) fn query(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Rows, SessionError> {
        if self.lost {
            return Err(SessionError::new("the session is gone"));
        }
        let name = self.prepared(sql)?;
        let encoded = params
            .iter()
            .map(Param::encode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.lose(e.message))?;
        let values: Vec<*const c_char> = encoded.iter().map(|v| v.as_ptr()).collect();
        let count = c_int::try_from(values.len()).expect("a handful of parameters");
        // SAFETY: valid connection, statement name and parameter values
        // (text format: lengths and formats may be NULL), copied by libpq.
        let sent = unsafe {
            PQsendQueryPrepared(
                self.conn.as_ptr(),
                name,
                count,
                values.as_ptr(),
                ptr::null(),
                ptr::null(),
                0,
            )
        };
        let deadline = self.deadline();
        self.finish(sent, deadline)
            .map_err(|e| self.lose(e.message))
    }

    /// The name of `sql`'s prepared statement, preparing it on first use.
    fn prepared(&mut self, sql: &'static str) -> Result<*const c_char, SessionError> {
        let key = sql.as_ptr() as usize;
        if let Some(name) = self.prepared.get(&key) {
            return Ok(name.as_ptr());
        }
        let name = CString::new(format!("skiplock_{}", self.prepared.len()))
            .expect("no NUL in a generated name");
        let text = CString::new(sql).expect("no NUL in the queue's SQL");
        // SAFETY: valid connection and C strings; parameter types are
        // inferred by the server (NULL type array).
        let sent = unsafe {
            PQsendPrepare(
                self.conn.as_ptr(),
                name.as_ptr(),
                text.as_ptr(),
                0,
                ptr::null(),
            )
        };
        let deadline = self.deadline();
        self.finish(sent, deadline)
            .map_err(|e| self.lose(e.message))?;
        Ok(self.prepared.entry(key).or_insert(name).as_ptr())
    }

    /// Counts this session lost after `error` (a statement whose refusal
    /// leaves the session's locks unknown).
    pub(crate) fn abandon(&mut self, error: SessionError) -> SessionError {
        self.lost = true;
        error
    }

    /// A number no earlier call on this session returned: a write's mark
    /// (see `storage::claims`).
    pub(crate) fn next_mark(&mut self) -> i64 {
        self.marks += 1;
        self.marks
    }

    /// Runs statements in one round trip (libpq's pipeline mode) and
    /// returns the result of each [`Step::Run`], in order. A [`Step::Sync`]
    /// ends an implicit transaction: what follows it runs after its commit.
    /// The steps must end with a `Sync`.
    ///
    /// A statement the server refuses (a trigger's error, a deadlock, a
    /// cancel) leaves the session as it is: its transaction was rolled back
    /// (the rest of it, up to its `Sync`, skipped: refused too), and the
    /// steps after that `Sync` ran. `Err`: the session is lost.
    pub(crate) fn pipeline(
        &mut self,
        steps: &[Step<'_>],
    ) -> Result<Vec<Result<Rows, SessionError>>, SessionError> {
        assert!(
            matches!(steps.last(), Some(Step::Sync)),
            "a pipeline ends with a Sync"
        );
        if self.lost {
            return Err(SessionError::new("the session is gone"));
        }
        let mut names = Vec::with_capacity(steps.len());
        for step in steps {
            if let Step::Run(sql, _) = step {
                names.push(self.prepared(sql)?);
            }
        }
        let encoded = steps
            .iter()
            .filter_map(|step| match step {
                Step::Run(_, params) => Some(params.iter().map(Param::encode).collect()),
                Step::Sync => None,
            })
            .collect::<Result<Vec<Vec<CString>>, SessionError>>()
            .map_err(|e| self.lose(e.message))?;
        let conn = self.conn.as_ptr();
        // SAFETY: valid connection, idle (no query in flight).
        if unsafe { PQenterPipelineMode(conn) } != 1 {
            return Err(self.lose(self.connection_error()));
        }
        let mut runs = names.iter().zip(&encoded);
        for step in steps {
            let sent = match step {
                Step::Run(..) => {
                    let (name, values) = runs.next().expect("one per Run");
                    let values: Vec<*const c_char> = values.iter().map(|v| v.as_ptr()).collect();
                    let count = c_int::try_from(values.len()).expect("a handful of parameters");
                    // SAFETY: valid connection in pipeline mode, a prepared
                    // statement's name, and text parameters that live until
                    // the call returns (libpq copies them into its buffer).
                    unsafe {
                        PQsendQueryPrepared(
                            conn,
                            *name,
                            count,
                            values.as_ptr(),
                            ptr::null(),
                            ptr::null(),
                            0,
                        )
                    }
                }
                // SAFETY: valid connection in pipeline mode.
                Step::Sync => unsafe { PQpipelineSync(conn) },
            };
            if sent != 1 {
                return Err(self.lose(self.connection_error()));
            }
        }
        let mut results = Vec::new();
        let mut failure = None;
        let deadline = self.deadline();
        for step in steps {
            // Each result is wrapped (and freed).
            let result = self.next_result(deadline)?;
            match step {
                Step::Run(..) => {
                    if result.is_null() {
                        failure.get_or_insert_with(|| self.lose(self.connection_error()));
                    }
                    results.push(self.check(result));
                    // The end of this statement's results.
                    let end = self.next_result(deadline)?;
                    if !end.is_null() {
                        // SAFETY: a result we own and do not use.
                        unsafe { PQclear(end) };
                    }
                }
                Step::Sync => {
                    // SAFETY: a result we own (or NULL), freed here.
                    let synced = !result.is_null()
                        && unsafe { PQresultStatus(result) } == ExecStatusType::PGRES_PIPELINE_SYNC;
                    if !result.is_null() {
                        unsafe { PQclear(result) };
                    }
                    if !synced {
                        failure.get_or_insert_with(|| self.lose(self.connection_error()));
                    }
                }
            }
        }
        // SAFETY: valid connection; every result has been read.
        if unsafe { PQexitPipelineMode(conn) } != 1 {
            failure.get_or_insert_with(|| self.lose(self.connection_error()));
        }
        // SAFETY: valid connection.
        if failure.is_none() && unsafe { PQstatus(conn) } != ConnStatusType::CONNECTION_OK {
            failure = Some(self.lose(self.connection_error()));
        }
        match failure {
            Some(error) => {
                self.lost = true;
                Err(error)
            }
            None => Ok(results),
        }
    }

    /// Wraps a result, turning a failed statement into an error (and no
    /// result at all, a broken connection, into a loss).
    fn check(&mut self, result: *mut PGresult) -> Result<Rows, SessionError> {
        let Some(result) = NonNull::new(result) else {
            return Err(self.lose(self.connection_error()));
        };
        let rows = Rows(result);
        // SAFETY: a valid result.
        match unsafe { PQresultStatus(rows.0.as_ptr()) } {
            ExecStatusType::PGRES_COMMAND_OK | ExecStatusType::PGRES_TUPLES_OK => Ok(rows),
            ExecStatusType::PGRES_PIPELINE_ABORTED => Err(SessionError::new(
                "skipped: an earlier statement of its transaction failed",
            )),
            _ => {
                // SAFETY: a valid result; the message is owned by it.
                let message = unsafe { CStr::from_ptr(PQresultErrorMessage(rows.0.as_ptr())) }
                    .to_string_lossy()
                    .trim()
                    .to_owned();
                Err(SessionError::new(message))
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: the connection is ours and not used after this. Ending the
        // session releases every lock it holds.
        unsafe { PQfinish(self.conn.as_ptr()) };
    }
}

/// The rows of a statement's result, as text.
pub(crate) struct Rows(NonNull<PGresult>);

impl Rows {
    pub(crate) fn len(&self) -> usize {
        // SAFETY: a valid result.
        usize::try_from(unsafe { PQntuples(self.0.as_ptr()) }).unwrap_or(0)
    }

    /// The value at `row`, `column` (`None`: SQL NULL).
    pub(crate) fn text(&self, row: usize, column: usize) -> Option<&str> {
        let (row, column) = (
            c_int::try_from(row).expect("row index"),
            c_int::try_from(column).expect("column index"),
        );
        // SAFETY: a valid result; indexes come from `len` and the statement.
        unsafe {
            if PQgetisnull(self.0.as_ptr(), row, column) == 1 {
                return None;
            }
            CStr::from_ptr(PQgetvalue(self.0.as_ptr(), row, column))
                .to_str()
                .ok()
        }
    }

    /// The value at `row`, `column` as an integer.
    pub(crate) fn int(&self, row: usize, column: usize) -> Result<i64, SessionError> {
        self.text(row, column)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| SessionError::new("the database returned an unexpected value"))
    }

    /// The value at `row`, `column` as text (NULL: an error).
    pub(crate) fn string(&self, row: usize, column: usize) -> Result<String, SessionError> {
        self.text(row, column)
            .map(str::to_owned)
            .ok_or_else(|| SessionError::new("the database returned an unexpected NULL"))
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        // SAFETY: the result is ours and not used after this.
        unsafe { PQclear(self.0.as_ptr()) };
    }
}

impl fmt::Debug for Rows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rows").field("len", &self.len()).finish()
    }
}
