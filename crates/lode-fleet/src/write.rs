//! Writes to the fleet: fills (all 5 stripes of a chunk after a miss), read
//! repair (the stripes a read found missing, malformed or corrupt), and the
//! late stripes of a read that finished with the first 4.
//!
//! Everything here runs in the background and is bounded: at most
//! [`MAX_FILLS`] writes at once and [`MAX_QUEUED_FILLS`] waiting (beyond that
//! dropped: a later miss retries them), one write per chunk at a time, and at
//! most [`MAX_LATE`] reads' outstanding stripe requests followed up at once.

use crate::backend::StripeBackend;
use crate::client::{key, placement, FleetMetrics};
use crate::error::{BackendError, StripeFailure};
use crate::lease::HeldLease;
use crate::members::{Members, NodeStats};
use crate::stripe;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use lode_chunk::ChunkName;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fills (stripe writes after a miss) running at once.
pub const MAX_FILLS: usize = 8;
/// Fills waiting for a slot; beyond this, new fills are dropped (a later miss
/// retries them), so a burst of misses never queues without bound.
pub const MAX_QUEUED_FILLS: usize = 512;
/// Reads whose outstanding stripe request is still followed after the chunk
/// was rebuilt from the first 4 (see [`Writer::follow_late`]); beyond this the
/// request is cancelled, as it would be without read repair.
pub const MAX_LATE: usize = 64;

/// One stripe GET's outcome.
pub(crate) struct StripeGot {
    /// Stripe index.
    pub j: usize,
    /// The counters of the node asked.
    pub stats: Arc<NodeStats>,
    r: Result<Result<Option<Bytes>, BackendError>, tokio::time::error::Elapsed>,
    took: Duration,
    /// Asked of the node that held the stripe before a membership change.
    pub handoff: bool,
}

/// GETs stripe `j` of `name` from `node` of generation `m`, bounded by `timeout`.
pub(crate) fn stripe_get(
    m: Arc<Members>,
    node: usize,
    name: &ChunkName,
    j: usize,
    timeout: Duration,
    handoff: bool,
) -> BoxFuture<'static, StripeGot> {
    let k = key(name, j);
    Box::pin(async move {
        let t = Instant::now();
        let r = tokio::time::timeout(timeout, m.backend.get(node, &k)).await;
        StripeGot {
            j,
            stats: m.stats[node].clone(),
            r,
            took: t.elapsed(),
            handoff,
        }
    })
}

/// The stripe GETs of one read, in flight.
pub(crate) type StripeGets = FuturesUnordered<BoxFuture<'static, StripeGot>>;

/// What a node's answer to a stripe GET says about the stripe.
pub(crate) enum Answer {
    /// A well-formed stripe with the index asked for.
    Stripe(Bytes),
    /// The node does not have it, or sent something malformed (counted):
    /// read repair rewrites it.
    Missing,
    /// The request failed or timed out (counted): the node may be down.
    Failed(StripeFailure),
}

/// Classifies one answer and updates the node's counters.
pub(crate) fn classify(got: StripeGot) -> (usize, Answer) {
    let StripeGot {
        j,
        stats: st,
        r,
        took,
        ..
    } = got;
    let a = match r {
        Ok(Ok(Some(b))) if stripe::header(&b).is_some_and(|(i, _)| i == j) => {
            st.latency.observe(took);
            Answer::Stripe(b)
        }
        Ok(Ok(Some(_))) => {
            st.malformed.fetch_add(1, Ordering::Relaxed);
            Answer::Missing
        }
        Ok(Ok(None)) => Answer::Missing,
        Ok(Err(e)) => {
            tracing::debug!(error = ?e, stripe = j, "stripe GET failed");
            st.errors.fetch_add(1, Ordering::Relaxed);
            Answer::Failed(e.into())
        }
        Err(_) => {
            tracing::debug!(stripe = j, after = ?took, "stripe GET timed out");
            st.errors.fetch_add(1, Ordering::Relaxed);
            Answer::Failed(StripeFailure::Timeout {
                stripe: j,
                after: took,
            })
        }
    };
    (j, a)
}

/// The fleet's background writer.
#[derive(Debug)]
pub(crate) struct Writer {
    slots: Arc<tokio::sync::Semaphore>,
    /// Writes queued or running (bounded by [`MAX_QUEUED_FILLS`]).
    queued: AtomicUsize,
    /// Chunks being written (one write per chunk at a time).
    filling: Mutex<HashSet<ChunkName>>,
    /// Late-stripe followers running (bounded by [`MAX_LATE`]).
    late: Arc<tokio::sync::Semaphore>,
    following: AtomicUsize,
    metrics: Arc<FleetMetrics>,
    timeout: Duration,
}

impl Writer {
    pub(crate) fn new(metrics: Arc<FleetMetrics>, timeout: Duration) -> Self {
        Writer {
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_FILLS)),
            queued: AtomicUsize::new(0),
            filling: Mutex::new(HashSet::new()),
            late: Arc::new(tokio::sync::Semaphore::new(MAX_LATE)),
            following: AtomicUsize::new(0),
            metrics,
            timeout,
        }
    }

    /// Whether nothing is queued, running or followed.
    pub(crate) fn idle(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0 && self.following.load(Ordering::SeqCst) == 0
    }

    /// After a read rebuilt chunk `name` from its first 4 stripes: lets the
    /// stripe requests still in flight (`gets`) finish in the background
    /// (each is bounded by the stripe timeout), and rewrites any stripe that
    /// comes back missing, malformed or different from the one the chunk
    /// encodes to. Without this, a node restarted empty would be refilled
    /// only when its "not found" happened to beat the 4th good stripe. At
    /// most [`MAX_LATE`] at once; beyond that the requests are cancelled.
    pub(crate) fn follow_late(
        self: &Arc<Self>,
        members: Arc<Members>,
        gets: StripeGets,
        name: ChunkName,
        ciphertext: Bytes,
    ) {
        if gets.is_empty() {
            return;
        }
        let Ok(permit) = self.late.clone().try_acquire_owned() else {
            self.metrics.late_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.following.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        let limit = self.timeout + Duration::from_millis(100);
        tokio::spawn(async move {
            let mut gets = gets;
            let mut redo = Vec::new();
            let mut want: Option<Vec<Vec<u8>>> = None;
            let _ = tokio::time::timeout(limit, async {
                while let Some(got) = gets.next().await {
                    let (stats, handoff) = (got.stats.clone(), got.handoff);
                    this.metrics.late_checked.fetch_add(1, Ordering::Relaxed);
                    match classify(got) {
                        (j, Answer::Stripe(b)) => {
                            let want = want.get_or_insert_with(|| stripe::encode(&ciphertext));
                            if b[..] != want[j][..] {
                                stats.corrupt.fetch_add(1, Ordering::Relaxed);
                                // A handoff node is not where the stripe lives now.
                                if !handoff {
                                    redo.push(j);
                                }
                            }
                        }
                        (j, Answer::Missing) if !handoff => redo.push(j),
                        _ => {}
                    }
                }
            })
            .await;
            if !redo.is_empty() {
                this.put_stripes(members.backend.clone(), name, ciphertext, Some(redo), None);
            }
            // After `put_stripes` queued its write: `idle` never sees a gap.
            this.following.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
    }

    /// Writes all stripes of a chunk (a fill, `only` = `None`) or some of them
    /// (a repair) to `backend`'s nodes. Bounded: at most [`MAX_FILLS`]
    /// running and [`MAX_QUEUED_FILLS`] waiting, beyond that dropped; one
    /// write per chunk at a time. A fill lease `held` is released once the
    /// stripes are stored (at once if the write is dropped).
    pub(crate) fn put_stripes(
        self: &Arc<Self>,
        backend: Arc<dyn StripeBackend>,
        name: ChunkName,
        ciphertext: Bytes,
        only: Option<Vec<usize>>,
        held: Option<HeldLease>,
    ) {
        let give_up = |held: Option<HeldLease>| {
            if let Some(h) = held {
                crate::lease::release(&name, h, self.timeout);
            }
        };
        if self.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED_FILLS {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.metrics.fills_dropped.fetch_add(1, Ordering::Relaxed);
            give_up(held);
            return;
        }
        if !self.filling().insert(name) {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            give_up(held);
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(permit) = this.slots.clone().acquire_owned().await else {
                return;
            };
            let timeout = this.timeout;
            let nodes = placement(backend.nodes(), &name);
            let stripes = stripe::encode(&ciphertext);
            let wanted = |j: &usize| only.as_ref().is_none_or(|w| w.contains(j));
            let puts = stripes
                .into_iter()
                .enumerate()
                .filter(|(j, _)| wanted(j))
                .map(|(j, s)| {
                    let backend = backend.clone();
                    let k = key(&name, j);
                    let node = nodes[j];
                    let n = (s.len() - stripe::HEADER) as u64;
                    async move {
                        let put = backend.put(node, &k, Bytes::from(s));
                        let ok = matches!(tokio::time::timeout(timeout * 4, put).await, Ok(Ok(())));
                        (ok, n)
                    }
                });
            let results = futures::future::join_all(puts).await;
            let m = &this.metrics;
            if only.is_some() {
                let ok = results.iter().filter(|(ok, _)| *ok).count() as u64;
                m.repairs.fetch_add(ok, Ordering::Relaxed);
            } else {
                let stored: u64 = results.iter().filter(|(ok, _)| *ok).map(|(_, n)| n).sum();
                m.fills.fetch_add(1, Ordering::Relaxed);
                m.stripe_bytes.fetch_add(stored, Ordering::Relaxed);
                m.chunk_bytes
                    .fetch_add(ciphertext.len() as u64, Ordering::Relaxed);
            }
            this.filling().remove(&name);
            // Inline, before the fill counts as done: a process that exits
            // after `settle` must not leave the waiters to the lease's TTL.
            if let Some(h) = held {
                crate::lease::release_now(&name, h, timeout).await;
            }
            this.queued.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
    }

    fn filling(&self) -> std::sync::MutexGuard<'_, HashSet<ChunkName>> {
        self.filling.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until [`Writer::idle`], at most `limit`.
    pub(crate) async fn settle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.idle() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
