//! Superblock and group descriptors.

use super::{put16, put32};
use crate::layout::{BLOCKS_PER_GROUP, DESC_SIZE, FIRST_INO, INODES_PER_GROUP, INODE_SIZE};

/// `s_feature_compat`: extended attributes.
pub const COMPAT_EXT_ATTR: u32 = 0x0008;
/// `s_feature_compat`: directories may be hash-indexed (htree).
pub const COMPAT_DIR_INDEX: u32 = 0x0020;
/// `s_feature_compat`: at most two backup superblocks, listed in `s_backup_bgs`
/// (lode lists none, so no backup copy sits inside a layer's data).
pub const COMPAT_SPARSE_SUPER2: u32 = 0x0200;
/// `s_feature_incompat`: directory entries record the file type.
pub const INCOMPAT_FILETYPE: u32 = 0x0002;
/// `s_feature_incompat`: files map blocks with extent trees.
pub const INCOMPAT_EXTENTS: u32 = 0x0040;
/// `s_feature_incompat`: bitmaps and inode tables may live anywhere.
pub const INCOMPAT_FLEX_BG: u32 = 0x0200;
/// `s_feature_incompat`: small files and directories live in their inodes.
pub const INCOMPAT_INLINE_DATA: u32 = 0x8000;
/// `s_feature_ro_compat`: files larger than 2 GiB.
pub const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
/// `s_feature_ro_compat`: more than 65,000 subdirectories.
pub const RO_COMPAT_DIR_NLINK: u32 = 0x0020;
/// `s_feature_ro_compat`: inodes carry the extra fields (nanosecond times, crtime).
pub const RO_COMPAT_EXTRA_ISIZE: u32 = 0x0040;

/// Values the superblock is built from.
#[derive(Clone, Debug)]
pub struct SuperblockParams {
    /// Total blocks in the filesystem.
    pub blocks_count: u64,
    /// Number of block groups.
    pub groups: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
    /// Volume label (at most 16 bytes are kept).
    pub label: Vec<u8>,
    /// Time stamp for creation, last mount, last write and last check.
    pub timestamp: u32,
}

/// Encodes the 1024-byte superblock.
pub fn encode_superblock(p: &SuperblockParams) -> [u8; 1024] {
    let mut b = [0u8; 1024];
    let inodes = p.groups * u64::from(INODES_PER_GROUP);
    put32(&mut b, 0x00, inodes as u32);
    put32(&mut b, 0x04, p.blocks_count as u32);
    put32(&mut b, 0x08, 0); // reserved blocks
    put32(&mut b, 0x0C, p.free_blocks as u32);
    put32(&mut b, 0x10, p.free_inodes as u32);
    put32(&mut b, 0x14, 0); // first data block (0 for 4 KiB blocks)
    put32(&mut b, 0x18, 2); // log2(block size) - 10
    put32(&mut b, 0x1C, 2); // log2(cluster size) - 10
    put32(&mut b, 0x20, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x24, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x28, INODES_PER_GROUP);
    put32(&mut b, 0x2C, p.timestamp); // s_mtime
    put32(&mut b, 0x30, p.timestamp); // s_wtime
    put16(&mut b, 0x34, 0); // mount count
    put16(&mut b, 0x36, 0xFFFF); // max mount count: -1, no forced checks
    put16(&mut b, 0x38, 0xEF53); // magic
    put16(&mut b, 0x3A, 1); // state: cleanly unmounted
    put16(&mut b, 0x3C, 1); // errors: continue
    put32(&mut b, 0x40, p.timestamp); // last check
    put32(&mut b, 0x44, 0); // check interval
    put32(&mut b, 0x48, 0); // creator OS: Linux
    put32(&mut b, 0x4C, 1); // revision: dynamic
    put32(&mut b, 0x54, FIRST_INO);
    put16(&mut b, 0x58, INODE_SIZE as u16);
    put32(
        &mut b,
        0x5C,
        COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2,
    );
    put32(
        &mut b,
        0x60,
        INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG | INCOMPAT_INLINE_DATA,
    );
    put32(
        &mut b,
        0x64,
        RO_COMPAT_LARGE_FILE | RO_COMPAT_DIR_NLINK | RO_COMPAT_EXTRA_ISIZE,
    );
    b[0x68..0x78].copy_from_slice(&p.uuid);
    let n = p.label.len().min(16);
    b[0x78..0x78 + n].copy_from_slice(&p.label[..n]);
    b[0xEC..0xFC].copy_from_slice(&p.hash_seed);
    b[0xFC] = 1; // default hash: half_md4
    put16(&mut b, 0xFE, 0); // 32-byte group descriptors
    put32(&mut b, 0x108, p.timestamp); // mkfs time
    put32(&mut b, 0x150, (p.blocks_count >> 32) as u32);
    put32(&mut b, 0x158, (p.free_blocks >> 32) as u32);
    put16(&mut b, 0x15C, 32); // min extra isize
    put16(&mut b, 0x15E, 32); // want extra isize
    put32(&mut b, 0x160, 0x1); // flags: signed directory hash (as mke2fs on x86)
    b[0x174] = 4; // log2(groups per flex group)
    put32(&mut b, 0x24C, 0); // s_backup_bgs[0]: no backup superblock
    put32(&mut b, 0x250, 0); // s_backup_bgs[1]
    put32(&mut b, 0x268, crate::layout::LOST_FOUND_INO); // s_lpf_ino
    b
}

/// One block group descriptor.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupDesc {
    /// Block number of the group's block bitmap.
    pub block_bitmap: u32,
    /// Block number of the group's inode bitmap.
    pub inode_bitmap: u32,
    /// First block of the group's inode table.
    pub inode_table: u32,
    /// Free blocks in the group.
    pub free_blocks: u16,
    /// Free inodes in the group.
    pub free_inodes: u16,
    /// Directories among the group's inodes.
    pub used_dirs: u16,
}

/// Encodes a 32-byte group descriptor.
pub fn encode_group_desc(d: &GroupDesc) -> [u8; DESC_SIZE as usize] {
    let mut b = [0u8; DESC_SIZE as usize];
    put32(&mut b, 0x00, d.block_bitmap);
    put32(&mut b, 0x04, d.inode_bitmap);
    put32(&mut b, 0x08, d.inode_table);
    put16(&mut b, 0x0C, d.free_blocks);
    put16(&mut b, 0x0E, d.free_inodes);
    put16(&mut b, 0x10, d.used_dirs);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{get16, get32};

    #[test]
    fn superblock_fields_land_at_kernel_offsets() {
        let sb = encode_superblock(&SuperblockParams {
            blocks_count: 5 << 32 | 7,
            groups: 3,
            free_blocks: 100,
            free_inodes: 200,
            uuid: [9; 16],
            hash_seed: [8; 16],
            label: b"a-label-longer-than-16".to_vec(),
            timestamp: 1234,
        });
        assert_eq!(get16(&sb, 0x38), 0xEF53);
        assert_eq!(get32(&sb, 0x00), 3 * INODES_PER_GROUP);
        assert_eq!(get32(&sb, 0x04), 7);
        assert_eq!(get32(&sb, 0x150), 5);
        assert_eq!(&sb[0x78..0x88], b"a-label-longer-t");
        assert_eq!(&sb[0x68..0x78], &[9; 16]);
        assert_eq!(get32(&sb, 0x2C), 1234);
    }

    #[test]
    fn group_desc_roundtrip() {
        let d = encode_group_desc(&GroupDesc {
            block_bitmap: 1,
            inode_bitmap: 2,
            inode_table: 3,
            free_blocks: 4,
            free_inodes: 5,
            used_dirs: 6,
        });
        assert_eq!(get32(&d, 8), 3);
        assert_eq!(get16(&d, 0x10), 6);
    }
}
