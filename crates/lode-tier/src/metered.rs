//! What each tier did: counters and a latency histogram per tier
//! ([`TierMetrics`], Prometheus text through `lode_common::prom`), kept by
//! the [`Metered`] wrapper of a remote tier and by the reader for its memory
//! and disk caches.

use crate::{ChunkId, ChunkTier, TierError, Verified};
use bytes::Bytes;
use futures::future::BoxFuture;
use lode_common::prom;
use lode_common::prom::Histogram;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

    /// Records a failure.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the outcome of one fetch that took `d`: a hit; a miss
    /// ([`TierError::NotFound`]); a miss and a failure (timeout, failure);
    /// a failure alone (corrupt bytes: the tier answered, wrongly).
    pub fn record(&self, r: &Result<Bytes, TierError>, d: Duration) {
        match r {
            Ok(b) => self.hit(b.len(), d),
            Err(TierError::NotFound { .. }) => self.miss(),
            Err(TierError::Corrupt { .. }) => self.error(),
            Err(_) => {
                self.miss();
                self.error();
            }
        }
    }

    /// Chunks served and their bytes so far.
    pub fn served(&self) -> (u64, u64) {
        (prom::load(&self.hits), prom::load(&self.bytes))
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

/// Keeps [`TierMetrics`] of a tier: every fetch is timed and counted
/// ([`TierMetrics::record`]). The metrics belong to the tier they measure,
/// not to a position in a list of tiers.
#[derive(Debug)]
pub struct Metered<T> {
    inner: T,
    metrics: TierMetrics,
}

impl<T: ChunkTier> Metered<T> {
    /// Counts what `inner` does.
    pub fn new(inner: T) -> Self {
        Metered {
            inner,
            metrics: TierMetrics::default(),
        }
    }

    /// The counters so far.
    pub fn metrics(&self) -> &TierMetrics {
        &self.metrics
    }

    /// Renders the counters with label `tier="<label>"`.
    pub fn render(&self, out: &mut String) {
        self.metrics.render(out, self.inner.label());
    }

    /// `fetch`, timed and counted.
    async fn timed(
        &self,
        fetch: impl Future<Output = Result<Bytes, TierError>>,
    ) -> Result<Bytes, TierError> {
        let t = Instant::now();
        let r = fetch.await;
        self.metrics.record(&r, t.elapsed());
        r
    }
}

impl<T: ChunkTier> Metered<Verified<T>> {
    /// The reader's fetch: [`ChunkTier::fetch`] of `Metered(Verified(tier))`
    /// without boxing the wrappers' futures, so a fetch costs the one
    /// allocation of the tier's own future, as it did without them.
    pub async fn fetch_verified(&self, id: &ChunkId) -> Result<Bytes, TierError> {
        let v = &self.inner;
        self.timed(async move { v.check(id, v.inner().fetch(id).await) })
            .await
    }
}

impl<T: ChunkTier> ChunkTier for Metered<T> {
    forward_to_inner!();

    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(self.timed(self.inner.fetch(id)))
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

    #[derive(Debug)]
    struct Answers;

    impl ChunkTier for Answers {
        fn label(&self) -> &'static str {
            "fleet"
        }
        fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
            Box::pin(async move {
                match id.name.0[0] {
                    0 => Ok(Bytes::from_static(b"abc")),
                    1 => Err(TierError::NotFound {
                        tier: "fleet",
                        name: id.name,
                    }),
                    2 => Err(TierError::Corrupt {
                        tier: "fleet",
                        name: id.name,
                        len: 3,
                    }),
                    _ => Err(TierError::failed(
                        "fleet",
                        id.name,
                        std::io::Error::other("x"),
                    )),
                }
            })
        }
    }

    #[tokio::test]
    async fn metered_counts_each_outcome() {
        let t = Metered::new(Answers);
        for b in [0u8, 0, 1, 2, 3] {
            let id = ChunkId {
                root: "r".into(),
                name: lode_chunk::ChunkName([b; 32]),
            };
            let _ = t.fetch(&id).await;
        }
        let mut s = String::new();
        t.render(&mut s);
        for want in [
            "lode_tier_hits_total{tier=\"fleet\"} 2",
            "lode_tier_bytes_total{tier=\"fleet\"} 6",
            "lode_tier_misses_total{tier=\"fleet\"} 2",
            "lode_tier_errors_total{tier=\"fleet\"} 2",
            "lode_tier_read_seconds_count{tier=\"fleet\"} 2",
        ] {
            assert!(s.contains(want), "{want} not in {s}");
        }
        assert_eq!(t.metrics().served(), (2, 6));
    }

    #[tokio::test]
    async fn the_readers_unboxed_fetch_checks_and_counts_alike() {
        // Answers returns b"abc" for names starting with 0: not their bytes.
        let t = Metered::new(Verified::new(Answers));
        let wrong = ChunkId {
            root: "r".into(),
            name: lode_chunk::ChunkName([0; 32]),
        };
        let boxed = t.fetch(&wrong).await;
        let unboxed = t.fetch_verified(&wrong).await;
        for r in [boxed, unboxed] {
            assert!(matches!(r, Err(TierError::Corrupt { len: 3, .. })), "{r:?}");
        }
        assert_eq!(prom::load(&t.metrics().errors), 2);
        assert_eq!(t.metrics().served(), (0, 0));
    }
}
