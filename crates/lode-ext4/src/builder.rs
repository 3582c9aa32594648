//! Writes the image: file data as layers stream in, metadata at each layer's
//! end, and the filesystem's global structures last.
//!
//! Image layout (block numbers; a chunk is 512 KiB = 128 blocks):
//!
//! ```text
//! chunk 0      superblock, group descriptors, bitmaps (when they fit), group
//!              0's inode table (when it fits), lost+found
//! section 0    layer 0: file data | symlink, xattr, extent-tree and directory
//!              blocks | inode tables of the groups layer 0 owns (group 0's
//!              slot stays free when its table is in chunk 0)   (chunk aligned)
//! section 1    layer 1: the same, for what layer 1 adds or changes
//! ...
//! tail         bitmaps (large images), spare inode tables, free space
//! ```
//!
//! A section depends only on its layer and the layers below it, so images that
//! share their first N layers share the chunks of those N sections, except
//! chunks holding inodes that upper layers change (directories they add to,
//! files they delete or re-link). Blocks of content that upper layers delete
//! or replace keep their bytes and are marked free.

use crate::bitmap::Bitmap;
use crate::data::FileData;
use crate::error::{show_path, Ext4Error, Result};
use crate::format::dir::{self, ftype, DirEntry};
use crate::format::extent::{self, Extent};
use crate::format::htree;
use crate::format::inode::{self, mode, InodeRecord, Timestamp};
use crate::format::superblock::{self, GroupDesc, SuperblockParams};
use crate::format::xattr::Placement;
pub use crate::geometry::Limits;
use crate::geometry::{Geometry, LOST_FOUND_BLOCK, MAX_BLOCKS};
use crate::layout::*;
use crate::tree::{Kind, Meta, NodeId, Tree, LOST_FOUND, ROOT};
use std::fs::File;
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
    /// Bytes of file data written (non-zero blocks only).
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
    /// Next inode group to hand to a layer.
    next_group: u64,
    /// First block of each group's inode table, for groups handed out so far.
    tables: Vec<u64>,
    pending: Vec<u8>,
    pending_start: u64,
    max_mtime: i64,
    data_bytes: u64,
    /// Read buffer of `add_file`, allocated once, on the first file with data.
    buf: Vec<u8>,
}

/// Bytes `add_file` reads at once.
const READ_BUFFER: usize = 1 << 20;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Ext4Error {
    let what = what.into();
    move |source| Ext4Error::Io { what, source }
}

/// An encoded inode: its number, its record, and the block runs it owns.
type InodeOut = (u32, InodeRecord, Vec<(u64, u64)>);

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
            tables: Vec::new(),
            pending: Vec::with_capacity(WRITE_BUFFER),
            pending_start: HEADER_BLOCKS,
            max_mtime: 0,
            data_bytes: 0,
            buf: Vec::new(),
        }
    }

    /// The merged tree so far (read-only).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Bytes of the image below which writing is over, except in the ranges
    /// [`Builder::is_settled`] excludes. Grows as file data is flushed and
    /// as layers end.
    pub fn settled_below(&self) -> u64 {
        self.pending_start * BLOCK_SIZE
    }

    /// True if the bytes `range` of the image hold their final content now:
    /// the range lies below [`Builder::settled_below`] and outside what
    /// [`Builder::finish`] writes (the header chunk and the inode tables,
    /// reserved at each layer's end). Everything else is written once, in
    /// cursor order, and never again: data and the blocks of symlinks,
    /// xattrs, extent trees and directories. This is what lets a consumer
    /// take chunks away (upload them, drop them) while the image is still
    /// being built.
    pub fn is_settled(&self, range: std::ops::Range<u64>) -> bool {
        if range.is_empty() {
            return true;
        }
        if range.start < HEADER_BLOCKS * BLOCK_SIZE || range.end > self.settled_below() {
            return false;
        }
        let (first, last) = (range.start / BLOCK_SIZE, (range.end - 1) / BLOCK_SIZE);
        // Tables are handed out in ascending order: the first one ending
        // after `first` is the only one that may overlap.
        let i = self
            .tables
            .partition_point(|&t| t + INODE_TABLE_BLOCKS <= first);
        self.tables.get(i).is_none_or(|&t| t > last)
    }

    /// Starts the next layer.
    pub fn begin_layer(&mut self) -> Result<()> {
        if self.in_layer {
            return Err(Ext4Error::Misuse("begin_layer inside a layer"));
        }
        self.tree.begin_layer(self.layers);
        self.in_layer = true;
        self.pending_start = self.cursor;
        Ok(())
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

    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.out
                .write_all_at(&self.pending, self.pending_start * BLOCK_SIZE)
                .map_err(io_err("writing file data to the image"))?;
            self.pending_start += (self.pending.len() / BLOCK_SIZE as usize) as u64;
            self.pending.clear();
        }
        self.pending_start = self.cursor;
        Ok(())
    }

    fn write_at(&self, block: u64, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all_at(bytes, block * BLOCK_SIZE)
            .map_err(io_err(format!("writing block {block}")))
    }

    fn alloc(&mut self, n: u64) -> u64 {
        let b = self.cursor;
        self.cursor += n;
        b
    }

    /// Ends the layer: numbers its new inodes and writes its symlink, xattr,
    /// extent-tree and directory blocks, then reserves its inode tables.
    pub fn end_layer(&mut self) -> Result<()> {
        if !self.in_layer {
            return Err(Ext4Error::Misuse("end_layer outside a layer"));
        }
        self.flush()?;
        let layer = self.layers;
        // 1. Inode numbers: whole groups per layer, directories first.
        let fresh = self.tree.new_in_layer();
        let (first_ino, count) = if layer == 0 {
            (
                u64::from(FIRST_INO) + 1,
                u64::from(FIRST_INO) + fresh.len() as u64,
            )
        } else {
            (
                self.next_group * u64::from(INODES_PER_GROUP) + 1,
                fresh.len() as u64,
            )
        };
        let groups = count.div_ceil(u64::from(INODES_PER_GROUP));
        if self.next_group + groups > MAX_GROUPS {
            return Err(Ext4Error::TooLarge {
                what: format!(
                    "{} inode groups, over the limit of {MAX_GROUPS} groups whose descriptors fit in the header",
                    self.next_group + groups
                ),
            });
        }
        for (i, &id) in fresh.iter().enumerate() {
            self.tree.nodes[id].ino = (first_ino + i as u64) as u32;
        }
        // 2. Blocks that belong to single nodes, in node order.
        for id in 0..self.tree.nodes.len() {
            self.alloc_node_blocks(id, layer)?;
        }
        // 3. Directory contents changed by this layer.
        let parents = self.tree.parents();
        for (id, &parent) in parents.iter().enumerate() {
            let n = &self.tree.nodes[id];
            if n.alive && n.dirty && n.kind.is_dir() && id != LOST_FOUND {
                self.write_dir(id, parent)?;
            }
        }
        if layer == 0 {
            self.write_lost_found()?;
        }
        // 4. Inode tables of the groups this layer owns.
        for _ in 0..groups {
            let t = self.alloc(INODE_TABLE_BLOCKS);
            self.tables.push(t);
        }
        self.next_group += groups;
        self.cursor = round_up(self.cursor, SECTION_ALIGN_BLOCKS);
        if self.cursor >= MAX_BLOCKS {
            return Err(Ext4Error::TooLarge {
                what: format!(
                    "{} blocks, over the limit of {MAX_BLOCKS} blocks (16 TiB)",
                    self.cursor
                ),
            });
        }
        // The device this content implies so far (groups of inodes included).
        if self.opts.size.is_none() {
            let geo = Geometry::plan(self.cursor, self.next_group, None, 0)?;
            self.opts.limits.check_device(geo.blocks)?;
        }
        self.pending_start = self.cursor;
        self.in_layer = false;
        self.layers += 1;
        Ok(())
    }

    fn alloc_node_blocks(&mut self, id: NodeId, layer: usize) -> Result<()> {
        let n = &self.tree.nodes[id];
        if !n.alive {
            return Ok(());
        }
        if n.meta_layer == layer {
            if let Placement::Block(b) = &n.xattrs {
                let b = b.clone();
                let at = self.alloc(1);
                self.write_at(at, &b)?;
                self.tree.nodes[id].blocks.xattr = Some(at);
            }
        }
        let n = &self.tree.nodes[id];
        if n.layer != layer {
            return Ok(());
        }
        match &n.kind {
            Kind::Symlink { target } if target.len() >= 60 => {
                let mut b = target.clone();
                b.resize(BLOCK_SIZE as usize, 0);
                let at = self.alloc(1);
                self.write_at(at, &b)?;
                self.tree.nodes[id].blocks.symlink = Some(at);
            }
            Kind::File { extents, .. } if extents.len() > extent::ROOT_ENTRIES => {
                let extents = extents.clone();
                let need = extent::tree_blocks_needed(extents.len());
                let start = self.alloc(need);
                let blocks: Vec<u64> = (start..start + need).collect();
                let tree = extent::build(&extents, &blocks);
                for (b, bytes) in &tree.blocks {
                    self.write_at(*b, bytes)?;
                }
                self.tree.nodes[id].blocks.tree = blocks;
            }
            _ => {}
        }
        Ok(())
    }

    fn dir_entries(&self, id: NodeId, parent: NodeId) -> Vec<(Vec<u8>, u32, u8)> {
        let t = &self.tree;
        let mut v = vec![
            (b".".to_vec(), t.nodes[id].ino, ftype::DIR),
            (b"..".to_vec(), t.nodes[parent].ino, ftype::DIR),
        ];
        for (name, c) in t.entries(id) {
            let ft = match t.nodes[c].kind {
                Kind::Dir { .. } => ftype::DIR,
                Kind::File { .. } => ftype::REG,
                Kind::Symlink { .. } => ftype::SYMLINK,
                Kind::Fifo => ftype::FIFO,
                Kind::CharDev { .. } => ftype::CHR,
                Kind::BlockDev { .. } => ftype::BLK,
            };
            v.push((name.clone(), t.nodes[c].ino, ft));
        }
        v
    }

    /// A directory's current entries as whole directory blocks.
    /// A directory's blocks, and whether they are hash-indexed: directories
    /// of more than one block get an htree index (lookups read one leaf),
    /// unless they outgrow two index levels; smaller ones stay linear.
    fn encode_dir(&self, id: NodeId, parent: NodeId) -> (Vec<u8>, bool) {
        let entries = self.dir_entries(id, parent);
        let refs: Vec<DirEntry<'_>> = entries
            .iter()
            .map(|(n, ino, ft)| DirEntry {
                name: n,
                ino: *ino,
                ftype: *ft,
            })
            .collect();
        if dir::blocks_needed(refs.iter().map(|e| e.name.len())) > 1 {
            if let Some(indexed) =
                htree::encode(refs[0].ino, refs[1].ino, &refs[2..], &self.opts.hash_seed)
            {
                return (indexed, true);
            }
        }
        (dir::encode(&refs), false)
    }

    fn write_dir(&mut self, id: NodeId, parent: NodeId) -> Result<()> {
        let (bytes, indexed) = self.encode_dir(id, parent);
        let count = bytes.len() as u64 / BLOCK_SIZE;
        let start = self.alloc(count);
        self.write_at(start, &bytes)?;
        let extents = contiguous_extents(start, count);
        let need = extent::tree_blocks_needed(extents.len());
        let tstart = self.alloc(need);
        let tree_blocks: Vec<u64> = (tstart..tstart + need).collect();
        for (b, bytes) in &extent::build(&extents, &tree_blocks).blocks {
            self.write_at(*b, bytes)?;
        }
        let nb = &mut self.tree.nodes[id].blocks;
        nb.dir = Some((start, count));
        nb.dir_tree = tree_blocks;
        nb.dir_indexed = indexed;
        Ok(())
    }

    fn write_lost_found(&mut self) -> Result<()> {
        let (bytes, _) = self.encode_dir(LOST_FOUND, ROOT);
        if bytes.len() as u64 == BLOCK_SIZE {
            self.write_at(LOST_FOUND_BLOCK, &bytes)?;
            let nb = &mut self.tree.nodes[LOST_FOUND].blocks;
            nb.dir = Some((LOST_FOUND_BLOCK, 1));
            nb.dir_indexed = false;
        } else {
            self.write_dir(LOST_FOUND, ROOT)?;
        }
        Ok(())
    }

    /// Writes the global structures and returns what the image holds.
    pub fn finish(self) -> Result<Summary> {
        if self.in_layer {
            return Err(Ext4Error::Misuse("finish inside a layer"));
        }
        if self.layers == 0 {
            return Err(Ext4Error::Misuse("finish before any layer"));
        }
        // Any directory whose entries changed after its last write (only
        // possible for lost+found edits in later layers) was rewritten there.
        let geo = Geometry::plan(self.cursor, self.next_group, self.opts.size, self.max_mtime)?;
        let mut used = Bitmap::new(geo.blocks);
        used.set_range(0, 1 + geo.gdt_blocks);
        used.set_range(geo.block_bitmaps, geo.groups);
        used.set_range(geo.inode_bitmaps, geo.groups);
        let mut tables = self.tables.clone();
        if let Some(t) = geo.table0 {
            // Group 0 holds layer 0's directories, `/` first: the inodes upper
            // layers change most. In chunk 0, which differs per image anyway,
            // their changes cost no chunk of layer 0's section; the slot
            // reserved there stays free (zeros).
            tables[0] = t;
        }
        for g in self.next_group..geo.groups {
            tables.push(geo.spare_tables + (g - self.next_group) * INODE_TABLE_BLOCKS);
        }
        for &t in &tables {
            used.set_range(t, INODE_TABLE_BLOCKS);
        }
        let mut inodes = Bitmap::new(geo.groups * u64::from(INODES_PER_GROUP));
        inodes.set_range(0, u64::from(FIRST_INO) - 1);
        let mut dirs_per_group = vec![0u64; geo.groups as usize];
        let mut records: Vec<(u32, InodeRecord)> = Vec::new();
        for id in 0..self.tree.nodes.len() {
            if !self.tree.nodes[id].alive {
                continue;
            }
            let (ino, rec, owned) = self.inode_record(id)?;
            for (start, len) in owned {
                if used.set_range(start, len) != 0 {
                    return Err(Ext4Error::Misuse("two inodes claim one block"));
                }
            }
            inodes.set(u64::from(ino) - 1);
            if rec.mode & 0o170000 == mode::S_IFDIR {
                dirs_per_group[((ino - 1) / INODES_PER_GROUP) as usize] += 1;
            }
            records.push((ino, rec));
        }
        records.sort_by_key(|(ino, _)| *ino);
        // Inode tables.
        let per_group = INODES_PER_GROUP as usize;
        let mut i = 0;
        while i < records.len() {
            let g = ((records[i].0 - 1) / INODES_PER_GROUP) as usize;
            let mut table = vec![0u8; per_group * INODE_SIZE as usize];
            while i < records.len() && ((records[i].0 - 1) / INODES_PER_GROUP) as usize == g {
                let slot = ((records[i].0 - 1) % INODES_PER_GROUP) as usize * INODE_SIZE as usize;
                table[slot..slot + INODE_SIZE as usize]
                    .copy_from_slice(&inode::encode_inode(&records[i].1));
                i += 1;
            }
            self.write_at(tables[g], &table)?;
        }
        // Bitmaps and group descriptors.
        let mut gdt = vec![0u8; (geo.gdt_blocks * BLOCK_SIZE) as usize];
        let mut bb = vec![0u8; BLOCK_SIZE as usize];
        let ipg = u64::from(INODES_PER_GROUP);
        for g in 0..geo.groups {
            let first = g * BLOCKS_PER_GROUP;
            let last = (first + BLOCKS_PER_GROUP).min(geo.blocks);
            used.export(first, &mut bb);
            self.write_at(geo.block_bitmaps + g, &bb)?;
            let mut ib = vec![0xFFu8; BLOCK_SIZE as usize];
            inodes.export(g * ipg, &mut ib[..(ipg / 8) as usize]);
            self.write_at(geo.inode_bitmaps + g, &ib)?;
            let d = GroupDesc {
                block_bitmap: (geo.block_bitmaps + g) as u32,
                inode_bitmap: (geo.inode_bitmaps + g) as u32,
                inode_table: tables[g as usize] as u32,
                free_blocks: ((last - first) - used.count_range(first, last)) as u16,
                free_inodes: (ipg - inodes.count_range(g * ipg, (g + 1) * ipg)) as u16,
                used_dirs: dirs_per_group[g as usize] as u16,
            };
            let off = (g * DESC_SIZE) as usize;
            gdt[off..off + DESC_SIZE as usize].copy_from_slice(&superblock::encode_group_desc(&d));
        }
        self.write_at(1, &gdt)?;
        let blocks_used = used.count_range(0, geo.blocks);
        let inodes_used = inodes.count_range(0, geo.groups * ipg);
        let sb = superblock::encode_superblock(&SuperblockParams {
            blocks_count: geo.blocks,
            groups: geo.groups,
            free_blocks: geo.blocks - blocks_used,
            free_inodes: geo.groups * ipg - inodes_used,
            uuid: self.opts.uuid,
            hash_seed: self.opts.hash_seed,
            label: self.opts.label.clone(),
            timestamp: geo.timestamp,
        });
        self.out
            .write_all_at(&sb, 1024)
            .map_err(io_err("writing the superblock"))?;
        self.out
            .set_len(geo.blocks * BLOCK_SIZE)
            .map_err(io_err("setting the image size"))?;
        Ok(Summary {
            image_bytes: geo.blocks * BLOCK_SIZE,
            groups: geo.groups,
            inodes_used,
            blocks_used,
            data_bytes: self.data_bytes,
            sections_end_block: self.cursor,
        })
    }

    /// The inode of a live node and the block runs it owns.
    fn inode_record(&self, id: NodeId) -> Result<InodeOut> {
        let n = &self.tree.nodes[id];
        let mut owned: Vec<(u64, u64)> = Vec::new();
        let mut rec = InodeRecord {
            mode: n.meta.perm & 0o7777,
            uid: n.meta.uid,
            gid: n.meta.gid,
            size: 0,
            time: n.meta.mtime,
            links: n.links.min(LINK_MAX) as u16,
            sectors: 0,
            flags: 0,
            i_block: [0; 60],
            xattr_block: 0,
            inline_xattrs: Vec::new(),
        };
        let mut blocks = 0u64;
        match &n.xattrs {
            Placement::Inline(area) => rec.inline_xattrs = area.clone(),
            Placement::Block(_) => {
                let b = n
                    .blocks
                    .xattr
                    .ok_or(Ext4Error::Misuse("xattr block not allocated"))?;
                rec.xattr_block = b as u32;
                owned.push((b, 1));
                blocks += 1;
            }
            Placement::None => {}
        }
        let extents_root = |extents: &[Extent], tree: &[u64], owned: &mut Vec<(u64, u64)>| {
            for e in extents {
                owned.push((e.physical, u64::from(e.len)));
            }
            for &t in tree {
                owned.push((t, 1));
            }
            extent::build(extents, tree).root
        };
        match &n.kind {
            Kind::Dir { .. } => {
                let (start, count) = n
                    .blocks
                    .dir
                    .ok_or(Ext4Error::Misuse("directory without blocks"))?;
                let extents = contiguous_extents(start, count);
                rec.i_block = extents_root(&extents, &n.blocks.dir_tree, &mut owned);
                rec.mode |= mode::S_IFDIR;
                rec.flags = inode::EXTENTS_FL;
                if n.blocks.dir_indexed {
                    rec.flags |= inode::INDEX_FL;
                }
                rec.size = count * BLOCK_SIZE;
                blocks += count + n.blocks.dir_tree.len() as u64;
                let links = 2 + self.tree.subdirs(id) as u64;
                rec.links = if links > u64::from(LINK_MAX) {
                    1
                } else {
                    links as u16
                };
            }
            Kind::File { size, extents } => {
                rec.i_block = extents_root(extents, &n.blocks.tree, &mut owned);
                rec.mode |= mode::S_IFREG;
                rec.flags = inode::EXTENTS_FL;
                rec.size = *size;
                blocks += extents.iter().map(|e| u64::from(e.len)).sum::<u64>()
                    + n.blocks.tree.len() as u64;
            }
            Kind::Symlink { target } => {
                rec.mode |= mode::S_IFLNK;
                rec.size = target.len() as u64;
                if let Some(b) = n.blocks.symlink {
                    rec.i_block = extents_root(&contiguous_extents(b, 1), &[], &mut owned);
                    rec.flags = inode::EXTENTS_FL;
                    blocks += 1;
                } else {
                    rec.i_block[..target.len()].copy_from_slice(target);
                }
            }
            Kind::Fifo => rec.mode |= mode::S_IFIFO,
            Kind::CharDev { major, minor } => {
                rec.mode |= mode::S_IFCHR;
                rec.i_block = inode::encode_device(*major, *minor);
            }
            Kind::BlockDev { major, minor } => {
                rec.mode |= mode::S_IFBLK;
                rec.i_block = inode::encode_device(*major, *minor);
            }
        }
        rec.sectors = blocks * (BLOCK_SIZE / 512);
        Ok((n.ino, rec, owned))
    }
}

fn contiguous_extents(start: u64, count: u64) -> Vec<Extent> {
    let mut v = Vec::new();
    extent::push_run(&mut v, 0, start, count as u32);
    v
}

/// Timestamp helper for callers: seconds and nanoseconds.
pub fn timestamp(secs: i64, nsec: u32) -> Timestamp {
    Timestamp { secs, nsec }
}
