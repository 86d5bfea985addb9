//! Traces across the queue (feature `opentelemetry`): the W3C trace
//! context (`traceparent`) of the span current when a job is enqueued is
//! stored with the job, and the span of each of its runs continues that
//! trace, as a child of the enqueuing span and linked to it.
//!
//! The application installs `tracing-opentelemetry`'s layer with the
//! tracer of its choice (OTLP, say); without that layer, or without the
//! feature, no context is stored and runs are spans of their own.

use tracing::Span;

/// The W3C `traceparent` of the span current now, if it belongs to an
/// OpenTelemetry trace.
#[cfg(feature = "opentelemetry")]
pub(crate) fn current_traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let context = Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Without the feature: none.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn current_traceparent() -> Option<String> {
    None
}

/// Makes `run` (a job's span, not yet entered) continue the trace of the
/// span that enqueued the job: its child, linked to it. A malformed
/// context (the column is the application's to write) is ignored.
#[cfg(feature = "opentelemetry")]
pub(crate) fn continue_trace(run: &Span, traceparent: Option<&str>) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    let enqueued = parent.span().span_context().clone();
    if !enqueued.is_valid() {
        return;
    }
    // Neither fails but without the layer installed, where there is no
    // trace to continue.
    let _ = run.set_parent(parent);
    run.add_link(enqueued);
}

/// Without the feature: nothing to continue.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn continue_trace(_run: &Span, _traceparent: Option<&str>) {}

/// Marks a job's span as failed, with the failure's text (what the job's
/// record keeps as its last error).
#[cfg(feature = "opentelemetry")]
pub(crate) fn mark_failed(run: &Span, error: impl FnOnce() -> String) {
    run.record("otel.status_code", "ERROR");
    run.record("otel.status_description", error());
}

/// Without the feature: the span has no status (the failure is logged).
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn mark_failed(_run: &Span, _error: impl FnOnce() -> String) {}
