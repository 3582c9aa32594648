//! Copy-on-write overlay of one connection, at 4 KiB page granularity.
//!
//! Written pages go to a sparse local file; a bitmap says which pages live
//! there. Reads of written pages come from the file, all others from the image.
//! The cached chunks are never modified, and no other connection sees the
//! pages. An anonymous overlay is deleted when the connection ends; a named one
//! (`TENANT/NAME@OVERLAY`) keeps its file and bitmap for the next connection.

use crate::image::ImageHandle;
use crate::reader::ReadError;
use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// Page size of the overlay.
pub const PAGE: u64 = 4096;

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
}

/// A private overlay over one image.
#[derive(Debug)]
pub struct Overlay {
    data: File,
    data_path: PathBuf,
    bitmap_path: PathBuf,
    // std Mutex: bit operations only, never held across an await.
    bits: Mutex<Vec<u64>>,
    keep: bool,
}

impl Overlay {
    /// Creates (or, when `keep`, re-opens) an overlay for an image of `size` bytes.
    pub fn open(data_path: PathBuf, size: u64, keep: bool) -> Result<Overlay, OverlayError> {
        let io = |p: &PathBuf| {
            let p = p.display().to_string();
            move |source| OverlayError::Io { path: p, source }
        };
        if let Some(parent) = data_path.parent() {
            std::fs::create_dir_all(parent).map_err(io(&data_path))?;
        }
        let bitmap_path = data_path.with_extension("bitmap");
        let pages = size.div_ceil(PAGE);
        let words = pages.div_ceil(64) as usize;
        let mut bits = vec![0u64; words];
        if keep {
            if let Ok(b) = std::fs::read(&bitmap_path) {
                if b.len() == words * 8 {
                    for (i, w) in b.chunks(8).enumerate() {
                        bits[i] = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                    }
                }
            }
        } else {
            let _ = std::fs::remove_file(&data_path);
        }
        let data = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(io(&data_path))?;
        data.set_len(size).map_err(io(&data_path))?;
        Ok(Overlay {
            data,
            data_path,
            bitmap_path,
            bits: Mutex::new(bits),
            keep,
        })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> OverlayError + '_ {
        move |source| OverlayError::Io {
            path: self.data_path.display().to_string(),
            source,
        }
    }

    fn has(&self, page: u64) -> bool {
        let b = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        b[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    fn set(&self, page: u64) {
        let mut b = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        b[(page / 64) as usize] |= 1 << (page % 64);
    }

    /// Whether any page overlapping `[start, end)` was written.
    pub fn any_written(&self, start: u64, end: u64) -> bool {
        if end <= start {
            return false;
        }
        (start / PAGE..=(end - 1) / PAGE).any(|p| self.has(p))
    }

    /// Pages written so far.
    pub fn written_pages(&self) -> u64 {
        let b = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        b.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Reads through the overlay (range already validated by the caller).
    pub async fn read(
        &self,
        base: &ImageHandle,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, OverlayError> {
        let end = offset + len;
        let first = offset / PAGE;
        let last = (end - 1) / PAGE;
        if (first..=last).all(|p| !self.has(p)) {
            return Ok(base.read(offset, len).await?);
        }
        let mut out = BytesMut::with_capacity(len as usize);
        let mut p = first;
        while p <= last {
            let mine = self.has(p);
            let mut q = p;
            while q < last && self.has(q + 1) == mine {
                q += 1;
            }
            let s = offset.max(p * PAGE);
            let e = end.min((q + 1) * PAGE);
            if mine {
                let mut buf = vec![0u8; (e - s) as usize];
                self.data.read_exact_at(&mut buf, s).map_err(self.io())?;
                out.extend_from_slice(&buf);
            } else {
                out.extend_from_slice(&base.read(s, e - s).await?);
            }
            p = q + 1;
        }
        Ok(out.freeze())
    }

    /// Writes `data` at `offset`, copying partially covered pages from the
    /// image first (range already validated by the caller).
    pub async fn write(
        &self,
        base: &ImageHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<(), OverlayError> {
        let end = offset + data.len() as u64;
        let first = offset / PAGE;
        let last = (end - 1) / PAGE;
        for p in [first, last] {
            let (ps, pe) = (p * PAGE, ((p + 1) * PAGE).min(base.size()));
            let partial = offset > ps || end < pe;
            if partial && !self.has(p) {
                let page = base.read(ps, pe - ps).await?;
                self.data.write_all_at(&page, ps).map_err(self.io())?;
                self.set(p);
            }
        }
        self.data.write_all_at(data, offset).map_err(self.io())?;
        for p in first..=last {
            self.set(p);
        }
        Ok(())
    }

    /// Makes written pages durable (and, for a kept overlay, the bitmap).
    pub fn flush(&self) -> Result<(), OverlayError> {
        self.data.sync_data().map_err(self.io())?;
        if self.keep {
            self.save_bitmap()?;
        }
        Ok(())
    }

    fn save_bitmap(&self) -> Result<(), OverlayError> {
        let bytes: Vec<u8> = {
            let b = self.bits.lock().unwrap_or_else(|p| p.into_inner());
            b.iter().flat_map(|w| w.to_le_bytes()).collect()
        };
        let tmp = self.bitmap_path.with_extension("bitmap.tmp");
        std::fs::write(&tmp, bytes).map_err(self.io())?;
        std::fs::rename(&tmp, &self.bitmap_path).map_err(self.io())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.keep {
            let _ = self.data.sync_data();
            let _ = self.save_bitmap();
        } else {
            let _ = std::fs::remove_file(&self.data_path);
            let _ = std::fs::remove_file(&self.bitmap_path);
        }
    }
}
