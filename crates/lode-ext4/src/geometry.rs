//! Where the global structures go, decided once all layers are in, and the
//! bounds on what the content may make the image cost.

use crate::error::{Ext4Error, Result};
use crate::layout::*;

/// Block of `/lost+found`'s directory contents (last block of chunk 0).
pub(crate) const LOST_FOUND_BLOCK: u64 = HEADER_BLOCKS - 1;
/// Largest block number without the `64bit` feature.
pub(crate) const MAX_BLOCKS: u64 = 1 << 32;

/// Bounds on what the content may make an image cost. Every layer owns
/// whole groups of 1,024 inodes, and every group spans 128 MiB of the
/// device, so the number of inodes bounds the device as much as the data
/// does: a million empty files imply a 122 GiB device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most inodes the layers may create, `/` and `/lost+found` included.
    pub inodes: u64,
    /// Largest device, in bytes, the content may imply. An explicit
    /// `Options::size` is the caller's choice and is not bound by it.
    pub device_bytes: u64,
}

impl Default for Limits {
    /// What the format itself allows: every group's inodes, 16 TiB.
    fn default() -> Self {
        Limits {
            inodes: MAX_GROUPS * u64::from(INODES_PER_GROUP),
            device_bytes: MAX_BLOCKS * BLOCK_SIZE,
        }
    }
}

impl Limits {
    /// Fails when a device of `blocks` blocks is over the device limit.
    pub(crate) fn check_device(&self, blocks: u64) -> Result<()> {
        let bytes = blocks.saturating_mul(BLOCK_SIZE);
        if bytes > self.device_bytes {
            return Err(Ext4Error::DeviceLimit {
                bytes,
                limit: self.device_bytes,
            });
        }
        Ok(())
    }
}

/// Where the global structures go, decided once all layers are in.
#[derive(Debug)]
pub(crate) struct Geometry {
    pub(crate) blocks: u64,
    pub(crate) groups: u64,
    pub(crate) gdt_blocks: u64,
    pub(crate) block_bitmaps: u64,
    pub(crate) inode_bitmaps: u64,
    pub(crate) spare_tables: u64,
    /// Group 0's inode table when it goes in chunk 0 (else it stays in the
    /// slot reserved at the end of layer 0's inode tables).
    pub(crate) table0: Option<u64>,
    pub(crate) timestamp: u32,
}

impl Geometry {
    fn gdt_blocks(groups: u64) -> u64 {
        (groups * DESC_SIZE).div_ceil(BLOCK_SIZE)
    }

    fn bitmaps_in_header(groups: u64) -> bool {
        1 + Self::gdt_blocks(groups) + 2 * groups <= LOST_FOUND_BLOCK
    }

    /// Blocks needed with `groups` groups, before free space.
    fn min_blocks(sections_end: u64, inode_groups: u64, groups: u64) -> u64 {
        let bitmaps = if Self::bitmaps_in_header(groups) {
            0
        } else {
            2 * groups
        };
        sections_end + bitmaps + (groups - inode_groups) * INODE_TABLE_BLOCKS
    }

    pub(crate) fn plan(
        sections_end: u64,
        inode_groups: u64,
        size: Option<u64>,
        max_mtime: i64,
    ) -> Result<Geometry> {
        let mut groups = inode_groups + 1;
        let headroom = (32 << 20) / BLOCK_SIZE + sections_end / 10;
        loop {
            let need = Self::min_blocks(sections_end, inode_groups, groups) + headroom;
            let g = need.div_ceil(BLOCKS_PER_GROUP).max(groups);
            if g == groups {
                break;
            }
            groups = g;
        }
        let mut blocks = groups * BLOCKS_PER_GROUP;
        if let Some(bytes) = size {
            let want = bytes / BLOCK_SIZE;
            let g = want.div_ceil(BLOCKS_PER_GROUP);
            let minimum =
                |g: u64| Self::min_blocks(sections_end, inode_groups, g.max(inode_groups));
            if g < inode_groups || want < minimum(g) || want - (g - 1) * BLOCKS_PER_GROUP < 64 {
                let mut m = inode_groups.max(1);
                while minimum(m) > m * BLOCKS_PER_GROUP {
                    m += 1;
                }
                return Err(Ext4Error::SizeTooSmall {
                    requested: bytes,
                    minimum: minimum(m).max((m - 1) * BLOCKS_PER_GROUP + 64) * BLOCK_SIZE,
                });
            }
            groups = g;
            blocks = want;
        }
        if groups > MAX_GROUPS || blocks >= MAX_BLOCKS {
            return Err(Ext4Error::TooLarge {
                what: format!(
                    "{blocks} blocks in {groups} groups, over the limit of {MAX_BLOCKS} blocks \
                     in {MAX_GROUPS} groups"
                ),
            });
        }
        let gdt_blocks = Self::gdt_blocks(groups);
        let in_header = Self::bitmaps_in_header(groups);
        let (block_bitmaps, tail) = if in_header {
            (1 + gdt_blocks, sections_end)
        } else {
            (sections_end, sections_end + 2 * groups)
        };
        // Chunk 0 takes group 0's inode table, right before lost+found's
        // block, when it fits beside the descriptors and whatever bitmaps
        // chunk 0 holds; bitmaps keep priority (they differ per image).
        let header_used = 1 + gdt_blocks + if in_header { 2 * groups } else { 0 };
        let table0 = (header_used + INODE_TABLE_BLOCKS <= LOST_FOUND_BLOCK)
            .then_some(LOST_FOUND_BLOCK - INODE_TABLE_BLOCKS);
        Ok(Geometry {
            blocks,
            groups,
            gdt_blocks,
            block_bitmaps,
            inode_bitmaps: block_bitmaps + groups,
            spare_tables: tail,
            table0,
            timestamp: max_mtime.clamp(0, i64::from(u32::MAX)) as u32,
        })
    }
}
