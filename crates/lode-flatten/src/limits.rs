//! What one image may cost to flatten.
//!
//! Layers come from tenants who do not trust each other, and a few hundred
//! bytes of layer can claim a terabyte: a sparse file, a zstd bomb, ten
//! thousand references to one blob, a million empty files. Flattening costs
//! in proportion to what it writes (holes are skipped, the tree is linear in
//! its entries), and each of these limits turns the rest into a clear error
//! that names the limit and the `lode flatten` / `lode push` option raising
//! it. The defaults fit every real image we know of with a wide margin;
//! `docs/format.md` lists them.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// A layer may always decompress to this many bytes, whatever its ratio.
pub const RATIO_FLOOR: u64 = 64 << 20;

/// The limits of one flatten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Layers per image (Docker's overlay2 driver stops near 128).
    pub layers: usize,
    /// Tar entries of all layers together (whiteouts and links included).
    pub entries: u64,
    /// Decompressed tar bytes of all layers together.
    pub bytes: u64,
    /// Decompressed bytes per compressed byte of one layer, once the layer
    /// is past [`RATIO_FLOOR`] (gzip cannot pass about 1032:1).
    pub ratio: u64,
    /// Inodes the layers create: every 1,024 take a 128 MiB block group.
    pub inodes: u64,
    /// Bytes of device the content implies (data, metadata, inode groups).
    pub device_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            layers: 128,
            entries: 1 << 20,
            bytes: 64 << 30,
            ratio: 2000,
            inodes: 1 << 19,
            device_bytes: 64 << 30,
        }
    }
}

impl Limits {
    /// No limits but the format's own (for trusted input and tests).
    pub fn unlimited() -> Self {
        let ext4 = lode_ext4::Limits::default();
        Limits {
            layers: usize::MAX,
            entries: u64::MAX,
            bytes: u64::MAX,
            ratio: u64::MAX,
            inodes: ext4.inodes,
            device_bytes: ext4.device_bytes,
        }
    }

    /// The limits the ext4 writer enforces.
    pub(crate) fn ext4(&self) -> lode_ext4::Limits {
        lode_ext4::Limits {
            inodes: self.inodes,
            device_bytes: self.device_bytes,
        }
    }

    /// Decompressed bytes a layer of `compressed` bytes may reach.
    pub(crate) fn layer_bytes(&self, compressed: u64) -> u64 {
        self.ratio.saturating_mul(compressed).max(RATIO_FLOOR)
    }
}

/// Which limit an image hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// [`Limits::layers`].
    Layers,
    /// [`Limits::entries`].
    Entries,
    /// [`Limits::bytes`].
    Bytes,
    /// [`Limits::ratio`].
    Ratio,
    /// [`Limits::inodes`].
    Inodes,
    /// [`Limits::device_bytes`].
    DeviceSize,
}

impl Limit {
    /// The limit's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Layers => "layer limit",
            Limit::Entries => "entry limit",
            Limit::Bytes => "decompressed size limit",
            Limit::Ratio => "decompression ratio limit",
            Limit::Inodes => "inode limit",
            Limit::DeviceSize => "device size limit",
        }
    }

    /// The `lode flatten` / `lode push` option that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            Limit::Layers => "--max-layers",
            Limit::Entries => "--max-entries",
            Limit::Bytes => "--max-bytes",
            Limit::Ratio => "--max-ratio",
            Limit::Inodes => "--max-inodes",
            Limit::DeviceSize => "--max-device-size",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} ({})", self.name(), self.flag())
    }
}

/// What a flatten has used so far, against its limits; and whether it was
/// asked to stop.
#[derive(Debug)]
pub(crate) struct Budget<'a> {
    pub limits: Limits,
    pub entries: u64,
    pub bytes: u64,
    pub cancel: Option<&'a AtomicBool>,
}

impl Budget<'_> {
    /// True once the caller asked the flatten to stop (SIGTERM, SIGINT).
    pub fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}
