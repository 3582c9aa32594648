//! What clients read, per manifest digest: the evidence behind "this host
//! is warm for that image".
//!
//! For every image it serves, the agent remembers the distinct stored chunks
//! (not holes) that client *demand* reads touched; background prefetch is
//! not evidence that a VM needs a chunk and is not counted. `GET /v1/images`
//! then checks each remembered chunk against the memory and disk caches
//! *now*, so a worker can tell a host whose caches still hold what its VMs
//! read from one whose caches evicted it since.
//!
//! A chunk is remembered as the caches key it: its name and plaintext hash
//! (both caches refuse a lookup without the hash). Why a set of these and
//! not a bitmap of chunk indexes: an image's handle, with its manifest and
//! key table, is freed when its last volume detaches, and the read set must
//! outlive it (a detached image can stay warm); a bitmap would need the
//! manifest kept for every remembered digest (about 100 bytes per chunk of
//! the whole image), a set costs 64 bytes per chunk *read*, usually a small
//! part of the image. Bounds: [`DIGESTS_KEPT`] digests, the least recently
//! attached or read dropped first; per digest at most the image's chunk
//! count. Volumes of one digest share one set.
//!
//! In memory only: after an agent restart the list starts empty and refills
//! as VMs read.

use lode_chunk::ChunkName;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Digests remembered; the least recently attached or read is dropped first.
pub const DIGESTS_KEPT: usize = 256;
/// Chunks remembered over all digests (about 100 bytes each with the set's
/// overhead: ≈ 100 MiB at most): past it, whole digests are dropped, least
/// recently used first, so 256 fully read 10 GiB images cannot hold 500 MiB.
pub const CHUNKS_KEPT: usize = 1 << 20;

/// A stored chunk as the caches key it: its name and plaintext SHA-256.
pub type ChunkKey = (ChunkName, [u8; 32]);

/// One remembered image, as `GET /v1/images` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// Manifest digest, `sha256:<64 hex>` (as the attach API spells it).
    pub digest: String,
    /// Tenant.
    pub tenant: String,
    /// Image name.
    pub image: String,
    /// Distinct stored chunks client demand reads touched.
    pub read_chunks: u64,
    /// Of those, how many the host's memory or disk cache holds now.
    pub resident_chunks: u64,
}

/// Which image a digest is, and its chunk count (the bound of its set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageId {
    /// Manifest digest.
    pub digest: String,
    /// Tenant.
    pub tenant: String,
    /// Image name.
    pub image: String,
    /// Chunks of the image.
    pub chunks: usize,
}

#[derive(Debug)]
struct Entry {
    tenant: String,
    image: String,
    limit: usize,
    chunks: HashSet<ChunkKey>,
    /// Clock value of the last attach or new chunk.
    used: u64,
    /// Clock value when the entry was made: changes when a dropped digest
    /// comes back, so handles know to note their chunks again.
    epoch: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Entry>,
    clock: u64,
    /// Chunks in all sets.
    total: usize,
}

/// The read sets of the last [`DIGESTS_KEPT`] images, host-wide.
#[derive(Debug, Default)]
pub struct ReadLog {
    // A std Mutex: only map operations under it, never held across an await.
    inner: Mutex<Inner>,
}

impl Inner {
    /// The entry of `id`, made (dropping the least recently used past the
    /// bound) when missing, marked as just used.
    fn entry(&mut self, id: &ImageId) -> &mut Entry {
        self.clock += 1;
        let now = self.clock;
        if !self.map.contains_key(&id.digest) {
            while self.map.len() >= DIGESTS_KEPT {
                if !self.drop_oldest(&id.digest) {
                    break;
                }
            }
        }
        let e = self.map.entry(id.digest.clone()).or_insert_with(|| Entry {
            tenant: id.tenant.clone(),
            image: id.image.clone(),
            limit: id.chunks,
            chunks: HashSet::new(),
            used: now,
            epoch: now,
        });
        e.used = now;
        e
    }

    /// Drops the least recently used digest other than `keep`; false when
    /// there is none.
    fn drop_oldest(&mut self, keep: &str) -> bool {
        let oldest = self
            .map
            .iter()
            .filter(|(d, _)| d.as_str() != keep)
            .min_by_key(|(_, e)| e.used)
            .map(|(d, _)| d.clone());
        match oldest.and_then(|d| self.map.remove(&d)) {
            Some(e) => {
                self.total -= e.chunks.len();
                true
            }
            None => false,
        }
    }
}

impl ReadLog {
    /// An empty log.
    pub fn new() -> ReadLog {
        ReadLog::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `id` as just used (a client attached), remembering it if it
    /// was not; returns its entry's epoch.
    pub fn touch(&self, id: &ImageId) -> u64 {
        self.lock().entry(id).epoch
    }

    /// Records that a client read `chunk` of `id`; returns the entry's
    /// epoch (another one than before when the digest had been dropped).
    pub fn record(&self, id: &ImageId, chunk: ChunkKey) -> u64 {
        let mut g = self.lock();
        let e = g.entry(id);
        let epoch = e.epoch;
        if e.chunks.len() >= e.limit || e.chunks.contains(&chunk) {
            return epoch;
        }
        while g.total >= CHUNKS_KEPT {
            if !g.drop_oldest(&id.digest) {
                return epoch;
            }
        }
        if let Some(e) = g.map.get_mut(&id.digest) {
            e.chunks.insert(chunk);
            g.total += 1;
        }
        epoch
    }

    /// Digests remembered.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct chunks read of `digest`, if remembered.
    pub fn read_chunks(&self, digest: &str) -> Option<usize> {
        self.lock().map.get(digest).map(|e| e.chunks.len())
    }

    /// Every remembered image, most recently used first, with how many of
    /// its read chunks `holds` (a cache lookup) finds now. The lookups run
    /// outside the lock, one image's chunks copied out at a time.
    pub fn list(&self, holds: impl Fn(&ChunkName, &[u8; 32]) -> bool) -> Vec<ImageInfo> {
        let mut order: Vec<(u64, String)> = self
            .lock()
            .map
            .iter()
            .map(|(d, e)| (e.used, d.clone()))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let mut out = Vec::with_capacity(order.len());
        for (_, digest) in order {
            let Some((tenant, image, chunks)) = self.lock().map.get(&digest).map(|e| {
                let chunks: Vec<ChunkKey> = e.chunks.iter().copied().collect();
                (e.tenant.clone(), e.image.clone(), chunks)
            }) else {
                continue;
            };
            let resident = chunks.iter().filter(|(n, s)| holds(n, s)).count();
            out.push(ImageInfo {
                digest,
                tenant,
                image,
                read_chunks: chunks.len() as u64,
                resident_chunks: resident as u64,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize, chunks: usize) -> ImageId {
        ImageId {
            digest: format!("sha256:{n:064x}"),
            tenant: "t".into(),
            image: format!("i{n}"),
            chunks,
        }
    }

    fn key(b: u8) -> ChunkKey {
        (ChunkName([b; 32]), [b ^ 0xff; 32])
    }

    #[test]
    fn the_least_recently_used_digest_goes_first() {
        let log = ReadLog::new();
        for n in 0..DIGESTS_KEPT {
            log.record(&id(n, 4), key(1));
        }
        // Digest 0 attached again: now 1 is the oldest.
        log.touch(&id(0, 4));
        log.record(&id(DIGESTS_KEPT, 4), key(2));
        assert_eq!(log.len(), DIGESTS_KEPT);
        assert_eq!(log.read_chunks(&id(0, 4).digest), Some(1));
        assert_eq!(log.read_chunks(&id(1, 4).digest), None);
        let all = log.list(|_, _| true);
        assert_eq!(all.len(), DIGESTS_KEPT);
        assert_eq!(all[0].digest, id(DIGESTS_KEPT, 4).digest);
        assert_eq!(all[1].digest, id(0, 4).digest);
    }

    #[test]
    fn a_set_is_bounded_by_the_chunk_count_and_counts_residents() {
        let log = ReadLog::new();
        let i = id(7, 3);
        let e1 = log.record(&i, key(1));
        for b in [1, 2, 2, 3, 4, 5] {
            assert_eq!(log.record(&i, key(b)), e1);
        }
        assert_eq!(log.read_chunks(&i.digest), Some(3));
        let l = log.list(|n, s| n.0[0] != 2 && *s == key(n.0[0]).1);
        assert_eq!(
            l,
            vec![ImageInfo {
                digest: i.digest.clone(),
                tenant: "t".into(),
                image: "i7".into(),
                read_chunks: 3,
                resident_chunks: 2,
            }]
        );
    }

    #[test]
    fn chunks_over_all_digests_are_bounded() {
        let log = ReadLog::new();
        let big = |n| id(n, CHUNKS_KEPT);
        let k = |i: usize| {
            (ChunkName([0; 32]), {
                let mut h = [0u8; 32];
                h[..8].copy_from_slice(&(i as u64).to_le_bytes());
                h
            })
        };
        for i in 0..CHUNKS_KEPT / 2 {
            log.record(&big(0), k(i));
        }
        for i in 0..CHUNKS_KEPT / 2 {
            log.record(&big(1), k(i));
        }
        // Full: a new chunk of digest 2 drops digest 0, the oldest.
        log.record(&big(2), k(0));
        assert_eq!(log.read_chunks(&big(0).digest), None);
        assert_eq!(log.read_chunks(&big(1).digest), Some(CHUNKS_KEPT / 2));
        // Digest 1 alone past the bound: it keeps what it has, no more.
        for i in CHUNKS_KEPT / 2..CHUNKS_KEPT + 10 {
            log.record(&big(1), k(i));
        }
        assert_eq!(log.read_chunks(&big(1).digest), Some(CHUNKS_KEPT));
        assert_eq!(log.read_chunks(&big(2).digest), None);
        assert_eq!(log.lock().total, CHUNKS_KEPT);
    }

    #[test]
    fn a_dropped_digest_comes_back_with_another_epoch() {
        let log = ReadLog::new();
        let e0 = log.touch(&id(0, 1));
        for n in 1..=DIGESTS_KEPT {
            log.touch(&id(n, 1));
        }
        assert_eq!(log.read_chunks(&id(0, 1).digest), None);
        assert_ne!(log.record(&id(0, 1), key(1)), e0);
    }
}
