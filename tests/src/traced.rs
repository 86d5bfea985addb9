//! Jobs whose runs the OpenTelemetry test traces, run by the `trace-worker`
//! binary in a process of their own.

use skiplock::PerformError;

/// The queue of the traced jobs.
pub const QUEUE: &str = "traced";

/// Succeeds.
#[skiplock::background_job(queue = "traced")]
pub fn traced_ok(n: u32) -> Result<(), PerformError> {
    tracing::info!(n, "traced job ran");
    Ok(())
}

/// Fails for good, with `reason` as its error.
#[skiplock::background_job(queue = "traced")]
pub fn traced_fail(reason: String) -> Result<(), PerformError> {
    Err(PerformError::permanent(reason))
}
