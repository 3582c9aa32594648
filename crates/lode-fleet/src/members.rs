//! Fleet membership: the node list, swappable while reads run.
//!
//! Placement is rendezvous hashing ([`crate::placement`]), so a new node list
//! moves only the stripes whose top-5 ranking changed: adding or removing one
//! of N nodes moves about 5/N of the chunks' single stripes, i.e. about 1/N
//! of all stripes ([`moved_fraction`]). Reads and fills in flight keep the
//! generation they started with; per-node counters follow the node's
//! address across reloads. A moved stripe is not copied: the first read
//! after the change finds it missing on its new node, rebuilds the chunk from
//! the other 4 and rewrites it there (read repair).
//!
//! Adding one node moves about 1/N of the stripes in all, but not one per
//! chunk: when the newcomer takes a stripe, the node that held it may win
//! another stripe of the same chunk, so about 28 % of the chunks have 2 or
//! more stripes moved when a 6th node joins 5 (no stateless assignment of 5
//! stripes to N > 5 nodes avoids this). Those chunks would miss the fleet
//! until refilled. So each generation keeps the one before it
//! ([`Members::previous`]): a read that finds a stripe missing on its new
//! node asks the node that held it before (handoff), which still has it, and
//! read repair writes it to the new node.

use crate::backend::StripeBackend;
use crate::client::placement;
use crate::error::SpecError;
use lode_chunk::ChunkName;
use lode_common::prom::Histogram;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

/// Per-node counters (kept by address across membership changes).
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Stripe GET latency.
    pub latency: Histogram,
    /// Stripe GET failures (errors, timeouts).
    pub errors: AtomicU64,
    /// Stripes that came back malformed (bad header or wrong index): dropped.
    pub malformed: AtomicU64,
    /// Stripes proven corrupt by the 5-way check (well-formed, but the chunk
    /// decodes to its name only without them): dropped and rewritten.
    pub corrupt: AtomicU64,
}

/// One generation of the membership: the nodes' protocol and their counters.
#[derive(Debug)]
pub struct Members {
    /// The nodes.
    pub backend: Arc<dyn StripeBackend>,
    /// Counters, in the order of `backend.nodes()`.
    pub stats: Vec<Arc<NodeStats>>,
    /// The generation before this one (its own `previous` dropped), where
    /// reads look for stripes not yet moved to their new nodes.
    pub previous: Option<Arc<Members>>,
}

/// Builds a backend of the fleet's kind for a node list.
pub type Rebuild = Arc<dyn Fn(Vec<String>) -> Arc<dyn StripeBackend> + Send + Sync>;

/// The current membership and how to make the next one.
pub(crate) struct Membership {
    // std locks: swapped or cloned only, never held across an await.
    current: RwLock<Arc<Members>>,
    by_addr: Mutex<HashMap<String, Arc<NodeStats>>>,
    rebuild: Option<Rebuild>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("nodes", &self.get().backend.nodes())
            .finish()
    }
}

/// What a membership change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Nodes new in the list.
    pub added: Vec<String>,
    /// Nodes gone from the list.
    pub removed: Vec<String>,
}

impl Membership {
    pub(crate) fn new(backend: Arc<dyn StripeBackend>, rebuild: Option<Rebuild>) -> Self {
        let m = Membership {
            current: RwLock::new(Arc::new(Members {
                backend: backend.clone(),
                stats: Vec::new(),
                previous: None,
            })),
            by_addr: Mutex::new(HashMap::new()),
            rebuild,
        };
        m.install(backend, None);
        m
    }

    pub(crate) fn get(&self) -> Arc<Members> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn install(&self, backend: Arc<dyn StripeBackend>, previous: Option<Arc<Members>>) {
        let stats = {
            let mut by = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
            backend
                .nodes()
                .iter()
                .map(|a| by.entry(a.clone()).or_default().clone())
                .collect()
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Members {
            backend,
            stats,
            previous,
        });
    }

    /// Replaces the node list (same protocol and key as before).
    pub(crate) fn set_nodes(&self, nodes: Vec<String>) -> Result<Change, SpecError> {
        let rebuild = self.rebuild.as_ref().ok_or(SpecError::Fixed)?;
        let was = self.get();
        let old: Vec<String> = was.backend.nodes().to_vec();
        let change = Change {
            added: nodes.iter().filter(|n| !old.contains(n)).cloned().collect(),
            removed: old.iter().filter(|n| !nodes.contains(n)).cloned().collect(),
        };
        let previous = Arc::new(Members {
            backend: was.backend.clone(),
            stats: was.stats.clone(),
            previous: None,
        });
        self.install(rebuild(nodes), Some(previous));
        Ok(change)
    }
}

/// The fraction of all stripes of `names` whose node changes from node list
/// `a` to `b` (rendezvous placement).
pub fn moved_fraction(a: &[String], b: &[String], names: &[ChunkName]) -> f64 {
    let mut moved = 0usize;
    for n in names {
        let (pa, pb) = (placement(a, n), placement(b, n));
        moved += (0..pa.len()).filter(|&j| a[pa[j]] != b[pb[j]]).count();
    }
    moved as f64 / (names.len() * crate::stripe::TOTAL).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<ChunkName> {
        (0..k as u32)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&i.to_le_bytes());
                ChunkName::of(&b)
            })
            .collect()
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.2.{}:7000", i + 1)).collect()
    }

    /// Adding or removing one node moves about 1/N of the stripes (≤ 1.5/N).
    #[test]
    fn one_node_more_or_less_moves_about_one_nth() {
        let names = names(20_000);
        for n in [5usize, 6, 10, 20] {
            let (a, b) = (nodes(n), nodes(n + 1));
            let add = moved_fraction(&a, &b, &names);
            let remove = moved_fraction(&b, &a, &names);
            let bound = 1.5 / (n + 1) as f64;
            eprintln!(
                "{n}->{}: add moves {add:.4}, remove moves {remove:.4} (1/N = {:.4})",
                n + 1,
                1.0 / (n + 1) as f64
            );
            assert!(add <= bound, "{n}→{}: moved {add:.3} > {bound:.3}", n + 1);
            assert!(remove <= bound, "{}→{n}: moved {remove:.3}", n + 1);
            assert!(
                add > 0.5 / (n + 1) as f64,
                "{n}→{}: moved only {add:.3}",
                n + 1
            );
        }
    }
}
