//! The disk tier: ciphertext of chunks in a local directory, host-wide.
//!
//! Files are `<dir>/<2 hex>/<name>`, written to a temp name and renamed, so a
//! crash leaves either a whole file or a temp file. At start-up the directory
//! is scanned: temp files and foreign names are deleted, the rest re-enter the
//! index. Every read re-hashes the file and deletes it if it does not match its
//! name, so a corrupt or partial file is never served. Only ciphertext touches
//! the disk.

use crate::s3fifo::S3Fifo;
use bytes::Bytes;
use lode_chunk::ChunkName;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bounded on-disk cache of chunk ciphertext.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    policy: Mutex<S3Fifo<ChunkName>>,
    corrupt: AtomicU64,
    tmp_seq: AtomicU64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl DiskCache {
    /// Opens (or creates) the cache in `dir`, bounded to `capacity` bytes, and
    /// indexes what a previous run left there.
    pub fn open(dir: impl Into<PathBuf>, capacity: u64) -> std::io::Result<DiskCache> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut found: Vec<(std::time::SystemTime, ChunkName, u64)> = Vec::new();
        for sub in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let sub = sub?.path();
            if !sub.is_dir() {
                let _ = std::fs::remove_file(&sub);
                continue;
            }
            for f in std::fs::read_dir(&sub)? {
                let f = f?;
                let p = f.path();
                let fname = f.file_name().to_string_lossy().into_owned();
                match ChunkName::from_hex(&fname) {
                    Some(n)
                        if sub
                            .file_name()
                            .is_some_and(|s| s.to_string_lossy() == fname[..2]) =>
                    {
                        let md = f.metadata()?;
                        found.push((md.modified().unwrap_or(std::time::UNIX_EPOCH), n, md.len()));
                    }
                    _ => {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        }
        // Oldest first, so the most recent files are the last to be evicted.
        found.sort();
        let cache = DiskCache {
            dir,
            policy: Mutex::new(S3Fifo::new(capacity)),
            corrupt: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
        };
        for (_, n, len) in found {
            let evicted = cache.lock().insert(n, len);
            for e in evicted {
                let _ = std::fs::remove_file(cache.path(&e));
            }
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, S3Fifo<ChunkName>> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, name: &ChunkName) -> PathBuf {
        let h = name.to_hex();
        self.dir.join(&h[..2]).join(h)
    }

    /// The chunk's ciphertext, verified against its name; `None` on a miss.
    pub async fn get(&self, name: &ChunkName) -> Option<Bytes> {
        if !self.lock().contains(name) {
            return None;
        }
        let path = self.path(name);
        let name = *name;
        let read = tokio::task::spawn_blocking(move || {
            let b = std::fs::read(&path).ok()?;
            (ChunkName::of(&b) == name).then_some(b)
        })
        .await
        .ok()
        .flatten();
        match read {
            Some(b) => {
                self.lock().touch(&name);
                Some(Bytes::from(b))
            }
            None => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(chunk = %name, "disk cache file missing or corrupt: discarded");
                self.lock().remove(&name);
                let _ = std::fs::remove_file(self.path(&name));
                None
            }
        }
    }

    /// Stores verified ciphertext (errors only cost a future miss).
    pub async fn put(&self, name: ChunkName, ciphertext: Bytes) {
        if self.lock().contains(&name) {
            return;
        }
        let path = self.path(&name);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let len = ciphertext.len() as u64;
        let written = tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&tmp, &ciphertext)?;
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(chunk = %name, "disk cache write failed");
            return;
        }
        let evicted = self.lock().insert(name, len);
        for e in evicted {
            let _ = std::fs::remove_file(self.path(&e));
        }
    }

    /// Bytes held.
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

    /// Files found corrupt (and discarded) so far.
    pub fn corrupt_discarded(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn survives_restart_and_discards_corruption() {
        let d = tempfile::tempdir().unwrap();
        let ct = Bytes::from(vec![7u8; 1000]);
        let name = ChunkName::of(&ct);
        {
            let c = DiskCache::open(d.path(), 1 << 20).unwrap();
            c.put(name, ct.clone()).await;
            assert_eq!(c.get(&name).await, Some(ct.clone()));
        }
        std::fs::write(d.path().join(".tmp-1-1"), b"partial").unwrap();
        let c = DiskCache::open(d.path(), 1 << 20).unwrap();
        assert!(!d.path().join(".tmp-1-1").exists());
        assert_eq!(c.get(&name).await, Some(ct.clone()));
        // Corrupt the file: it must be discarded, not served.
        let h = name.to_hex();
        std::fs::write(d.path().join(&h[..2]).join(&h), b"garbage").unwrap();
        assert_eq!(c.get(&name).await, None);
        assert_eq!(c.corrupt_discarded(), 1);
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn stays_within_its_bound() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::open(d.path(), 10_000).unwrap();
        for i in 0..50u8 {
            let ct = Bytes::from(vec![i; 1000]);
            c.put(ChunkName::of(&ct), ct).await;
        }
        assert!(c.bytes() <= 10_000);
        let files: usize = std::fs::read_dir(d.path())
            .unwrap()
            .map(|s| std::fs::read_dir(s.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(files, c.len());
    }
}
