//! A volume: one image served as one block device, with its overlay.
//!
//! A [`Volume`] owns what its clients share: the image, the copy-on-write
//! overlay (none when read-only), the claim of a named overlay, the order of
//! reads and writes, and counters. Clients reach it through
//! [`crate::session::Session`]s (NBD connections, vhost-user frontends).
//!
//! Teardown order is structural: every request task holds the volume, so
//! the volume is dropped only after the last one ended; its fields drop in
//! declaration order, the overlay (saved, or deleted when ephemeral) before
//! the claim of its name. A new client of the same named overlay can
//! therefore never see a stale bitmap saved after its own flush.

use crate::exports::{Claim, ExportError, ExportName, Exports};
use crate::image::ImageHandle;
use crate::overlay::{Durability, Overlay, OverlayError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// How long a client waits for a named overlay its previous connection is
/// still saving.
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How a volume's clients reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// NBD on a unix socket.
    Nbd,
    /// vhost-user-blk on a unix socket.
    VhostUser,
}

impl Via {
    /// `nbd` or `vhost-user`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Via::Nbd => "nbd",
            Via::VhostUser => "vhost-user",
        }
    }

    /// Parses `nbd` or `vhost-user`.
    pub fn parse(s: &str) -> Option<Via> {
        match s {
            "nbd" => Some(Via::Nbd),
            "vhost-user" => Some(Via::VhostUser),
            _ => None,
        }
    }
}

/// Why a volume could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The export could not be opened.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// A named overlay is attached elsewhere.
    #[error("overlay '{0}' is in use by another client or volume")]
    OverlayInUse(String),
    /// The overlay could not be opened.
    #[error("overlay of '{export}': {source}")]
    Overlay {
        /// Export name.
        export: String,
        /// What failed.
        #[source]
        source: OverlayError,
    },
}

/// Per-volume counters (shown by `lode volumes` and the metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Read requests.
    pub reads: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Write requests (writes, write-zeroes).
    pub writes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flushes.
    pub flushes: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// Sessions (connections, frontends) so far.
    pub sessions: AtomicU64,
    /// Sessions now.
    pub active_sessions: AtomicU64,
}

impl Counters {
    /// Adds `n` to `c`.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// One image served as one block device.
#[derive(Debug)]
pub struct Volume {
    /// Identifier (a volume id, or `conn-N` for a development connection).
    pub id: String,
    /// `TENANT/NAME[@OVERLAY]`.
    pub export: ExportName,
    /// The image.
    pub image: Arc<ImageHandle>,
    /// Writes refused.
    pub read_only: bool,
    /// What the transports share.
    pub exports: Arc<Exports>,
    /// Counters.
    pub counters: Counters,
    // Reads share it, writes and flushes hold it alone: a read never races a
    // write of the same pages, and a flush covers every write before it.
    order: Arc<RwLock<()>>,
    // Dropped before `claim` (declaration order): see the module docs.
    overlay: Option<Overlay>,
    claim: Option<Claim>,
}

/// Where a volume's overlay lives.
#[derive(Debug, Clone)]
pub struct OverlaySpec {
    /// Data file (`.bitmap`, `.journal` beside it).
    pub path: PathBuf,
    /// Whether it outlives the volume's users.
    pub durability: Durability,
}

impl Volume {
    /// A volume of `image` named `export`: claims a named overlay, then
    /// opens `overlay` (`None`: the image alone, which is then read-only).
    /// A read-only volume may still have an overlay: a named one, served
    /// as it is. Blocking file I/O runs on the blocking pool.
    pub async fn open(
        exports: Arc<Exports>,
        id: String,
        export: ExportName,
        image: Arc<ImageHandle>,
        overlay: Option<OverlaySpec>,
        read_only: bool,
    ) -> Result<Volume, VolumeError> {
        let claim = match export.overlay_key() {
            Some(key) if overlay.is_some() => Some(
                exports
                    .claim(&key)
                    .ok_or_else(|| VolumeError::OverlayInUse(export.to_string()))?,
            ),
            _ => None,
        };
        let read_only = read_only || overlay.is_none();
        let overlay = match overlay {
            Some(spec) => {
                let size = image.size();
                let opened = tokio::task::spawn_blocking(move || {
                    Overlay::open(spec.path, size, spec.durability)
                })
                .await
                .map_err(|e| OverlayError::Io {
                    path: "overlay".into(),
                    source: std::io::Error::other(e.to_string()),
                })
                .and_then(|r| r);
                Some(opened.map_err(|source| VolumeError::Overlay {
                    export: export.to_string(),
                    source,
                })?)
            }
            None => None,
        };
        Ok(Volume {
            id,
            export,
            image,
            read_only,
            exports,
            counters: Counters::default(),
            order: Arc::new(RwLock::new(())),
            overlay,
            claim,
        })
    }

    /// A volume for one client of the development listener or of a static
    /// vhost-user socket: the export's current image, a fresh private
    /// overlay deleted at the end (or the named one, kept), or none when
    /// `read_only`.
    pub async fn for_client(
        exports: &Arc<Exports>,
        export: &str,
        read_only: bool,
    ) -> Result<Volume, VolumeError> {
        let (name, image) = exports.open(export).await?;
        let key = name.overlay_key();
        let overlay = (!read_only).then(|| OverlaySpec {
            path: exports.overlay_path(key.as_deref()),
            durability: if key.is_some() {
                Durability::Durable
            } else {
                Durability::Ephemeral
            },
        });
        let id = format!(
            "conn-{}",
            exports.stats.nbd_connections.load(Ordering::Relaxed)
        );
        // A client that reconnects at once may find its named overlay still
        // held by its previous connection, which is saving it: wait a little.
        let t = std::time::Instant::now();
        loop {
            match Volume::open(
                exports.clone(),
                id.clone(),
                name.clone(),
                image.clone(),
                overlay.clone(),
                read_only,
            )
            .await
            {
                Err(VolumeError::OverlayInUse(_)) if t.elapsed() < CLAIM_WAIT => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                r => return r,
            }
        }
    }

    /// The overlay (`None` when read-only).
    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }

    /// Image size in bytes.
    pub fn size(&self) -> u64 {
        self.image.size()
    }

    /// Waits for the right to read (after every write queued before).
    pub async fn read_turn(&self) -> OwnedRwLockReadGuard<()> {
        self.order.clone().read_owned().await
    }

    /// Waits for the right to write or flush: every request queued before
    /// has completed, and none runs meanwhile.
    pub async fn write_turn(&self) -> OwnedRwLockWriteGuard<()> {
        self.order.clone().write_owned().await
    }

    /// Pages written into the overlay.
    pub fn written_pages(&self) -> u64 {
        self.overlay.as_ref().map_or(0, Overlay::written_pages)
    }

    /// Flushes the overlay (when there is one).
    pub async fn flush(&self) -> Result<(), OverlayError> {
        match &self.overlay {
            Some(o) => o.flush().await,
            None => Ok(()),
        }
    }

    /// Deletes the overlay's files when the volume goes (detach of a volume
    /// whose overlay has no name).
    pub fn discard_overlay(&self) {
        if let Some(o) = &self.overlay {
            o.remove();
        }
    }

    /// Whether the claim of a named overlay is held.
    pub fn holds_claim(&self) -> bool {
        self.claim.is_some()
    }
}
