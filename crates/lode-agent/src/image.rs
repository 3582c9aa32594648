//! One opened image: its manifest and key table over the shared reader.

use crate::range::{BlockRange, RangeError};
use crate::reader::{ChunkReader, Priority, ReadError};
use crate::reads::{ImageId, ReadLog};
use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use lode_store::OpenedImage;
use lode_tier::ChunkId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Zeros for holes: one shared buffer instead of a fresh 512 KiB per read.
static ZEROS: [u8; lode_chunk::CHUNK_SIZE as usize] = [0; lode_chunk::CHUNK_SIZE as usize];

/// An image ready to serve reads.
#[derive(Debug)]
pub struct ImageHandle {
    /// `TENANT/NAME`.
    pub export: String,
    /// Manifest and key table.
    pub image: OpenedImage,
    root: Arc<str>,
    reader: Arc<ChunkReader>,
    // (seen, first-read order) while recording the start-up working set.
    recording: Mutex<Option<(Vec<bool>, Vec<u32>)>>,
    /// Set once a client attached (prefetch and recording start then).
    pub activated: std::sync::atomic::AtomicBool,
    /// Where client reads are remembered by digest, if anywhere.
    reads: Option<Reads>,
}

/// This image's part in the host's [`ReadLog`].
#[derive(Debug)]
struct Reads {
    log: Arc<ReadLog>,
    id: ImageId,
    /// Chunk indexes already given to the log (one bit each): a chunk's
    /// first read takes the log's lock, later reads only an atomic.
    noted: Vec<AtomicU64>,
    /// The log entry's epoch when last told (0: never).
    epoch: AtomicU64,
}

impl Reads {
    /// Forgets what was given to the log when its entry is another one
    /// than before (the digest was dropped and came back).
    fn sync(&self, epoch: u64) {
        let before = self.epoch.swap(epoch, Ordering::Relaxed);
        if before != 0 && before != epoch {
            for w in &self.noted {
                w.store(0, Ordering::Relaxed);
            }
        }
    }
}

impl ImageHandle {
    /// Wraps an opened image.
    pub fn new(export: String, image: OpenedImage, reader: Arc<ChunkReader>) -> Self {
        let root = Arc::from(image.manifest.root.as_str());
        ImageHandle {
            export,
            image,
            root,
            reader,
            recording: Mutex::new(None),
            activated: Default::default(),
            reads: None,
        }
    }

    /// Remembers the distinct stored chunks client reads touch in `log`,
    /// under this image's manifest digest (shared by every handle of it).
    pub fn with_reads(mut self, log: Arc<ReadLog>) -> Self {
        let chunks = self.chunks() as usize;
        let (tenant, image) = match crate::exports::ExportName::parse(&self.export) {
            Some(n) => (n.tenant, n.name),
            None => (self.image.manifest.tenant.clone(), self.export.clone()),
        };
        self.reads = Some(Reads {
            log,
            id: ImageId {
                digest: self.image.digest.clone(),
                tenant,
                image,
                chunks,
            },
            noted: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            epoch: AtomicU64::new(0),
        });
        self
    }

    /// Marks this image as just used in the read log (a client attached).
    pub fn touch_reads(&self) {
        if let Some(r) = &self.reads {
            r.sync(r.log.touch(&r.id));
        }
    }

    /// Starts recording the order in which chunks are first read.
    pub fn start_recording(&self) {
        let n = self.chunks() as usize;
        *self.recording.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((vec![false; n], Vec::new()));
    }

    /// The first-read order recorded so far (`None` when not recording).
    pub fn recorded(&self) -> Option<Vec<u32>> {
        self.recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, o)| o.clone())
    }

    /// Notes a client's read of chunk `index`: in the read log (its first
    /// read), and in the working set when recording.
    fn note(&self, index: u64) {
        if self.is_hole(index) {
            return;
        }
        self.note_read(index);
        let mut g = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, order)) = g.as_mut() {
            if !seen[index as usize] {
                seen[index as usize] = true;
                order.push(index as u32);
            }
        }
    }

    fn note_read(&self, index: u64) {
        let Some(r) = &self.reads else { return };
        let i = index as usize;
        let (Some(word), Some(Some(name)), Some(Some(secret))) = (
            r.noted.get(i / 64),
            self.image.manifest.names.get(i),
            self.image.keys.0.get(i),
        ) else {
            return;
        };
        let bit = 1u64 << (i % 64);
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            r.sync(r.log.record(&r.id, (*name, secret.plain_sha)));
        }
    }

    /// Image size in bytes.
    pub fn size(&self) -> u64 {
        self.image.manifest.image_size
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u64 {
        u64::from(self.image.manifest.chunk_size)
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u64 {
        self.image.manifest.names.len() as u64
    }

    /// Whether chunk `index` is a hole (all zeros, never stored).
    pub fn is_hole(&self, index: u64) -> bool {
        self.image
            .manifest
            .names
            .get(index as usize)
            .is_none_or(|n| n.is_none())
    }

    /// The shared reader.
    pub fn reader(&self) -> &Arc<ChunkReader> {
        &self.reader
    }

    /// Plaintext of chunk `index` (zeros for a hole), read for a client:
    /// fetched at once, and noted in the working set when recording.
    pub async fn chunk(&self, index: u64) -> Result<Bytes, ReadError> {
        self.note(index);
        self.load(index, Priority::Demand).await
    }

    /// Plaintext of chunk `index` for a background prefetch: waits while
    /// demand reads are fetching, and is not recorded in the working set
    /// (a prefetched chunk is not evidence that the guest needs it).
    pub async fn prefetch_chunk(&self, index: u64) -> Result<Bytes, ReadError> {
        if index >= self.chunks() || self.is_hole(index) {
            return Ok(Bytes::new());
        }
        self.reader.demand_settled().await;
        self.load(index, Priority::Prefetch).await
    }

    async fn load(&self, index: u64, priority: Priority) -> Result<Bytes, ReadError> {
        let len = self.chunk_len(index);
        self.piece(index, 0..len, priority).await
    }

    /// Plaintext length of chunk `index` (the last one may be short).
    fn chunk_len(&self, index: u64) -> usize {
        let m = &self.image.manifest;
        (m.image_size - index * self.chunk_size()).min(self.chunk_size()) as usize
    }

    /// Bytes `range` of chunk `index` (zeros for a hole).
    async fn piece(
        &self,
        index: u64,
        range: std::ops::Range<usize>,
        priority: Priority,
    ) -> Result<Bytes, ReadError> {
        let m = &self.image.manifest;
        match (m.names[index as usize], self.image.keys.0[index as usize]) {
            (Some(name), Some(secret)) => {
                let id = ChunkId {
                    root: self.root.clone(),
                    name,
                };
                let len = self.chunk_len(index);
                self.reader
                    .read(index, &id, &secret, len, range, priority)
                    .await
            }
            _ if range.len() <= ZEROS.len() => Ok(Bytes::from_static(&ZEROS[..range.len()])),
            _ => Ok(Bytes::from(vec![0u8; range.len()])),
        }
    }

    /// Checks `len` bytes at `offset` against this image.
    pub fn range(&self, offset: u64, len: u64) -> Result<BlockRange, RangeError> {
        BlockRange::new(offset, len, self.size())
    }

    /// Reads `range` (checked against this image's size).
    #[tracing::instrument(level = "debug", skip(self), fields(export = %self.export))]
    pub async fn read(&self, range: BlockRange) -> Result<Bytes, ReadError> {
        debug_assert!(range.end() <= self.size());
        let cs = self.chunk_size();
        let pieces: Vec<(u64, BlockRange)> = range.split(cs).collect();
        let parts = try_join_all(pieces.iter().map(|(i, p)| {
            self.note(*i);
            let s = (p.offset() - i * cs) as usize;
            self.piece(*i, s..s + p.len() as usize, Priority::Demand)
        }))
        .await?;
        if let [part] = parts.as_slice() {
            return Ok(part.clone());
        }
        let mut out = BytesMut::with_capacity(range.len() as usize);
        for part in &parts {
            out.extend_from_slice(part);
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_chunk::{seal_chunk, KeyTable, Manifest, Salt};
    use lode_tier::ChunkTier;

    /// Found by review while fuzzing the NBD server: a manifest whose chunk
    /// decrypts (name and hash check out) to fewer bytes than the chunk
    /// size made `read` slice out of range and panic the connection's task,
    /// leaving the guest's request unanswered.
    #[tokio::test]
    async fn short_chunk_is_an_error_not_a_panic() {
        let store = lode_store::Store::open("memory://").unwrap();
        let c = seal_chunk(&Salt([1; 32]), b"ten bytes!");
        store
            .put_chunk("r", &c.name, c.ciphertext.clone().into())
            .await
            .unwrap();
        let manifest = Manifest {
            format: lode_chunk::manifest::VERSION,
            tenant: "t".into(),
            binding: None,
            image_size: 8192,
            chunk_size: 4096,
            root: "r".into(),
            wrapped_key: Vec::new(),
            nonce: [0; 12],
            names: vec![Some(c.name), None],
            sealed: Vec::new(),
        };
        let keys = KeyTable(vec![Some(c.secret), None]);
        let tier: Arc<dyn ChunkTier> = Arc::new(store);
        let reader = Arc::new(ChunkReader::new(1 << 20, None, vec![tier]));
        let image = OpenedImage {
            digest: "sha256:00".into(),
            manifest,
            keys,
        };
        let h = ImageHandle::new("t/x".into(), image, reader);
        assert!(matches!(
            h.read(h.range(0, 4096).unwrap()).await,
            Err(ReadError::Length { index: 0, .. })
        ));
        assert!(h.read(h.range(4000, 1000).unwrap()).await.is_err());
        assert_eq!(
            h.read(h.range(4096, 4096).unwrap()).await.unwrap().len(),
            4096
        );
        assert!(h.range(8000, 1000).is_err());
    }
}
