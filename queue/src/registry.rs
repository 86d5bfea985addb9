//! Job types registered through `inventory`, and lookup by stored type name.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;

use crate::connection::{ConnectionMode, JobConnection};
use crate::errors::{PerformError, RunnerError};
use crate::job::Job;
use crate::retry::RetryPolicy;

/// Everything the runner needs to know about one job type, built at compile
/// time by [`register_job!`](crate::register_job) and collected by `inventory`.
pub struct JobDescriptor {
    pub(crate) job_type: &'static str,
    pub(crate) queue: &'static str,
    pub(crate) retry_policy: RetryPolicy,
    pub(crate) connection: ConnectionMode,
    /// Runs on the runner's tokio runtime.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) is_async: bool,
    rust_type: fn() -> &'static str,
    context_type: fn() -> TypeId,
    context_name: fn() -> &'static str,
    run: RunFn,
}

type RunFn = fn(&(dyn Any + Send + Sync), &str, &mut JobConnection<'_>) -> Result<(), RunFailure>;

impl JobDescriptor {
    /// The descriptor of `J`.
    pub const fn of<J: Job>() -> Self {
        JobDescriptor {
            job_type: J::JOB_TYPE,
            queue: J::QUEUE,
            retry_policy: J::RETRY_POLICY,
            connection: J::CONNECTION,
            is_async: J::ASYNC,
            rust_type: std::any::type_name::<J>,
            context_type: TypeId::of::<J::Context>,
            context_name: std::any::type_name::<J::Context>,
            run: run_erased::<J>,
        }
    }

    /// The Rust path of the job type, for messages.
    pub(crate) fn rust_type(&self) -> &'static str {
        (self.rust_type)()
    }

    /// The part of the runner's state the job takes (`()`: none).
    pub(crate) fn context_type(&self) -> TypeId {
        (self.context_type)()
    }

    pub(crate) fn context_name(&self) -> &'static str {
        (self.context_name)()
    }

    /// Deserializes the payload and runs the job with `ctx`, which must be
    /// the job's context type (checked: a mismatch is a failure, not UB).
    pub(crate) fn run(
        &self,
        ctx: &(dyn Any + Send + Sync),
        payload: &str,
        conn: &mut JobConnection<'_>,
    ) -> Result<(), RunFailure> {
        (self.run)(ctx, payload, conn)
    }
}

impl fmt::Debug for JobDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobDescriptor")
            .field("job_type", &self.job_type)
            .field("rust_type", &self.rust_type())
            .field("queue", &self.queue)
            .field("context", &self.context_name())
            .finish_non_exhaustive()
    }
}

inventory::collect!(JobDescriptor);

/// Why a claimed job did not run to success.
#[derive(Debug)]
pub(crate) enum RunFailure {
    /// The job ran and returned an error.
    Job(PerformError),
    /// The job panicked; the message is the panic payload.
    Panic(String),
    /// No registered job type has the row's type name.
    UnknownType,
    /// The payload does not deserialize into the job type.
    Payload {
        rust_type: &'static str,
        error: serde_json::Error,
    },
    /// The job needs a part the runner's state does not give.
    ContextMismatch {
        expected: &'static str,
        actual: &'static str,
    },
    /// A worker died (or lost its database session) while running the job;
    /// the text says which worker, as it signed the job.
    WorkerDied(String),
}

impl RunFailure {
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, RunFailure::Job(e) if e.is_permanent())
    }

    /// The text stored in `last_error`.
    pub(crate) fn describe(&self, job_type: &str, queue: &str) -> String {
        match self {
            RunFailure::Job(e) => e.report(),
            RunFailure::Panic(message) => format!("job panicked: {message}"),
            RunFailure::UnknownType => format!(
                "unknown job type `{job_type}`: no job registered under this name in this \
                 runner's binary (serving queue `{queue}`); deploy a worker that registers it, \
                 or discard the job"
            ),
            RunFailure::Payload { rust_type, error } => {
                format!("the stored payload does not deserialize into `{rust_type}`: {error}")
            }
            RunFailure::ContextMismatch { expected, actual } => format!(
                "job type `{job_type}` needs `{expected}`, which the state `{actual}` of the \
                 runner serving queue `{queue}` does not give; {}",
                crate::parts::how_to_give(expected, actual)
            ),
            RunFailure::WorkerDied(worker) => format!(
                "the worker running this job died ({worker}), or lost its database session, \
                 before the job ended"
            ),
        }
    }
}

fn run_erased<J: Job>(
    ctx: &(dyn Any + Send + Sync),
    payload: &str,
    conn: &mut JobConnection<'_>,
) -> Result<(), RunFailure> {
    let Some(ctx) = ctx.downcast_ref::<J::Context>() else {
        return Err(RunFailure::ContextMismatch {
            expected: std::any::type_name::<J::Context>(),
            actual: "another type",
        });
    };
    let job: J = serde_json::from_str(payload).map_err(|error| RunFailure::Payload {
        rust_type: std::any::type_name::<J>(),
        error,
    })?;
    job.run(ctx, conn).map_err(RunFailure::Job)
}

/// The registered job types, by stored type name.
#[derive(Debug)]
pub(crate) struct Registry {
    by_type: HashMap<&'static str, &'static JobDescriptor>,
    /// The type names, sorted: what this binary's runners claim.
    names: Vec<&'static str>,
}

impl Registry {
    /// Collects every job registered in this binary. Refuses duplicate and
    /// empty names.
    pub(crate) fn collect() -> Result<Self, RunnerError> {
        let mut by_type: HashMap<&'static str, &'static JobDescriptor> = HashMap::new();
        for descriptor in inventory::iter::<JobDescriptor> {
            for (name, what) in [
                (descriptor.job_type, "type name"),
                (descriptor.queue, "queue name"),
            ] {
                if name.is_empty() {
                    return Err(RunnerError::EmptyName {
                        rust_type: descriptor.rust_type(),
                        what,
                    });
                }
            }
            if let Some(first) = by_type.insert(descriptor.job_type, descriptor) {
                // Sort the pair so the message does not depend on link order.
                let mut pair = [first.rust_type(), descriptor.rust_type()];
                pair.sort_unstable();
                return Err(RunnerError::DuplicateJobType {
                    job_type: descriptor.job_type.to_owned(),
                    first: pair[0],
                    second: pair[1],
                });
            }
        }
        let mut names: Vec<&'static str> = by_type.keys().copied().collect();
        names.sort_unstable();
        Ok(Registry { by_type, names })
    }

    /// Every registered type name, sorted.
    pub(crate) fn type_names(&self) -> &[&'static str] {
        &self.names
    }

    pub(crate) fn get(&self, job_type: &str) -> Option<&'static JobDescriptor> {
        self.by_type.get(job_type).copied()
    }

    /// Every registered job.
    pub(crate) fn all(&self) -> impl Iterator<Item = &'static JobDescriptor> + '_ {
        self.by_type.values().copied()
    }

    /// The registered jobs whose own queue is `queue`.
    pub(crate) fn on_queue<'a>(
        &'a self,
        queue: &'a str,
    ) -> impl Iterator<Item = &'static JobDescriptor> + 'a {
        self.by_type
            .values()
            .copied()
            .filter(move |d| d.queue == queue)
    }
}
