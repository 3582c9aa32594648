// Written for lode's copy of ext4-view (see README.lode.md).
//
// Licensed under the Apache License, Version 2.0 <LICENSE-APACHE or
// https://www.apache.org/licenses/LICENSE-2.0> or the MIT license
// <LICENSE-MIT or https://opensource.org/licenses/MIT>, at your
// option. This file may not be copied, modified, or distributed
// except according to those terms.

//! Inline data (`INCOMPAT_INLINE_DATA`): the contents of a small file,
//! symlink or directory kept in its inode, in `i_block` followed by the
//! value of the in-inode extended attribute `system.data`. Added in the
//! copy vendored by lode (see `README.lode.md`).

use crate::error::{CorruptKind, Ext4Error};
use crate::inode::InodeIndex;
use alloc::vec::Vec;

/// Size of the fixed part of an inode; `i_extra_isize` adds to it.
const GOOD_OLD_INODE_SIZE: usize = 128;

/// Offset of `i_extra_isize` in the inode.
const I_EXTRA_ISIZE_OFFSET: usize = 0x80;

/// Magic of the in-inode extended attribute area.
const XATTR_MAGIC: u32 = 0xea02_0000;

/// Size of an extended attribute entry's header, before its name.
const XATTR_ENTRY_HEADER_LEN: usize = 16;

/// Name index of the `system.` namespace.
const XATTR_INDEX_SYSTEM: u8 = 7;

/// Bytes of directory entries in `i_block`, after the parent's inode
/// number.
const DIR_I_BLOCK_ENTRIES_LEN: usize = 56;

/// Size of the synthesized `.` and `..` entries.
const DOT_ENTRY_LEN: usize = 12;

fn get_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    let b = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn get_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Get the inline data of `inode`, whose on-disk bytes are `raw`:
/// `i_block` followed by the value of `system.data`, which must be in
/// the in-inode extended attribute area (the kernel requires it, even
/// when empty).
pub(crate) fn read_inline_data(
    inode: InodeIndex,
    raw: &[u8],
    i_block: &[u8],
) -> Result<Vec<u8>, Ext4Error> {
    let value = system_data_value(raw).ok_or(CorruptKind::InlineData(inode))?;
    let mut data = Vec::new();
    data.extend_from_slice(i_block);
    data.extend_from_slice(value);
    Ok(data)
}

/// Find the value of `system.data` in the in-inode extended attribute
/// area of `raw`. Returns `None` if the area or the attribute is
/// missing or any offset or length falls outside the inode.
fn system_data_value(raw: &[u8]) -> Option<&[u8]> {
    let extra_isize = usize::from(get_u16(raw, I_EXTRA_ISIZE_OFFSET)?);
    let area_start = GOOD_OLD_INODE_SIZE.checked_add(extra_isize)?;
    if get_u32(raw, area_start)? != XATTR_MAGIC {
        return None;
    }
    // Entries, and the value offsets in them, start after the magic.
    let entries = raw.get(area_start.checked_add(4)?..)?;
    let mut pos = 0usize;
    // Each entry is at least 16 bytes, so this ends within the inode.
    loop {
        // Four zero bytes end the entries.
        if get_u32(entries, pos)? == 0 {
            return None;
        }
        let header =
            entries.get(pos..pos.checked_add(XATTR_ENTRY_HEADER_LEN)?)?;
        let name_len = usize::from(header[0]);
        let name_index = header[1];
        let value_offset = usize::from(get_u16(header, 2)?);
        let value_inum = get_u32(header, 4)?;
        let value_size = usize::try_from(get_u32(header, 8)?).ok()?;
        let name_start = pos.checked_add(XATTR_ENTRY_HEADER_LEN)?;
        let name =
            entries.get(name_start..name_start.checked_add(name_len)?)?;
        if name_index == XATTR_INDEX_SYSTEM && name == b"data" {
            // A value in an inode of its own (`ea_inode`) is not inline.
            if value_inum != 0 {
                return None;
            }
            let value_end = value_offset.checked_add(value_size)?;
            return entries.get(value_offset..value_end);
        }
        // Entries are padded to a multiple of four bytes.
        let entry_len = XATTR_ENTRY_HEADER_LEN
            .checked_add(name_len)?
            .next_multiple_of(4);
        pos = pos.checked_add(entry_len)?;
    }
}

/// The directory entries of an inline directory whose inline data is
/// `data`, as one buffer: synthesized `.` and `..` entries (the parent's
/// inode number is the first four bytes of `i_block`), then the entries
/// in the rest of `i_block`, then those in the `system.data` value.
///
/// Also returns where each of the three regions ends: an entry must not
/// cross the end of its region.
pub(crate) fn inline_dir_entries(
    dir: InodeIndex,
    data: &[u8],
) -> Result<(Vec<u8>, [usize; 3]), Ext4Error> {
    let err = || Ext4Error::from(CorruptKind::InlineData(dir));
    let parent = data.get(0..4).ok_or_else(err)?;
    let rest = data.get(4..).ok_or_else(err)?;
    if rest.len() < DIR_I_BLOCK_ENTRIES_LEN {
        return Err(err());
    }

    // Inode, rec_len (u16: 12), name_len, file_type (2: directory),
    // name padded to four bytes.
    let mut buf = Vec::new();
    buf.extend_from_slice(&dir.get().to_le_bytes());
    buf.extend_from_slice(&[12, 0, 1, 2, b'.', 0, 0, 0]);
    buf.extend_from_slice(parent);
    buf.extend_from_slice(&[12, 0, 2, 2, b'.', b'.', 0, 0]);
    buf.extend_from_slice(rest);

    let dots_end = 2 * DOT_ENTRY_LEN;
    let i_block_end = dots_end + DIR_I_BLOCK_ENTRIES_LEN;
    let end = buf.len();
    Ok((buf, [dots_end, i_block_end, end]))
}
