//! The throughput chart: an SVG drawn on the server.

use maud::{html, Markup};

use crate::admin::MinuteCounts;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 140.0;
const AXIS: f64 = 18.0;

/// One bar per minute, oldest on the left: completed jobs stacked on
/// failed attempts, scaled to the busiest minute.
pub(crate) fn throughput(minutes: &[MinuteCounts]) -> Markup {
    let peak = minutes
        .iter()
        .map(|m| m.completed + m.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = WIDTH / minutes.len().max(1) as f64;
    let plot = HEIGHT - AXIS;
    let scale = |n: i64| n as f64 / peak * plot;
    html! {
        svg #throughput xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
            role="img" aria-label="jobs ended per minute over the last hour" {
            line x1="0" y1=(plot) x2=(WIDTH) y2=(plot) class="axis" {}
            @for (i, m) in minutes.iter().enumerate() {
                @let x = i as f64 * slot + 1.0;
                @let done = scale(m.completed);
                @let failed = scale(m.failed);
                g {
                    title { (m.minutes_ago) " min ago: " (m.completed) " completed, " (m.failed) " failed" }
                    rect class="completed" x=(x) y=(plot - done) width=(slot - 2.0) height=(done) {}
                    rect class="failed" x=(x) y=(plot - done - failed) width=(slot - 2.0) height=(failed) {}
                }
            }
            text x="0" y=(HEIGHT - 4.0) { "60 min ago" }
            text x=(WIDTH) y=(HEIGHT - 4.0) text-anchor="end" { "now" }
            text x="4" y="12" { "peak " (peak as i64) "/min" }
        }
    }
}
