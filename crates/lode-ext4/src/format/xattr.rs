//! Extended attributes, in the inode or in a block of their own.

use super::{put16, put32};
use crate::layout::BLOCK_SIZE;
use std::collections::BTreeMap;

/// Magic number of an xattr block and of the in-inode xattr area.
pub const XATTR_MAGIC: u32 = 0xEA02_0000;

/// Name index of the `system.` namespace (`system.data`).
const SYSTEM_INDEX: u8 = 7;

/// Why an attribute set cannot be stored. Names are kept escaped for
/// messages (see [`lode_common::escape`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XattrProblem {
    /// The name has no namespace ext4 stores (`user.`, `trusted.`, `security.`, POSIX ACLs).
    #[error("'{0}' is in no namespace ext4 stores (user., trusted., security., POSIX ACLs)")]
    UnsupportedName(String),
    /// A POSIX ACL value is not in the kernel's xattr format.
    #[error("POSIX ACL '{0}' is not in the kernel's xattr format")]
    BadAcl(String),
    /// Name longer than 255 bytes after its prefix.
    #[error("name '{0}' is over the limit of 255 bytes after its namespace prefix")]
    NameTooLong(String),
    /// All attributes together do not fit in one block.
    #[error("{0} bytes of attributes, over the limit of {BLOCK_SIZE} bytes (one xattr block)")]
    TooLarge(usize),
}

/// Attributes ready to encode: `(name index, name suffix, on-disk value)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Xattrs(Vec<(u8, Vec<u8>, Vec<u8>)>);

/// Where the attributes of one inode go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// No attributes.
    None,
    /// Encoded in-inode area (magic included).
    Inline(Vec<u8>),
    /// A whole xattr block.
    Block(Vec<u8>),
}

fn entry_size(name_len: usize) -> usize {
    (16 + name_len).div_ceil(4) * 4
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Hash of one entry, as `ext2fs_ext_attr_hash_entry` computes it.
fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(c);
    }
    let mut padded = value.to_vec();
    padded.resize(pad4(value.len()), 0);
    for w in padded.chunks(4) {
        let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        h = (h << 16) ^ (h >> 16) ^ v;
    }
    h
}

/// Converts a POSIX ACL from the xattr format (version 2, what tar records)
/// into ext4's compact on-disk format (version 1).
fn acl_to_disk(name: &str, v: &[u8]) -> Result<Vec<u8>, XattrProblem> {
    let bad = || XattrProblem::BadAcl(name.to_string());
    if v.len() < 4
        || !(v.len() - 4).is_multiple_of(8)
        || u32::from_le_bytes([v[0], v[1], v[2], v[3]]) != 2
    {
        return Err(bad());
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[0..4]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {}
            0x02 | 0x08 => out.extend_from_slice(&e[4..8]),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

impl Xattrs {
    /// Maps full attribute names (e.g. `user.mime`) to ext4 name indexes.
    pub fn from_map(map: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Self, XattrProblem> {
        let mut v = Vec::new();
        for (name, value) in map {
            let shown = lode_common::escape(name);
            let (index, suffix, value) = match name.as_slice() {
                b"system.posix_acl_access" => (2, &b""[..], acl_to_disk(&shown, value)?),
                b"system.posix_acl_default" => (3, &b""[..], acl_to_disk(&shown, value)?),
                n if n.starts_with(b"user.") => (1, &n[5..], value.clone()),
                n if n.starts_with(b"trusted.") => (4, &n[8..], value.clone()),
                n if n.starts_with(b"security.") => (6, &n[9..], value.clone()),
                _ => return Err(XattrProblem::UnsupportedName(shown)),
            };
            if suffix.len() > 255 {
                return Err(XattrProblem::NameTooLong(shown));
            }
            v.push((index, suffix.to_vec(), value));
        }
        // The kernel searches block entries in (index, name length, name) order.
        v.sort_by(|a, b| (a.0, a.1.len(), &a.1).cmp(&(b.0, b.1.len(), &b.1)));
        Ok(Xattrs(v))
    }

    /// The one attribute of an inline inode: `system.data` holding the
    /// contents past `i_block` (see [`crate::format::inline`]).
    pub fn system_data(value: &[u8]) -> Self {
        Xattrs(vec![(SYSTEM_INDEX, b"data".to_vec(), value.to_vec())])
    }

    /// True when there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn space(&self) -> usize {
        self.0
            .iter()
            .map(|(_, n, v)| entry_size(n.len()) + pad4(v.len()))
            .sum::<usize>()
            + 4
    }

    /// Chooses in-inode storage when everything fits in `inline_space` bytes
    /// (magic included), else one block.
    pub fn place(&self, inline_space: usize) -> Result<Placement, XattrProblem> {
        if self.0.is_empty() {
            return Ok(Placement::None);
        }
        if 4 + self.space() <= inline_space {
            let mut area = vec![0u8; inline_space];
            put32(&mut area, 0, XATTR_MAGIC);
            self.write_entries(&mut area[4..], 0);
            return Ok(Placement::Inline(area));
        }
        if 32 + self.space() > BLOCK_SIZE as usize {
            return Err(XattrProblem::TooLarge(32 + self.space()));
        }
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        put32(&mut block, 0, XATTR_MAGIC);
        put32(&mut block, 4, 1); // refcount
        put32(&mut block, 8, 1); // blocks
        let hashes = self.write_entries(&mut block, 32);
        let mut h: u32 = 0;
        for eh in hashes {
            h = (h << 16) ^ (h >> 16) ^ eh;
        }
        put32(&mut block, 12, h);
        Ok(Placement::Block(block))
    }

    /// Writes entries from `first` and values from the end of `area`; value
    /// offsets are relative to the start of `area`. Returns the entry hashes.
    fn write_entries(&self, area: &mut [u8], first: usize) -> Vec<u32> {
        let mut pos = first;
        let mut end = area.len();
        let mut hashes = Vec::new();
        for (index, name, value) in &self.0 {
            let offs = if value.is_empty() {
                0
            } else {
                end -= pad4(value.len());
                area[end..end + value.len()].copy_from_slice(value);
                end
            };
            // The kernel and e2fsprogs leave the hash of `system.data` 0.
            let h = if *index == SYSTEM_INDEX {
                0
            } else {
                entry_hash(name, value)
            };
            area[pos] = name.len() as u8;
            area[pos + 1] = *index;
            put16(area, pos + 2, offs as u16);
            put32(area, pos + 4, 0); // value inode
            put32(area, pos + 8, value.len() as u32);
            put32(area, pos + 12, h);
            area[pos + 16..pos + 16 + name.len()].copy_from_slice(name);
            pos += entry_size(name.len());
            hashes.push(h);
        }
        hashes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(&str, &[u8])]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn small_attrs_fit_inline() {
        let x = Xattrs::from_map(&map(&[("user.a", b"1")])).unwrap();
        match x.place(96).unwrap() {
            Placement::Inline(a) => {
                assert_eq!(a.len(), 96);
                assert_eq!(a[4], 1); // name_len
                assert_eq!(a[5], 1); // user index
                assert_eq!(&a[20..21], b"a");
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn large_attrs_go_to_a_block_and_too_large_fails() {
        let x = Xattrs::from_map(&map(&[("security.capability", &[7u8; 200])])).unwrap();
        assert!(matches!(x.place(96).unwrap(), Placement::Block(_)));
        let x = Xattrs::from_map(&map(&[("user.big", &[7u8; 5000])])).unwrap();
        assert!(matches!(x.place(96), Err(XattrProblem::TooLarge(_))));
    }

    #[test]
    fn unknown_namespace_and_bad_acl_are_refused() {
        assert!(matches!(
            Xattrs::from_map(&map(&[("weird.x", b"1")])),
            Err(XattrProblem::UnsupportedName(_))
        ));
        assert!(matches!(
            Xattrs::from_map(&map(&[("system.posix_acl_access", b"xx")])),
            Err(XattrProblem::BadAcl(_))
        ));
    }

    #[test]
    fn acl_is_converted_to_disk_format() {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 7u16, u32::MAX),
            (2, 5, 1000),
            (4, 5, u32::MAX),
            (0x10, 7, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        let d = acl_to_disk("a", &v).unwrap();
        assert_eq!(d.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert_eq!(&d[0..4], &1u32.to_le_bytes());
    }
}
