//! The error types of the public API.

use std::error::Error as StdError;
use std::fmt;

use crate::job::JobId;

/// A boxed error as the runtime stores it: any error that is `Send + Sync`.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a job's run did not succeed. Returned by job bodies.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it with `?`,
/// as a *retryable* failure: the job is tried again after a backoff. Wrap an
/// error with [`PerformError::permanent`] when trying again cannot help
/// (invalid input, a version that must never change): the job is then marked
/// dead at once and kept for an operator.
///
/// The text stored in the job's row (`last_error`) is the error's `Display`
/// followed by each `source()` in turn, separated by `: `.
///
/// ```
/// use skiplock::PerformError;
///
/// fn parse_port(s: &str) -> Result<u16, PerformError> {
///     // Retrying will not make this parse: fail permanently.
///     s.parse::<u16>().map_err(PerformError::permanent)
/// }
/// assert!(parse_port("http").unwrap_err().is_permanent());
/// ```
pub struct PerformError {
    error: BoxError,
    permanent: bool,
}

impl PerformError {
    /// A retryable failure from any error (or from a `String` / `&str`).
    pub fn new(error: impl Into<BoxError>) -> Self {
        PerformError {
            error: error.into(),
            permanent: false,
        }
    }

    /// A retryable failure with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new(message.to_string())
    }

    /// A failure that retrying cannot fix: the job is marked dead at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        PerformError {
            error: error.into(),
            permanent: true,
        }
    }

    /// Whether this failure marks the job dead without further attempts.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.error
    }

    /// The text recorded in the job's row: the error and its sources.
    pub fn report(&self) -> String {
        let mut text = self.error.to_string();
        let mut source = self.error.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // Many errors repeat their source in their own message.
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }
}

impl<E> From<E> for PerformError
where
    E: StdError + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        PerformError::new(error)
    }
}

/// For `?` in functions that return boxed errors (tests, `main`): the
/// underlying error (whether it was permanent is not kept).
impl From<PerformError> for BoxError {
    fn from(error: PerformError) -> Self {
        error.error
    }
}

/// As for [`BoxError`].
impl From<PerformError> for Box<dyn StdError + 'static> {
    fn from(error: PerformError) -> Self {
        error.error
    }
}

impl fmt::Display for PerformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.permanent {
            f.write_str("permanent: ")?;
        }
        f.write_str(&self.report())
    }
}

impl fmt::Debug for PerformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerformError")
            .field("error", &self.error)
            .field("permanent", &self.permanent)
            .finish()
    }
}

/// Not public API. Used by generated code: what a `#[background_job]`
/// function may return as its error.
///
/// `Via` tells the impls apart (a type is never more than one of them), so
/// types that are not `std::error::Error` themselves (`BoxError`,
/// `anyhow::Error`, `eyre::Report`) have impls of their own next to the
/// blanket one: the compiler picks the only impl whose bounds hold.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be recorded as a job failure",
    label = "the error type of this #[background_job]",
    note = "a #[background_job] returns nothing, or `Result<(), E>` where `E` is \
            `skiplock::PerformError`, `skiplock::BoxError`, `anyhow::Error` or `eyre::Report` \
            (with skiplock's feature of that name), or any `std::error::Error + Send + Sync + 'static`"
)]
pub trait IntoPerformError<Via> {
    /// Not public API.
    fn into_perform_error(self) -> PerformError;
}

/// Not public API: the `Via` markers of [`IntoPerformError`] and [`JobOutput`].
#[doc(hidden)]
pub mod via {
    /// An error type.
    #[derive(Debug)]
    pub enum StdError {}
    /// `PerformError` itself.
    #[derive(Debug)]
    pub enum Itself {}
    /// A boxed error.
    #[derive(Debug)]
    pub enum Boxed {}
    /// `anyhow::Error`.
    #[derive(Debug)]
    pub enum Anyhow {}
    /// `eyre::Report`.
    #[derive(Debug)]
    pub enum Eyre {}
    /// A function that returns nothing.
    #[derive(Debug)]
    pub enum Nothing {}
}

// Not recommended: a type that is none of the accepted ones is reported
// with the trait's own message, not as a missing `std::error::Error`.
#[diagnostic::do_not_recommend]
impl<E: StdError + Send + Sync + 'static> IntoPerformError<via::StdError> for E {
    fn into_perform_error(self) -> PerformError {
        PerformError::new(self)
    }
}

impl IntoPerformError<via::Itself> for PerformError {
    fn into_perform_error(self) -> PerformError {
        self
    }
}

impl IntoPerformError<via::Boxed> for BoxError {
    fn into_perform_error(self) -> PerformError {
        PerformError::new(self)
    }
}

/// Its chain is kept: the stored text is what `{:#}` prints.
#[cfg(feature = "anyhow")]
impl IntoPerformError<via::Anyhow> for anyhow::Error {
    fn into_perform_error(self) -> PerformError {
        PerformError::new(BoxError::from(self))
    }
}

/// Its chain is kept, as for `anyhow`.
#[cfg(feature = "eyre")]
impl IntoPerformError<via::Eyre> for eyre::Report {
    fn into_perform_error(self) -> PerformError {
        PerformError::new(BoxError::from(self))
    }
}

/// Not public API. Used by generated code: what a `#[background_job]`
/// function may return.
#[diagnostic::on_unimplemented(
    message = "a #[background_job] cannot return `{Self}`",
    label = "the return type of this #[background_job]",
    note = "return nothing (a job that cannot fail), or `Result<(), E>` where `E` is \
            `skiplock::PerformError`, `skiplock::BoxError`, `anyhow::Error`, `eyre::Report` or any \
            `std::error::Error + Send + Sync + 'static`"
)]
pub trait JobOutput<Via> {
    /// Not public API.
    fn into_job_result(self) -> Result<(), PerformError>;
}

impl JobOutput<via::Nothing> for () {
    fn into_job_result(self) -> Result<(), PerformError> {
        Ok(())
    }
}

impl<E: IntoPerformError<Via>, Via> JobOutput<Via> for Result<(), E> {
    fn into_job_result(self) -> Result<(), PerformError> {
        self.map_err(IntoPerformError::into_perform_error)
    }
}

/// Not public API. Used by generated code: what a `#[background_job]`
/// argument must be.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a #[background_job] argument: it is not serializable",
    label = "arguments are stored as JSON, so this type must implement `Serialize` and `Deserialize`",
    note = "derive them (`#[derive(serde::Serialize, serde::Deserialize)]`); or, if this is what \
            the job runs with rather than data of the job, did you mean `&{Self}` (the job's \
            context, a part of the runner's state)?"
)]
pub trait JobArgument: Sized {
    /// Not public API: named once per stored argument, so that an argument
    /// that cannot be stored is one error, on its type.
    const STORABLE: () = ();
    /// Not public API: serializes a stored argument.
    fn serialize_argument<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
    /// Not public API: deserializes a stored argument.
    fn deserialize_argument<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error>;
}

// Not recommended: a type that is not serializable is reported with the
// trait's own message, not as serde's missing impls.
#[diagnostic::do_not_recommend]
impl<T: serde::Serialize + serde::de::DeserializeOwned> JobArgument for T {
    fn serialize_argument<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.serialize(serializer)
    }

    fn deserialize_argument<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        T::deserialize(deserializer)
    }
}

/// Not public API. Used by generated code: the receiver through which the
/// job struct's serde code reaches a stored argument's (de)serialization.
///
/// The generated code calls `(&&Probe::<T>::new()).serialize_argument(..)`
/// on the argument's concrete type: method lookup takes [`Storable`]'s
/// implementation when `T` is a [`JobArgument`], and otherwise falls back
/// to [`Unstorable`]'s, which compiles. So the serde code adds no error of
/// its own: the one error is `JobArgument::STORABLE`'s, which the generated
/// code names once per argument. (Unstorable's methods never run: that
/// error stops the build.)
#[derive(Debug)]
pub struct Probe<T>(std::marker::PhantomData<T>);

impl<T> Probe<T> {
    /// Not public API.
    pub const fn new() -> Self {
        Probe(std::marker::PhantomData)
    }
}

impl<T> Default for Probe<T> {
    fn default() -> Self {
        Probe::new()
    }
}

/// Not public API. Used by generated code: see [`Probe`].
pub trait Storable<T> {
    /// Not public API.
    fn serialize_argument<S: serde::Serializer>(
        &self,
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error>;
    /// Not public API.
    fn deserialize_argument<'de, D: serde::Deserializer<'de>>(
        &self,
        deserializer: D,
    ) -> Result<T, D::Error>;
}

impl<T: JobArgument> Storable<T> for &Probe<T> {
    fn serialize_argument<S: serde::Serializer>(
        &self,
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.serialize_argument(serializer)
    }

    fn deserialize_argument<'de, D: serde::Deserializer<'de>>(
        &self,
        deserializer: D,
    ) -> Result<T, D::Error> {
        T::deserialize_argument(deserializer)
    }
}

/// Not public API. Used by generated code: see [`Probe`].
pub trait Unstorable<T> {
    /// Not public API.
    fn serialize_argument<S: serde::Serializer>(
        &self,
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error>;
    /// Not public API.
    fn deserialize_argument<'de, D: serde::Deserializer<'de>>(
        &self,
        deserializer: D,
    ) -> Result<T, D::Error>;
}

impl<T> Unstorable<T> for Probe<T> {
    fn serialize_argument<S: serde::Serializer>(&self, _: &T, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("not a storable argument"))
    }

    fn deserialize_argument<'de, D: serde::Deserializer<'de>>(&self, _: D) -> Result<T, D::Error> {
        Err(serde::de::Error::custom("not a storable argument"))
    }
}

/// Not public API. Used by generated code.
pub fn job_result<Via, O: JobOutput<Via>>(output: O) -> Result<(), PerformError> {
    output.into_job_result()
}

/// Enqueueing a job failed; nothing was inserted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The job value could not be serialized to JSON.
    #[error("cannot serialize job `{job_type}` to JSON: {source}")]
    Serialize {
        /// The job's type name.
        job_type: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The enqueue options are not valid.
    #[error("invalid enqueue options: {0}")]
    InvalidOptions(String),
    /// The database refused the insert (this aborts the caller's transaction).
    #[error("cannot insert job: {0}")]
    Database(#[from] diesel::result::Error),
}

/// Applying the queue's schema migrations failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// A query failed (no connection, insufficient privileges...).
    #[error("database error while migrating the queue schema: {0}")]
    Database(#[from] diesel::result::Error),
    /// A migration failed to run.
    #[error("queue schema migration failed: {0}")]
    Migration(#[source] BoxError),
}

/// The runner refused to start, or a synchronous run could not proceed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// Two registered job types use the same stored type name.
    #[error(
        "two job types are registered under the name `{job_type}`: `{first}` and `{second}`; \
         give one of them another name (the name is what queued rows store)"
    )]
    DuplicateJobType {
        /// The stored type name both claim.
        job_type: String,
        /// The Rust type of one of them.
        first: &'static str,
        /// The Rust type of the other.
        second: &'static str,
    },
    /// A registered job has an empty type or queue name.
    #[error("job type `{rust_type}` is registered with an empty {what}; names must be non-empty")]
    EmptyName {
        /// The Rust type of the job.
        rust_type: &'static str,
        /// `"type name"` or `"queue name"`.
        what: &'static str,
    },
    /// A job that runs on one of this runner's queues needs a part the
    /// runner's state does not give.
    #[error(
        "job `{job_type}` (`{rust_type}`) runs on queue `{queue}` and needs `{expected}`, which \
         this runner's state `{actual}` does not give; {}",
        crate::parts::how_to_give(expected, actual)
    )]
    ContextMismatch {
        /// The job's stored type name.
        job_type: &'static str,
        /// The job's Rust type.
        rust_type: &'static str,
        /// The queue the job runs on.
        queue: String,
        /// The part (context type) the job takes.
        expected: &'static str,
        /// The type of this runner's state.
        actual: &'static str,
    },
    /// The runner configuration is not usable.
    #[error("invalid runner configuration: {0}")]
    Config(String),
    /// The connection pool is smaller than the runner needs.
    #[error(
        "the connection pool holds at most {pool_size} connections but {workers} workers need \
         {needed} (one per worker for its job's queries, one for the wake-up thread, one for \
         the watchdog's recovery of a lost session's completions, one for a metrics scrape); \
         raise the pool's max_size, or leave out `.pool(..)` and let the runner build its own"
    )]
    PoolTooSmall {
        /// The pool's `max_size`.
        pool_size: u32,
        /// Total workers over all queues.
        workers: usize,
        /// Connections needed.
        needed: u32,
    },
    /// The database could not be reached (the message never shows the
    /// connection string's password).
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// No connection could be had from the pool.
    #[error("cannot get a database connection: {0}")]
    Pool(#[from] r2d2::Error),
    /// A query of the runner failed.
    #[error("database error in the runner: {0}")]
    Database(#[from] diesel::result::Error),
    /// A worker's lock session failed (it was closed, and its jobs released).
    #[error("{0}")]
    Session(String),
}

/// An operator action on a stored job failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No job has this id (it may have completed, or been discarded).
    #[error("no job with id {0}")]
    NotFound(JobId),
    /// The database has no queue tables.
    #[error("this database has no queue schema (no queue_jobs table); run `skiplock migrate` (or `skiplock::migrate`) first")]
    NoSchema,
    /// The request is not valid (the text says why).
    #[error("{0}")]
    Invalid(String),
    /// The job is being run by a worker right now; try again when it finishes.
    #[error("job {0} is running right now; retry or discard it once it has finished")]
    Running(JobId),
    /// Something has held back the database's xmin horizon for longer than
    /// [`rebuild_indexes`](crate::rebuild_indexes) waits: a rebuild now
    /// would keep every dead entry, and wait for it to end.
    #[error("{}", held_horizon_message(.0))]
    HorizonHeld(Vec<crate::HorizonHolder>),
    /// A rebuild waited its limit for a lock or for older transactions to
    /// end, and gave up.
    #[error(
        "the rebuild of {index} waited {wait:?} for transactions that were running to end, and gave up{}; \
         run it again when they have ended, or with a longer wait",
        if *cleaned { " (its unfinished copy was dropped)" } else { "; its unfinished copy, invalid, is left: run it again to drop it" }
    )]
    RebuildWaited {
        /// The index being rebuilt.
        index: &'static str,
        /// How long it waited.
        wait: std::time::Duration,
        /// Whether its unfinished copy was dropped.
        cleaned: bool,
    },
    /// The query failed.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

fn held_horizon_message(holders: &[crate::HorizonHolder]) -> String {
    let mut message = String::from(
        "the database's xmin horizon is held back, so VACUUM can remove no dead row \
         and a rebuilt index would keep them all; end ",
    );
    let shown: Vec<String> = holders.iter().take(5).map(ToString::to_string).collect();
    message.push_str(&shown.join("; "));
    if holders.len() > shown.len() {
        message.push_str(&format!(" and {} more", holders.len() - shown.len()));
    }
    message.push_str(", then run it again");
    message
}
