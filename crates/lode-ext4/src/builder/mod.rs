//! Writes the image: file data as layers stream in, metadata at each layer's
//! end (`builder/layer.rs`), and the filesystem's global structures last (`finish.rs`,
//! with each inode's record from `inode.rs`).
//!
//! Image layout, version 3 (block numbers; a chunk is 512 KiB = 128 blocks):
//!
//! ```text
//! chunk 0      superblock, group descriptors, bitmaps (when they fit), group
//!              0's inode table (when it fits), lost+found
//! section 0    layer 0 [+ packed layers]: file data | symlink, xattr,
//!              extent-tree and directory blocks | (the same for each packed
//!              layer) | inode tables of the groups these layers own (layer 0's
//!              first is group 0's slot, free when its table is in chunk 0)
//!                                                              (chunk aligned)
//! section 1    layer 1: the same, for what layer 1 adds or changes
//! ...
//! tail         bitmaps (large images), spare inode tables, free space
//! ```
//!
//! Group 0 is the directory pool: every layer's new directories take its
//! inode numbers while it has room (the rest of a layer's nodes, and
//! directories past the pool, take whole groups the layer owns). A section
//! depends only on its layers and the layers below them, so images that
//! share their first N layers share the chunks of those N sections, except
//! chunks holding inodes that upper layers change (lower directories out of
//! the pool that they add to, files they delete or re-link). Blocks of
//! content that upper layers delete or replace keep their bytes and are
//! marked free.

use crate::data::FileData;
use crate::error::{show_path, Ext4Error, Result};
use crate::format::extent::{self, Extent};
use crate::format::inline;
use crate::format::inode::Timestamp;
pub use crate::geometry::Limits;
use crate::geometry::MAX_BLOCKS;
use crate::layout::*;
use crate::tree::{Kind, Meta, Tree};
use std::fs::File;

mod finish;
mod inode;
mod layer;
mod settled;

pub use settled::{SettleHook, Settled};
use std::os::unix::fs::FileExt;

/// Data is buffered up to this many bytes before it is written.
const WRITE_BUFFER: usize = 8 << 20;

/// Choices that shape the image but not its content.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Image size in bytes; computed from the content when `None`.
    pub size: Option<u64>,
    /// Filesystem UUID (derive it from the image content for reproducibility).
    pub uuid: [u8; 16],
    /// Directory hash seed (likewise).
    pub hash_seed: [u8; 16],
    /// Volume label, up to 16 bytes.
    pub label: Vec<u8>,
    /// Bounds on what the content may make the image cost.
    pub limits: Limits,
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Image size in bytes.
    pub image_bytes: u64,
    /// Block groups.
    pub groups: u64,
    /// Inodes in use (reserved ones included).
    pub inodes_used: u64,
    /// Blocks in use.
    pub blocks_used: u64,
    /// Bytes of file data written in blocks (non-zero blocks only; files
    /// kept in their inodes, see [`crate::format::inline`], are not counted).
    pub data_bytes: u64,
    /// First block after the last layer section.
    pub sections_end_block: u64,
}

/// Which special file a node is, for [`Builder::add_special`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    /// FIFO.
    Fifo,
    /// Character device `(major, minor)`.
    CharDev(u32, u32),
    /// Block device `(major, minor)`.
    BlockDev(u32, u32),
}

/// Builds one image, layer by layer. See the module docs for the layout.
pub struct Builder {
    out: File,
    opts: Options,
    tree: Tree,
    in_layer: bool,
    layers: usize,
    /// Next free block.
    cursor: u64,
    /// Next inode group to hand to a layer (group 0 is the directory pool).
    next_group: u64,
    /// Next free inode number of group 0, the directory pool: every layer's
    /// new directories take numbers here while it has room, so that the
    /// inodes upper layers change most (directories they add to) sit in
    /// group 0's table, in chunk 0, rather than in a lower layer's section.
    pool_next: u64,
    /// Next inode number after the last layer's own inodes: where a packed
    /// layer ([`Builder::begin_layer_packed`]) continues numbering.
    next_ino: u64,
    /// The current layer continues the previous layer's section.
    packed: bool,
    /// First block of each group's inode table, for groups handed out so far.
    tables: Vec<u64>,
    pending: Vec<u8>,
    pending_start: u64,
    max_mtime: i64,
    data_bytes: u64,
    /// Read buffer of `add_file`, allocated once, on the first file with data.
    buf: Vec<u8>,
    /// Told as bytes settle ([`Builder::on_settle`]).
    hook: Option<SettleHook>,
}

/// Bytes `add_file` reads at once.
const READ_BUFFER: usize = 1 << 20;

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Ext4Error {
    let what = what.into();
    move |source| Ext4Error::Io { what, source }
}

impl Builder {
    /// Starts an image in `out` (an empty, writable file).
    pub fn new(out: File, opts: Options) -> Self {
        Builder {
            out,
            tree: Tree::with_max_nodes(opts.limits.inodes),
            opts,
            in_layer: false,
            layers: 0,
            cursor: HEADER_BLOCKS,
            next_group: 0,
            pool_next: u64::from(FIRST_INO) + 1,
            next_ino: u64::from(INODES_PER_GROUP) + 1,
            packed: false,
            tables: Vec::new(),
            pending: Vec::with_capacity(WRITE_BUFFER),
            pending_start: HEADER_BLOCKS,
            max_mtime: 0,
            data_bytes: 0,
            buf: Vec::new(),
            hook: None,
        }
    }

    /// The merged tree so far (read-only).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Which bytes of the image are final now (see [`Settled`]).
    pub fn settled(&self) -> Settled<'_> {
        Settled {
            below: self.pending_start,
            tables: &self.tables,
        }
    }

    /// Bytes below which writing is over, except in the ranges
    /// [`Settled::contains`] excludes.
    pub fn settled_below(&self) -> u64 {
        self.settled().below()
    }

    /// True if the bytes `range` hold their final content now.
    pub fn is_settled(&self, range: std::ops::Range<u64>) -> bool {
        self.settled().contains(range)
    }

    /// Calls `hook` after every write that settles bytes: each flush of file
    /// data (every 8 MiB, inside large files too) and each layer's end. A
    /// consumer can take settled chunks away (upload them, drop them) while
    /// the image is still being written.
    pub fn on_settle(&mut self, hook: SettleHook) {
        self.hook = Some(hook);
    }

    fn tell_settled(&mut self) {
        if let Some(h) = self.hook.as_mut() {
            h(&Settled {
                below: self.pending_start,
                tables: &self.tables,
            });
        }
    }

    /// Starts the next layer in a section of its own, on the next chunk
    /// boundary.
    pub fn begin_layer(&mut self) -> Result<()> {
        if self.in_layer {
            return Err(Ext4Error::Misuse("begin_layer inside a layer"));
        }
        self.close_section()?;
        self.start_layer(false);
        // The previous section is final now: nothing else goes there.
        self.tell_settled();
        Ok(())
    }

    /// Starts the next layer in the previous layer's section: its blocks
    /// follow the previous layer's without a chunk boundary between them,
    /// and its new inodes continue the previous layer's numbering (in its
    /// last inode group while that has room). The layer rules are those of
    /// any layer (it may replace or hide what the layers below brought).
    /// For small layers on top (the flatten's run settings), which would
    /// otherwise cost a chunk and an inode group of their own; the section
    /// they join then depends on them too. The first layer of an image is
    /// always a section of its own.
    pub fn begin_layer_packed(&mut self) -> Result<()> {
        if self.layers == 0 {
            return self.begin_layer();
        }
        if self.in_layer {
            return Err(Ext4Error::Misuse("begin_layer_packed inside a layer"));
        }
        self.start_layer(true);
        Ok(())
    }

    fn start_layer(&mut self, packed: bool) {
        self.tree.begin_layer(self.layers);
        self.in_layer = true;
        self.packed = packed;
        self.pending_start = self.cursor;
    }

    fn check_layer(&mut self, meta: Option<&Meta>) -> Result<()> {
        if !self.in_layer {
            return Err(Ext4Error::Misuse("entry outside a layer"));
        }
        if let Some(m) = meta {
            self.max_mtime = self.max_mtime.max(m.mtime.secs);
        }
        Ok(())
    }

    /// Adds or updates a directory (`path` empty = the root).
    pub fn add_dir(&mut self, path: &[Vec<u8>], meta: Meta) -> Result<()> {
        self.check_layer(Some(&meta))?;
        self.tree.add_dir(path, meta).map(|_| ())
    }

    /// Adds a symbolic link; its target is stored as given.
    pub fn add_symlink(&mut self, path: &[Vec<u8>], target: &[u8], meta: Meta) -> Result<()> {
        self.check_layer(Some(&meta))?;
        self.tree
            .add_node(
                path,
                Kind::Symlink {
                    target: target.to_vec(),
                },
                meta,
            )
            .map(|_| ())
    }

    /// Adds a FIFO or device node.
    pub fn add_special(&mut self, path: &[Vec<u8>], special: Special, meta: Meta) -> Result<()> {
        self.check_layer(Some(&meta))?;
        let kind = match special {
            Special::Fifo => Kind::Fifo,
            Special::CharDev(major, minor) => Kind::CharDev { major, minor },
            Special::BlockDev(major, minor) => Kind::BlockDev { major, minor },
        };
        self.tree.add_node(path, kind, meta).map(|_| ())
    }

    /// Adds a hard link to an existing non-directory.
    pub fn add_hardlink(&mut self, path: &[Vec<u8>], target: &[Vec<u8>]) -> Result<()> {
        self.check_layer(None)?;
        self.tree.add_hardlink(path, target).map(|_| ())
    }

    /// Applies a whiteout for `dir/name`.
    pub fn whiteout(&mut self, dir: &[Vec<u8>], name: &[u8]) -> Result<()> {
        self.check_layer(None)?;
        self.tree.whiteout(dir, name)
    }

    /// Applies an opaque-directory marker.
    pub fn opaque(&mut self, dir: &[Vec<u8>]) -> Result<()> {
        self.check_layer(None)?;
        self.tree.opaque(dir)
    }

    /// Adds a regular file of `size` bytes read from `data`. All-zero blocks
    /// become holes; the others are written contiguously at the layer's
    /// cursor. Whole blocks of the holes `data` reports are skipped without
    /// being read, so a sparse file costs what it stores, not its size.
    pub fn add_file(
        &mut self,
        path: &[Vec<u8>],
        meta: Meta,
        size: u64,
        data: &mut dyn FileData,
    ) -> Result<()> {
        self.check_layer(Some(&meta))?;
        if size.div_ceil(BLOCK_SIZE) >= MAX_BLOCKS {
            return Err(Ext4Error::TooLarge {
                what: format!(
                    "file '{}' of {size} bytes, over ext4's limit of {} bytes per file",
                    show_path(path),
                    (MAX_BLOCKS - 1) * BLOCK_SIZE
                ),
            });
        }
        let id = self.tree.add_node(
            path,
            Kind::File {
                size,
                extents: Vec::new(),
            },
            meta,
        )?;
        if size > 0 && size <= inline::MAX_FILE && self.tree.nodes[id].may_inline() {
            let mut bytes = vec![0u8; size as usize];
            let mut got = 0;
            while got < bytes.len() {
                let n = data
                    .read(&mut bytes[got..])
                    .map_err(io_err(format!("reading data of '{}'", show_path(path))))?;
                if n == 0 {
                    return Err(Ext4Error::ShortData {
                        path: show_path(path),
                        expected: size,
                        got: got as u64,
                    });
                }
                got += n;
            }
            self.tree.nodes[id].blocks.inline = inline::file(&bytes);
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        if size > 0 && buf.is_empty() {
            buf = vec![0u8; READ_BUFFER];
        }
        let extents = self.stream_data(path, size, data, &mut buf);
        self.buf = buf;
        if let Kind::File { extents: e, .. } = &mut self.tree.nodes[id].kind {
            *e = extents?;
        }
        Ok(())
    }

    fn stream_data(
        &mut self,
        path: &[Vec<u8>],
        size: u64,
        data: &mut dyn FileData,
        buf: &mut [u8],
    ) -> Result<Vec<Extent>> {
        let bs = BLOCK_SIZE as usize;
        let read_err = || io_err(format!("reading data of '{}'", show_path(path)));
        let mut extents = Vec::new();
        let mut done = 0u64;
        let mut logical = 0u32;
        // `done` stays on a block boundary until the file's last block.
        while done < size {
            let hole = data.hole_ahead().min(size - done) / BLOCK_SIZE * BLOCK_SIZE;
            if hole > 0 {
                data.skip_hole(hole).map_err(read_err())?;
                done += hole;
                logical += (hole / BLOCK_SIZE) as u32;
                continue;
            }
            let want = (size - done).min(buf.len() as u64) as usize;
            let mut got = 0;
            while got < want {
                // Inside a hole, read zeros only up to the end of the block:
                // whole blocks of hole are the outer loop's to skip.
                let end = match data.hole_ahead() {
                    0 => want,
                    h if got % bs == 0 && h >= BLOCK_SIZE && got > 0 => break,
                    _ => want.min((got / bs + 1) * bs),
                };
                let n = data.read(&mut buf[got..end]).map_err(read_err())?;
                if n == 0 {
                    return Err(Ext4Error::ShortData {
                        path: show_path(path),
                        expected: size,
                        got: done + got as u64,
                    });
                }
                got += n;
            }
            done += got as u64;
            // Zero the tail of a partial last block.
            let padded = got.div_ceil(bs) * bs;
            buf[got..padded].fill(0);
            for block in buf[..padded].chunks(bs) {
                if block.iter().any(|&b| b != 0) {
                    let phys = self.cursor;
                    self.cursor += 1;
                    self.pending.extend_from_slice(block);
                    extent::push_run(&mut extents, logical, phys, 1);
                    self.data_bytes += BLOCK_SIZE;
                    if self.pending.len() >= WRITE_BUFFER {
                        self.flush()?;
                    }
                }
                logical += 1;
            }
            self.opts.limits.check_device(self.cursor)?;
        }
        Ok(extents)
    }

    pub(super) fn flush(&mut self) -> Result<()> {
        let wrote = !self.pending.is_empty();
        if wrote {
            self.out
                .write_all_at(&self.pending, self.pending_start * BLOCK_SIZE)
                .map_err(io_err("writing file data to the image"))?;
            self.pending.clear();
        }
        // The buffer always ends at the cursor: everything below it is written.
        self.pending_start = self.cursor;
        if wrote {
            self.tell_settled();
        }
        Ok(())
    }

    pub(super) fn write_at(&self, block: u64, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all_at(bytes, block * BLOCK_SIZE)
            .map_err(io_err(format!("writing block {block}")))
    }

    pub(super) fn alloc(&mut self, n: u64) -> u64 {
        let b = self.cursor;
        self.cursor += n;
        b
    }
}

pub(super) fn contiguous_extents(start: u64, count: u64) -> Vec<Extent> {
    let mut v = Vec::new();
    extent::push_run(&mut v, 0, start, count as u32);
    v
}

/// Timestamp helper for callers: seconds and nanoseconds.
pub fn timestamp(secs: i64, nsec: u32) -> Timestamp {
    Timestamp { secs, nsec }
}
