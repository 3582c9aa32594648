//! Prometheus text exposition (format 0.0.4), written in one place: every
//! lode service's `/metrics` is built from these functions.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The kind a metric is declared as in its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets, sum and count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The `# HELP` and `# TYPE` lines of metric `name`.
pub fn describe(out: &mut String, name: &str, kind: Kind, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.name());
}

/// One sample: `name{labels} value`, or `name value` when `labels` is
/// empty (`labels` is the text between the braces, e.g. `tier="disk"`).
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// A described metric with one unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: Kind, help: &str, value: impl Display) {
    describe(out, name, kind, help);
    sample(out, name, "", value);
}

/// The value of a counter cell.
pub fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Histogram bucket upper bounds, seconds.
pub const BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// A latency histogram (cumulative buckets when rendered).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(load).sum()
    }

    /// Renders `name_bucket{labels,le=...}`, `name_sum` and `name_count`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += load(&self.counts[i]);
            sample(
                out,
                &format!("{name}_bucket"),
                &format!("{labels}{sep}le=\"{b}\""),
                cum,
            );
        }
        cum += load(&self.counts[BUCKETS.len()]);
        sample(
            out,
            &format!("{name}_bucket"),
            &format!("{labels}{sep}le=\"+Inf\""),
            cum,
        );
        sample(
            out,
            &format!("{name}_sum"),
            labels,
            load(&self.sum_ns) as f64 / 1e9,
        );
        sample(out, &format!("{name}_count"), labels, cum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text() {
        let mut out = String::new();
        single(&mut out, "x_total", Kind::Counter, "Xs.", 3);
        sample(&mut out, "y", "a=\"b\"", 1.5);
        assert_eq!(
            out,
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total 3\ny{a=\"b\"} 1.5\n"
        );
    }

    #[test]
    fn renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "t", "tier=\"x\"");
        assert!(out.contains("t_bucket{tier=\"x\",le=\"0.00005\"} 1"));
        assert!(out.contains("t_bucket{tier=\"x\",le=\"0.005\"} 2"));
        assert!(out.contains("t_bucket{tier=\"x\",le=\"+Inf\"} 3"));
        assert!(out.contains("t_count{tier=\"x\"} 3"));
        let mut bare = String::new();
        h.render(&mut bare, "u", "");
        assert!(bare.contains("u_bucket{le=\"+Inf\"} 3\n") && bare.contains("u_count 3\n"));
    }
}
