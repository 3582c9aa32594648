//! The chunk read path: memory → local disk → remote tiers, single-flight.
//!
//! ```text
//! read(image, offset, len)
//!   └─ for each 512 KiB chunk touched (concurrently), the bytes asked of it
//!        hole?            → zeros, no fetch
//!        memory cache     → verified plaintext (keyed by name + plaintext hash)
//!        disk pages       → only the 4 KiB pages covering the bytes, each
//!                           authenticated under the host key and bound to
//!                           (name, plaintext hash, page index, key id); a
//!                           whole-chunk read takes every page and promotes
//!                           the chunk to memory
//!        single-flight    → one ciphertext fetch per chunk name, host-wide
//!          tiers in order → ciphertext, hashed against the name; fills the
//!                           tiers above it
//!        decrypt + verify → stored length, bounded zstd decoding for compressed
//!                           chunks, plaintext SHA-256 from the tenant's sealed
//!                           manifest; then memory, and page files off the
//!                           read path
//! ```
//! No byte reaches a client before both the name check and the plaintext
//! check pass, or (disk pages) before the page's tag does, which only a
//! verified chunk's page carries.

use bytes::Bytes;
use lode_cache::{DiskCache, MemoryCache};
use lode_chunk::{open_named_chunk, ChunkError, ChunkName, ChunkSecret};
use lode_common::prom;
use lode_tier::{ChunkId, ChunkTier, Metered, TierError, TierMetrics, Verified};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Notify, OnceCell};

/// Who asked for a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A client's read: fetched at once, never queued.
    Demand,
    /// A background prefetch: started only while no demand fetch is in
    /// flight ([`ChunkReader::demand_settled`]), so a guest's reads overtake
    /// queued prefetch.
    Prefetch,
}

/// Why a chunk could not be read. Cloned (one fetch's result goes to every
/// reader waiting on it), so sources are shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// No tier could deliver a chunk that matches its name.
    #[error("chunk {index} ({name}) unavailable: {}", list(.errors))]
    Unavailable {
        /// Chunk index in the image.
        index: u64,
        /// Chunk name.
        name: ChunkName,
        /// What each tier said, nearest first (each naming its tier and
        /// keeping its source).
        errors: Vec<TierError>,
    },
    /// The chunk does not open: wrong stored length, refused compressed
    /// frame, or wrong plaintext (a tampered manifest or chunk).
    #[error("chunk {index} does not verify")]
    Verify {
        /// Chunk index.
        index: u64,
        /// What the chunk format refused.
        #[source]
        source: Arc<ChunkError>,
    },
    /// The task that opens the chunk did not finish (panicked or cancelled).
    #[error("chunk {index}: opening it did not finish")]
    Task {
        /// Chunk index.
        index: u64,
        /// The task's fate.
        #[source]
        source: Arc<tokio::task::JoinError>,
    },
    /// A verified chunk of another length than the image's geometry gives
    /// (the manifest authenticates the hash, not the length).
    #[error("chunk {index}: plaintext is {got} bytes, expected {expected}")]
    Length {
        /// Chunk index.
        index: u64,
        /// Plaintext length.
        got: usize,
        /// Length from the image's geometry.
        expected: usize,
    },
    /// A read outside the chunk.
    #[error("chunk {index}: range {start}..{end} outside a {chunk_len}-byte chunk")]
    Range {
        /// Chunk index.
        index: u64,
        /// First byte asked for.
        start: usize,
        /// End of the bytes asked for.
        end: usize,
        /// The chunk's length.
        chunk_len: usize,
    },
}

/// The tiers' errors, `; `-separated.
fn list(errors: &[TierError]) -> String {
    let all: Vec<String> = errors
        .iter()
        .map(|e| lode_common::errors::chain(e))
        .collect();
    all.join("; ")
}

/// Disk-cache writes running in the background at once (each holds one
/// 512 KiB chunk, which the memory cache holds anyway).
const DISK_PUTS: usize = 32;

/// A fetch in progress: the ciphertext and, when the reader that started it
/// could decrypt it, the plaintext with its hash (so concurrent readers of a
/// cold chunk decrypt it once).
type Landed = (Bytes, Option<([u8; 32], Bytes)>);
type Flight = Arc<OnceCell<Result<Landed, ReadError>>>;

/// Host-wide chunk cache and tiers, shared by every export and connection.
#[derive(Debug)]
pub struct ChunkReader {
    memory: MemoryCache,
    disk: Option<Arc<DiskCache>>,
    /// Slots for disk-cache writes running off the read path; when all are
    /// taken the write is awaited inline (backpressure, nothing dropped).
    disk_puts: Arc<tokio::sync::Semaphore>,
    /// The tiers behind the caches, nearest first: each checked against
    /// the chunk's name and counted.
    tiers: Vec<Metered<Verified<Arc<dyn ChunkTier>>>>,
    // std Mutex: only map operations under it, never held across an await.
    inflight: Mutex<HashMap<ChunkName, Flight>>,
    /// Metrics of the memory tier.
    pub memory_metrics: TierMetrics,
    /// Metrics of the disk tier.
    pub disk_metrics: TierMetrics,
    in_flight: AtomicU64,
    /// Demand reads that missed the memory cache and are still running.
    demand_misses: AtomicUsize,
    /// Woken when `demand_misses` drops to 0.
    demand_idle: Notify,
}

/// Counts one demand miss while alive.
struct DemandMiss<'a>(&'a ChunkReader);

impl Drop for DemandMiss<'_> {
    fn drop(&mut self) {
        if self.0.demand_misses.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.demand_idle.notify_waiters();
        }
    }
}

impl ChunkReader {
    /// A reader over `tiers` (nearest first) with a memory cache of
    /// `memory_bytes` and an optional disk cache.
    pub fn new(memory_bytes: u64, disk: Option<DiskCache>, tiers: Vec<Arc<dyn ChunkTier>>) -> Self {
        ChunkReader {
            memory: MemoryCache::new(memory_bytes),
            disk: disk.map(Arc::new),
            disk_puts: Arc::new(tokio::sync::Semaphore::new(DISK_PUTS)),
            tiers: tiers
                .into_iter()
                .map(|t| Metered::new(Verified::new(t)))
                .collect(),
            inflight: Mutex::new(HashMap::new()),
            memory_metrics: TierMetrics::default(),
            disk_metrics: TierMetrics::default(),
            in_flight: AtomicU64::new(0),
            demand_misses: AtomicUsize::new(0),
            demand_idle: Notify::new(),
        }
    }

    /// Waits until every disk-cache write started so far has landed (call
    /// before exiting, so the next process finds the chunks on disk).
    pub async fn settle(&self) {
        if let Ok(all) = self.disk_puts.acquire_many(DISK_PUTS as u32).await {
            drop(all);
        }
        for tier in &self.tiers {
            tier.settle().await;
        }
    }

    /// Labels of the remote tiers, in order.
    pub fn tier_labels(&self) -> Vec<&'static str> {
        self.tiers.iter().map(|t| t.label()).collect()
    }

    /// Returns once no demand read is fetching a chunk (at once when none
    /// is). Prefetchers call it before each fetch they start.
    pub async fn demand_settled(&self) {
        loop {
            let idle = self.demand_idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.demand_misses.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Whether the memory or the disk cache holds the chunk `name` with
    /// plaintext hash `plain_sha` now (index lookups only: no data is read
    /// and no eviction order changes).
    pub fn holds(&self, name: &ChunkName, plain_sha: &[u8; 32]) -> bool {
        self.memory.contains(name, plain_sha)
            || self
                .disk
                .as_ref()
                .is_some_and(|d| d.contains(name, plain_sha))
    }

    /// Demand reads fetching a chunk right now.
    pub fn demand_in_flight(&self) -> usize {
        self.demand_misses.load(Ordering::SeqCst)
    }

    /// Plaintext of chunk `index` (named `id`, `chunk_len` bytes), verified
    /// with `secret`.
    #[tracing::instrument(level = "debug", skip(self, secret), fields(chunk = %id.name))]
    pub async fn chunk(
        &self,
        index: u64,
        id: &ChunkId,
        secret: &ChunkSecret,
        chunk_len: usize,
        priority: Priority,
    ) -> Result<Bytes, ReadError> {
        self.read(index, id, secret, chunk_len, 0..chunk_len, priority)
            .await
    }

    /// Bytes `range` of chunk `index` (named `id`, `chunk_len` bytes),
    /// verified with `secret`. On a memory miss a disk hit reads and
    /// authenticates only the pages covering `range`; a range of the whole
    /// chunk reads every page and promotes the chunk to memory.
    #[tracing::instrument(level = "debug", skip(self, secret), fields(chunk = %id.name))]
    pub async fn read(
        &self,
        index: u64,
        id: &ChunkId,
        secret: &ChunkSecret,
        chunk_len: usize,
        range: Range<usize>,
        priority: Priority,
    ) -> Result<Bytes, ReadError> {
        if range.start >= range.end || range.end > chunk_len {
            return Err(ReadError::Range {
                index,
                start: range.start,
                end: range.end,
                chunk_len,
            });
        }
        let t = Instant::now();
        if let Some(b) = self.memory.get(&id.name, &secret.plain_sha) {
            self.memory_metrics.hit(range.len(), t.elapsed());
            return slice(index, b, chunk_len, range);
        }
        self.memory_metrics.miss();
        let whole = range.len() == chunk_len;
        if let Some(disk) = &self.disk {
            let part = (!whole).then(|| range.clone());
            if let Some(b) = disk
                .read(&id.name, &secret.plain_sha, chunk_len, part)
                .await
            {
                self.disk_metrics.hit(b.len(), t.elapsed());
                if whole {
                    self.memory.insert(id.name, secret.plain_sha, b.clone());
                }
                return Ok(b);
            }
            self.disk_metrics.miss();
        }
        let pt = self.fetch(index, id, secret, priority).await?;
        slice(index, pt, chunk_len, range)
    }

    /// A chunk no cache holds: fetched once per name host-wide (single
    /// flight), verified, then cached in memory and on disk.
    async fn fetch(
        &self,
        index: u64,
        id: &ChunkId,
        secret: &ChunkSecret,
        priority: Priority,
    ) -> Result<Bytes, ReadError> {
        let _demand = (priority == Priority::Demand).then(|| {
            self.demand_misses.fetch_add(1, Ordering::SeqCst);
            DemandMiss(self)
        });
        let flight = {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(id.name)
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let landed = flight
            .get_or_init(|| async {
                let ct = self.load(index, id).await?;
                // The starter decrypts and publishes to the memory cache before
                // the flight ends, so no reader finds neither.
                let pt = self.decrypt(index, secret, ct.clone()).await.ok();
                if let Some(pt) = &pt {
                    self.verified(id.name, secret.plain_sha, pt.clone()).await;
                }
                Ok((ct, pt.map(|p| (secret.plain_sha, p))))
            })
            .await
            .clone();
        {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(&id.name).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                m.remove(&id.name);
            }
        }
        let (ct, pt) = landed?;
        match pt {
            Some((sha, pt)) if sha == secret.plain_sha => Ok(pt),
            _ => {
                // Another tenant's view of the same name, or a failed decrypt:
                // verify with this reader's own secret.
                let pt = self.decrypt(index, secret, ct).await?;
                self.verified(id.name, secret.plain_sha, pt.clone()).await;
                Ok(pt)
            }
        }
    }

    /// Caches a chunk that passed the name and plaintext checks: in memory
    /// at once, as a page file off the read path (inline only when
    /// [`DISK_PUTS`] writes are already running: backpressure, nothing
    /// dropped).
    async fn verified(&self, name: ChunkName, plain_sha: [u8; 32], pt: Bytes) {
        self.memory.insert(name, plain_sha, pt.clone());
        let Some(disk) = &self.disk else { return };
        match self.disk_puts.clone().try_acquire_owned() {
            Ok(permit) => {
                let disk = disk.clone();
                tokio::spawn(async move {
                    disk.put(name, plain_sha, pt).await;
                    drop(permit);
                });
            }
            Err(_) => disk.put(name, plain_sha, pt).await,
        }
    }

    async fn decrypt(
        &self,
        index: u64,
        secret: &ChunkSecret,
        ct: Bytes,
    ) -> Result<Bytes, ReadError> {
        let secret = *secret;
        // `ct` comes from `load`, which checked it against the chunk name.
        let pt = tokio::task::spawn_blocking(move || open_named_chunk(index, &secret, ct.to_vec()))
            .await
            .map_err(|e| ReadError::Task {
                index,
                source: Arc::new(e),
            })?
            .map_err(|e| ReadError::Verify {
                index,
                source: Arc::new(e),
            })?;
        Ok(Bytes::from(pt))
    }

    async fn load(&self, index: u64, id: &ChunkId) -> Result<Bytes, ReadError> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let r = self.load_inner(index, id).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        r
    }

    async fn load_inner(&self, index: u64, id: &ChunkId) -> Result<Bytes, ReadError> {
        let mut errors = Vec::new();
        for (i, tier) in self.tiers.iter().enumerate() {
            // Verified: only bytes that hash to the chunk's name come back.
            match tier.fetch_verified(id).await {
                Ok(ct) => {
                    for upper in &self.tiers[..i] {
                        upper.fill(id, ct.clone());
                    }
                    return Ok(ct);
                }
                Err(e) => errors.push(e),
            }
        }
        for tier in &self.tiers {
            tier.abandon(id);
        }
        Err(ReadError::Unavailable {
            index,
            name: id.name,
            errors,
        })
    }

    /// Prometheus text for every tier, plus occupancy and in-flight fetches.
    pub fn render_metrics(&self, out: &mut String) {
        self.memory_metrics.render(out, "memory");
        if self.disk.is_some() {
            self.disk_metrics.render(out, "disk");
        }
        for t in &self.tiers {
            t.render(out);
        }
        let mem = "tier=\"memory\"";
        prom::sample(out, "lode_cache_bytes", mem, self.memory.bytes());
        prom::sample(out, "lode_cache_chunks", mem, self.memory.len());
        if let Some(d) = &self.disk {
            let disk = "tier=\"disk\"";
            prom::sample(out, "lode_cache_bytes", disk, d.bytes());
            prom::sample(out, "lode_cache_chunks", disk, d.len());
            prom::sample(
                out,
                "lode_cache_corrupt_discarded_total",
                disk,
                d.corrupt_discarded(),
            );
            prom::sample(
                out,
                "lode_cache_writes_pending",
                disk,
                DISK_PUTS - self.disk_puts.available_permits(),
            );
        }
        prom::sample(
            out,
            "lode_fetches_in_flight",
            "",
            prom::load(&self.in_flight),
        );
    }

    /// Chunks fetched from remote tier `i` so far.
    pub fn fetched_from(&self, i: usize) -> (u64, u64) {
        self.tiers[i].metrics().served()
    }
}

/// `range` of a whole chunk, once its length is the one the manifest's
/// geometry gives (the manifest authenticates the chunk's hash, not its
/// length: a chunk of the wrong size must not reach the slicing).
fn slice(index: u64, pt: Bytes, chunk_len: usize, range: Range<usize>) -> Result<Bytes, ReadError> {
    if pt.len() != chunk_len {
        return Err(ReadError::Length {
            index,
            got: pt.len(),
            expected: chunk_len,
        });
    }
    Ok(pt.slice(range))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use lode_chunk::{seal_chunk, Salt};
    use std::error::Error as _;

    /// A tier that answers every fetch with the same wrong bytes.
    #[derive(Debug)]
    struct Liar;

    impl ChunkTier for Liar {
        fn label(&self) -> &'static str {
            "fleet"
        }
        fn fetch<'a>(&'a self, _id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
            Box::pin(async { Ok(Bytes::from_static(b"not the chunk")) })
        }
    }

    /// A tier whose every fetch fails with an I/O cause.
    #[derive(Debug)]
    struct Broken;

    impl ChunkTier for Broken {
        fn label(&self) -> &'static str {
            "broken"
        }
        fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
            let cause = std::io::Error::other("the link is down");
            Box::pin(async move { Err(TierError::failed("broken", id.name, cause)) })
        }
    }

    /// The message of an unavailable chunk says why each tier failed (the
    /// causes, not only "fetch failed").
    #[tokio::test]
    async fn an_unavailable_chunk_names_each_tiers_cause() {
        let c = seal_chunk(&Salt([5; 32]), &[9u8; 4096]);
        let id = ChunkId {
            root: "r".into(),
            name: c.name,
        };
        let reader = ChunkReader::new(1 << 20, None, vec![Arc::new(Broken)]);
        let e = reader
            .chunk(0, &id, &c.secret, 4096, Priority::Demand)
            .await
            .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("broken: chunk") && shown.contains("fetch failed: the link is down"),
            "{shown}"
        );
    }

    /// What each tier said is kept, typed, and counted per tier; a chunk
    /// that does not open keeps the chunk format's error as its source.
    #[tokio::test]
    async fn errors_keep_each_tier_and_the_chunk_error() {
        let store = lode_store::Store::open("memory://").unwrap();
        let c = seal_chunk(&Salt([4; 32]), &[7u8; 4096]);
        let id = ChunkId {
            root: "r".into(),
            name: c.name,
        };
        let tiers: Vec<Arc<dyn ChunkTier>> = vec![Arc::new(Liar), Arc::new(store.clone())];
        let reader = ChunkReader::new(1 << 20, None, tiers);
        let e = reader
            .chunk(0, &id, &c.secret, 4096, Priority::Demand)
            .await
            .unwrap_err();
        match &e {
            ReadError::Unavailable { name, errors, .. } => {
                assert_eq!(*name, c.name);
                assert!(matches!(
                    errors[0],
                    TierError::Corrupt { tier: "fleet", .. }
                ));
                assert!(matches!(
                    errors[1],
                    TierError::NotFound { tier: "store", .. }
                ));
            }
            other => panic!("{other:?}"),
        }
        let shown = e.to_string();
        assert!(
            shown.contains("fleet: chunk") && shown.contains("store: chunk"),
            "{shown}"
        );
        let mut m = String::new();
        reader.render_metrics(&mut m);
        assert!(
            m.contains("lode_tier_errors_total{tier=\"fleet\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("lode_tier_misses_total{tier=\"fleet\"} 0"),
            "{m}"
        );
        assert!(
            m.contains("lode_tier_misses_total{tier=\"store\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("lode_tier_errors_total{tier=\"store\"} 0"),
            "{m}"
        );

        // The chunk is there now, but the manifest's secret is another's.
        store
            .put_chunk("r", &c.name, Bytes::from(c.ciphertext.clone()))
            .await
            .unwrap();
        let reader = ChunkReader::new(1 << 20, None, vec![Arc::new(store)]);
        let mut wrong = c.secret;
        wrong.plain_sha[0] ^= 1;
        let e = reader
            .chunk(0, &id, &wrong, 4096, Priority::Demand)
            .await
            .unwrap_err();
        assert!(matches!(e, ReadError::Verify { index: 0, .. }), "{e:?}");
        let src = e.source().expect("the chunk error");
        let chunk = src.downcast_ref::<Arc<ChunkError>>().expect("a ChunkError");
        assert!(
            matches!(**chunk, ChunkError::PlaintextMismatch { index: 0 }),
            "{chunk:?}"
        );
        assert_eq!(reader.fetched_from(0), (1, c.ciphertext.len() as u64));
    }
}
