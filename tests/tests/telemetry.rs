//! OpenTelemetry across the queue (feature `opentelemetry`): a job enqueued
//! inside a span in this process runs in another (`trace-worker`) as a span
//! of the same trace, child of and linked to the enqueuing span, with the
//! job's attempt, queue and type as attributes, and a failure's status.

use std::process::Command;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::Value;
use skiplock::Job;
use skiplock_tests::traced::{traced_fail, traced_ok, TracedFailJob, TracedOkJob};
use skiplock_tests::TestDb;
use tracing_subscriber::layer::SubscriberExt;

/// The `traceparent` stored with job `id`.
fn stored_traceparent(db: &TestDb, id: i64) -> Option<String> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        traceparent: Option<String>,
    }
    diesel::sql_query("SELECT traceparent FROM queue_jobs WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(id)
        .get_result::<Row>(&mut db.conn())
        .unwrap()
        .traceparent
}

#[test]
fn a_job_run_in_another_process_continues_the_trace_of_the_span_that_enqueued_it() {
    let db = TestDb::create();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("app")));
    let mut conn = db.conn();
    let (ok, failing, batch) = tracing::subscriber::with_default(subscriber, || {
        let signup = tracing::info_span!("signup");
        let _entered = signup.enter();
        let ok = traced_ok(1).enqueue(&mut conn).unwrap().id().unwrap();
        let failing = traced_fail("the mail server refused the address".into())
            .enqueue(&mut conn)
            .unwrap()
            .id()
            .unwrap();
        let mut batch = skiplock::JobBatch::new();
        batch.push(&traced_ok(2)).unwrap();
        let batch = batch.enqueue(&mut conn).unwrap();
        (ok, failing, batch[0].id().unwrap())
    });
    // Enqueued outside any span: nothing stored, a trace of its own.
    let untraced = traced_ok(3).enqueue(&mut conn).unwrap().id().unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let signup = spans.iter().find(|s| s.name == "signup").unwrap();
    let (trace_id, span_id) = (
        signup.span_context.trace_id().to_string(),
        signup.span_context.span_id().to_string(),
    );
    for id in [ok.0, failing.0, batch.0] {
        assert_eq!(
            stored_traceparent(&db, id),
            Some(format!("00-{trace_id}-{span_id}-01")),
            "job {id}: the W3C trace context of the enqueuing span"
        );
    }
    assert_eq!(stored_traceparent(&db, untraced.0), None);

    let output = Command::new(env!("CARGO_BIN_EXE_trace-worker"))
        .arg(db.url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let runs: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|span| span["name"] == "job")
        .collect();
    let run = |id: i64| {
        runs.iter()
            .find(|span| span["attributes"]["id"].as_str() == Some(&*id.to_string()))
            .unwrap_or_else(|| panic!("no run of job {id}: {runs:#?}"))
    };
    for id in [ok.0, failing.0, batch.0] {
        let span = run(id);
        assert_eq!(span["trace_id"], trace_id.as_str(), "{span}");
        assert_eq!(span["parent_span_id"], span_id.as_str(), "{span}");
        assert_eq!(
            span["links"],
            serde_json::json!([{"trace_id": trace_id, "span_id": span_id}]),
            "{span}"
        );
        assert_eq!(span["attributes"]["queue"], "traced", "{span}");
        assert_eq!(span["attributes"]["attempt"], "1", "{span}");
    }
    assert_eq!(run(ok.0)["attributes"]["job_type"], TracedOkJob::JOB_TYPE);
    assert_eq!(run(ok.0)["status"], "unset");
    let failed = run(failing.0);
    assert_eq!(failed["attributes"]["job_type"], TracedFailJob::JOB_TYPE);
    let status = failed["status"].as_str().unwrap();
    assert!(
        status.starts_with("error: ") && status.contains("the mail server refused the address"),
        "{status}"
    );
    let alone = run(untraced.0);
    assert_ne!(alone["trace_id"], trace_id.as_str());
    assert_eq!(alone["parent_span_id"], "0000000000000000");
    assert_eq!(alone["links"], serde_json::json!([]));
}
