//! Reading one layer's tar entries and applying them to the builder.

use crate::error::{EntryError, FlattenError};
use lode_ext4::{Builder, Meta, Special, Timestamp};
use lode_oci::{Image, LayerDesc, LayerReader};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::rc::Rc;
use tar::EntryType;

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
    if raw.first() == Some(&b'/') && !allow_absolute {
        return Err(EntryError::Absolute);
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(EntryError::Traversal),
            _ => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// Parses a PAX time (`"1700000000.5"`, `"-1.25"`) into seconds and nanoseconds.
pub(crate) fn parse_pax_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    Some(if !neg {
        Timestamp { secs, nsec }
    } else if nsec == 0 {
        Timestamp {
            secs: -secs,
            nsec: 0,
        }
    } else {
        Timestamp {
            secs: -secs - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
}

/// Bytes moved per message between the decompressing thread and the writer.
const PIPE_BLOCK: usize = 1 << 20;
/// Messages in flight: bounds the memory of the pipe to about 8 MiB.
const PIPE_DEPTH: usize = 8;

enum Msg {
    Data(Vec<u8>),
    Failed(std::io::Error),
    /// End of stream: uncompressed size and the verification result.
    End(u64, Result<(), lode_oci::OciError>),
}

/// The layer's tar bytes, decompressed and verified on a thread of their own so
/// that decompression and hashing overlap with parsing and writing (two cores).
struct Piped {
    rx: std::sync::mpsc::Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    end: Option<(u64, Result<(), lode_oci::OciError>)>,
    count: Rc<Cell<u64>>,
}

impl Piped {
    fn spawn(mut reader: LayerReader, count: Rc<Cell<u64>>) -> Piped {
        let (tx, rx) = std::sync::mpsc::sync_channel(PIPE_DEPTH);
        std::thread::spawn(move || loop {
            let mut buf = vec![0u8; PIPE_BLOCK];
            let mut n = 0;
            while n < buf.len() {
                match reader.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Msg::Failed(e));
                        return;
                    }
                }
            }
            if n == 0 {
                let bytes = reader.uncompressed_bytes();
                let _ = tx.send(Msg::End(bytes, reader.finish()));
                return;
            }
            buf.truncate(n);
            // A closed receiver means the parser stopped: stop too.
            if tx.send(Msg::Data(buf)).is_err() {
                return;
            }
        });
        Piped {
            rx,
            cur: Vec::new(),
            pos: 0,
            end: None,
            count,
        }
    }

    /// Reads to the end of the stream and returns the verification result.
    fn finish(mut self) -> (u64, Result<(), lode_oci::OciError>) {
        let mut sink = [0u8; 64 << 10];
        loop {
            match self.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return (
                        0,
                        Err(lode_oci::OciError::Io {
                            path: "layer stream".into(),
                            source: e,
                        }),
                    )
                }
            }
        }
        self.end.take().unwrap_or((0, Ok(())))
    }
}

impl Read for Piped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.end.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(d)) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Ok(Msg::Failed(e)) => return Err(e),
                Ok(Msg::End(n, r)) => self.end = Some((n, r)),
                Err(_) => return Err(std::io::Error::other("layer reader thread ended")),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

fn field<T>(r: std::io::Result<T>, name: &'static str) -> Result<T, EntryError> {
    r.map_err(|e| EntryError::BadField {
        field: name,
        detail: e.to_string(),
    })
}

/// Reads the metadata of an entry: header fields, overridden by PAX records.
fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, EntryError> {
    let h = entry.header();
    let mut meta = Meta {
        perm: (field(h.mode(), "mode")? & 0o7777) as u16,
        uid: 0,
        gid: 0,
        mtime: Timestamp {
            secs: field(h.mtime(), "mtime")? as i64,
            nsec: 0,
        },
        xattrs: BTreeMap::new(),
    };
    let id = |v: u64, name| {
        u32::try_from(v).map_err(|_| EntryError::BadField {
            field: name,
            detail: format!("{v} exceeds 32 bits"),
        })
    };
    meta.uid = id(field(h.uid(), "uid")?, "uid")?;
    meta.gid = id(field(h.gid(), "gid")?, "gid")?;
    if let Some(exts) = field(entry.pax_extensions(), "pax")? {
        for ext in exts {
            let ext = field(ext, "pax")?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let number = |name| {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| EntryError::BadField {
                        field: name,
                        detail: String::from_utf8_lossy(value).into_owned(),
                    })
            };
            match key {
                b"uid" => meta.uid = id(number("pax uid")?, "pax uid")?,
                b"gid" => meta.gid = id(number("pax gid")?, "pax gid")?,
                b"mtime" => {
                    meta.mtime = parse_pax_time(value).ok_or_else(|| EntryError::BadField {
                        field: "pax mtime",
                        detail: String::from_utf8_lossy(value).into_owned(),
                    })?
                }
                k if k.starts_with(b"SCHILY.xattr.") => {
                    meta.xattrs
                        .insert(k[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec());
                }
                _ => {}
            }
        }
    }
    Ok(meta)
}

/// Applies one layer. Returns its uncompressed size and its entry count.
pub(crate) fn apply_layer(
    image: &Image,
    desc: &LayerDesc,
    b: &mut Builder,
    progress: impl Fn(u64),
) -> Result<(u64, u64), FlattenError> {
    let layer = desc.index;
    let digest = desc.digest.clone();
    let reader = image
        .open_layer(layer)
        .map_err(|source| FlattenError::Layer {
            layer,
            digest: digest.clone(),
            source,
        })?;
    let count = Rc::new(Cell::new(0u64));
    let mut archive = tar::Archive::new(Piped::spawn(reader, count.clone()));
    b.begin_layer().map_err(|source| FlattenError::Ext4 {
        layer,
        digest: digest.clone(),
        source,
    })?;
    let mut last = String::new();
    let mut n = 0u64;
    let mut reported = 0u64;
    {
        let read_err = |last: &str, source| FlattenError::Read {
            layer,
            digest: digest.clone(),
            after: if last.is_empty() {
                String::new()
            } else {
                format!(" after entry '{last}'")
            },
            source,
        };
        let entries = archive.entries().map_err(|e| read_err(&last, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| read_err(&last, e))?;
            let raw = entry.path_bytes().into_owned();
            last = String::from_utf8_lossy(&raw).into_owned();
            let entry_err = |source| FlattenError::Entry {
                layer,
                digest: digest.clone(),
                entry: last.clone(),
                source,
            };
            let ext4_err = |source| FlattenError::Ext4 {
                layer,
                digest: digest.clone(),
                source,
            };
            apply_entry(b, &mut entry, &raw).map_err(|e| match e {
                Apply::Entry(e) => entry_err(e),
                Apply::Ext4(e) => ext4_err(e),
            })?;
            n += 1;
            if count.get() >= reported + PROGRESS_STEP {
                reported = count.get();
                progress(reported);
            }
        }
    }
    let (bytes, verified) = archive.into_inner().finish();
    verified.map_err(|source| FlattenError::Layer {
        layer,
        digest: digest.clone(),
        source,
    })?;
    b.end_layer().map_err(|source| FlattenError::Ext4 {
        layer,
        digest: digest.clone(),
        source,
    })?;
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

fn apply_entry<R: Read>(
    b: &mut Builder,
    entry: &mut tar::Entry<'_, R>,
    raw: &[u8],
) -> Result<(), Apply> {
    let kind = entry.header().entry_type();
    if matches!(kind, EntryType::XGlobalHeader) {
        return Ok(());
    }
    let path = normalize(raw, false)?;
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
    let meta = meta_of(entry)?;
    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let size = entry.size();
            b.add_file(&path, meta, size, entry)?;
        }
        EntryType::Directory => b.add_dir(&path, meta)?,
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .map(|c| c.into_owned())
                .unwrap_or_default();
            b.add_symlink(&path, &target, meta)?;
        }
        EntryType::Link => {
            let raw_target = entry
                .link_name_bytes()
                .map(|c| c.into_owned())
                .unwrap_or_default();
            let shown = String::from_utf8_lossy(&raw_target).into_owned();
            let target = normalize(&raw_target, true).map_err(|_| EntryError::LinkTarget {
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
            b.add_hardlink(&path, &target)?;
        }
        EntryType::Char | EntryType::Block => {
            let h = entry.header();
            let major = field(h.device_major(), "device major")?.unwrap_or(0);
            let minor = field(h.device_minor(), "device minor")?.unwrap_or(0);
            let s = if kind == EntryType::Char {
                Special::CharDev(major, minor)
            } else {
                Special::BlockDev(major, minor)
            };
            b.add_special(&path, s, meta)?;
        }
        EntryType::Fifo => b.add_special(&path, Special::Fifo, meta)?,
        other => return Err(EntryError::UnsupportedType(other.as_byte()).into()),
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
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some(Timestamp { secs: 12, nsec: 0 }));
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(Timestamp {
                secs: 12,
                nsec: 500_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(Timestamp {
                secs: -2,
                nsec: 750_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"1.1234567891"),
            Some(Timestamp {
                secs: 1,
                nsec: 123_456_789
            })
        );
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }
}
