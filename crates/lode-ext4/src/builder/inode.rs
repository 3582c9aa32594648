//! One inode's on-disk record, from its node and the blocks allocated to it.

use super::{contiguous_extents, Builder};
use crate::error::{Ext4Error, Result};
use crate::format::extent::{self, Extent};
use crate::format::inline;
use crate::format::inode::{self, mode, InodeRecord};
use crate::format::xattr::Placement;
use crate::layout::*;
use crate::tree::{Kind, NodeId};

/// An encoded inode: its number, its record, and the block runs it owns.
pub(super) type InodeOut = (u32, InodeRecord, Vec<(u64, u64)>);

impl Builder {
    /// The inode of a live node and the block runs it owns.
    pub(super) fn inode_record(&self, id: NodeId) -> Result<InodeOut> {
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
        if let Some(inl) = &n.blocks.inline {
            // Contents in the inode: no blocks, and `system.data` fills
            // the in-inode attribute area (`Node::may_inline`).
            rec.i_block = inl.i_block;
            rec.flags = inline::INLINE_DATA_FL;
            rec.size = inl.size;
            rec.inline_xattrs = inl.area.clone();
        }
        match &n.kind {
            Kind::Dir { .. } => {
                rec.mode |= mode::S_IFDIR;
                if n.blocks.inline.is_none() {
                    let (start, count) = n
                        .blocks
                        .dir
                        .ok_or(Ext4Error::Misuse("directory without blocks"))?;
                    let extents = contiguous_extents(start, count);
                    rec.i_block = extents_root(&extents, &n.blocks.dir_tree, &mut owned);
                    rec.flags = inode::EXTENTS_FL;
                    if n.blocks.dir_indexed {
                        rec.flags |= inode::INDEX_FL;
                    }
                    rec.size = count * BLOCK_SIZE;
                    blocks += count + n.blocks.dir_tree.len() as u64;
                }
                let links = 2 + self.tree.subdirs(id) as u64;
                rec.links = if links > u64::from(LINK_MAX) {
                    1
                } else {
                    links as u16
                };
            }
            Kind::File { size, extents } => {
                rec.mode |= mode::S_IFREG;
                if n.blocks.inline.is_none() {
                    rec.i_block = extents_root(extents, &n.blocks.tree, &mut owned);
                    rec.flags = inode::EXTENTS_FL;
                    rec.size = *size;
                    blocks += extents.iter().map(|e| u64::from(e.len)).sum::<u64>()
                        + n.blocks.tree.len() as u64;
                }
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
