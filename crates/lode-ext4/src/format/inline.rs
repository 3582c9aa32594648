//! Inline data (`inline_data`): the contents of a small file or directory
//! kept in its 256-byte inode instead of a block — the first 60 bytes in
//! `i_block`, the rest as the value of the extended attribute `system.data`
//! in the in-inode attribute area, which every inline inode has, even when
//! the value is empty (the kernel and `e2fsck` require it).
//!
//! A directory's inline data is its parent's inode number (4 bytes), then
//! entries filling the rest of `i_block` (56 bytes), then, when they need
//! more room, entries filling the whole largest value (68 bytes); `.` and
//! `..` are not stored. See `docs/format.md` §1.

use super::dir::{self, DirEntry};
use super::inode::INLINE_XATTR_SPACE;
use super::put32;
use super::xattr::{Placement, Xattrs};

/// `i_flags`: the inode holds its contents (`EXT4_INLINE_DATA_FL`).
pub const INLINE_DATA_FL: u32 = 0x1000_0000;
/// Bytes of contents in `i_block`.
pub const I_BLOCK_BYTES: usize = 60;
/// Largest `system.data` value: the in-inode area less its magic, the
/// entry (16 bytes + the name `data`) and the 4-byte end of the entries.
pub const MAX_VALUE: usize = INLINE_XATTR_SPACE - 4 - 20 - 4;
/// Largest file kept inline (128 bytes).
pub const MAX_FILE: u64 = (I_BLOCK_BYTES + MAX_VALUE) as u64;
/// Bytes of directory entries in `i_block`, after the parent's number.
const DIR_I_BLOCK_ENTRIES: usize = I_BLOCK_BYTES - 4;

/// An inode's inline contents, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inline {
    /// The 60-byte `i_block`.
    pub i_block: [u8; 60],
    /// The in-inode attribute area (`INLINE_XATTR_SPACE` bytes) holding
    /// `system.data`.
    pub area: Vec<u8>,
    /// `i_size`: the file's size; for a directory, 60 + the value's length.
    pub size: u64,
}

/// The in-inode attribute area holding only `system.data` = `value`, or
/// `None` when the value is over [`MAX_VALUE`].
fn area(value: &[u8]) -> Option<Vec<u8>> {
    match Xattrs::system_data(value).place(INLINE_XATTR_SPACE) {
        Ok(Placement::Inline(area)) => Some(area),
        _ => None,
    }
}

/// A regular file of 1 to [`MAX_FILE`] bytes, inline; `None` otherwise.
pub fn file(data: &[u8]) -> Option<Inline> {
    if data.is_empty() || data.len() as u64 > MAX_FILE {
        return None;
    }
    let head = data.len().min(I_BLOCK_BYTES);
    let mut i_block = [0u8; 60];
    i_block[..head].copy_from_slice(&data[..head]);
    Some(Inline {
        i_block,
        area: area(&data[head..])?,
        size: data.len() as u64,
    })
}

/// A directory whose parent is inode `parent` and whose entries (without
/// `.` and `..`), in this order, are `entries`, inline; `None` when they do
/// not fit.
pub fn dir(parent: u32, entries: &[DirEntry<'_>]) -> Option<Inline> {
    let regions = [DIR_I_BLOCK_ENTRIES, MAX_VALUE];
    let bytes = dir::encode_regions(entries, |i| regions.get(i).copied())?;
    let mut i_block = [0u8; 60];
    put32(&mut i_block, 0, parent);
    i_block[4..].copy_from_slice(&bytes[..DIR_I_BLOCK_ENTRIES]);
    let value = &bytes[DIR_I_BLOCK_ENTRIES..];
    Some(Inline {
        i_block,
        area: area(value)?,
        size: (I_BLOCK_BYTES + value.len()) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::dir::ftype;
    use crate::format::xattr::XATTR_MAGIC;
    use crate::format::{get16, get32};

    /// The `system.data` value in an area, checked the way the kernel reads it.
    fn value(area: &[u8]) -> &[u8] {
        assert_eq!(area.len(), INLINE_XATTR_SPACE);
        assert_eq!(get32(area, 0), XATTR_MAGIC);
        let e = &area[4..];
        assert_eq!((e[0], e[1], &e[16..20]), (4, 7, &b"data"[..]));
        assert_eq!(get32(e, 4), 0, "no value inode");
        assert_eq!(get32(e, 12), 0, "hash 0, as the kernel writes it");
        assert_eq!(get32(e, 20), 0, "end of entries");
        let (offs, len) = (get16(e, 2) as usize, get32(e, 8) as usize);
        &e[offs..offs + len]
    }

    #[test]
    fn files_up_to_128_bytes_are_inline() {
        assert_eq!(MAX_FILE, 128);
        assert!(file(b"").is_none());
        assert!(file(&[1; 129]).is_none());
        for n in [1usize, 59, 60, 61, 127, 128] {
            let data: Vec<u8> = (0..n).map(|i| i as u8 ^ 0x5a).collect();
            let inl = file(&data).unwrap();
            assert_eq!(inl.size, n as u64);
            let mut back = inl.i_block[..n.min(60)].to_vec();
            back.extend_from_slice(value(&inl.area));
            assert_eq!(back, data, "{n} bytes");
        }
    }

    /// Entries of one region: (name, inode), checking that the `rec_len`
    /// chain covers the region exactly.
    fn region_entries(region: &[u8]) -> Vec<(Vec<u8>, u32)> {
        let mut v = Vec::new();
        let mut p = 0;
        while p < region.len() {
            let rl = get16(region, p + 4) as usize;
            assert!(rl >= 8 && p + rl <= region.len(), "bad rec_len {rl} at {p}");
            let nl = region[p + 6] as usize;
            assert!(8 + nl <= rl, "name past its entry");
            let ino = get32(region, p);
            if ino != 0 {
                v.push((region[p + 8..p + 8 + nl].to_vec(), ino));
            }
            p += rl;
        }
        v
    }

    proptest::proptest! {
        #[test]
        fn inline_directories_parse_back(
            names in proptest::collection::vec(proptest::collection::vec(1u8..=255, 1..=40), 0..12)
        ) {
            let entries: Vec<DirEntry<'_>> = names
                .iter()
                .enumerate()
                .map(|(i, n)| DirEntry { name: n, ino: 100 + i as u32, ftype: ftype::REG })
                .collect();
            let want: Vec<(Vec<u8>, u32)> = entries.iter().map(|e| (e.name.to_vec(), e.ino)).collect();
            // What fits: entries in order, each whole in i_block's 56 bytes
            // or, once one does not fit there, in the value's 68.
            let (mut region, mut used, mut fits) = (0, 0, true);
            for e in &entries {
                let r = (8 + e.name.len()).div_ceil(4) * 4;
                if used + r > [56, 68][region] {
                    region += 1;
                    used = 0;
                    if region == 2 || r > 68 {
                        fits = false;
                        break;
                    }
                }
                used += r;
            }
            match dir(42, &entries) {
                None => proptest::prop_assert!(!fits),
                Some(d) => {
                    proptest::prop_assert!(fits);
                    proptest::prop_assert_eq!(get32(&d.i_block, 0), 42);
                    let v = value(&d.area);
                    proptest::prop_assert!(v.is_empty() || v.len() == MAX_VALUE);
                    proptest::prop_assert_eq!(d.size, (60 + v.len()) as u64);
                    let mut got = region_entries(&d.i_block[4..]);
                    got.extend(region_entries(v));
                    proptest::prop_assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn directories_fill_i_block_then_the_whole_value() {
        let e = |name: &'static [u8], ino| DirEntry {
            name,
            ino,
            ftype: ftype::REG,
        };
        // No entries: one blank entry spans i_block's 56 bytes.
        let empty = dir(7, &[]).unwrap();
        assert_eq!((get32(&empty.i_block, 0), empty.size), (7, 60));
        assert_eq!(
            (get32(&empty.i_block, 4), get16(&empty.i_block, 8)),
            (0, 56)
        );
        assert!(value(&empty.area).is_empty());
        // Three 16-byte entries fit in i_block, the last stretched to 24.
        let three = [e(b"name1", 20), e(b"name2", 21), e(b"name3", 22)];
        let d = dir(2, &three).unwrap();
        assert_eq!(d.size, 60);
        assert_eq!(get16(&d.i_block, 4 + 32 + 4), 24);
        // Five spill into the value, which then takes all 68 bytes.
        let five = [
            e(b"name1", 20),
            e(b"name2", 21),
            e(b"name3", 22),
            e(b"name4", 23),
            e(b"name5", 24),
        ];
        let d = dir(2, &five).unwrap();
        assert_eq!(d.size, 128);
        let v = value(&d.area);
        assert_eq!(v.len(), 68);
        assert_eq!(
            (get32(v, 0), get16(v, 4), get32(v, 16), get16(v, 20)),
            (23, 16, 24, 52)
        );
        // An entry that fits in neither region: not inline.
        assert!(dir(2, &[e(&[b'x'; 61], 9)]).is_none());
        let many: Vec<DirEntry<'_>> = (0..8).map(|i| e(b"name1", 30 + i)).collect();
        assert!(dir(2, &many).is_none());
    }
}
