//! The chunk store as a [`ChunkTier`]: the last tier of the read path.

use crate::error::StoreError;
use crate::store::Store;
use bytes::Bytes;
use futures::future::BoxFuture;
use lode_tier::{ChunkId, ChunkTier, TierError};

/// Fetches a chunk's ciphertext with [`Store::get_chunk`]: a chunk the
/// store does not hold is [`TierError::NotFound`]; any other error is
/// [`TierError::Failed`] with the [`StoreError`] (and its own sources) kept.
/// A store is not a cache: fills are ignored.
impl ChunkTier for Store {
    fn label(&self) -> &'static str {
        "store"
    }

    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move {
            self.get_chunk(&id.root, &id.name)
                .await
                .map_err(|e| match e {
                    StoreError::Missing { .. } => TierError::NotFound {
                        tier: "store",
                        name: id.name,
                    },
                    other => TierError::failed("store", id.name, other),
                })
        })
    }
}
