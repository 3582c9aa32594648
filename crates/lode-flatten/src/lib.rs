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

mod entry;
mod error;
mod tarball;

pub use error::{EntryError, FlattenError};
pub use tarball::TarError;

/// Fuzzing entry (not API): reads a tar stream with lode's layer tar reader,
/// every entry's data included (capped at 1 MiB per entry), and checks the
/// reader's contract: never more data than an entry's size, and errors, not
/// panics, for any input. Returns the number of entries read.
#[doc(hidden)]
pub fn fuzz_tar(data: &[u8]) -> usize {
    use std::io::Read;
    let mut r = tarball::TarReader::new(data);
    let mut n = 0;
    while let Ok(Some(h)) = r.next_header() {
        let mut buf = Vec::new();
        let _ = r.data().take(1 << 20).read_to_end(&mut buf);
        assert!(
            buf.len() as u64 <= h.size,
            "entry data longer than its size"
        );
        n += 1;
    }
    n
}

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

/// Suffix of the temp files `flatten` writes beside OUT (`.OUT.XXXXXX.lode-tmp`).
const TEMP_SUFFIX: &str = ".lode-tmp";

/// Removes temp files that a killed `flatten` of the same OUT left in `dir`:
/// those whose writer's lock is gone. Another run still writing keeps its
/// lock, and its file. Best effort: what cannot be checked is left alone.
fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if !(n.starts_with(prefix) && n.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        if f.try_lock().is_ok() {
            tracing::info!(path = %e.path().display(), "removing a killed run's temp file");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Flattens `source` into the ext4 image `out` (atomically: temp file + rename).
pub fn flatten(
    source: &Source,
    out: &Path,
    opts: &FlattenOptions<'_>,
) -> Result<FlattenReport, FlattenError> {
    let image = Image::open(source)?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out_err = |source| FlattenError::Output {
        path: out.display().to_string(),
        source,
    };
    let prefix = format!(".{name}.");
    remove_stale_temps(&dir, &prefix);
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(&dir)
        .map_err(out_err)?;
    // Held until the temp file is renamed or dropped (or the process dies):
    // how a later run tells a live writer's temp file from a killed one's.
    tmp.as_file().try_lock().map_err(|e| out_err(e.into()))?;
    let file = tmp.as_file().try_clone().map_err(out_err)?;
    let report = flatten_image(&image, file, opts)?;
    tmp.as_file().sync_all().map_err(out_err)?;
    tmp.persist(out).map_err(|e| out_err(e.error))?;
    Ok(report)
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
    };
    let mut builder = Builder::new(file, options);
    let mut total = 0u64;
    let mut entries = 0u64;
    let layers = image.layers().len();
    for desc in image.layers() {
        let (bytes, n) = entry::apply_layer(image, desc, &mut builder, |layer_bytes| {
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
    let summary = builder.finish().map_err(FlattenError::Finish)?;
    Ok(FlattenReport {
        summary,
        layers,
        layer_bytes: total,
        entries,
    })
}
