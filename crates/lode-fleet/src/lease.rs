//! Fill coordination: after a fleet miss, one host per chunk fetches it from
//! the store and fills the fleet; the others wait for that fill.
//!
//! The lease lives on the first node of the chunk's placement that answers
//! (the one holding stripe 0 while it is up), so every host asks the same
//! node. On lode nodes it is `POST /l/<key>` ([`crate::node::lease`]); on
//! memcached, the meta protocol's vivify-on-miss lease (`mg KEY N<ttl> c`:
//! `W` won, `Z` lost). The winner re-reads the fleet once (a fill may have
//! landed between its miss and its lease), then goes to the store; its fill
//! releases the lease after the 5 stripes are stored. A loser waits for the
//! lease to end, re-reads the fleet, and if the chunk is still missing (the
//! holder failed or died) competes for the lease again, until
//! [`LeaseConfig::wait`] is spent: then it goes to the store itself. A
//! holder that dies stalls the others at most the lease's TTL; a node that
//! does not answer makes its chunks fall back to uncoordinated fills.

use crate::backend::{Lease, StripeBackend};
use crate::client::{placement, FleetTier};
use bytes::Bytes;
use lode_chunk::ChunkName;
use lode_tier::ChunkId;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How hosts coordinate the fill of a chunk missing from the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease holds without being released: what a dead holder
    /// costs the hosts waiting for it.
    pub ttl: Duration,
    /// Longest a host waits for other hosts' fills of one chunk before it
    /// fetches the chunk from the store itself.
    pub wait: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(2),
            wait: Duration::from_secs(3),
        }
    }
}

/// A lease this host won and has not released yet.
#[derive(Clone, Debug)]
pub(crate) struct HeldLease {
    /// The membership generation the lease was won in.
    backend: Arc<dyn StripeBackend>,
    node: usize,
    token: u64,
    at: Instant,
}

/// The leases this host holds, by chunk (std Mutex: map operations only).
#[derive(Debug, Default)]
pub(crate) struct HeldLeases(Mutex<HashMap<ChunkName, HeldLease>>);

impl HeldLeases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkName, HeldLease>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a won lease; forgets those older than `ttl` (their reads were
    /// cancelled before a fill: the node has expired them already).
    fn insert(&self, name: ChunkName, held: HeldLease, ttl: Duration) {
        let mut map = self.map();
        map.retain(|_, h| h.at.elapsed() < ttl);
        map.insert(name, held);
    }

    /// Takes the lease held on `name`, if any.
    pub(crate) fn take(&self, name: &ChunkName) -> Option<HeldLease> {
        self.map().remove(name)
    }
}

/// The key of a chunk's fill lease.
fn lease_key(name: &ChunkName) -> String {
    format!("{}.l", name.to_hex())
}

/// Releases `held` in the background (bounded by `timeout`).
pub(crate) fn release(name: &ChunkName, held: HeldLease, timeout: Duration) {
    let name = *name;
    tokio::spawn(async move { release_now(&name, held, timeout).await });
}

/// Releases `held` (bounded by `timeout`); a failure is harmless: the lease
/// expires by itself.
pub(crate) async fn release_now(name: &ChunkName, held: HeldLease, timeout: Duration) {
    let key = lease_key(name);
    let r = tokio::time::timeout(timeout, held.backend.release(held.node, &key, held.token)).await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::debug!(key, "fill lease release failed; it expires by itself");
    }
}

/// Outcome of one round of asking for the lease.
enum Asked {
    Won(usize, u64),
    Held(usize),
    NoNode,
}

impl FleetTier {
    /// Asks the chunk's nodes, in placement order, for its lease; the first
    /// one that answers decides. Each request may take the stripe timeout or
    /// what is left of the wait, whichever is longer (a busy node is still
    /// cheaper to wait for than the store; a dead one refuses at once).
    async fn ask(
        &self,
        backend: &Arc<dyn StripeBackend>,
        key: &str,
        nodes: &[usize],
        ttl: Duration,
        deadline: Instant,
    ) -> Asked {
        for &n in nodes {
            let limit = self
                .timeout
                .max(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(limit, backend.lease(n, key, ttl)).await {
                Ok(Ok(Lease::Won(t))) => return Asked::Won(n, t),
                Ok(Ok(Lease::Held)) => return Asked::Held(n),
                _ => {
                    self.metrics.lease_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Asked::NoNode
    }

    /// After a fleet miss: waits for another host's fill (bounded), or wins
    /// the lease and returns `None` so the caller fetches from the store and
    /// fills (which releases it). `None` also when the wait is spent.
    pub(crate) async fn coordinate(&self, id: &ChunkId, cfg: &LeaseConfig) -> Option<Bytes> {
        let key = lease_key(&id.name);
        let backend = self.members().backend.clone();
        let mut nodes: Vec<usize> = Vec::new();
        for n in placement(backend.nodes(), &id.name) {
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
        let deadline = Instant::now() + cfg.wait;
        let mut waited = false;
        loop {
            match self.ask(&backend, &key, &nodes, cfg.ttl, deadline).await {
                Asked::NoNode => return None,
                Asked::Won(node, token) => {
                    let held = HeldLease {
                        backend: backend.clone(),
                        node,
                        token,
                        at: Instant::now(),
                    };
                    // A fill may have landed between the miss and the lease.
                    if let Ok(b) = self.read(id).await {
                        release(&id.name, held, self.timeout);
                        self.metrics.lease_rechecks.fetch_add(1, Ordering::Relaxed);
                        return Some(b);
                    }
                    self.metrics.leases_won.fetch_add(1, Ordering::Relaxed);
                    self.held.insert(id.name, held, cfg.ttl);
                    return None;
                }
                Asked::Held(node) => {
                    if !waited {
                        waited = true;
                        self.metrics.lease_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.metrics.lease_timeouts.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    let ended = tokio::time::timeout(
                        left + self.timeout,
                        backend.lease_wait(node, &key, left),
                    )
                    .await;
                    if !matches!(ended, Ok(Ok(_))) {
                        self.metrics.lease_errors.fetch_add(1, Ordering::Relaxed);
                        // Do not spin on a node that fails fast.
                        tokio::time::sleep(Duration::from_millis(10).min(left)).await;
                    }
                    if let Ok(b) = self.read(id).await {
                        self.metrics.lease_served.fetch_add(1, Ordering::Relaxed);
                        return Some(b);
                    }
                    // Still missing: the holder failed or died; compete again.
                }
            }
        }
    }
}
