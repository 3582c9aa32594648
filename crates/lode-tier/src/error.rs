//! Why a tier did not return a chunk.

use lode_chunk::ChunkName;
use std::sync::Arc;
use std::time::Duration;

/// The cause of a [`TierError::Failed`]: any error, shared (a fetch's result
/// is handed to every reader waiting on it, so the error is cloned, and its
/// source chain with it).
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a tier did not return a chunk. Every variant names the tier (its
/// [`crate::ChunkTier::label`]) and the chunk.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// The tier does not have it (not a failure: the next tier is asked).
    #[error("{tier}: chunk {name} not found")]
    NotFound {
        /// Tier label.
        tier: &'static str,
        /// Chunk name.
        name: ChunkName,
    },
    /// No answer in time.
    #[error("{tier}: no answer for chunk {name} within {after:?}")]
    Timeout {
        /// Tier label.
        tier: &'static str,
        /// Chunk name.
        name: ChunkName,
        /// The time limit.
        after: Duration,
    },
    /// The tier answered with bytes that do not hash to the chunk's name.
    #[error("{tier}: chunk {name}: {len} bytes that do not match the chunk's name (corrupt)")]
    Corrupt {
        /// Tier label.
        tier: &'static str,
        /// Chunk name.
        name: ChunkName,
        /// Length of the bytes received.
        len: usize,
    },
    /// Any other failure, with its cause.
    #[error("{tier}: chunk {name}: fetch failed")]
    Failed {
        /// Tier label.
        tier: &'static str,
        /// Chunk name.
        name: ChunkName,
        /// What failed.
        #[source]
        source: Source,
    },
}

impl TierError {
    /// A failure of `tier` fetching `name`, caused by `source`.
    pub fn failed(
        tier: &'static str,
        name: ChunkName,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        TierError::Failed {
            tier,
            name,
            source: Arc::new(source),
        }
    }

    /// The label of the tier that failed.
    pub fn tier(&self) -> &'static str {
        match self {
            TierError::NotFound { tier, .. }
            | TierError::Timeout { tier, .. }
            | TierError::Corrupt { tier, .. }
            | TierError::Failed { tier, .. } => tier,
        }
    }

    /// The chunk asked for.
    pub fn name(&self) -> &ChunkName {
        match self {
            TierError::NotFound { name, .. }
            | TierError::Timeout { name, .. }
            | TierError::Corrupt { name, .. }
            | TierError::Failed { name, .. } => name,
        }
    }

    /// Whether the tier simply does not have the chunk.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TierError::NotFound { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn failures_keep_their_source_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no entry");
        let e = TierError::failed("store", ChunkName([7; 32]), io);
        let shown = e.to_string();
        assert!(shown.starts_with("store: chunk 0707"), "{shown}");
        let src = e.source().expect("a source");
        assert_eq!(src.to_string(), "no entry");
        // Cloned (single-flight hands it to every waiter) with its chain.
        let c = e.clone();
        assert_eq!(c.source().map(|s| s.to_string()), Some("no entry".into()));
        assert_eq!((c.tier(), *c.name()), ("store", ChunkName([7; 32])));
    }
}
