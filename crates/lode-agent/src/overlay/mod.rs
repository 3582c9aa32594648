//! Copy-on-write overlay of one volume (or one connection), at 4 KiB pages.
//!
//! Written pages go to a sparse local file; a bitmap says which pages live
//! there. Reads of written pages come from the file, all others from the
//! image. The cached chunks are never modified, and no other volume sees the
//! pages.
//!
//! Two kinds ([`Durability`]): an *ephemeral* overlay (one NBD connection of
//! the development listener, one VM of a static `--vhost-user` socket) is
//! deleted when dropped; a *durable* one (every read-write volume, and named
//! overlays `TENANT/NAME@OVERLAY`) keeps its pages across agent restarts
//! through the bitmap [`journal`]. File I/O (`pread`, `pwrite`, `fsync`)
//! runs on tokio's blocking pool, never on the async workers.

pub mod bitmap;
pub mod journal;

pub use bitmap::{Bitmap, PAGE};

use crate::image::ImageHandle;
use crate::range::BlockRange;
use crate::reader::ReadError;
use bytes::{Bytes, BytesMut};
use journal::{IoAt, Journal};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Why an overlay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Local file I/O.
    #[error("overlay {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the base image failed.
    #[error(transparent)]
    Base(#[from] ReadError),
    /// A write whose data is not as long as its range.
    #[error("write of {got} bytes into a range of {expected}")]
    Length {
        /// Range length.
        expected: u64,
        /// Data length.
        got: usize,
    },
}

impl From<IoAt> for OverlayError {
    fn from((path, source): IoAt) -> Self {
        OverlayError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What survives the overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Deleted when dropped: nothing outlives the connection or the agent.
    Ephemeral,
    /// Kept until removed: acknowledged writes survive an agent crash,
    /// flushed writes a host crash (see [`journal`]).
    Durable,
}

#[derive(Debug)]
struct Inner {
    data: File,
    data_path: PathBuf,
    size: u64,
    // std Mutex: bit operations only, never held across an await.
    bits: Mutex<Bitmap>,
    journal: Option<Mutex<Journal>>,
    /// Set once the files were deleted ([`Overlay::remove`]) or for an
    /// ephemeral overlay: nothing is saved on drop.
    discard: AtomicBool,
}

/// A private overlay over one image (cheap to clone: one shared state).
#[derive(Debug, Clone)]
pub struct Overlay {
    inner: Arc<Inner>,
}

fn blocking_failed(path: &Path, e: tokio::task::JoinError) -> OverlayError {
    OverlayError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Overlay {
    /// Creates an overlay for an image of `size` bytes at `data_path`;
    /// a durable one re-opens what is there (bitmap snapshot and journal),
    /// an ephemeral one starts empty. Blocking: file I/O.
    pub fn open(
        data_path: PathBuf,
        size: u64,
        durability: Durability,
    ) -> Result<Overlay, OverlayError> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| OverlayError::Io { path: p, source }
        };
        if let Some(parent) = data_path.parent() {
            std::fs::create_dir_all(parent).map_err(io(&data_path))?;
        }
        let words = size.div_ceil(PAGE).div_ceil(64);
        let mut bits = Bitmap::default();
        let journal = match durability {
            Durability::Durable => {
                let (j, replay) = Journal::recover(&data_path, words, &mut bits)?;
                if replay.applied > 0 {
                    tracing::info!(path = %data_path.display(), records = replay.applied, "overlay journal replayed");
                }
                Some(Mutex::new(j))
            }
            Durability::Ephemeral => {
                let _ = std::fs::remove_file(&data_path);
                None
            }
        };
        let data = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(io(&data_path))?;
        data.set_len(size).map_err(io(&data_path))?;
        Ok(Overlay {
            inner: Arc::new(Inner {
                data,
                data_path,
                size,
                bits: Mutex::new(bits),
                journal,
                discard: AtomicBool::new(durability == Durability::Ephemeral),
            }),
        })
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        &self.inner.data_path
    }

    fn bits(&self) -> std::sync::MutexGuard<'_, Bitmap> {
        self.inner.bits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any page overlapping `[start, end)` was written.
    pub fn any_written(&self, start: u64, end: u64) -> bool {
        end > start && self.bits().any(start / PAGE, (end - 1) / PAGE)
    }

    /// Pages written so far.
    pub fn written_pages(&self) -> u64 {
        self.bits().count()
    }

    /// Reads `range` through the overlay: written pages from the file, the
    /// rest from `base`.
    pub async fn read(&self, base: &ImageHandle, range: BlockRange) -> Result<Bytes, OverlayError> {
        let (first, last) = range.blocks(PAGE);
        // Runs of pages that are all written or all not, within the range
        // (`None`: nothing written there).
        let runs: Option<Vec<(bool, BlockRange)>> = {
            let bits = self.bits();
            bits.any(first, last).then(|| {
                let mut runs: Vec<(bool, BlockRange)> = Vec::new();
                for (page, piece) in range.split(PAGE) {
                    let mine = bits.has(page);
                    match runs.last_mut() {
                        Some((m, r)) if *m == mine => {
                            *r = range.clip(r.offset(), piece.end()).unwrap_or(*r);
                        }
                        _ => runs.push((mine, piece)),
                    }
                }
                runs
            })
        };
        let Some(runs) = runs else {
            return Ok(base.read(range).await?);
        };
        let mut out = BytesMut::with_capacity(range.len() as usize);
        for (mine, r) in runs {
            if mine {
                let inner = self.inner.clone();
                let buf = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; r.len() as usize];
                    inner.data.read_exact_at(&mut buf, r.offset()).map(|_| buf)
                })
                .await
                .map_err(|e| blocking_failed(&self.inner.data_path, e))?
                .map_err(|source| OverlayError::Io {
                    path: self.inner.data_path.display().to_string(),
                    source,
                })?;
                out.extend_from_slice(&buf);
            } else {
                out.extend_from_slice(&base.read(r).await?);
            }
        }
        Ok(out.freeze())
    }

    /// Writes `data` over `range`, copying partially covered pages from the
    /// image first. When this returns the write survives an agent crash
    /// (durable overlays); a [`Self::flush`] makes it survive a host crash.
    pub async fn write(
        &self,
        base: &ImageHandle,
        range: BlockRange,
        data: Bytes,
    ) -> Result<(), OverlayError> {
        if data.len() as u64 != range.len() {
            return Err(OverlayError::Length {
                expected: range.len(),
                got: data.len(),
            });
        }
        let (first, last) = range.blocks(PAGE);
        let mut copy_up: Vec<(u64, Bytes)> = Vec::new();
        for p in if first == last {
            vec![first]
        } else {
            vec![first, last]
        } {
            let (ps, pe) = (p * PAGE, ((p + 1) * PAGE).min(self.inner.size));
            let partial = range.offset() > ps || range.end() < pe;
            if partial && !self.bits().has(p) {
                let page = base
                    .range(ps, pe - ps)
                    .expect("a page touched by a range inside the image is inside it");
                copy_up.push((ps, base.read(page).await?));
            }
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || -> Result<(), OverlayError> {
            let io = |source| OverlayError::Io {
                path: inner.data_path.display().to_string(),
                source,
            };
            for (at, page) in &copy_up {
                inner.data.write_all_at(page, *at).map_err(io)?;
            }
            inner.data.write_all_at(&data, range.offset()).map_err(io)?;
            let changed = inner
                .bits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_range(first, last);
            if let Some(j) = &inner.journal {
                j.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .append(&changed)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| blocking_failed(&self.inner.data_path, e))?
    }

    /// Makes every write completed before it durable: syncs the data file,
    /// then (durable overlays) the journal's flush marker.
    pub async fn flush(&self) -> Result<(), OverlayError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush())
            .await
            .map_err(|e| blocking_failed(&self.inner.data_path, e))?
    }

    /// Deletes the overlay's files (detach of a volume whose overlay is not
    /// named). Blocking.
    pub fn remove(&self) {
        self.inner.discard.store(true, Ordering::SeqCst);
        self.inner.remove_files();
    }
}

impl Inner {
    fn flush(&self) -> Result<(), OverlayError> {
        self.data.sync_data().map_err(|source| OverlayError::Io {
            path: self.data_path.display().to_string(),
            source,
        })?;
        if let Some(j) = &self.journal {
            let bits = self.bits.lock().unwrap_or_else(|p| p.into_inner());
            j.lock().unwrap_or_else(|p| p.into_inner()).flushed(&bits)?;
        }
        Ok(())
    }

    fn remove_files(&self) {
        for p in [
            self.data_path.clone(),
            self.data_path.with_extension("bitmap"),
            self.data_path.with_extension("journal"),
        ] {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.discard.load(Ordering::SeqCst) {
            self.remove_files();
        } else if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "overlay not flushed when closed");
        }
    }
}
