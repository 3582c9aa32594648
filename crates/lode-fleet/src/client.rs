//! The fleet as a chunk tier: 5 stripes on 5 nodes, first 4 answers win.

use crate::backend::StripeBackend;
use crate::lease::{HeldLease, HeldLeases, LeaseConfig};
use crate::members::{Change, Members, Membership, Rebuild};
use crate::stripe;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use lode_cache::{ChunkId, ChunkTier, TierError};
use lode_chunk::ChunkName;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fills (stripe writes after a miss) running at once.
pub const MAX_FILLS: usize = 8;
/// Fills waiting for a slot; beyond this, new fills are dropped (a later miss
/// retries them), so a burst of misses never queues without bound.
pub const MAX_QUEUED_FILLS: usize = 512;

/// The nodes holding stripes 0..5 of `name`: rendezvous (highest random
/// weight) hashing per stripe. Each node gets a weight per (chunk, stripe);
/// stripe 0 goes to the heaviest node, stripe 1 to the heaviest of the
/// others, and so on. Adding or removing one of N nodes moves about 1/N of
/// all stripes (a stripe moves when the new node outweighs its holder, or its
/// holder left), unlike ranking the nodes once and giving stripe j the j-th,
/// where a newcomer ranked first shifts all 5. With fewer than 5 nodes the
/// choice wraps and some node holds two stripes: then losing that node loses
/// two stripes, and reads fall back to the store.
pub fn placement(nodes: &[String], name: &ChunkName) -> [usize; stripe::TOTAL] {
    let base: Vec<u64> = nodes
        .iter()
        .map(|n| {
            let mut h = Sha256::new();
            h.update(n.as_bytes());
            h.update(name.0);
            let d = h.finalize();
            u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
        })
        .collect();
    let weight =
        |i: usize, j: usize| mix(base[i].wrapping_add((j as u64 + 1).wrapping_mul(GOLDEN)));
    // Heaviest (node, stripe) pairs first; each stripe takes the first free
    // node it pairs with. Fewer than 5 nodes: rounds, each node once a round.
    let mut out = [usize::MAX; stripe::TOTAL];
    while out.contains(&usize::MAX) && !nodes.is_empty() {
        let mut pairs: Vec<(u64, usize, usize)> = (0..nodes.len())
            .flat_map(|i| {
                (0..stripe::TOTAL)
                    .filter(|&j| out[j] == usize::MAX)
                    .map(move |j| (i, j))
            })
            .map(|(i, j)| (weight(i, j), i, j))
            .collect();
        pairs.sort_unstable_by(|a, b| b.cmp(a));
        let mut used = vec![false; nodes.len()];
        for (_, i, j) in pairs {
            if out[j] == usize::MAX && !used[i] {
                out[j] = i;
                used[i] = true;
            }
        }
    }
    out.map(|i| if i == usize::MAX { 0 } else { i })
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finalizer: a node's per-stripe weight from its per-chunk hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key(name: &ChunkName, j: usize) -> String {
    format!("{}.{j}", name.to_hex())
}

/// Fleet-wide and per-node counters.
#[derive(Debug, Default)]
pub struct FleetMetrics {
    /// Reads completed by the first 4 stripes.
    pub first4: AtomicU64,
    /// Reads that needed the 5th stripe (a bad stripe among the first 4).
    pub needed_fifth: AtomicU64,
    /// Reads that rebuilt a data stripe from parity.
    pub reconstructions: AtomicU64,
    /// Stripe sets that failed the chunk-name check.
    pub corrupt: AtomicU64,
    /// Reads the fleet could not serve (the reader falls back to the store).
    pub fallbacks: AtomicU64,
    /// Chunks written to the fleet after a miss.
    pub fills: AtomicU64,
    /// Fills skipped because too many were running.
    pub fills_dropped: AtomicU64,
    /// Stripes rewritten by read repair: a node answered "not found" or sent
    /// a malformed or corrupt stripe for a chunk the others could rebuild.
    pub repairs: AtomicU64,
    /// Stripe bytes written (headers excluded).
    pub stripe_bytes: AtomicU64,
    /// Chunk bytes those stripes encode.
    pub chunk_bytes: AtomicU64,
    /// Fill leases won: this host fetched the chunk from the store for the fleet.
    pub leases_won: AtomicU64,
    /// Misses that found another host filling the chunk and waited.
    pub lease_waits: AtomicU64,
    /// Waits that ended with the chunk in the fleet (a store GET saved).
    pub lease_served: AtomicU64,
    /// Waits that ran out of time (the host then went to the store).
    pub lease_timeouts: AtomicU64,
    /// Leases won after the chunk had landed (the re-read found it).
    pub lease_rechecks: AtomicU64,
    /// Lease requests or waits that failed (node down, error, timeout).
    pub lease_errors: AtomicU64,
}

/// The AZ cache fleet as a [`ChunkTier`].
#[derive(Debug)]
pub struct FleetTier {
    members: Membership,
    pub(crate) timeout: Duration,
    lease: Option<LeaseConfig>,
    pub(crate) held: Arc<HeldLeases>,
    fills: Arc<tokio::sync::Semaphore>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    filling: Arc<Mutex<HashSet<ChunkName>>>,
    /// Counters.
    pub metrics: Arc<FleetMetrics>,
    label: &'static str,
}

impl FleetTier {
    /// A tier over `backend`; each stripe GET or PUT gets `timeout`.
    pub fn new(backend: Arc<dyn StripeBackend>, timeout: Duration, label: &'static str) -> Self {
        Self::with_rebuild(backend, None, timeout, label)
    }

    /// A tier whose node list can be changed ([`FleetTier::set_nodes`]):
    /// `rebuild` makes a backend of the same kind for a new list.
    pub fn with_rebuild(
        backend: Arc<dyn StripeBackend>,
        rebuild: Option<Rebuild>,
        timeout: Duration,
        label: &'static str,
    ) -> Self {
        let metrics = FleetMetrics::default();
        FleetTier {
            members: Membership::new(backend, rebuild),
            timeout,
            lease: None,
            held: Arc::new(HeldLeases::default()),
            fills: Arc::new(tokio::sync::Semaphore::new(MAX_FILLS)),
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            filling: Arc::new(Mutex::new(HashSet::new())),
            metrics: Arc::new(metrics),
            label,
        }
    }

    /// Coordinates fills across hosts with fill leases (see [`crate::lease`]).
    pub fn with_leases(mut self, cfg: LeaseConfig) -> Self {
        self.lease = Some(cfg);
        self
    }

    /// The current membership (reads and fills keep the one they started with).
    pub fn members(&self) -> Arc<Members> {
        self.members.get()
    }

    /// Replaces the node list; stripes whose rendezvous ranking changed are
    /// rewritten on their new nodes by read repair.
    pub fn set_nodes(&self, nodes: Vec<String>) -> Result<Change, String> {
        let change = self.members.set_nodes(nodes)?;
        tracing::info!(added = ?change.added, removed = ?change.removed, "fleet membership changed");
        Ok(change)
    }

    /// Replaces the node list from a spec of the same kind as the tier's
    /// (`HOST:PORT,...`, or `memcached://...` for a memcached fleet).
    pub fn set_spec(&self, spec: &str) -> Result<Change, String> {
        let (mc, nodes) = crate::parse_spec(spec)?;
        if mc != (self.label == "fleet-memcached") {
            return Err(format!(
                "'{spec}': a fleet cannot change between lode nodes and memcached; restart the agent"
            ));
        }
        self.set_nodes(nodes)
    }

    /// Prometheus text for the fleet.
    pub fn render(&self, out: &mut String) {
        let m = &self.metrics;
        let members = self.members();
        for (node, st) in members.backend.nodes().iter().zip(&members.stats) {
            st.latency.render(
                out,
                "lode_fleet_stripe_get_seconds",
                &format!("node=\"{node}\""),
            );
            let _ = writeln!(
                out,
                "lode_fleet_stripe_errors_total{{node=\"{node}\"}} {}",
                st.errors.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "lode_fleet_stripe_malformed_total{{node=\"{node}\"}} {}",
                st.malformed.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "lode_fleet_stripe_corrupt_total{{node=\"{node}\"}} {}",
                st.corrupt.load(Ordering::Relaxed)
            );
        }
        for (n, v) in [
            ("lode_fleet_first4_total", &m.first4),
            ("lode_fleet_needed_fifth_total", &m.needed_fifth),
            ("lode_fleet_reconstructions_total", &m.reconstructions),
            ("lode_fleet_corrupt_total", &m.corrupt),
            ("lode_fleet_fallbacks_total", &m.fallbacks),
            ("lode_fleet_fills_total", &m.fills),
            ("lode_fleet_fills_dropped_total", &m.fills_dropped),
            ("lode_fleet_repairs_total", &m.repairs),
            ("lode_fleet_stripe_bytes_total", &m.stripe_bytes),
            ("lode_fleet_chunk_bytes_total", &m.chunk_bytes),
            ("lode_fleet_leases_won_total", &m.leases_won),
            ("lode_fleet_lease_waits_total", &m.lease_waits),
            ("lode_fleet_lease_served_total", &m.lease_served),
            ("lode_fleet_lease_timeouts_total", &m.lease_timeouts),
            ("lode_fleet_lease_rechecks_total", &m.lease_rechecks),
            ("lode_fleet_lease_errors_total", &m.lease_errors),
        ] {
            let _ = writeln!(out, "{n} {}", v.load(Ordering::Relaxed));
        }
    }

    fn try_decode(stripes: &[(usize, Bytes)], name: &ChunkName, m: &FleetMetrics) -> Option<Bytes> {
        let refs: Vec<&[u8]> = stripes.iter().map(|(_, b)| b.as_ref()).collect();
        let ct = stripe::decode(&refs)?;
        if ChunkName::of(&ct) != *name {
            m.corrupt.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if !stripes.iter().any(|(j, _)| *j == stripe::DATA) {
            return Some(Bytes::from(ct));
        }
        m.reconstructions.fetch_add(1, Ordering::Relaxed);
        Some(Bytes::from(ct))
    }

    pub(crate) async fn read(&self, id: &ChunkId) -> Option<Bytes> {
        let members = self.members();
        let (backend, stats) = (&members.backend, &members.stats);
        let nodes = placement(backend.nodes(), &id.name);
        let mut gets: FuturesUnordered<_> = (0..stripe::TOTAL)
            .map(|j| {
                let k = key(&id.name, j);
                let node = nodes[j];
                async move {
                    let t = Instant::now();
                    let r = tokio::time::timeout(self.timeout, backend.get(node, &k)).await;
                    (j, node, r, t.elapsed())
                }
            })
            .collect();
        let mut got: Vec<(usize, Bytes)> = Vec::new();
        // Stripes a live node does not have (or sent malformed): rewritten by
        // read repair once the chunk is rebuilt from the others.
        let mut missing: Vec<usize> = Vec::new();
        while let Some((j, node, r, took)) = gets.next().await {
            match r {
                Ok(Ok(Some(b))) if stripe::header(&b).is_some_and(|(i, _)| i == j) => {
                    stats[node].latency.observe(took);
                    got.push((j, b));
                }
                Ok(Ok(Some(_))) => {
                    stats[node].malformed.fetch_add(1, Ordering::Relaxed);
                    missing.push(j);
                }
                Ok(Ok(None)) => missing.push(j),
                _ => {
                    stats[node].errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if got.len() == stripe::DATA {
                if let Some(ct) = Self::try_decode(&got, &id.name, &self.metrics) {
                    // Dropping `gets` cancels the 5th request.
                    self.metrics.first4.fetch_add(1, Ordering::Relaxed);
                    self.repair(id.name, &ct, missing);
                    return Some(ct);
                }
            }
            if got.len() == stripe::TOTAL {
                self.metrics.needed_fifth.fetch_add(1, Ordering::Relaxed);
                for skip in 0..stripe::TOTAL {
                    let subset: Vec<(usize, Bytes)> = got
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != skip)
                        .map(|(_, s)| s.clone())
                        .collect();
                    if let Some(ct) = Self::try_decode(&subset, &id.name, &self.metrics) {
                        // The stripe left out was the bad one.
                        missing.push(got[skip].0);
                        stats[nodes[got[skip].0]]
                            .corrupt
                            .fetch_add(1, Ordering::Relaxed);
                        self.repair(id.name, &ct, missing);
                        return Some(ct);
                    }
                }
            }
        }
        None
    }
}

impl ChunkTier for FleetTier {
    fn label(&self) -> &'static str {
        self.label
    }

    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move {
            let mut got = self.read(id).await;
            if got.is_none() {
                if let Some(cfg) = &self.lease {
                    got = self.coordinate(id, cfg).await;
                }
            }
            match got {
                Some(b) => Ok(b),
                None => {
                    self.metrics.fallbacks.fetch_add(1, Ordering::Relaxed);
                    Err(TierError::NotFound {
                        tier: self.label,
                        name: id.name.to_hex(),
                    })
                }
            }
        })
    }

    /// Writes the 5 stripes in the background: bounded (at most
    /// [`MAX_FILLS`] at once and [`MAX_QUEUED_FILLS`] waiting; beyond that
    /// dropped), one fill per chunk at a time, never blocking the read that
    /// triggered it.
    fn fill(&self, id: &ChunkId, ciphertext: Bytes) {
        let held = self.held.take(&id.name);
        self.put_stripes(id.name, ciphertext, None, held);
    }

    /// Releases this host's fill lease on a chunk no tier could fetch, so
    /// the hosts waiting for it stop waiting.
    fn abandon(&self, id: &ChunkId) {
        if let Some(h) = self.held.take(&id.name) {
            crate::lease::release(&id.name, h, self.timeout);
        }
    }

    /// Waits until no fill or repair is queued or running (at most 4 stripe
    /// timeouts per fill slot round, 30 s in all).
    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let until = Instant::now() + Duration::from_secs(30);
            while self.queued.load(Ordering::SeqCst) > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }
}

impl FleetTier {
    /// Read repair: rewrites the stripes in `which` of a chunk just rebuilt,
    /// in the background and under the same bounds as fills.
    fn repair(&self, name: ChunkName, ciphertext: &Bytes, which: Vec<usize>) {
        if !which.is_empty() {
            self.put_stripes(name, ciphertext.clone(), Some(which), None);
        }
    }

    /// Writes all stripes of a chunk (a fill, `only` = `None`) or some of them
    /// (a repair). Bounded: at most [`MAX_FILLS`] running and
    /// [`MAX_QUEUED_FILLS`] waiting, beyond that dropped; one write per chunk
    /// at a time. A fill lease `held` is released once the stripes are
    /// stored (at once if the write is dropped).
    fn put_stripes(
        &self,
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
        if !self
            .filling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name)
        {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            give_up(held);
            return;
        }
        let (backend, filling, metrics, timeout) = (
            self.members().backend.clone(),
            self.filling.clone(),
            self.metrics.clone(),
            self.timeout,
        );
        let (slots, queued) = (self.fills.clone(), self.queued.clone());
        tokio::spawn(async move {
            let Ok(permit) = slots.acquire_owned().await else {
                return;
            };
            let release_after = held.map(|h| (h, timeout));
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
                        let ok = matches!(
                            tokio::time::timeout(
                                timeout * 4,
                                backend.put(node, &k, Bytes::from(s))
                            )
                            .await,
                            Ok(Ok(()))
                        );
                        (ok, n)
                    }
                });
            let results = futures::future::join_all(puts).await;
            if only.is_some() {
                let ok = results.iter().filter(|(ok, _)| *ok).count() as u64;
                metrics.repairs.fetch_add(ok, Ordering::Relaxed);
            } else {
                let stored: u64 = results.iter().filter(|(ok, _)| *ok).map(|(_, n)| n).sum();
                metrics.fills.fetch_add(1, Ordering::Relaxed);
                metrics.stripe_bytes.fetch_add(stored, Ordering::Relaxed);
                metrics
                    .chunk_bytes
                    .fetch_add(ciphertext.len() as u64, Ordering::Relaxed);
            }
            filling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            // Inline, before the fill counts as done: a process that exits
            // after `settle` must not leave the waiters to the lease's TTL.
            if let Some((h, timeout)) = release_after {
                crate::lease::release_now(&name, h, timeout).await;
            }
            queued.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_distinct_and_stable() {
        let nodes: Vec<String> = (0..7).map(|i| format!("10.0.0.{i}:7000")).collect();
        let name = ChunkName([9; 32]);
        let p = placement(&nodes, &name);
        let set: HashSet<usize> = p.iter().copied().collect();
        assert_eq!(set.len(), 5);
        // Removing a node that holds no stripe changes nothing.
        let unused = (0..7).find(|i| !set.contains(i)).unwrap();
        let mut fewer = nodes.clone();
        fewer.remove(unused);
        let q = placement(&fewer, &name);
        let back: Vec<&String> = q.iter().map(|&i| &fewer[i]).collect();
        let orig: Vec<&String> = p.iter().map(|&i| &nodes[i]).collect();
        assert_eq!(back, orig);
        // Three nodes: stripes wrap.
        assert_eq!(placement(&nodes[..3], &name).len(), 5);
    }
}
