//! The end of a layer: inode numbers for the nodes it added, then the blocks
//! of its symlinks, xattrs, extent trees and changed directories, then the
//! inode tables of the groups it owns, all in cursor order.

use super::{contiguous_extents, Builder};
use crate::error::{Ext4Error, Result};
use crate::format::dir::{self, ftype, DirEntry};
use crate::format::extent;
use crate::format::htree;
use crate::format::xattr::Placement;
use crate::geometry::{Geometry, LOST_FOUND_BLOCK, MAX_BLOCKS};
use crate::layout::*;
use crate::tree::{Kind, NodeId, LOST_FOUND, ROOT};

impl Builder {
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
        self.tell_settled();
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
}
