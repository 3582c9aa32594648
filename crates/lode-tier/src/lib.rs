//! The tier seam: where a chunk's ciphertext comes from after the host's
//! caches.
//!
//! * [`ChunkId`]: a chunk's address (store root and name);
//! * [`ChunkTier`]: a source of chunk ciphertext — the chunk store
//!   (`lode_store::Store`), the AZ cache fleet (`lode_fleet::FleetTier`);
//! * [`TierError`]: why a tier did not return a chunk, naming the tier and
//!   the chunk and keeping the failure's source chain;
//! * wrappers, each a [`ChunkTier`] over a [`ChunkTier`]: [`Bounded`]
//!   (time limit, bounded retries), [`Delayed`] (injected latency and
//!   bandwidth), [`Verified`] (the bytes must hash to the chunk's name) and
//!   [`Metered`] (counters and a latency histogram per tier, Prometheus text
//!   through `lode_common::prom`);
//! * `conformance` (feature `conformance`): the one suite every tier passes —
//!   the store over memory, a directory and S3, the fleet over lode cache
//!   nodes and over memcached, and the host's memory and disk caches.
//!
//! It sits low in the data path (lode-common and lode-chunk below it): the
//! store, the caches, the fleet and the agent depend on it, never the other
//! way round.

/// Inside `impl ChunkTier for Wrapper<T>`: the methods a wrapper passes to
/// its `inner` tier unchanged (`label`, `fill`, `abandon`, `settle`); the
/// wrapper writes its own `fetch`.
macro_rules! forward_to_inner {
    () => {
        fn label(&self) -> &'static str {
            self.inner.label()
        }

        fn fill(&self, id: &$crate::ChunkId, ciphertext: bytes::Bytes) {
            self.inner.fill(id, ciphertext)
        }

        fn abandon(&self, id: &$crate::ChunkId) {
            self.inner.abandon(id)
        }

        fn settle(&self) -> futures::future::BoxFuture<'_, ()> {
            self.inner.settle()
        }
    };
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
mod metered;
mod wrap;

pub use error::{Source, TierError};
pub use metered::{Metered, TierMetrics};
pub use wrap::{Bounded, Delayed, Verified};

use bytes::Bytes;
use futures::future::BoxFuture;
use lode_chunk::ChunkName;
use std::fmt;
use std::sync::Arc;

/// A chunk's address: its root (which store prefix) and its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChunkId {
    /// Root holding the chunk in the store.
    pub root: Arc<str>,
    /// SHA-256 of the ciphertext.
    pub name: ChunkName,
}

/// A source of chunk ciphertext. Implementations need not verify: the reader
/// checks every chunk against its name ([`Verified`]).
///
/// What callers rely on (and `conformance` checks): a chunk the tier does
/// not have is [`TierError::NotFound`], never a failure; a fetch returns the
/// bytes of the chunk asked for, never another's; concurrent fetches of one
/// chunk are safe; [`ChunkTier::abandon`] and [`ChunkTier::settle`] are safe
/// at any time; every error names the tier and the chunk.
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
