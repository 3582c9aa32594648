//! Geometry constants of the images lode writes.
//!
//! These are format parameters: changing any of them changes every image, so
//! they are recorded in `docs/format.md` under the format version.

/// Version of the image layout these constants and the builder write
/// (`docs/format.md` §1): 4 since 2026-12-06 (inline data: files of up to
/// 128 bytes and small directories kept in their inodes); 3 brought the
/// directory pool in group 0, inode tables at each section's end, packed
/// layers.
pub const LAYOUT_VERSION: u32 = 4;
/// Filesystem block size in bytes.
pub const BLOCK_SIZE: u64 = 4096;
/// Blocks per block group (one block of bitmap bits).
pub const BLOCKS_PER_GROUP: u64 = 32768;
/// Inodes per block group. Small on purpose: every layer owns whole groups of
/// inodes, and a group's inode table (1024 × 256 B = 256 KiB) then fits in half
/// a chunk, so a small top layer's inodes share a chunk with its data.
pub const INODES_PER_GROUP: u32 = 1024;
/// On-disk inode size in bytes.
pub const INODE_SIZE: u64 = 256;
/// Blocks of inode table per group.
pub const INODE_TABLE_BLOCKS: u64 = INODES_PER_GROUP as u64 * INODE_SIZE / BLOCK_SIZE;
/// Alignment of every layer section, in bytes: the chunk size of the chunk store.
pub const SECTION_ALIGN: u64 = 512 * 1024;
/// Alignment of every layer section, in blocks.
pub const SECTION_ALIGN_BLOCKS: u64 = SECTION_ALIGN / BLOCK_SIZE;
/// Blocks of the header region (superblock, group descriptors, bitmaps when they
/// fit, lost+found). Layer 0's section starts right after it.
pub const HEADER_BLOCKS: u64 = SECTION_ALIGN_BLOCKS;
/// First inode number not reserved by ext4.
pub const FIRST_INO: u32 = 11;
/// Inode number of the root directory.
pub const ROOT_INO: u32 = 2;
/// Inode number of `/lost+found`.
pub const LOST_FOUND_INO: u32 = 11;
/// Largest number of links ext4 allows on a non-directory inode.
pub const LINK_MAX: u32 = 65000;
/// Group descriptor size (no `64bit` feature).
pub const DESC_SIZE: u64 = 32;
/// Largest number of groups whose descriptors fit in the header region.
pub const MAX_GROUPS: u64 = (HEADER_BLOCKS - 1) * BLOCK_SIZE / DESC_SIZE;

/// Rounds `v` up to a multiple of `to`.
pub const fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}
