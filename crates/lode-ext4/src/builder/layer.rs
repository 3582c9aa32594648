//! The end of a layer: inode numbers for the nodes it added (directories in
//! group 0, the directory pool, while it has room), then the blocks of its
//! symlinks, xattrs, extent trees and changed directories, all in cursor
//! order; and the end of a section: the inode tables of the groups its
//! layers own.

use super::{contiguous_extents, Builder};
use crate::error::{Ext4Error, Result};
use crate::format::dir::{self, ftype, DirEntry};
use crate::format::extent;
use crate::format::htree;
use crate::format::inline;
use crate::format::xattr::Placement;
use crate::geometry::{Geometry, LOST_FOUND_BLOCK, MAX_BLOCKS};
use crate::layout::*;
use crate::tree::{Kind, NodeId, LOST_FOUND, ROOT};

impl Builder {
    /// Ends the layer: numbers its new inodes and writes its symlink, xattr,
    /// extent-tree and directory blocks. The inode tables of the groups it
    /// owns are reserved when its section ends (the next `begin_layer`, or
    /// `finish`).
    pub fn end_layer(&mut self) -> Result<()> {
        if !self.in_layer {
            return Err(Ext4Error::Misuse("end_layer outside a layer"));
        }
        self.flush()?;
        let layer = self.layers;
        // 1. Inode numbers: directories first, in group 0 (the directory
        // pool) while it has room; the rest in whole groups the layer owns,
        // or, for a packed layer, after the previous layer's.
        let fresh = self.tree.new_in_layer();
        let dirs = fresh
            .iter()
            .take_while(|&&id| self.tree.nodes[id].kind.is_dir())
            .count();
        let ipg = u64::from(INODES_PER_GROUP);
        let pooled = dirs.min(ipg.saturating_sub(self.pool_next - 1) as usize);
        for (i, &id) in fresh[..pooled].iter().enumerate() {
            self.tree.nodes[id].ino = (self.pool_next + i as u64) as u32;
        }
        self.pool_next += pooled as u64;
        let own = &fresh[pooled..];
        // Group 0 is the pool: a layer's own groups start at group 1.
        let first_group = self.next_group.max(1);
        let first_ino = if self.packed {
            self.next_ino
        } else {
            first_group * ipg + 1
        };
        let end_ino = first_ino + own.len() as u64;
        let groups = (end_ino - 1).div_ceil(ipg).saturating_sub(first_group);
        if first_group + groups > MAX_GROUPS {
            return Err(Ext4Error::TooLarge {
                what: format!(
                    "{} inode groups, over the limit of {MAX_GROUPS} groups whose descriptors fit in the header",
                    first_group + groups
                ),
            });
        }
        for (i, &id) in own.iter().enumerate() {
            self.tree.nodes[id].ino = (first_ino + i as u64) as u32;
        }
        self.next_ino = end_ino;
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
        // 4. The groups this layer owns; layer 0 also gets group 0 (the
        // pool). Their inode tables go at the section's end, after any packed
        // layer's blocks (see `close_section`).
        self.next_group = first_group + groups;
        // The device this content implies so far (groups of inodes included).
        let end = round_up(
            self.cursor + (self.next_group - self.tables.len() as u64) * INODE_TABLE_BLOCKS,
            SECTION_ALIGN_BLOCKS,
        );
        if end >= MAX_BLOCKS {
            return Err(Ext4Error::TooLarge {
                what: format!("{end} blocks, over the limit of {MAX_BLOCKS} blocks (16 TiB)"),
            });
        }
        if self.opts.size.is_none() {
            let geo = Geometry::plan(end, self.next_group, None, 0)?;
            self.opts.limits.check_device(geo.blocks)?;
        }
        self.pending_start = self.cursor;
        self.in_layer = false;
        self.packed = false;
        self.layers += 1;
        self.tell_settled();
        Ok(())
    }

    /// Ends the current section: reserves the inode tables of the groups
    /// numbered since the last section ended, in group order (layer 0's
    /// first is group 0's slot, used when chunk 0 has no room for it: see
    /// `Geometry::table0`), then moves to the next chunk boundary.
    pub(super) fn close_section(&mut self) -> Result<()> {
        while (self.tables.len() as u64) < self.next_group {
            let t = self.alloc(INODE_TABLE_BLOCKS);
            self.tables.push(t);
        }
        self.cursor = round_up(self.cursor, SECTION_ALIGN_BLOCKS);
        if self.cursor >= MAX_BLOCKS {
            return Err(Ext4Error::TooLarge {
                what: format!(
                    "{} blocks, over the limit of {MAX_BLOCKS} blocks (16 TiB)",
                    self.cursor
                ),
            });
        }
        self.pending_start = self.cursor;
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

    /// A directory's blocks for `entries` (`.` and `..` first), and whether
    /// they are hash-indexed: directories of more than one block get an
    /// htree index (lookups read one leaf), unless they outgrow two index
    /// levels; smaller ones stay linear.
    fn encode_dir(&self, refs: &[DirEntry<'_>]) -> (Vec<u8>, bool) {
        if dir::blocks_needed(refs.iter().map(|e| e.name.len())) > 1 {
            if let Some(indexed) =
                htree::encode(refs[0].ino, refs[1].ino, &refs[2..], &self.opts.hash_seed)
            {
                return (indexed, true);
            }
        }
        (dir::encode(refs), false)
    }

    /// Writes a directory's current entries: in its inode when they fit
    /// (inline data; never `/`, whose entries change with every image's
    /// top layer anyway, nor `/lost+found`), else as new blocks at the cursor. A directory
    /// inline in a lower layer that outgrows its inode moves to blocks in
    /// the layer that adds to it.
    fn write_dir(&mut self, id: NodeId, parent: NodeId) -> Result<()> {
        let entries = self.dir_entries(id, parent);
        let refs = as_refs(&entries);
        if id != ROOT && id != LOST_FOUND && self.tree.nodes[id].may_inline() {
            if let Some(inl) = inline::dir(refs[1].ino, &refs[2..]) {
                let nb = &mut self.tree.nodes[id].blocks;
                nb.inline = Some(inl);
                nb.dir = None;
                nb.dir_tree = Vec::new();
                nb.dir_indexed = false;
                return Ok(());
            }
        }
        let (bytes, indexed) = self.encode_dir(&refs);
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
        nb.inline = None;
        Ok(())
    }

    /// Writes `/lost+found` in its reserved block (never inline: `e2fsck`
    /// wants blocks there to reconnect files into).
    fn write_lost_found(&mut self) -> Result<()> {
        let entries = self.dir_entries(LOST_FOUND, ROOT);
        let (bytes, _) = self.encode_dir(&as_refs(&entries));
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
}

/// Directory entries as the encoders take them.
fn as_refs(entries: &[(Vec<u8>, u32, u8)]) -> Vec<DirEntry<'_>> {
    entries
        .iter()
        .map(|(n, ino, ft)| DirEntry {
            name: n,
            ino: *ino,
            ftype: *ft,
        })
        .collect()
}
