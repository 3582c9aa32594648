//! The 256-byte inode.

use super::{put16, put32};
use crate::layout::INODE_SIZE;

/// `i_flags`: the inode maps its blocks with an extent tree.
pub const EXTENTS_FL: u32 = 0x0008_0000;
/// `i_flags`: the directory is hash-indexed (htree).
pub const INDEX_FL: u32 = 0x0000_1000;
/// Size of the fixed part of the inode that `i_extra_isize` adds to.
pub const GOOD_OLD_INODE_SIZE: usize = 128;
/// `i_extra_isize`: the extra fields lode fills (times, crtime, version, projid).
pub const EXTRA_ISIZE: usize = 32;
/// Offset of the in-inode extended attribute area (starts with its magic).
pub const INLINE_XATTR_OFFSET: usize = GOOD_OLD_INODE_SIZE + EXTRA_ISIZE;
/// Bytes available for in-inode extended attributes, magic included.
pub const INLINE_XATTR_SPACE: usize = INODE_SIZE as usize - INLINE_XATTR_OFFSET;

/// File type bits of `i_mode`.
pub mod mode {
    /// FIFO.
    pub const S_IFIFO: u16 = 0o010000;
    /// Character device.
    pub const S_IFCHR: u16 = 0o020000;
    /// Directory.
    pub const S_IFDIR: u16 = 0o040000;
    /// Block device.
    pub const S_IFBLK: u16 = 0o060000;
    /// Regular file.
    pub const S_IFREG: u16 = 0o100000;
    /// Symbolic link.
    pub const S_IFLNK: u16 = 0o120000;
}

/// A point in time with nanoseconds, as ext4 stores it (34-bit seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (may be negative).
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

impl Timestamp {
    /// Earliest time ext4 can store.
    pub const MIN: i64 = -(1 << 31);
    /// Latest time ext4 can store (2446-05-10).
    pub const MAX: i64 = (1 << 34) - (1 << 31) - 1;

    /// Splits the time into `(seconds field, extra field)`, clamping to ext4's range.
    pub fn encode(self) -> (u32, u32) {
        let secs = self.secs.clamp(Self::MIN, Self::MAX);
        let lo = secs as i32;
        let epoch = ((secs - i64::from(lo)) >> 32) as u32 & 3;
        (lo as u32, epoch | (self.nsec.min(999_999_999) << 2))
    }
}

/// Everything lode stores in an inode.
#[derive(Clone, Debug)]
pub struct InodeRecord {
    /// Type and permission bits.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Used for atime, ctime, mtime and crtime alike.
    pub time: Timestamp,
    /// Hard-link count.
    pub links: u16,
    /// Blocks charged to the inode, in 512-byte units.
    pub sectors: u64,
    /// `i_flags`.
    pub flags: u32,
    /// The 60-byte `i_block` area (extent root, fast symlink target or device number).
    pub i_block: [u8; 60],
    /// Block holding the inode's extended attributes, 0 if none.
    pub xattr_block: u32,
    /// The in-inode extended attribute area (`INLINE_XATTR_SPACE` bytes or empty).
    pub inline_xattrs: Vec<u8>,
}

/// Encodes an inode into its 256-byte on-disk form.
pub fn encode_inode(r: &InodeRecord) -> [u8; INODE_SIZE as usize] {
    let mut b = [0u8; INODE_SIZE as usize];
    let (t, t_extra) = r.time.encode();
    put16(&mut b, 0x00, r.mode);
    put16(&mut b, 0x02, r.uid as u16);
    put32(&mut b, 0x04, r.size as u32);
    put32(&mut b, 0x08, t); // atime
    put32(&mut b, 0x0C, t); // ctime
    put32(&mut b, 0x10, t); // mtime
    put16(&mut b, 0x18, r.gid as u16);
    put16(&mut b, 0x1A, r.links);
    put32(&mut b, 0x1C, r.sectors as u32);
    put32(&mut b, 0x20, r.flags);
    b[0x28..0x64].copy_from_slice(&r.i_block);
    put32(&mut b, 0x68, r.xattr_block);
    put32(&mut b, 0x6C, (r.size >> 32) as u32);
    put16(&mut b, 0x74, (r.sectors >> 32) as u16);
    put16(&mut b, 0x78, (r.uid >> 16) as u16);
    put16(&mut b, 0x7A, (r.gid >> 16) as u16);
    put16(&mut b, 0x80, EXTRA_ISIZE as u16);
    put32(&mut b, 0x84, t_extra); // ctime extra
    put32(&mut b, 0x88, t_extra); // mtime extra
    put32(&mut b, 0x8C, t_extra); // atime extra
    put32(&mut b, 0x90, t); // crtime
    put32(&mut b, 0x94, t_extra); // crtime extra
    if !r.inline_xattrs.is_empty() {
        let n = r.inline_xattrs.len().min(INLINE_XATTR_SPACE);
        b[INLINE_XATTR_OFFSET..INLINE_XATTR_OFFSET + n].copy_from_slice(&r.inline_xattrs[..n]);
    }
    b
}

/// Encodes a device number into `i_block` the way the kernel does.
pub fn encode_device(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        put32(&mut b, 0, (major << 8) | minor);
    } else {
        let v = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        put32(&mut b, 4, v);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{get16, get32};

    #[test]
    fn timestamps_use_epoch_bits() {
        assert_eq!(Timestamp { secs: 0, nsec: 0 }.encode(), (0, 0));
        assert_eq!(Timestamp { secs: -1, nsec: 5 }.encode(), (u32::MAX, 5 << 2));
        // 2038-01-19T03:14:08Z, one past i32::MAX: epoch bit 1.
        assert_eq!(
            Timestamp {
                secs: 1 << 31,
                nsec: 0
            }
            .encode(),
            ((1u32 << 31), 1)
        );
        assert_eq!(
            Timestamp {
                secs: i64::MAX,
                nsec: 0
            }
            .encode(),
            Timestamp {
                secs: Timestamp::MAX,
                nsec: 0
            }
            .encode()
        );
    }

    #[test]
    fn devices_use_old_and_new_encodings() {
        assert_eq!(get32(&encode_device(1, 3), 0), 0x0103);
        let big = encode_device(259, 70000);
        assert_eq!(get32(&big, 0), 0);
        assert_eq!(
            get32(&big, 4),
            (70000 & 0xff) | (259 << 8) | ((70000 & !0xff) << 12)
        );
    }

    #[test]
    fn inode_high_halves() {
        let r = InodeRecord {
            mode: mode::S_IFREG | 0o4755,
            uid: 0x1_0002,
            gid: 0x3_0004,
            size: 5 << 32 | 6,
            time: Timestamp { secs: 10, nsec: 1 },
            links: 2,
            sectors: 8,
            flags: EXTENTS_FL,
            i_block: [0; 60],
            xattr_block: 0,
            inline_xattrs: vec![],
        };
        let b = encode_inode(&r);
        assert_eq!(get16(&b, 0), 0o104755);
        assert_eq!(get16(&b, 2), 2);
        assert_eq!(get16(&b, 0x78), 1);
        assert_eq!(get16(&b, 0x7A), 3);
        assert_eq!(get32(&b, 0x6C), 5);
        assert_eq!(get16(&b, 0x80), 32);
    }
}
