//! Encoders for the ext4 on-disk structures lode writes.
//!
//! Every encoder is a pure function from values to bytes, so each one can be
//! tested (and fuzzed) on its own. Field offsets follow the Linux kernel's
//! `fs/ext4/ext4.h`; `docs/format.md` lists which fields lode sets and why.

pub mod dir;
pub mod extent;
pub mod htree;
pub mod inline;
pub mod inode;
pub mod superblock;
pub mod xattr;

/// Writes a little-endian `u16` at `off`.
pub(crate) fn put16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian `u32` at `off`.
pub(crate) fn put32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Reads a little-endian `u16` at `off`.
#[cfg(test)]
pub(crate) fn get16(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([buf[off], buf[off + 1]])
}

/// Reads a little-endian `u32` at `off`.
#[cfg(test)]
pub(crate) fn get32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
}
