//! The disk tier: verified plaintext of chunks as page files, host-wide.
//!
//! A chunk enters only after the full check (name and plaintext hash from
//! the reader's sealed manifest). It is written as a [page file](crate::pagefile):
//! 4 KiB pages each sealed with AES-256-GCM under the host key and bound to
//! the chunk name, its plaintext hash, the page index and the key id, so a
//! read authenticates just the pages it needs. Entries are keyed like the
//! memory cache, by `(name, plaintext hash)`.
//!
//! Files are `<dir>/<2 hex>/<64 hex>.pages`, the hex being an HMAC of name and
//! plaintext hash under the host key; written to a temp name and renamed.
//! At start-up the directory is scanned: temp files, files of the previous
//! (ciphertext) format and foreign names are deleted, and so is every page
//! file when the marker `.lode-disk-tier` names another host key; the rest
//! re-enter the index. A file that fails any check on a read is deleted and
//! counted, and the read falls through to the next tier: a writer of the
//! directory can cost misses, never a wrong byte.

use crate::hostkey::HostKey;
use crate::pagefile::{self, PageError, PAGE_SIZE};
use crate::s3fifo::S3Fifo;
use bytes::Bytes;
use lode_chunk::ChunkName;
use lode_common::bufpool::BufPool;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The marker file naming the host key the page files are sealed with.
pub const MARKER: &str = ".lode-disk-tier";
const SUFFIX: &str = ".pages";

/// Why the disk tier could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// Creating, scanning or cleaning the directory failed.
    #[error("disk cache {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Why one read was refused (the file is then deleted).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}")]
    Format(#[from] PageError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no randomness for a file nonce: {0}")]
    Random(#[from] getrandom::Error),
}

/// What a read found.
enum Found {
    Pages(Bytes),
    /// An authentic file whose chunk length is not the one asked for.
    OtherLength,
}

type FileId = [u8; 32];

/// Bounded on-disk cache of verified chunk plaintext in authenticated pages.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    key: HostKey,
    policy: Mutex<S3Fifo<FileId>>,
    buffers: Arc<BufPool>,
    corrupt: AtomicU64,
    tmp_seq: AtomicU64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn marker_text(key: &HostKey) -> String {
    format!(
        "lode disk tier: page files v{}, host key {}\n",
        pagefile::VERSION,
        hex::encode(key.id())
    )
}

/// The file id in a page file's name, when it is one.
fn parse_file_name(sub: &str, file: &str) -> Option<FileId> {
    let hex_part = file.strip_suffix(SUFFIX)?;
    if hex_part.len() != 64 || !hex_part.starts_with(sub) || sub.len() != 2 {
        return None;
    }
    let mut id = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut id).ok()?;
    (hex::encode(id) == hex_part).then_some(id)
}

impl DiskCache {
    /// Opens (or creates) the cache in `dir`, bounded to `capacity` bytes of
    /// files, with pages sealed under `key` (kept outside `dir`), and indexes
    /// what a previous run left there.
    pub fn open(
        dir: impl Into<PathBuf>,
        capacity: u64,
        key: HostKey,
    ) -> Result<DiskCache, DiskError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let marker = dir.join(MARKER);
        let same_key = std::fs::read_to_string(&marker).is_ok_and(|m| m == marker_text(&key));
        let mut found: Vec<(std::time::SystemTime, FileId, u64)> = Vec::new();
        for sub in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let sub = sub.map_err(io_err(&dir))?;
            let path = sub.path();
            if !sub.file_type().map_err(io_err(&path))?.is_dir() {
                if sub.file_name() != MARKER {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let sub_name = sub.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(&path).map_err(io_err(&path))? {
                let f = f.map_err(io_err(&path))?;
                let p = f.path();
                let fname = f.file_name().to_string_lossy().into_owned();
                match parse_file_name(&sub_name, &fname) {
                    Some(id) if same_key => {
                        let md = f.metadata().map_err(io_err(&p))?;
                        let modified = md.modified().unwrap_or(std::time::UNIX_EPOCH);
                        found.push((modified, id, md.len()));
                    }
                    // Old-format ciphertext files, another key's pages,
                    // strangers: never read, deleted.
                    _ => {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        }
        if !same_key {
            let tmp = dir.join(format!(".tmp-marker-{}", std::process::id()));
            std::fs::write(&tmp, marker_text(&key)).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &marker).map_err(io_err(&marker))?;
        }
        // Oldest first, so the most recent files are the last to be evicted.
        found.sort();
        let cache = DiskCache {
            dir,
            key,
            policy: Mutex::new(S3Fifo::new(capacity)),
            // Enough for the whole chunks of many concurrent reads and a
            // small memory tier; at most 64 × 512 KiB kept idle.
            buffers: BufPool::new(64, 64 << 10, pagefile::PAGE_SIZE * 128),
            corrupt: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
        };
        for (_, id, len) in found {
            let evicted = cache.lock().insert(id, len);
            for e in evicted {
                let _ = std::fs::remove_file(cache.path(&e));
            }
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, S3Fifo<FileId>> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &FileId) -> PathBuf {
        id_path(&self.dir, id)
    }

    /// Plaintext bytes `range` of the chunk `name` whose plaintext hashes to
    /// `plain_sha` and is `chunk_len` bytes long, reading and authenticating
    /// only the pages that cover the range; the whole chunk when `range` is
    /// `None`. `None` on a miss, or when the file is refused (then it is
    /// deleted and counted in [`DiskCache::corrupt_discarded`]).
    #[tracing::instrument(level = "debug", skip(self, plain_sha), fields(chunk = %name))]
    pub async fn read(
        &self,
        name: &ChunkName,
        plain_sha: &[u8; 32],
        chunk_len: usize,
        range: Option<std::ops::Range<usize>>,
    ) -> Option<Bytes> {
        let id = self.key.file_id(&name.0, plain_sha);
        if !self.lock().contains(&id) {
            return None;
        }
        let (path, key, name_b, sha) = (self.path(&id), self.key.clone(), name.0, *plain_sha);
        let range = range.unwrap_or(0..chunk_len);
        let buffers = self.buffers.clone();
        let read = tokio::task::spawn_blocking(move || {
            read_range(&path, &key, &name_b, &sha, chunk_len, range, &buffers)
        })
        .await;
        match read {
            Ok(Ok(Found::Pages(b))) => {
                self.lock().touch(&id);
                Some(b)
            }
            Ok(Ok(Found::OtherLength)) => None,
            Ok(Err(e)) => {
                self.discard(&id, name, &e);
                None
            }
            Err(_) => None,
        }
    }

    /// Whether the index holds the chunk `name` with plaintext hash
    /// `plain_sha`: reads neither the file nor its pages, and changes no
    /// eviction order. (A file damaged since is found out, and dropped,
    /// only by a read.)
    pub fn contains(&self, name: &ChunkName, plain_sha: &[u8; 32]) -> bool {
        let id = self.key.file_id(&name.0, plain_sha);
        self.lock().contains(&id)
    }

    fn discard(&self, id: &FileId, name: &ChunkName, e: &dyn std::error::Error) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(chunk = %name, error = %e, "disk cache file refused: discarded");
        self.lock().remove(id);
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Stores a chunk's plaintext, which the caller verified against its
    /// name and `plain_sha` (errors only cost a future miss).
    pub async fn put(&self, name: ChunkName, plain_sha: [u8; 32], plaintext: Bytes) {
        let id = self.key.file_id(&name.0, &plain_sha);
        if self.lock().contains(&id) {
            return;
        }
        let path = self.path(&id);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let key = self.key.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<u64, Refused> {
            let mut nonce = [0u8; 8];
            getrandom::getrandom(&mut nonce)?;
            let file = pagefile::seal(&key, &name.0, &plain_sha, nonce, &plaintext)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&tmp, &file)?;
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            Ok(file.len() as u64)
        })
        .await;
        let len = match written {
            Ok(Ok(len)) => len,
            Ok(Err(e)) => {
                tracing::warn!(chunk = %name, error = %e, "disk cache write failed");
                return;
            }
            Err(e) => {
                tracing::warn!(chunk = %name, error = %e, "disk cache write failed");
                return;
            }
        };
        let evicted = self.lock().insert(id, len);
        for e in evicted {
            let _ = std::fs::remove_file(self.path(&e));
        }
    }

    /// Bytes of files held.
    pub fn bytes(&self) -> u64 {
        self.lock().weight()
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Files refused (and discarded) so far.
    pub fn corrupt_discarded(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }
}

fn id_path(dir: &Path, id: &FileId) -> PathBuf {
    let h = hex::encode(id);
    dir.join(&h[..2]).join(format!("{h}{SUFFIX}"))
}

/// Where a disk cache in `dir` keeps the pages of chunk `name` with
/// plaintext hash `plain_sha` under `key` (tools and tests that inspect or
/// tamper with the files).
pub fn file_path(dir: &Path, key: &HostKey, name: &ChunkName, plain_sha: &[u8; 32]) -> PathBuf {
    id_path(dir, &key.file_id(&name.0, plain_sha))
}

/// Reads the header with the tags of the pages covering `range`, then their
/// ciphertext (rounded out to pages, never the whole file), decrypted in
/// place: two preads and an fstat.
fn read_range(
    path: &Path,
    key: &HostKey,
    name: &[u8; 32],
    plain_sha: &[u8; 32],
    chunk_len: usize,
    range: std::ops::Range<usize>,
    buffers: &Arc<BufPool>,
) -> Result<Found, Refused> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    // The header and the tags of the pages asked for, in one read.
    let pages = pagefile::page_span(range.start, range.end);
    let head_len = pagefile::tag_offset(pages.end).min(size) as usize;
    let mut head = vec![0u8; head_len.max(pagefile::HEADER_LEN.min(size as usize))];
    f.read_exact_at(&mut head, 0)?;
    let h = pagefile::open_header(key, name, plain_sha, &head)?;
    if size != h.file_len() {
        return Err(PageError::FileSize {
            expected: h.file_len(),
            actual: size,
        }
        .into());
    }
    if h.plain_len != chunk_len {
        return Ok(Found::OtherLength);
    }
    let span = h.span(range.start, range.end)?;
    let tags = &head[pagefile::tag_offset(span.start) as usize..][..h.tags_len(&span)];
    let mut data = buffers.take(h.data_len(&span));
    f.read_exact_at(&mut data, h.page_offset(span.start))?;
    let first = span.start;
    h.open_pages(key, name, plain_sha, span, tags, &mut data)?;
    let skip = range.start - first * PAGE_SIZE;
    Ok(Found::Pages(
        buffers.bytes(data).slice(skip..skip + range.len()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn chunk(seed: u8, len: usize) -> (ChunkName, [u8; 32], Bytes) {
        let pt: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
        (
            ChunkName([seed; 32]),
            Sha256::digest(&pt).into(),
            Bytes::from(pt),
        )
    }

    fn key(b: u8) -> HostKey {
        HostKey::from_secret(&[b; 32])
    }

    #[tokio::test]
    async fn pages_survive_restart_and_refusals_are_discarded() {
        let d = tempfile::tempdir().unwrap();
        let (name, sha, pt) = chunk(1, 5 * PAGE_SIZE + 100);
        {
            let c = DiskCache::open(d.path(), 1 << 20, key(1)).unwrap();
            c.put(name, sha, pt.clone()).await;
            assert_eq!(c.read(&name, &sha, pt.len(), None).await, Some(pt.clone()));
            assert_eq!(
                c.read(&name, &sha, pt.len(), Some(4000..9000))
                    .await
                    .unwrap(),
                pt.slice(4000..9000)
            );
            // Another plaintext hash for the same name: not this entry.
            assert_eq!(c.read(&name, &[0; 32], pt.len(), None).await, None);
            // An authentic file of another length: a miss, not a refusal.
            assert_eq!(c.read(&name, &sha, pt.len() + 1, None).await, None);
            assert_eq!(c.corrupt_discarded(), 0);
        }
        std::fs::write(d.path().join(".tmp-1-1"), b"partial").unwrap();
        let c = DiskCache::open(d.path(), 1 << 20, key(1)).unwrap();
        assert!(!d.path().join(".tmp-1-1").exists());
        assert_eq!(c.len(), 1);
        let last = pt.len() - 10..pt.len();
        assert_eq!(
            c.read(&name, &sha, pt.len(), Some(last.clone()))
                .await
                .unwrap(),
            pt.slice(last)
        );
        // A changed byte in page 2: refused, deleted, counted.
        let f = file_path(d.path(), &key(1), &name, &sha);
        let mut b = std::fs::read(&f).unwrap();
        b[pagefile::data_offset(pt.len()) as usize + 2 * PAGE_SIZE + 7] ^= 1;
        std::fs::write(&f, &b).unwrap();
        assert_eq!(
            c.read(&name, &sha, pt.len(), Some(0..10))
                .await
                .map(|b| b.len()),
            Some(10)
        );
        assert_eq!(c.read(&name, &sha, pt.len(), Some(8192..8200)).await, None);
        assert_eq!(c.corrupt_discarded(), 1);
        assert!(c.is_empty() && !f.exists());
    }

    #[tokio::test]
    async fn another_key_or_old_format_is_dropped_at_start() {
        let d = tempfile::tempdir().unwrap();
        let (name, sha, pt) = chunk(2, 3000);
        let c = DiskCache::open(d.path(), 1 << 20, key(1)).unwrap();
        c.put(name, sha, pt.clone()).await;
        // A file of the previous format: `<2 hex>/<name hex>`, ciphertext.
        let old = d.path().join("ab").join("ab".repeat(32));
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        std::fs::write(&old, b"old ciphertext").unwrap();
        let c = DiskCache::open(d.path(), 1 << 20, key(1)).unwrap();
        assert!(!old.exists());
        assert_eq!(c.len(), 1);
        let c = DiskCache::open(d.path(), 1 << 20, key(2)).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.read(&name, &sha, pt.len(), None).await, None);
        let files: usize = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|s| std::fs::read_dir(s.unwrap().path()).ok())
            .map(|s| s.count())
            .sum();
        assert_eq!(files, 0);
        assert_eq!(
            std::fs::read_to_string(d.path().join(MARKER)).unwrap(),
            marker_text(&key(2))
        );
    }

    #[tokio::test]
    async fn stays_within_its_bound() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::open(d.path(), 10_000, key(1)).unwrap();
        for i in 0..50u8 {
            let (name, sha, pt) = chunk(i, 1000);
            c.put(name, sha, pt).await;
        }
        assert!(c.bytes() <= 10_000);
        // The index answers for the survivors and not for the evicted.
        let held = (0..50u8)
            .filter(|&i| {
                let (name, sha, _) = chunk(i, 1000);
                c.contains(&name, &sha)
            })
            .count();
        assert_eq!(held, c.len());
        let (last, sha, _) = chunk(49, 1000);
        assert!(c.contains(&last, &sha) && !c.contains(&last, &[0; 32]));
        let files: usize = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|s| std::fs::read_dir(s.unwrap().path()).ok())
            .map(|s| s.count())
            .sum();
        assert_eq!(files, c.len());
    }
}
