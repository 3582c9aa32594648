//! Wrappers every remote tier or benchmark needs, each a [`ChunkTier`] over
//! a [`ChunkTier`]: [`Bounded`] (time limit, bounded retries), [`Delayed`]
//! (injected latency and bandwidth), [`Verified`] (bytes must hash to the
//! chunk's name).

use crate::{ChunkId, ChunkTier, TierError};
use bytes::Bytes;
use futures::future::BoxFuture;
use lode_chunk::ChunkName;
use std::time::Duration;

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
    forward_to_inner!();

    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move {
            let mut wait = self.backoff;
            let mut attempt = 0;
            loop {
                let r = match tokio::time::timeout(self.timeout, self.inner.fetch(id)).await {
                    Ok(r) => r,
                    Err(_) => Err(TierError::Timeout {
                        tier: self.inner.label(),
                        name: id.name,
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
    forward_to_inner!();

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
}

/// Checks every chunk a tier returns against its name (SHA-256 of the
/// ciphertext): bytes that do not match are [`TierError::Corrupt`], never
/// returned. The reader puts every remote tier behind it, so no tier
/// implementation needs to verify.
#[derive(Debug)]
pub struct Verified<T> {
    inner: T,
}

impl<T: ChunkTier> Verified<T> {
    /// Checks what `inner` returns.
    pub fn new(inner: T) -> Self {
        Verified { inner }
    }

    /// The tier checked.
    pub(crate) fn inner(&self) -> &T {
        &self.inner
    }

    /// `r`, the inner tier's answer for `id`, unless it is bytes that do
    /// not hash to `id`'s name.
    pub(crate) fn check(
        &self,
        id: &ChunkId,
        r: Result<Bytes, TierError>,
    ) -> Result<Bytes, TierError> {
        let ct = r?;
        if ChunkName::of(&ct) == id.name {
            Ok(ct)
        } else {
            tracing::warn!(tier = self.inner.label(), chunk = %id.name, "tier returned bytes that do not match the chunk name");
            Err(TierError::Corrupt {
                tier: self.inner.label(),
                name: id.name,
                len: ct.len(),
            })
        }
    }
}

impl<T: ChunkTier> ChunkTier for Verified<T> {
    forward_to_inner!();

    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move { self.check(id, self.inner.fetch(id).await) })
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
                    Err(TierError::failed(
                        "flaky",
                        id.name,
                        std::io::Error::other("boom"),
                    ))
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

    #[tokio::test]
    async fn verified_refuses_bytes_of_another_name() {
        // Flaky answers b"ok" for every id: right for the name of b"ok" only.
        let t = Verified::new(Flaky::default());
        let good = ChunkId {
            root: "r".into(),
            name: ChunkName::of(b"ok"),
        };
        assert_eq!(t.fetch(&good).await.unwrap(), Bytes::from_static(b"ok"));
        let r = t.fetch(&id()).await;
        assert!(
            matches!(
                r,
                Err(TierError::Corrupt {
                    tier: "flaky",
                    len: 2,
                    ..
                })
            ),
            "{r:?}"
        );
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
