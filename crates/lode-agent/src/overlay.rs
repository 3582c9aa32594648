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
use std::collections::BTreeMap;
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
    /// Written-page bitmap, sparse: word index → non-zero 64-page word, so
    /// memory follows what the VM wrote, not the image size.
    bits: Mutex<BTreeMap<u64, u64>>,
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
        let words = size.div_ceil(PAGE).div_ceil(64);
        let mut bits = BTreeMap::new();
        if keep {
            if let Ok(b) = std::fs::read(&bitmap_path) {
                bits = decode_bitmap(&b, words);
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
        b.get(&(page / 64))
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    fn set(&self, page: u64) {
        let mut b = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        *b.entry(page / 64).or_insert(0) |= 1 << (page % 64);
    }

    /// Whether any page overlapping `[start, end)` was written.
    pub fn any_written(&self, start: u64, end: u64) -> bool {
        if end <= start {
            return false;
        }
        let (first, last) = (start / PAGE, (end - 1) / PAGE);
        let b = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        // Only the non-zero words in range, each masked to the pages asked.
        b.range(first / 64..=last / 64).any(|(&i, &w)| {
            let lo = if i == first / 64 { first % 64 } else { 0 };
            let hi = if i == last / 64 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            w & mask != 0
        })
    }

    /// Pages written so far.
    pub fn written_pages(&self) -> u64 {
        let b = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        b.values().map(|w| u64::from(w.count_ones())).sum()
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
            encode_bitmap(&b)
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

/// Magic of the sparse bitmap file of a kept overlay.
const BITMAP_MAGIC: &[u8; 8] = b"LODEOVB1";

/// Kept-overlay bitmap file: `LODEOVB1`, then (word index u64 LE, word u64
/// LE) for every non-zero 64-page word, in index order.
fn encode_bitmap(bits: &BTreeMap<u64, u64>) -> Vec<u8> {
    let mut out = BITMAP_MAGIC.to_vec();
    for (i, w) in bits {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// Reads a bitmap file for an image of `words` 64-page words: the sparse
/// format, or the dense one of earlier versions (`words` × u64 LE). Anything
/// else, or a word past the image, yields an empty bitmap (the overlay then
/// starts afresh rather than serving pages it cannot vouch for).
fn decode_bitmap(b: &[u8], words: u64) -> BTreeMap<u64, u64> {
    let mut bits = BTreeMap::new();
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    if let Some(rest) = b.strip_prefix(BITMAP_MAGIC.as_slice()) {
        if rest.len() % 16 != 0 {
            return BTreeMap::new();
        }
        for pair in rest.chunks(16) {
            let (i, w) = (word(&pair[..8]), word(&pair[8..]));
            if i >= words {
                return BTreeMap::new();
            }
            if w != 0 {
                bits.insert(i, w);
            }
        }
    } else if b.len() as u64 == words * 8 {
        for (i, c) in b.chunks(8).enumerate() {
            if word(c) != 0 {
                bits.insert(i as u64, word(c));
            }
        }
    }
    bits
}

#[cfg(test)]
mod bitmap_tests {
    use super::*;

    #[test]
    fn any_written_matches_page_by_page() {
        let d = tempfile::tempdir().unwrap();
        let o = Overlay::open(d.path().join("o.overlay"), 1 << 30, false).unwrap();
        for p in [0u64, 63, 64, 200, 4095] {
            o.set(p);
        }
        for (s, e) in [
            (0u64, 1u64),
            (4096, 4096 * 63),
            (4096, 4096 * 64),
            (4096 * 65, 4096 * 200),
            (4096 * 65, 4096 * 201),
            (4096 * 201, 4096 * 4095),
            (4096 * 4095 + 1, 4096 * 4096),
            (4096 * 4096, 1 << 30),
        ] {
            let want = (s / PAGE..=(e - 1) / PAGE).any(|p| o.has(p));
            assert_eq!(o.any_written(s, e), want, "[{s}, {e})");
        }
    }

    #[test]
    fn bitmap_files_round_trip_and_reject_garbage() {
        let mut m = BTreeMap::new();
        m.insert(3u64, 0b1011u64);
        m.insert(1_000_000, u64::MAX);
        assert_eq!(decode_bitmap(&encode_bitmap(&m), 2_000_000), m);
        // A word past the image, a torn file: empty.
        assert!(decode_bitmap(&encode_bitmap(&m), 10).is_empty());
        let mut torn = encode_bitmap(&m);
        torn.pop();
        assert!(decode_bitmap(&torn, 2_000_000).is_empty());
        // The dense format of earlier versions still loads.
        let mut dense = vec![0u8; 4 * 8];
        dense[8..16].copy_from_slice(&5u64.to_le_bytes());
        let d = decode_bitmap(&dense, 4);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), vec![(1, 5)]);
    }
}
