//! The layer description model: a [`LayerSpec`] is an ordered list of
//! [`Entry`]s, written verbatim (in order) into a layer tarball.

use crate::content::Content;
use std::collections::BTreeMap;
use std::fmt;

/// Extended attributes: full name (e.g. `user.foo`, `security.capability`)
/// to raw value.
pub type Xattrs = BTreeMap<String, Vec<u8>>;

/// Default mtime used by the entry constructors (2020-09-13T12:26:40Z).
pub const DEFAULT_MTIME: u64 = 1_600_000_000;

/// Prefix of whiteout files.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Metadata carried by every tar header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`0o7777`); type bits
    /// are derived from the entry kind and never written here.
    pub mode: u32,
    /// Owner uid (can exceed the 7-digit octal ustar limit).
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Extended attributes, written as PAX `SCHILY.xattr.NAME` records.
    pub xattrs: Xattrs,
}

/// What an entry is.
#[derive(Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File(Content),
    /// A symbolic link with this (raw, verbatim) target.
    Symlink(Vec<u8>),
    /// A hard link to this target path (as written in the tar).
    Hardlink(Vec<u8>),
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A whiteout deleting the entry's `path` from lower layers; written as
    /// an empty regular file `DIR/.wh.NAME`.
    Whiteout,
    /// An opaque marker for the directory at the entry's `path`; written as
    /// an empty regular file `PATH/.wh..wh..opq`.
    Opaque,
}

/// One tar entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Raw path bytes. For [`EntryKind::Whiteout`] the path of the deleted
    /// entry, for [`EntryKind::Opaque`] the directory's path; otherwise
    /// written verbatim (no normalization, so `../x` stays `../x`).
    pub path: Vec<u8>,
    /// Kind.
    pub kind: EntryKind,
    /// Header metadata.
    pub meta: Meta,
}

fn esc(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// Abbreviate long runs of one byte (e.g. 255 x `L`) for readable output.
fn short(b: &[u8]) -> String {
    if b.len() > 40 && b.iter().all(|&c| c == b[0]) {
        format!("{}x{}", esc(&b[..1]), b.len())
    } else {
        let mut out = String::new();
        for comp in b.split(|&c| c == b'/') {
            if !out.is_empty() || b.first() == Some(&b'/') && out.is_empty() && comp.is_empty() {
                out.push('/');
            }
            if comp.len() > 40 && comp.iter().all(|&c| c == comp[0]) {
                out.push_str(&format!("<{}x{}>", esc(&comp[..1]), comp.len()));
            } else {
                out.push_str(&esc(comp));
            }
        }
        out
    }
}

impl fmt::Debug for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryKind::Dir => write!(f, "Dir"),
            EntryKind::File(c) => write!(f, "File({c:?})"),
            EntryKind::Symlink(t) => write!(f, "Symlink(\"{}\")", short(t)),
            EntryKind::Hardlink(t) => write!(f, "Hardlink(\"{}\")", short(t)),
            EntryKind::Fifo => write!(f, "Fifo"),
            EntryKind::CharDev { major, minor } => write!(f, "CharDev({major},{minor})"),
            EntryKind::BlockDev { major, minor } => write!(f, "BlockDev({major},{minor})"),
            EntryKind::Whiteout => write!(f, "Whiteout"),
            EntryKind::Opaque => write!(f, "Opaque"),
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\"{}\" {:?} mode={:o} owner={}:{} mtime={}",
            short(&self.path),
            self.kind,
            self.meta.mode,
            self.meta.uid,
            self.meta.gid,
            self.meta.mtime
        )?;
        for (k, v) in &self.meta.xattrs {
            write!(f, " {k}=\"{}\"", esc(v))?;
        }
        Ok(())
    }
}

impl Entry {
    fn new(path: impl AsRef<[u8]>, kind: EntryKind, mode: u32) -> Self {
        Entry {
            path: path.as_ref().to_vec(),
            kind,
            meta: Meta {
                mode,
                uid: 0,
                gid: 0,
                mtime: DEFAULT_MTIME,
                xattrs: Xattrs::new(),
            },
        }
    }
    /// A directory, mode 0755.
    pub fn dir(path: impl AsRef<[u8]>) -> Self {
        Self::new(path, EntryKind::Dir, 0o755)
    }
    /// A regular file, mode 0644.
    pub fn file(path: impl AsRef<[u8]>, content: impl Into<Content>) -> Self {
        Self::new(path, EntryKind::File(content.into()), 0o644)
    }
    /// A symlink, mode 0777.
    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Self::new(path, EntryKind::Symlink(target.as_ref().to_vec()), 0o777)
    }
    /// A hard link to `target`, mode 0644 (ignored: the link shares the
    /// target's inode).
    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Self::new(path, EntryKind::Hardlink(target.as_ref().to_vec()), 0o644)
    }
    /// A FIFO, mode 0644.
    pub fn fifo(path: impl AsRef<[u8]>) -> Self {
        Self::new(path, EntryKind::Fifo, 0o644)
    }
    /// A character device, mode 0666.
    pub fn char_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Self::new(path, EntryKind::CharDev { major, minor }, 0o666)
    }
    /// A block device, mode 0660.
    pub fn block_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Self::new(path, EntryKind::BlockDev { major, minor }, 0o660)
    }
    /// A whiteout deleting `path` (written as `dir/.wh.name`).
    pub fn whiteout(path: impl AsRef<[u8]>) -> Self {
        Self::new(path, EntryKind::Whiteout, 0o644)
    }
    /// An opaque marker for directory `dir` (written as `dir/.wh..wh..opq`).
    pub fn opaque(dir: impl AsRef<[u8]>) -> Self {
        Self::new(dir, EntryKind::Opaque, 0o644)
    }

    /// Set the permission bits (incl. setuid/setgid/sticky).
    #[must_use]
    pub fn mode(mut self, mode: u32) -> Self {
        self.meta.mode = mode;
        self
    }
    /// Set uid and gid.
    #[must_use]
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.meta.uid = uid;
        self.meta.gid = gid;
        self
    }
    /// Set mtime.
    #[must_use]
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.meta.mtime = mtime;
        self
    }
    /// Add an xattr.
    #[must_use]
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.meta
            .xattrs
            .insert(name.to_string(), value.as_ref().to_vec());
        self
    }

    /// The exact path bytes written into the tar header for this entry
    /// (whiteouts and opaque markers get their `.wh.` names; directories
    /// get a trailing `/` as conventional tars do).
    pub fn tar_path(&self) -> Vec<u8> {
        match self.kind {
            EntryKind::Whiteout => {
                let p = trim_trailing_slashes(&self.path);
                let (dir, name) = match p.iter().rposition(|&b| b == b'/') {
                    Some(i) => (&p[..=i], &p[i + 1..]),
                    None => (&p[..0], p),
                };
                let mut out = dir.to_vec();
                out.extend_from_slice(WHITEOUT_PREFIX);
                out.extend_from_slice(name);
                out
            }
            EntryKind::Opaque => {
                let p = trim_trailing_slashes(&self.path);
                let mut out = p.to_vec();
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(OPAQUE_MARKER);
                out
            }
            EntryKind::Dir => {
                let mut out = self.path.clone();
                if !out.ends_with(b"/") {
                    out.push(b'/');
                }
                out
            }
            _ => self.path.clone(),
        }
    }
}

fn trim_trailing_slashes(p: &[u8]) -> &[u8] {
    let mut end = p.len();
    while end > 0 && p[end - 1] == b'/' {
        end -= 1;
    }
    &p[..end]
}

/// How names longer than the ustar `name` field (100 bytes) are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongNames {
    /// PAX extended header `path` / `linkpath` records (ustar headers).
    #[default]
    Pax,
    /// GNU `././@LongLink` entries of type `L` / `K` (GNU headers).
    Gnu,
}

/// An ordered list of tar entries forming one layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerSpec {
    /// Entries in tar order.
    pub entries: Vec<Entry>,
    /// Long-name encoding.
    pub long_names: LongNames,
}

impl LayerSpec {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }
    /// A layer with these entries.
    pub fn with(entries: Vec<Entry>) -> Self {
        LayerSpec {
            entries,
            long_names: LongNames::Pax,
        }
    }
    /// Append an entry (builder style).
    #[must_use]
    pub fn push(mut self, e: Entry) -> Self {
        self.entries.push(e);
        self
    }
    /// Append an entry in place.
    pub fn add(&mut self, e: Entry) -> &mut Self {
        self.entries.push(e);
        self
    }
    /// Use GNU long names instead of PAX.
    #[must_use]
    pub fn gnu_long_names(mut self) -> Self {
        self.long_names = LongNames::Gnu;
        self
    }
    /// Sum of the sizes of regular-file contents in the layer.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File(c) => c.size(),
                _ => 0,
            })
            .sum()
    }
    /// Sum of the sizes of regular-file contents, each rounded up to `block`.
    pub fn file_bytes_rounded(&self, block: u64) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File(c) => c.size().div_ceil(block) * block,
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_paths() {
        assert_eq!(Entry::whiteout("a/b/c").tar_path(), b"a/b/.wh.c");
        assert_eq!(Entry::whiteout("c").tar_path(), b".wh.c");
        assert_eq!(Entry::opaque("a/b/").tar_path(), b"a/b/.wh..wh..opq");
        assert_eq!(Entry::dir("a/b").tar_path(), b"a/b/");
        assert_eq!(Entry::file("../x", "y").tar_path(), b"../x");
    }
}
