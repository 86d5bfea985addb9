//! Counters of a running runner, rendered in the Prometheus text format.
//!
//! [`RunningRunner::metrics`](crate::RunningRunner::metrics) returns the
//! text for an application to serve from its own HTTP server;
//! [`RunnerBuilder::metrics_listener`](crate::RunnerBuilder::metrics_listener)
//! serves it at `/metrics` by itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use crate::state::lock;

/// Upper bounds of the job duration histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

/// Counts for one job type.
#[derive(Debug, Default, Clone)]
struct TypeCounts {
    completed: u64,
    failed: u64,
    retries: u64,
    dead: u64,
    /// Cumulative bucket counts, then the sum of seconds.
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

/// What the runner counts as it runs jobs.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    by_type: Mutex<BTreeMap<String, TypeCounts>>,
    /// Per queue: jobs completed and failed since the last
    /// [`Metrics::take_unreported`] (the dashboard's throughput table).
    unreported: Mutex<BTreeMap<String, (i64, i64)>>,
}

/// Jobs ended per queue, not yet added to the throughput table: the
/// queues, and completed and failed counts in the same order.
pub(crate) type Unreported = (Vec<String>, Vec<i64>, Vec<i64>);

/// A counter: name, help, and its value in a type's counts.
type Counter = (&'static str, &'static str, fn(&TypeCounts) -> u64);

/// A gauge measured at scrape time, one value per label value.
#[derive(Debug)]
pub(crate) struct Gauge {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) label: &'static str,
    pub(crate) values: Vec<(String, f64)>,
}

/// How a run ended, for the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended {
    Completed,
    Retried,
    Dead,
}

impl Metrics {
    pub(crate) fn record(&self, queue: &str, job_type: &str, ended: Ended, took: Duration) {
        {
            let mut unreported = lock(&self.unreported);
            let (completed, failed) = unreported.entry(queue.to_owned()).or_default();
            match ended {
                Ended::Completed => *completed += 1,
                Ended::Retried | Ended::Dead => *failed += 1,
            }
        }
        let mut by_type = lock(&self.by_type);
        let counts = by_type.entry(job_type.to_owned()).or_default();
        match ended {
            Ended::Completed => counts.completed += 1,
            Ended::Retried => {
                counts.failed += 1;
                counts.retries += 1;
            }
            Ended::Dead => {
                counts.failed += 1;
                counts.dead += 1;
            }
        }
        let seconds = took.as_secs_f64();
        for (bucket, bound) in counts.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        counts.count += 1;
        counts.sum_seconds += seconds;
    }

    /// What ended since the last call, to add to the throughput table.
    pub(crate) fn take_unreported(&self) -> Unreported {
        let taken = std::mem::take(&mut *lock(&self.unreported));
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (queue, (completed, failed)) in taken {
            out.0.push(queue);
            out.1.push(completed);
            out.2.push(failed);
        }
        out
    }

    /// Gives back counts that could not be stored, for the next report.
    pub(crate) fn restore_unreported(&self, (queues, completed, failed): Unreported) {
        let mut unreported = lock(&self.unreported);
        for ((queue, c), f) in queues.into_iter().zip(completed).zip(failed) {
            let counts = unreported.entry(queue).or_default();
            counts.0 += c;
            counts.1 += f;
        }
    }

    /// The Prometheus text: per-type counters and durations, then `gauges`.
    pub(crate) fn render(&self, gauges: &[Gauge]) -> String {
        let by_type = lock(&self.by_type).clone();
        let mut out = String::new();
        let counters: [Counter; 4] = [
            (
                "queue_jobs_completed_total",
                "Jobs that ran to success.",
                |c| c.completed,
            ),
            (
                "queue_jobs_failed_total",
                "Job runs that failed (errors, panics, and deaths of the worker running them).",
                |c| c.failed,
            ),
            (
                "queue_job_retries_total",
                "Failed runs that scheduled a retry.",
                |c| c.retries,
            ),
            (
                "queue_jobs_dead_total",
                "Failed runs that made the job dead.",
                |c| c.dead,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (job_type, counts) in &by_type {
                let _ = writeln!(
                    out,
                    "{name}{{job_type=\"{}\"}} {}",
                    escape(job_type),
                    value(counts)
                );
            }
        }
        let name = "queue_job_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} How long job runs took.\n# TYPE {name} histogram"
        );
        for (job_type, counts) in &by_type {
            let job_type = escape(job_type);
            for (bound, bucket) in BUCKETS.iter().zip(counts.buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{job_type=\"{job_type}\",le=\"{bound}\"}} {bucket}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{job_type=\"{job_type}\",le=\"+Inf\"}} {}",
                counts.count
            );
            let _ = writeln!(
                out,
                "{name}_sum{{job_type=\"{job_type}\"}} {}",
                counts.sum_seconds
            );
            let _ = writeln!(
                out,
                "{name}_count{{job_type=\"{job_type}\"}} {}",
                counts.count
            );
        }
        for gauge in gauges {
            let (name, label) = (gauge.name, gauge.label);
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} gauge", gauge.help);
            for (value_label, value) in &gauge.values {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {value}", escape(value_label));
            }
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `render()` at `/metrics` on `listener` until `stopped()`.
///
/// tiny_http reads each connection on a thread of its pool, so a client
/// that connects and says nothing, or drips its request, holds only its
/// own thread: other scrapes are answered meanwhile.
pub(crate) fn serve(
    listener: TcpListener,
    render: impl Fn() -> String,
    stopped: impl Fn() -> bool,
) {
    let server = match tiny_http::Server::from_listener(listener, None) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot serve metrics");
            return;
        }
    };
    while !stopped() {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, "the metrics server stopped");
                return;
            }
        };
        let is_metrics = request.method() == &tiny_http::Method::Get
            && request.url().split('?').next() == Some("/metrics");
        let response = if is_metrics {
            tiny_http::Response::from_string(render()).with_header(
                tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"text/plain; version=0.0.4"[..],
                )
                .expect("a valid header"),
            )
        } else {
            tiny_http::Response::from_string("").with_status_code(404)
        };
        let _ = request.respond(response);
    }
}
