//! The fleet as a chunk tier: 5 stripes on 5 nodes, first 4 answers win.

use crate::backend::StripeBackend;
use crate::error::{SpecError, StripeFailure, Unreachable};
use crate::lease::{HeldLeases, LeaseConfig};
use crate::members::{Change, Members, Membership, Rebuild};
use crate::stripe;
use crate::write::{classify, stripe_get, Answer, StripeGets, Writer};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::StreamExt;
use lode_chunk::ChunkName;
use lode_common::prom;
use lode_tier::{ChunkId, ChunkTier, TierError};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::write::{MAX_FILLS, MAX_LATE, MAX_QUEUED_FILLS};

/// The nodes holding stripes 0..5 of `name`: rendezvous (highest random
/// weight) hashing per stripe, over the nodes' names ([`crate::node_name`]:
/// the same for every host, whatever address a host reaches a node at). Each node gets a weight per (chunk, stripe);
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
            h.update(crate::node_name(n).as_bytes());
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

/// The key of stripe `j` of a chunk on its node.
pub(crate) fn key(name: &ChunkName, j: usize) -> String {
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
    /// Stripe answers that arrived after their read was served by the first
    /// 4, and were checked for read repair.
    pub late_checked: AtomicU64,
    /// Reads whose outstanding stripe request was cancelled instead of
    /// followed ([`MAX_LATE`] followers were running).
    pub late_dropped: AtomicU64,
    /// Stripes missing on their node after a membership change and asked of
    /// the node that held them before (see [`crate::members`]).
    pub handoffs: AtomicU64,
}

/// The AZ cache fleet as a [`ChunkTier`].
#[derive(Debug)]
pub struct FleetTier {
    members: Membership,
    pub(crate) timeout: Duration,
    lease: Option<LeaseConfig>,
    pub(crate) held: Arc<HeldLeases>,
    writer: Arc<Writer>,
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
        let metrics = Arc::new(FleetMetrics::default());
        FleetTier {
            members: Membership::new(backend, rebuild),
            timeout,
            lease: None,
            held: Arc::new(HeldLeases::default()),
            writer: Arc::new(Writer::new(metrics.clone(), timeout)),
            metrics,
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
    pub fn set_nodes(&self, nodes: Vec<String>) -> Result<Change, SpecError> {
        let change = self.members.set_nodes(nodes)?;
        tracing::info!(added = ?change.added, removed = ?change.removed, "fleet membership changed");
        Ok(change)
    }

    /// Replaces the node list from a spec of the same kind as the tier's
    /// (`HOST:PORT,...`, or `memcached://...` for a memcached fleet).
    pub fn set_spec(&self, spec: &str) -> Result<Change, SpecError> {
        let (mc, nodes) = crate::parse_spec(spec)?;
        if mc != (self.label == "fleet-memcached") {
            return Err(SpecError::KindChange { spec: spec.into() });
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
            prom::sample(
                out,
                "lode_fleet_stripe_errors_total",
                &format!("node=\"{node}\""),
                prom::load(&st.errors),
            );
            prom::sample(
                out,
                "lode_fleet_stripe_malformed_total",
                &format!("node=\"{node}\""),
                prom::load(&st.malformed),
            );
            prom::sample(
                out,
                "lode_fleet_stripe_corrupt_total",
                &format!("node=\"{node}\""),
                prom::load(&st.corrupt),
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
            ("lode_fleet_late_stripes_checked_total", &m.late_checked),
            ("lode_fleet_late_stripes_dropped_total", &m.late_dropped),
            ("lode_fleet_handoffs_total", &m.handoffs),
        ] {
            prom::sample(out, n, "", prom::load(v));
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

    /// Reads a chunk from the first 4 good stripes (all 5 when one is bad).
    /// Stripes a live node does not have, or sent malformed or corrupt, are
    /// rewritten by read repair; a stripe request still outstanding when
    /// the first 4 rebuilt the chunk is followed in the background
    /// ([`Writer::follow_late`]) so that a node restarted empty is refilled
    /// even when it answers last. After a membership change, a stripe its
    /// new node does not have is asked of the node that held it before.
    ///
    /// Without the chunk: [`Miss::Unreachable`] when no node answered at
    /// all (every request failed or timed out), else [`Miss::Absent`].
    pub(crate) async fn read(&self, id: &ChunkId) -> Result<Bytes, Miss> {
        let members = self.members();
        let nodes = placement(members.backend.nodes(), &id.name);
        let before = members
            .previous
            .as_ref()
            .map(|p| (p.clone(), placement(p.backend.nodes(), &id.name)));
        let timeout = self.timeout;
        let mut gets: StripeGets = (0..stripe::TOTAL)
            .map(|j| stripe_get(members.clone(), nodes[j], &id.name, j, timeout, false))
            .collect();
        // Good stripes, and the counters of the nodes that sent them.
        let mut got: Vec<(usize, Bytes)> = Vec::new();
        let mut from = Vec::new();
        // Stripes a live node does not have (or sent malformed): rewritten by
        // read repair once the chunk is rebuilt from the others.
        let mut missing: Vec<usize> = Vec::new();
        // Requests sent, and the last failure while no node has answered.
        let mut asked = gets.len();
        let mut unanswered: Option<StripeFailure> = None;
        let mut answered = false;
        while let Some(answer) = gets.next().await {
            let (stats, handoff) = (answer.stats.clone(), answer.handoff);
            let (j, answer) = classify(answer);
            if let Answer::Failed(e) = answer {
                if !answered {
                    unanswered = Some(e);
                }
                continue;
            }
            answered = true;
            match (j, answer) {
                (j, Answer::Stripe(b)) => {
                    got.push((j, b));
                    from.push(stats);
                }
                (j, Answer::Missing) if !handoff => {
                    missing.push(j);
                    if let Some((p, was)) = &before {
                        let now = &members.backend.nodes()[nodes[j]];
                        if p.backend.nodes()[was[j]] != *now {
                            self.metrics.handoffs.fetch_add(1, Ordering::Relaxed);
                            asked += 1;
                            gets.push(stripe_get(p.clone(), was[j], &id.name, j, timeout, true));
                        }
                    }
                }
                _ => {}
            }
            if got.len() == stripe::DATA {
                if let Some(ct) = Self::try_decode(&got, &id.name, &self.metrics) {
                    self.metrics.first4.fetch_add(1, Ordering::Relaxed);
                    self.repair(&members, id.name, &ct, missing);
                    self.writer
                        .follow_late(members.clone(), gets, id.name, ct.clone());
                    return Ok(ct);
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
                        from[skip].corrupt.fetch_add(1, Ordering::Relaxed);
                        self.repair(&members, id.name, &ct, missing);
                        return Ok(ct);
                    }
                }
            }
        }
        match unanswered {
            Some(last) if !answered => Err(Miss::Unreachable(Unreachable { asked, last })),
            _ => Err(Miss::Absent),
        }
    }
}

/// Why a fleet read returned no chunk.
#[derive(Debug)]
pub(crate) enum Miss {
    /// Nodes answered, and fewer than 4 good stripes came back.
    Absent,
    /// No node answered.
    Unreachable(Unreachable),
}

impl ChunkTier for FleetTier {
    fn label(&self) -> &'static str {
        self.label
    }

    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move {
            let mut got = self.read(id).await;
            // Coordinating a fill needs nodes that answer.
            if let (Err(Miss::Absent), Some(cfg)) = (&got, &self.lease) {
                got = self.coordinate(id, cfg).await.ok_or(Miss::Absent);
            }
            got.map_err(|miss| {
                self.metrics.fallbacks.fetch_add(1, Ordering::Relaxed);
                match miss {
                    Miss::Absent => TierError::NotFound {
                        tier: self.label,
                        name: id.name,
                    },
                    Miss::Unreachable(e) => TierError::failed(self.label, id.name, e),
                }
            })
        })
    }

    /// Writes the 5 stripes in the background: bounded (at most
    /// [`MAX_FILLS`] at once and [`MAX_QUEUED_FILLS`] waiting; beyond that
    /// dropped), one fill per chunk at a time, never blocking the read that
    /// triggered it.
    fn fill(&self, id: &ChunkId, ciphertext: Bytes) {
        let held = self.held.take(&id.name);
        let backend = self.members().backend.clone();
        self.writer
            .put_stripes(backend, id.name, ciphertext, None, held);
    }

    /// Releases this host's fill lease on a chunk no tier could fetch, so
    /// the hosts waiting for it stop waiting.
    fn abandon(&self, id: &ChunkId) {
        if let Some(h) = self.held.take(&id.name) {
            crate::lease::release(&id.name, h, self.timeout);
        }
    }

    /// Waits until no fill or repair is queued or running and no late
    /// stripe is being followed (30 s at most).
    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.writer.settle(Duration::from_secs(30)))
    }
}

impl FleetTier {
    /// Read repair: rewrites the stripes in `which` of a chunk just rebuilt,
    /// in the background and under the same bounds as fills.
    fn repair(&self, members: &Members, name: ChunkName, ciphertext: &Bytes, which: Vec<usize>) {
        if !which.is_empty() {
            let backend = members.backend.clone();
            self.writer
                .put_stripes(backend, name, ciphertext.clone(), Some(which), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BackendError;
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    /// Stripes of in-memory nodes, by (node address, key); one node may be slow.
    #[derive(Debug, Default)]
    struct Disks {
        held: Mutex<HashMap<(String, String), Bytes>>,
        slow: Mutex<Option<String>>,
    }

    /// A node list over shared [`Disks`].
    #[derive(Debug)]
    struct MemNodes {
        nodes: Vec<String>,
        disks: Arc<Disks>,
    }

    impl Disks {
        fn has(&self, node: &str, key: &str) -> bool {
            self.held
                .lock()
                .unwrap()
                .contains_key(&(node.into(), key.into()))
        }
        fn stripes_on(&self, node: &str) -> usize {
            self.held
                .lock()
                .unwrap()
                .keys()
                .filter(|(n, _)| n == node)
                .count()
        }
    }

    impl StripeBackend for MemNodes {
        fn nodes(&self) -> &[String] {
            &self.nodes
        }
        fn get<'a>(
            &'a self,
            node: usize,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<Bytes>, BackendError>> {
            let addr = self.nodes[node].clone();
            Box::pin(async move {
                if self.disks.slow.lock().unwrap().as_ref() == Some(&addr) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let held = self.disks.held.lock().unwrap();
                Ok(held.get(&(addr, key.to_string())).cloned())
            })
        }
        fn put<'a>(
            &'a self,
            node: usize,
            key: &'a str,
            value: Bytes,
        ) -> BoxFuture<'a, Result<(), BackendError>> {
            let k = (self.nodes[node].clone(), key.to_string());
            self.disks.held.lock().unwrap().insert(k, value);
            Box::pin(async { Ok(()) })
        }
    }

    fn addrs(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("127.0.2.{i}:7000")).collect()
    }

    /// A tier over `nodes` of `disks` whose membership can change.
    fn tier(disks: &Arc<Disks>, nodes: Vec<String>) -> FleetTier {
        let d = disks.clone();
        let rebuild: Rebuild = Arc::new(move |nodes| {
            Arc::new(MemNodes {
                nodes,
                disks: d.clone(),
            }) as Arc<dyn StripeBackend>
        });
        FleetTier::with_rebuild(
            rebuild(nodes),
            Some(rebuild.clone()),
            Duration::from_secs(5),
            "fleet",
        )
    }

    fn chunk(i: u32) -> (ChunkId, Bytes) {
        let ct = Bytes::from(
            (0..50_000u32)
                .map(|b| (b ^ i) as u8 ^ (i >> 8) as u8)
                .collect::<Vec<u8>>(),
        );
        let id = ChunkId {
            root: "r".into(),
            name: ChunkName::of(&ct),
        };
        (id, ct)
    }

    /// A node restarted empty answers "not found" after the other 4 served
    /// the read: its stripe is still rewritten (before, the late answer was
    /// cancelled and the node stayed empty until it was not the slowest).
    /// A late stripe that is well-formed but wrong is rewritten as well.
    #[tokio::test]
    async fn late_missing_or_corrupt_stripe_is_repaired() {
        let disks = Arc::new(Disks::default());
        let nodes = addrs(5);
        let tier = tier(&disks, nodes.clone());
        let (id, ct) = chunk(7);
        let slow = nodes[placement(&nodes, &id.name)[2]].clone();
        *disks.slow.lock().unwrap() = Some(slow.clone());
        tier.fill(&id, ct.clone());
        tier.settle().await;
        let k = key(&id.name, 2);
        // The slow node restarts empty.
        disks.held.lock().unwrap().retain(|(n, _), _| *n != slow);
        assert_eq!(tier.read(&id).await.ok().as_deref(), Some(&ct[..]));
        assert!(!disks.has(&slow, &k), "the read waited for the 5th stripe");
        tier.settle().await;
        assert!(
            disks.has(&slow, &k),
            "the late 'not found' was not repaired"
        );
        assert_eq!(tier.metrics.repairs.load(Ordering::Relaxed), 1);
        // Now it holds a wrong (well-formed) stripe.
        let mut bad = stripe::encode(&ct).swap_remove(2);
        *bad.last_mut().unwrap() ^= 1;
        let at = (slow.clone(), k.clone());
        disks.held.lock().unwrap().insert(at.clone(), bad.into());
        assert_eq!(tier.read(&id).await.ok().as_deref(), Some(&ct[..]));
        tier.settle().await;
        let good = Bytes::from(stripe::encode(&ct).swap_remove(2));
        assert_eq!(disks.held.lock().unwrap().get(&at), Some(&good));
        assert_eq!(tier.metrics.repairs.load(Ordering::Relaxed), 2);
        let slow_i = nodes.iter().position(|n| *n == slow).unwrap();
        let corrupt = &tier.members().stats[slow_i].corrupt;
        assert_eq!(corrupt.load(Ordering::Relaxed), 1);
        assert_eq!(tier.metrics.late_checked.load(Ordering::Relaxed), 2);
    }

    /// A 6th node joins 5: about 28 % of the chunks have 2 or more stripes
    /// on new nodes, yet every chunk is still read from the fleet (the
    /// previous holders answer for them), and read repair moves the stripes:
    /// afterwards every chunk reads from its new placement alone.
    #[tokio::test]
    async fn a_node_added_misses_no_chunk() {
        let disks = Arc::new(Disks::default());
        let tier = tier(&disks, addrs(5));
        let chunks: Vec<(ChunkId, Bytes)> = (0..200).map(chunk).collect();
        for (id, ct) in &chunks {
            tier.fill(id, ct.clone());
            tier.settle().await;
        }
        tier.set_nodes(addrs(6)).unwrap();
        let six = addrs(6);
        let two_moved = chunks
            .iter()
            .filter(|(id, _)| {
                let (a, b) = (placement(&six[..5], &id.name), placement(&six, &id.name));
                (0..5).filter(|&j| six[a[j]] != six[b[j]]).count() >= 2
            })
            .count();
        assert!(
            two_moved > 20,
            "only {two_moved} chunks with 2 stripes moved"
        );
        for (id, ct) in &chunks {
            assert_eq!(
                tier.read(id).await.ok().as_deref(),
                Some(&ct[..]),
                "after the join"
            );
        }
        tier.settle().await;
        assert!(tier.metrics.handoffs.load(Ordering::Relaxed) >= two_moved as u64);
        let on6 = disks.stripes_on(&six[5]);
        eprintln!("{two_moved} of 200 chunks had 2+ stripes moved; node 6 holds {on6} stripes");
        assert!(on6 > 100 && on6 < 250, "node 6 holds {on6} of 1000 stripes");
        // A second change drops the first generation: the new placement
        // alone serves every chunk now.
        tier.set_nodes(addrs(6)).unwrap();
        disks
            .held
            .lock()
            .unwrap()
            .retain(|(n, _), _| six.contains(n));
        let served = chunks.len() as u64;
        let h = tier.metrics.handoffs.load(Ordering::Relaxed);
        for (id, ct) in &chunks {
            assert_eq!(
                tier.read(id).await.ok().as_deref(),
                Some(&ct[..]),
                "after repair"
            );
        }
        assert_eq!(tier.metrics.handoffs.load(Ordering::Relaxed), h);
        assert_eq!(tier.metrics.first4.load(Ordering::Relaxed), 2 * served);
    }

    /// Nodes that answer "not found" make a miss; nodes that never answer
    /// (nothing listening) make a failure that names a node and its cause,
    /// for lode nodes and for memcached alike, and no lease is sought.
    #[tokio::test]
    async fn an_unreachable_fleet_is_a_failure_with_its_cause_not_a_miss() {
        let closed: Vec<String> = (0..5)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().to_string()
            })
            .collect();
        let id = ChunkId {
            root: Arc::from("root"),
            name: ChunkName([7; 32]),
        };
        for spec in [
            closed.join(","),
            format!("memcached://{}", closed.join(",")),
        ] {
            let tier = crate::from_spec(&spec, Duration::from_secs(2))
                .unwrap()
                .with_leases(LeaseConfig {
                    ttl: Duration::from_secs(5),
                    wait: Duration::from_secs(5),
                });
            let e = tier.fetch(&id).await.unwrap_err();
            assert!(matches!(e, TierError::Failed { .. }), "{spec}: {e:?}");
            let text = lode_common::errors::chain(&e);
            assert!(
                text.contains("none of the 5 stripe requests was answered")
                    && text.contains("node 127.0.0.1:"),
                "{spec}: {text}"
            );
            assert_eq!(tier.metrics.fallbacks.load(Ordering::Relaxed), 1);
            assert_eq!(tier.metrics.lease_waits.load(Ordering::Relaxed), 0);
        }

        let disks = Arc::new(Disks::default());
        let tier = FleetTier::new(
            Arc::new(MemNodes {
                nodes: addrs(5),
                disks,
            }),
            Duration::from_secs(1),
            "fleet",
        );
        let e = tier.fetch(&id).await.unwrap_err();
        assert!(matches!(e, TierError::NotFound { .. }), "{e:?}");
    }

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
