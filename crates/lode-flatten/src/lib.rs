//! Flattens an OCI image into one deterministic, layer-stable ext4 image.
//!
//! This crate joins the two layers below it: [`lode_oci`] streams each layer's
//! verified tar bytes, and [`lode_ext4`] lays the entries out. In between it
//! applies the OCI layer rules: entry names are normalized and checked
//! (no `..`, no absolute paths), whiteouts and opaque markers are recognized,
//! PAX records give xattrs, ids and precise times.
//!
//! The output is written to a temporary file beside the target and renamed
//! into place only when complete, so a failure never leaves a partial image.
//! What an image may cost is bounded ([`Limits`]): sparse holes are skipped,
//! the tree is linear in its entries, and layers, entries, decompressed
//! bytes, inodes and device size each have a limit.

mod entry;
mod error;
mod limits;
mod pipe;
pub mod runconfig;
mod settle;
mod tar;

pub use error::{EntryError, FlattenError};
pub use limits::{Limit, Limits, RATIO_FLOOR};
pub use settle::Settle;
pub use tar::TarError;

/// Fuzzing entry (not API): reads a tar stream with lode's layer tar reader,
/// every entry's data included (capped at 1 MiB read per entry), skipping
/// the holes it reports as the ext4 writer does, and checks the reader's
/// contract: holes and data never pass an entry's size and add up to it at
/// the end, a skip past a hole is refused, and any input gives errors, not
/// panics. Returns the number of entries read.
#[doc(hidden)]
pub fn fuzz_tar(data: &[u8]) -> usize {
    use lode_ext4::FileData;
    use std::io::Read;
    let mut r = tar::TarReader::new(data);
    let mut n = 0;
    while let Ok(Some(h)) = r.next_header() {
        let mut d = r.data();
        let (mut pos, mut read) = (0u64, 0u64);
        let mut buf = [0u8; 4096];
        let complete = loop {
            let hole = d.hole_ahead();
            assert!(hole <= h.size - pos, "a hole past the entry's end");
            if hole > 0 {
                assert!(d.skip_hole(hole + 1).is_err(), "skipped past a hole");
                d.skip_hole(hole).expect("skip a reported hole");
                pos += hole;
                continue;
            }
            if read >= 1 << 20 {
                break false;
            }
            match d.read(&mut buf) {
                Ok(0) => break true,
                Ok(k) => {
                    pos += k as u64;
                    read += k as u64;
                    assert!(pos <= h.size, "entry data longer than its size");
                }
                Err(_) => break false,
            }
        };
        if complete {
            assert_eq!(pos, h.size, "holes and data do not add up to the size");
        }
        n += 1;
    }
    n
}

use limits::Budget;
use lode_common::LockedTemp;
use lode_ext4::{Builder, Options, Summary};
use lode_oci::{Image, Source};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::Path;

/// Progress of a flatten, reported after each chunk of entries.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Layer being applied (0 = bottom).
    pub layer: usize,
    /// Number of layers.
    pub layers: usize,
    /// Uncompressed bytes of the current layer read so far.
    pub layer_bytes: u64,
    /// Uncompressed bytes of all layers read so far.
    pub total_bytes: u64,
}

/// Options of [`flatten`].
#[derive(Default)]
pub struct FlattenOptions<'a> {
    /// Image size in bytes; computed from the content when `None`.
    pub size: Option<u64>,
    /// Called as layers are read.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// What the image may cost (layers, entries, bytes, inodes, device).
    pub limits: Limits,
    /// When set, the flatten stops soon with [`FlattenError::Interrupted`]
    /// and leaves nothing behind (how the CLI handles SIGTERM and SIGINT).
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
    /// How the source is opened: the platform picked from an index, and how
    /// a registry (`docker://`) is reached.
    pub open: lode_oci::OpenOptions,
    /// When set, told of each chunk as it becomes final, while the image is
    /// still being written (a streaming consumer such as `lode push`).
    pub settle: Option<Settle>,
}

/// What a flatten produced.
#[derive(Clone, Debug)]
pub struct FlattenReport {
    /// The ext4 writer's summary.
    pub summary: Summary,
    /// Number of layers applied.
    pub layers: usize,
    /// Uncompressed layer bytes read.
    pub layer_bytes: u64,
    /// Number of tar entries applied.
    pub entries: u64,
}

/// Derives a 16-byte identifier from layer identities (diff_ids), so that
/// the same layers give the same identifier whatever transport carried them.
fn derive_id<'a>(diff_ids: impl IntoIterator<Item = &'a String>, purpose: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"lode-ext4/");
    h.update(purpose.as_bytes());
    for d in diff_ids {
        h.update(b"\n");
        h.update(d.as_bytes());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize()[..16]);
    // RFC 4122 name-based (version 5) UUID layout.
    id[6] = (id[6] & 0x0f) | 0x50;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Flattens `source` into the ext4 image `out` (atomically: a locked temp
/// file beside OUT, renamed into place when complete; see
/// [`lode_common::temp`] for how a killed run's file is swept).
pub fn flatten(
    source: &Source,
    out: &Path,
    opts: &FlattenOptions<'_>,
) -> Result<FlattenReport, FlattenError> {
    let image = Image::open_with(source, &opts.open)?;
    check_layers(&image, &opts.limits)?;
    let out_err = |source| FlattenError::Output {
        path: out.display().to_string(),
        source,
    };
    let tmp = LockedTemp::beside(out).map_err(out_err)?;
    let file = tmp.file().try_clone().map_err(out_err)?;
    let report = flatten_image(&image, file, opts)?;
    tmp.persist(out).map_err(out_err)?;
    Ok(report)
}

/// Refuses an image with more layers than the limit, before reading any.
fn check_layers(image: &Image, limits: &Limits) -> Result<(), FlattenError> {
    let n = image.layers().len();
    if n > limits.layers {
        return Err(FlattenError::Limit {
            at: String::new(),
            limit: Limit::Layers,
            found: format!("the image has {n} layers"),
            max: format!("{} layers", limits.layers),
        });
    }
    Ok(())
}

/// Flattens an opened image into `file` (which should be empty).
pub fn flatten_image(
    image: &Image,
    file: File,
    opts: &FlattenOptions<'_>,
) -> Result<FlattenReport, FlattenError> {
    let options = Options {
        size: opts.size,
        uuid: derive_id(image.diff_ids(), "uuid"),
        // From the base layer alone: every layer's hash-indexed directories
        // are ordered by this seed, so it must not change with upper layers
        // (images sharing their first N layers share those sections).
        hash_seed: derive_id(image.diff_ids().iter().take(1), "hash-seed"),
        label: b"lode".to_vec(),
        limits: opts.limits.ext4(),
    };
    check_layers(image, &opts.limits)?;
    let mut builder = Builder::new(file, options);
    if let Some(to) = &opts.settle {
        builder.on_settle(settle::hook(to.clone()));
    }
    let mut total = 0u64;
    let mut entries = 0u64;
    let layers = image.layers().len();
    let mut budget = Budget {
        limits: opts.limits,
        entries: 0,
        bytes: 0,
        cancel: opts.cancel,
    };
    for desc in image.layers() {
        let (bytes, n) =
            entry::apply_layer(image, desc, &mut builder, &mut budget, |layer_bytes| {
                if let Some(p) = opts.progress {
                    p(Progress {
                        layer: desc.index,
                        layers,
                        layer_bytes,
                        total_bytes: total + layer_bytes,
                    });
                }
            })?;
        total += bytes;
        entries += n;
    }
    runconfig::write(&mut builder, image.config_json())?;
    let summary = builder.finish().map_err(FlattenError::Finish)?;
    Ok(FlattenReport {
        summary,
        layers,
        layer_bytes: total,
        entries,
    })
}
