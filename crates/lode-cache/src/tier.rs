//! The tier trait: where a chunk's ciphertext comes from after the host cache.
//!
//! The store is one tier; the AZ cache fleet is another; wrappers add what
//! every remote tier needs (bounded time, bounded retries) or what benchmarks
//! need (injected latency), all behind the same small trait.

use bytes::Bytes;
use futures::future::BoxFuture;
use lode_chunk::ChunkName;
use lode_store::Store;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A chunk's address: its root (which store prefix) and its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChunkId {
    /// Root holding the chunk in the store.
    pub root: Arc<str>,
    /// SHA-256 of the ciphertext.
    pub name: ChunkName,
}

/// Why a tier did not return a chunk.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// The tier does not have it.
    #[error("{tier}: chunk {name} not found")]
    NotFound {
        /// Tier label.
        tier: &'static str,
        /// Chunk name.
        name: String,
    },
    /// No answer in time.
    #[error("{tier}: no answer for chunk {name} within {after:?}")]
    Timeout {
        /// Tier label.
        tier: &'static str,
        /// Chunk name.
        name: String,
        /// The time limit.
        after: Duration,
    },
    /// Any other failure.
    #[error("{tier}: chunk {name}: {reason}")]
    Failed {
        /// Tier label.
        tier: &'static str,
        /// Chunk name.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// A source of chunk ciphertext. Implementations need not verify: the reader
/// checks every chunk against its name.
pub trait ChunkTier: Send + Sync + fmt::Debug {
    /// Short label for metrics and errors (`store`, `fleet`).
    fn label(&self) -> &'static str;
    /// Fetches a chunk's ciphertext.
    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>>;
    /// Offers a chunk fetched from a lower tier (a cache tier stores it; the
    /// default ignores it). Must not block the read that fetched it.
    fn fill(&self, _id: &ChunkId, _ciphertext: Bytes) {}
    /// Says that a chunk this tier missed could not be fetched from any lower
    /// tier either, so no [`ChunkTier::fill`] will follow (a tier holding a
    /// fill lease for it releases it). The default ignores it.
    fn abandon(&self, _id: &ChunkId) {}
    /// Waits until the fills started so far have landed (bounded); call before
    /// a process exits. The default has nothing to wait for.
    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The chunk store as a tier.
#[derive(Debug, Clone)]
pub struct StoreTier {
    store: Store,
}

impl StoreTier {
    /// Wraps a store.
    pub fn new(store: Store) -> Self {
        StoreTier { store }
    }
}

impl ChunkTier for StoreTier {
    fn label(&self) -> &'static str {
        "store"
    }

    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move {
            self.store
                .get_chunk(&id.root, &id.name)
                .await
                .map_err(|e| match e {
                    lode_store::StoreError::Missing { .. } => TierError::NotFound {
                        tier: "store",
                        name: id.name.to_hex(),
                    },
                    other => TierError::Failed {
                        tier: "store",
                        name: id.name.to_hex(),
                        reason: other.to_string(),
                    },
                })
        })
    }
}

/// Bounds a tier in time: each attempt times out, failed attempts are retried
/// a bounded number of times with exponential backoff. A missing chunk is not
/// retried. The total time is at most about `attempts × timeout + backoffs`.
#[derive(Debug)]
pub struct Bounded<T> {
    inner: T,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl<T: ChunkTier> Bounded<T> {
    /// `timeout` per attempt, up to `retries` extra attempts, first backoff `backoff`.
    pub fn new(inner: T, timeout: Duration, retries: u32, backoff: Duration) -> Self {
        Bounded {
            inner,
            timeout,
            retries,
            backoff,
        }
    }
}

impl<T: ChunkTier> ChunkTier for Bounded<T> {
    fn label(&self) -> &'static str {
        self.inner.label()
    }

    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move {
            let mut wait = self.backoff;
            let mut attempt = 0;
            loop {
                let r = match tokio::time::timeout(self.timeout, self.inner.fetch(id)).await {
                    Ok(r) => r,
                    Err(_) => Err(TierError::Timeout {
                        tier: self.inner.label(),
                        name: id.name.to_hex(),
                        after: self.timeout,
                    }),
                };
                match r {
                    Ok(b) => return Ok(b),
                    Err(e @ TierError::NotFound { .. }) => return Err(e),
                    Err(e) if attempt >= self.retries => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "tier fetch failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                        attempt += 1;
                    }
                }
            }
        })
    }

    fn fill(&self, id: &ChunkId, ciphertext: Bytes) {
        self.inner.fill(id, ciphertext)
    }

    fn abandon(&self, id: &ChunkId) {
        self.inner.abandon(id)
    }

    fn settle(&self) -> BoxFuture<'_, ()> {
        self.inner.settle()
    }
}

/// Injects latency (per fetch) and a bandwidth cap shared by all fetches (one
/// link), to model a remote store in benchmarks and tests.
#[derive(Debug)]
pub struct Delayed<T> {
    inner: T,
    latency: Duration,
    bytes_per_sec: Option<u64>,
    // When the shared link is next free (std Mutex: never held across an await).
    link_free_at: std::sync::Mutex<tokio::time::Instant>,
}

impl<T: ChunkTier> Delayed<T> {
    /// Adds `latency` to every fetch and caps throughput at `bytes_per_sec`.
    pub fn new(inner: T, latency: Duration, bytes_per_sec: Option<u64>) -> Self {
        Delayed {
            inner,
            latency,
            bytes_per_sec,
            link_free_at: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }
}

impl<T: ChunkTier> ChunkTier for Delayed<T> {
    fn label(&self) -> &'static str {
        self.inner.label()
    }

    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move {
            tokio::time::sleep(self.latency).await;
            let b = self.inner.fetch(id).await?;
            if let Some(bps) = self.bytes_per_sec.filter(|&b| b > 0) {
                // Transfers queue on one link: each takes len/bps after the previous one.
                let done = {
                    let mut free = self.link_free_at.lock().unwrap_or_else(|p| p.into_inner());
                    let start = (*free).max(tokio::time::Instant::now());
                    *free = start + Duration::from_secs_f64(b.len() as f64 / bps as f64);
                    *free
                };
                tokio::time::sleep_until(done).await;
            }
            Ok(b)
        })
    }

    fn fill(&self, id: &ChunkId, ciphertext: Bytes) {
        self.inner.fill(id, ciphertext)
    }

    fn abandon(&self, id: &ChunkId) {
        self.inner.abandon(id)
    }

    fn settle(&self) -> BoxFuture<'_, ()> {
        self.inner.settle()
    }
}

impl<T: ChunkTier + ?Sized> ChunkTier for Arc<T> {
    fn label(&self) -> &'static str {
        (**self).label()
    }
    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        (**self).fetch(id)
    }
    fn fill(&self, id: &ChunkId, ciphertext: Bytes) {
        (**self).fill(id, ciphertext)
    }
    fn abandon(&self, id: &ChunkId) {
        (**self).abandon(id)
    }
    fn settle(&self) -> BoxFuture<'_, ()> {
        (**self).settle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, Default)]
    struct Flaky {
        calls: AtomicU32,
        fail_first: u32,
        hang: bool,
    }

    impl ChunkTier for Flaky {
        fn label(&self) -> &'static str {
            "flaky"
        }
        fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if self.hang {
                    futures::future::pending::<()>().await;
                }
                if n < self.fail_first {
                    Err(TierError::Failed {
                        tier: "flaky",
                        name: id.name.to_hex(),
                        reason: "boom".into(),
                    })
                } else {
                    Ok(Bytes::from_static(b"ok"))
                }
            })
        }
    }

    fn id() -> ChunkId {
        ChunkId {
            root: "r".into(),
            name: ChunkName([0; 32]),
        }
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let t = Bounded::new(
            Flaky {
                fail_first: 2,
                ..Default::default()
            },
            Duration::from_secs(1),
            3,
            Duration::from_millis(1),
        );
        assert!(t.fetch(&id()).await.is_ok());
        let t = Bounded::new(
            Flaky {
                fail_first: 100,
                ..Default::default()
            },
            Duration::from_secs(1),
            2,
            Duration::from_millis(1),
        );
        assert!(t.fetch(&id()).await.is_err());
        assert_eq!(t.inner.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_tier_times_out() {
        let t = Bounded::new(
            Flaky {
                hang: true,
                ..Default::default()
            },
            Duration::from_millis(500),
            1,
            Duration::from_millis(10),
        );
        let r = t.fetch(&id()).await;
        assert!(matches!(r, Err(TierError::Timeout { .. })));
    }
}
