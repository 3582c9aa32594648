//! Counters and latency histograms per tier, rendered as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Renders `name{labels,le=...}` lines.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {cum}");
    }
}

/// What one tier did.
#[derive(Debug, Default)]
pub struct TierMetrics {
    /// Chunks served from this tier.
    pub hits: AtomicU64,
    /// Lookups this tier could not serve.
    pub misses: AtomicU64,
    /// Bytes served from this tier.
    pub bytes: AtomicU64,
    /// Failures (errors, timeouts, corrupt data).
    pub errors: AtomicU64,
    /// Latency of lookups that hit.
    pub latency: Histogram,
}

impl TierMetrics {
    /// Records a hit of `bytes` taking `d`.
    pub fn hit(&self, bytes: usize, d: Duration) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.latency.observe(d);
    }

    /// Records a miss.
    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders this tier's series with label `tier="<tier>"`.
    pub fn render(&self, out: &mut String, tier: &str) {
        let l = format!("tier=\"{tier}\"");
        for (name, v) in [
            ("lode_tier_hits_total", &self.hits),
            ("lode_tier_misses_total", &self.misses),
            ("lode_tier_bytes_total", &self.bytes),
            ("lode_tier_errors_total", &self.errors),
        ] {
            let _ = writeln!(out, "{name}{{{l}}} {}", v.load(Ordering::Relaxed));
        }
        self.latency.render(out, "lode_tier_read_seconds", &l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let m = TierMetrics::default();
        m.hit(10, Duration::from_micros(80));
        m.hit(10, Duration::from_secs(9));
        let mut s = String::new();
        m.render(&mut s, "memory");
        assert!(s.contains("lode_tier_hits_total{tier=\"memory\"} 2"));
        assert!(s.contains("lode_tier_read_seconds_bucket{tier=\"memory\",le=\"0.0001\"} 1"));
        assert!(s.contains("lode_tier_read_seconds_bucket{tier=\"memory\",le=\"+Inf\"} 2"));
    }
}
