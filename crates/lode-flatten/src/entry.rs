//! Reading one layer's tar entries and applying them to the builder.

use crate::error::{EntryError, FlattenError};
use crate::limits::{Budget, Limit, RATIO_FLOOR};
use crate::pipe::{Bounds, Piped, Stop};
use crate::tar::{Header, TarReader};
use lode_ext4::{Builder, FileData, Meta, Special, Timestamp};
use lode_oci::{Image, LayerDesc};

/// Whiteout prefix of the OCI layer spec.
const WHITEOUT: &[u8] = b".wh.";
/// Opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS bookkeeping entries, which carry no content.
const AUFS_META: &[u8] = b".wh..wh.";
/// Progress is reported after this many uncompressed bytes.
const PROGRESS_STEP: u64 = 16 << 20;

/// Splits a tar path into name components. `./` prefixes, empty components and
/// `.` vanish; `..` is refused, and so is a leading `/` unless `allow_absolute`.
pub(crate) fn normalize(raw: &[u8], allow_absolute: bool) -> Result<Vec<Vec<u8>>, EntryError> {
    let mut out = Vec::new();
    normalize_into(raw, allow_absolute, &mut out)?;
    Ok(out)
}

/// [`normalize`] into `out`, reusing the buffers of the components already
/// there: consecutive tar entries share most of their path, so a deep tree
/// costs no allocation per component and entry.
pub(crate) fn normalize_into(
    raw: &[u8],
    allow_absolute: bool,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), EntryError> {
    if raw.first() == Some(&b'/') && !allow_absolute {
        return Err(EntryError::Absolute);
    }
    let mut n = 0;
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(EntryError::Traversal),
            _ => {
                match out.get_mut(n) {
                    Some(v) if v.as_slice() == c => {}
                    Some(v) => {
                        v.clear();
                        v.extend_from_slice(c);
                    }
                    None => out.push(c.to_vec()),
                }
                n += 1;
            }
        }
    }
    out.truncate(n);
    Ok(())
}

/// The metadata of an entry, GNU and PAX extensions applied.
fn meta_of(h: &Header) -> Result<Meta, EntryError> {
    let id = |v: u64, name| {
        u32::try_from(v).map_err(|_| EntryError::BadField {
            field: name,
            detail: format!("{v} exceeds 32 bits"),
        })
    };
    Ok(Meta {
        perm: (h.mode & 0o7777) as u16,
        uid: id(h.uid, "uid")?,
        gid: id(h.gid, "gid")?,
        mtime: Timestamp {
            secs: h.mtime.0,
            nsec: h.mtime.1,
        },
        xattrs: h.xattrs.clone(),
    })
}

/// The error for a pipe that stopped on its own (a limit or a cancel), if
/// it did: what a failed read turns into.
fn stopped(pipe: &mut Piped<'_>, desc: &LayerDesc, budget: &Budget<'_>) -> Option<FlattenError> {
    if let Some(source) = pipe.open_error.take() {
        return Some(FlattenError::Layer {
            layer: desc.index,
            digest: desc.digest.clone(),
            source,
        });
    }
    let at = format!("layer {} ({}): ", desc.index, desc.digest);
    Some(match pipe.stopped? {
        Stop::Cancelled => FlattenError::Interrupted,
        Stop::Limit(Limit::Ratio, count) => FlattenError::Limit {
            at,
            limit: Limit::Ratio,
            found: format!(
                "the layer decompresses past {count} bytes from {} compressed bytes",
                desc.size
            ),
            max: format!(
                "{}:1 (beyond the first {} bytes of a layer)",
                budget.limits.ratio, RATIO_FLOOR
            ),
        },
        Stop::Limit(limit, count) => FlattenError::Limit {
            at,
            limit,
            found: format!("the layers decompress past {} bytes", budget.bytes + count),
            max: format!("{} bytes", budget.limits.bytes),
        },
    })
}

/// A writer error, with the writer's limits reported as the image's.
pub(crate) fn ext4_error(layer: usize, digest: &str, e: lode_ext4::Ext4Error) -> FlattenError {
    let at = format!("layer {layer} ({digest}): ");
    match e {
        lode_ext4::Ext4Error::InodeLimit { limit } => FlattenError::Limit {
            at,
            limit: Limit::Inodes,
            found: format!("the layers create more than {limit} inodes"),
            max: format!("{limit} inodes (each 1024 take a 128 MiB block group of the device)"),
        },
        lode_ext4::Ext4Error::DeviceLimit { bytes, limit } => FlattenError::Limit {
            at,
            limit: Limit::DeviceSize,
            found: format!("the content implies a device of {bytes} bytes"),
            max: format!("{limit} bytes"),
        },
        source => FlattenError::Ext4 {
            layer,
            digest: digest.to_string(),
            source,
        },
    }
}

/// Applies one layer. Returns its uncompressed size and its entry count.
pub(crate) fn apply_layer(
    image: &Image,
    desc: &LayerDesc,
    b: &mut Builder,
    budget: &mut Budget<'_>,
    progress: impl Fn(u64),
) -> Result<(u64, u64), FlattenError> {
    let layer = desc.index;
    let digest = desc.digest.clone();
    let blob = image
        .layer_blob(layer)
        .map_err(|source| FlattenError::Layer {
            layer,
            digest: digest.clone(),
            source,
        })?;
    let bounds = Bounds {
        image_left: budget.limits.bytes.saturating_sub(budget.bytes),
        layer_max: budget.limits.layer_bytes(desc.size),
        cancel: budget.cancel,
    };
    let mut archive = TarReader::new(Piped::spawn(blob, bounds));
    b.begin_layer().map_err(|e| ext4_error(layer, &digest, e))?;
    // The previous entry's path, raw: escaped only for a message.
    let mut last: Vec<u8> = Vec::new();
    let mut scratch: Vec<Vec<u8>> = Vec::new();
    let mut n = 0u64;
    let mut reported = 0u64;
    loop {
        let header = match archive.next_header() {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(source) => {
                return Err(
                    stopped(archive.inner_mut(), desc, budget).unwrap_or_else(|| {
                        FlattenError::Read {
                            layer,
                            digest: digest.clone(),
                            after: if last.is_empty() {
                                String::new()
                            } else {
                                format!(" after entry '{}'", lode_common::Shown(&last))
                            },
                            source,
                        }
                    }),
                )
            }
        };
        if budget.entries >= budget.limits.entries {
            return Err(FlattenError::Limit {
                at: format!("layer {layer} ({digest}): "),
                limit: Limit::Entries,
                found: format!("more than {} tar entries", budget.limits.entries),
                max: format!("{} entries", budget.limits.entries),
            });
        }
        budget.entries += 1;
        if let Err(e) = apply_entry(b, &header, &mut archive.data(), &mut scratch) {
            return Err(
                stopped(archive.inner_mut(), desc, budget).unwrap_or_else(|| match e {
                    Apply::Entry(source) => FlattenError::Entry {
                        layer,
                        digest: digest.clone(),
                        entry: lode_common::escape(&header.path),
                        source,
                    },
                    Apply::Ext4(e) => ext4_error(layer, &digest, e),
                }),
            );
        }
        n += 1;
        last = header.path;
        if budget.cancelled() {
            return Err(FlattenError::Interrupted);
        }
        let count = archive.inner().count;
        if count >= reported + PROGRESS_STEP {
            reported = count;
            progress(reported);
        }
    }
    let (bytes, verified) = archive.into_inner().finish();
    verified.map_err(|source| FlattenError::Layer {
        layer,
        digest: digest.clone(),
        source,
    })?;
    budget.bytes += bytes;
    b.end_layer().map_err(|e| ext4_error(layer, &digest, e))?;
    progress(bytes);
    Ok((bytes, n))
}

enum Apply {
    Entry(EntryError),
    Ext4(lode_ext4::Ext4Error),
}

impl From<EntryError> for Apply {
    fn from(e: EntryError) -> Self {
        Apply::Entry(e)
    }
}

impl From<lode_ext4::Ext4Error> for Apply {
    fn from(e: lode_ext4::Ext4Error) -> Self {
        Apply::Ext4(e)
    }
}

/// Applies one entry; `path` is a scratch buffer for its name components.
fn apply_entry(
    b: &mut Builder,
    h: &Header,
    data: &mut dyn FileData,
    path: &mut Vec<Vec<u8>>,
) -> Result<(), Apply> {
    normalize_into(&h.path, false, path)?;
    let path = &*path;
    if let Some(last) = path.last() {
        if last.starts_with(WHITEOUT) {
            let parent = &path[..path.len() - 1];
            if last == OPAQUE {
                b.opaque(parent)?;
            } else if !last.starts_with(AUFS_META) {
                let name = &last[WHITEOUT.len()..];
                if name.is_empty() {
                    return Err(EntryError::EmptyWhiteout.into());
                }
                b.whiteout(parent, name)?;
            }
            return Ok(());
        }
    }
    let meta = meta_of(h)?;
    let dev = |v: u64, field| {
        u32::try_from(v).map_err(|_| EntryError::BadField {
            field,
            detail: format!("{v} exceeds 32 bits"),
        })
    };
    match h.kind {
        // Regular, contiguous, and sparse (whose holes the reader reports).
        b'0' | b'7' | b'S' => b.add_file(path, meta, h.size, data)?,
        b'5' => b.add_dir(path, meta)?,
        b'2' => b.add_symlink(path, &h.link, meta)?,
        b'1' => {
            let shown = lode_common::escape(&h.link);
            let target = normalize(&h.link, true).map_err(|_| EntryError::LinkTarget {
                target: shown.clone(),
                reason: "path traversal ('..' component)",
            })?;
            if target.is_empty() {
                return Err(EntryError::LinkTarget {
                    target: shown,
                    reason: "empty or root",
                }
                .into());
            }
            b.add_hardlink(path, &target)?;
        }
        b'3' | b'4' => {
            let (major, minor) = (dev(h.dev.0, "device major")?, dev(h.dev.1, "device minor")?);
            let s = if h.kind == b'3' {
                Special::CharDev(major, minor)
            } else {
                Special::BlockDev(major, minor)
            };
            b.add_special(path, s, meta)?;
        }
        b'6' => b.add_special(path, Special::Fifo, meta)?,
        other => return Err(EntryError::UnsupportedType(other).into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rules() {
        assert_eq!(
            normalize(b"./a//b/./c/", false).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(normalize(b"./", false).unwrap().is_empty());
        assert!(matches!(
            normalize(b"a/../b", false),
            Err(EntryError::Traversal)
        ));
        assert!(matches!(
            normalize(b"/etc/passwd", false),
            Err(EntryError::Absolute)
        ));
        assert_eq!(normalize(b"/etc/passwd", true).unwrap().len(), 2);
        let mut reused = normalize(b"a/b/c/d", false).unwrap();
        normalize_into(b"a/x", false, &mut reused).unwrap();
        assert_eq!(reused, vec![b"a".to_vec(), b"x".to_vec()]);
    }
}
