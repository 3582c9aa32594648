//! Counters and latency histograms per tier, rendered as Prometheus text.

use lode_common::prom;
pub use lode_common::prom::{Histogram, BUCKETS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
            prom::sample(out, name, &l, prom::load(v));
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
