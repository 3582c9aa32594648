//! The memory tier: verified plaintext of recently read chunks, host-wide.
//!
//! Keyed by chunk name; every entry also records its plaintext SHA-256, and a
//! lookup must present the same hash (from the reader's own sealed manifest).
//! A tenant that merely knows a chunk's name therefore cannot read another
//! tenant's plaintext out of the cache.

use crate::s3fifo::S3Fifo;
use bytes::Bytes;
use lode_chunk::ChunkName;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug)]
struct Inner {
    policy: S3Fifo<ChunkName>,
    data: HashMap<ChunkName, ([u8; 32], Bytes)>,
}

/// Bounded in-memory cache of decrypted, verified chunks.
#[derive(Debug)]
pub struct MemoryCache {
    // A std Mutex: held only for map operations, never across an await.
    inner: Mutex<Inner>,
}

impl MemoryCache {
    /// A cache holding at most `capacity` bytes of plaintext.
    pub fn new(capacity: u64) -> Self {
        MemoryCache {
            inner: Mutex::new(Inner {
                policy: S3Fifo::new(capacity),
                data: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk's plaintext, if cached under this plaintext hash.
    pub fn get(&self, name: &ChunkName, plain_sha: &[u8; 32]) -> Option<Bytes> {
        let mut g = self.lock();
        let hit = match g.data.get(name) {
            Some((sha, b)) if sha == plain_sha => Some(b.clone()),
            _ => None,
        };
        if hit.is_some() {
            g.policy.touch(name);
        }
        hit
    }

    /// Whether the chunk is cached under this plaintext hash (no hit is
    /// counted: the eviction order does not change).
    pub fn contains(&self, name: &ChunkName, plain_sha: &[u8; 32]) -> bool {
        matches!(self.lock().data.get(name), Some((sha, _)) if sha == plain_sha)
    }

    /// Caches verified plaintext.
    pub fn insert(&self, name: ChunkName, plain_sha: [u8; 32], plaintext: Bytes) {
        let mut g = self.lock();
        let evicted = g.policy.insert(name, plaintext.len() as u64);
        for e in evicted {
            g.data.remove(&e);
        }
        if g.policy.contains(&name) {
            g.data.insert(name, (plain_sha, plaintext));
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().policy.weight()
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.lock().policy.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_need_the_right_plaintext_hash() {
        let c = MemoryCache::new(1 << 20);
        c.insert(ChunkName([1; 32]), [2; 32], Bytes::from_static(b"abc"));
        assert!(c.get(&ChunkName([1; 32]), &[2; 32]).is_some());
        assert!(c.get(&ChunkName([1; 32]), &[3; 32]).is_none());
        assert!(c.contains(&ChunkName([1; 32]), &[2; 32]));
        assert!(!c.contains(&ChunkName([1; 32]), &[3; 32]));
        assert!(!c.contains(&ChunkName([9; 32]), &[2; 32]));
        assert_eq!(c.bytes(), 3);
    }
}
