//! Reading one layer's tar entries and applying them to the builder.

use crate::error::{EntryError, FlattenError};
use crate::tarball::{Header, TarReader};
use lode_ext4::{Builder, Meta, Special, Timestamp};
use lode_oci::{Image, LayerDesc, LayerReader};
use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

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
    let mut archive = TarReader::new(Piped::spawn(reader, count.clone()));
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
        while let Some(header) = archive.next_header().map_err(|e| read_err(&last, e))? {
            last = String::from_utf8_lossy(&header.path).into_owned();
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
            apply_entry(b, &header, &mut archive.data()).map_err(|e| match e {
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

fn apply_entry(b: &mut Builder, h: &Header, data: &mut dyn Read) -> Result<(), Apply> {
    let path = normalize(&h.path, false)?;
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
        // Regular, contiguous, and sparse (already expanded by the reader).
        b'0' | b'7' | b'S' => b.add_file(&path, meta, h.size, data)?,
        b'5' => b.add_dir(&path, meta)?,
        b'2' => b.add_symlink(&path, &h.link, meta)?,
        b'1' => {
            let shown = String::from_utf8_lossy(&h.link).into_owned();
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
            b.add_hardlink(&path, &target)?;
        }
        b'3' | b'4' => {
            let (major, minor) = (dev(h.dev.0, "device major")?, dev(h.dev.1, "device minor")?);
            let s = if h.kind == b'3' {
                Special::CharDev(major, minor)
            } else {
                Special::BlockDev(major, minor)
            };
            b.add_special(&path, s, meta)?;
        }
        b'6' => b.add_special(&path, Special::Fifo, meta)?,
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
    }
}
