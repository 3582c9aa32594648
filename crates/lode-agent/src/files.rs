//! Files out of an image, read on demand: an [`ext4_view`] reader over an
//! [`ImageHandle`] that fetches only the chunks the filesystem walk and the
//! file's data touch, with bounded readahead while a file is read.
//! `lode cat` streams a file with it; the function frontend reads an
//! image's run settings (`/.lode/image.json`) with [`read_file`].

use crate::ImageHandle;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most chunks read ahead of a file's current position.
pub const READAHEAD_CHUNKS: u64 = 16;

/// Why a file could not be read out of an image.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The image's ext4 filesystem could not be read.
    #[error("reading the ext4 filesystem of {image}: {source}")]
    Filesystem {
        /// The image.
        image: String,
        /// What ext4-view said.
        #[source]
        source: ext4_view::Ext4Error,
    },
    /// The file could not be opened or read.
    #[error("{path} in {image}: {source}")]
    File {
        /// The image.
        image: String,
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: ext4_view::Ext4Error,
    },
    /// The file is larger than the caller takes.
    #[error("{path} in {image} is {size} bytes, over the {max} bytes allowed")]
    TooLarge {
        /// The image.
        image: String,
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
}

/// Lazy random access to an image for the ext4 reader (blocking: call it
/// off the async runtime, e.g. in `spawn_blocking`).
pub struct LazyImage {
    image: Arc<ImageHandle>,
    rt: tokio::runtime::Handle,
    /// Bytes of the file still to be read (0 while ext4 metadata is read):
    /// bounds the readahead so it fetches little beyond the file.
    ahead: Arc<AtomicU64>,
    /// Chunks below this index were already read or requested.
    requested_to: u64,
    /// The readahead fetches started, awaited by [`LazyImage::settle`] so
    /// that every chunk fetched lands in the disk cache.
    fetches: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// What the owner of a [`LazyImage`] keeps after handing it to ext4-view.
#[derive(Clone)]
pub struct LazyControl {
    ahead: Arc<AtomicU64>,
    fetches: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl LazyControl {
    /// Tells the reader how many bytes of the current file are still to be
    /// read (the readahead's bound).
    pub fn set_ahead(&self, bytes: u64) {
        self.ahead.store(bytes, Ordering::Relaxed);
    }

    /// Waits for readahead still in flight.
    pub async fn settle(&self) {
        let pending = std::mem::take(&mut *self.fetches.lock().unwrap_or_else(|p| p.into_inner()));
        for h in pending {
            let _ = h.await;
        }
    }
}

impl LazyImage {
    /// A reader of `image` whose fetches run on `rt`.
    pub fn new(image: Arc<ImageHandle>, rt: tokio::runtime::Handle) -> (LazyImage, LazyControl) {
        let ahead = Arc::new(AtomicU64::new(0));
        let fetches = Arc::new(Mutex::new(Vec::new()));
        let control = LazyControl {
            ahead: ahead.clone(),
            fetches: fetches.clone(),
        };
        let lazy = LazyImage {
            image,
            rt,
            ahead,
            requested_to: 0,
            fetches,
        };
        (lazy, control)
    }

    /// Starts background fetches of the chunks after `last` that the rest of
    /// the file may need (a file's data is contiguous in lode's layout), at
    /// most [`READAHEAD_CHUNKS`] ahead. Single-flight joins a later read of
    /// the same chunk to its fetch.
    fn read_ahead(&mut self, last: u64) {
        let cs = self.image.chunk_size();
        let want = self
            .ahead
            .load(Ordering::Relaxed)
            .div_ceil(cs)
            .min(READAHEAD_CHUNKS);
        let end = (last + 1 + want).min(self.image.chunks());
        let from = self.requested_to.max(last + 1);
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        fetches.retain(|h| !h.is_finished());
        for j in from..end {
            let image = self.image.clone();
            fetches.push(self.rt.spawn(async move {
                // Errors surface when the chunk is read for real.
                let _ = image.chunk(j).await;
            }));
        }
        self.requested_to = self.requested_to.max(end);
    }
}

impl ext4_view::Ext4Read for LazyImage {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        if !dst.is_empty() && self.ahead.load(Ordering::Relaxed) > 0 {
            let last = (start + dst.len() as u64 - 1) / self.image.chunk_size();
            self.read_ahead(last);
        }
        // One checked range per at most 32 MiB (the largest request).
        let piece = crate::range::MAX_REQUEST as usize;
        for (k, part) in dst.chunks_mut(piece).enumerate() {
            let range = self
                .image
                .range(start + (k * piece) as u64, part.len() as u64)?;
            let b = self.rt.block_on(self.image.read(range))?;
            part.copy_from_slice(&b);
        }
        Ok(())
    }
}

/// Reads the whole file at `path` out of `image` (blocking), `None` when the
/// image has no such file; refuses a file over `max` bytes before reading it.
pub fn read_file(
    image: Arc<ImageHandle>,
    rt: tokio::runtime::Handle,
    path: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, FileError> {
    let name = image.export.clone();
    let (lazy, _control) = LazyImage::new(image, rt);
    let fs = ext4_view::Ext4::load(Box::new(lazy)).map_err(|source| FileError::Filesystem {
        image: name.clone(),
        source,
    })?;
    let file_err = |source| FileError::File {
        image: name.clone(),
        path: path.to_string(),
        source,
    };
    let meta = match fs.metadata(path) {
        Ok(m) => m,
        Err(ext4_view::Ext4Error::NotFound) => return Ok(None),
        Err(e) => return Err(file_err(e)),
    };
    if meta.len() > max {
        return Err(FileError::TooLarge {
            image: name,
            path: path.to_string(),
            size: meta.len(),
            max,
        });
    }
    fs.read(path).map(Some).map_err(file_err)
}
