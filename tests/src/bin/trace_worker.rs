//! A worker process for the OpenTelemetry test: `trace-worker DATABASE_URL`.
//! Traces with `tracing-opentelemetry` into the SDK's in-memory exporter,
//! runs every ready job of the `traced` queue, then prints each finished
//! span as a line of JSON (ids in hex, attributes as text, the status).

use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: trace-worker DATABASE_URL");
        std::process::exit(2);
    };
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("trace-worker")));
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber");

    let runner = skiplock::Runner::builder(())
        .database_url(url.as_str())
        .queue(skiplock_tests::traced::QUEUE, 1)
        .build()
        .expect("runner");
    runner.run_pending().expect("run the traced jobs");
    drop(runner);
    provider.force_flush().expect("flush");
    for span in exporter.get_finished_spans().expect("spans") {
        let line = serde_json::json!({
            "name": span.name,
            "trace_id": span.span_context.trace_id().to_string(),
            "span_id": span.span_context.span_id().to_string(),
            "parent_span_id": span.parent_span_id.to_string(),
            "links": span.links.iter().map(|link| serde_json::json!({
                "trace_id": link.span_context.trace_id().to_string(),
                "span_id": link.span_context.span_id().to_string(),
            })).collect::<Vec<_>>(),
            "attributes": span.attributes.iter()
                .map(|kv| (kv.key.to_string(), serde_json::Value::String(kv.value.to_string())))
                .collect::<serde_json::Map<_, _>>(),
            "status": match &span.status {
                Status::Unset => "unset".to_owned(),
                Status::Ok => "ok".to_owned(),
                Status::Error { description } => format!("error: {description}"),
            },
        });
        println!("{line}");
    }
}
