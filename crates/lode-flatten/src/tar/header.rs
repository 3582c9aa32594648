//! The 512-byte header block: numeric fields (octal text or GNU base-256),
//! names (with the ustar `prefix`), the checksum, the type flag.

use super::{TarError, BLOCK};
use std::collections::BTreeMap;

/// One entry's header, with every GNU and PAX extension applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// Type flag (`b'0'` for a regular file; `b'\0'` is reported as `b'0'`).
    pub kind: u8,
    /// Path as written.
    pub path: Vec<u8>,
    /// Link target (symlinks and hard links).
    pub link: Vec<u8>,
    /// Mode bits as written.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Logical size of the file (the real size of a sparse file).
    pub size: u64,
    /// Device major and minor numbers.
    pub dev: (u64, u64),
    /// Extended attributes from `SCHILY.xattr.*` and `LIBARCHIVE.xattr.*` records.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Offset of the header in the stream (for messages).
    pub offset: u64,
}

/// Raw 512-byte header with field accessors.
pub(super) struct Raw<'a>(pub(super) &'a [u8; BLOCK as usize]);

impl Raw<'_> {
    /// A text field, up to its first NUL.
    pub(super) fn field(&self, start: usize, len: usize) -> &[u8] {
        let f = &self.0[start..start + len];
        match f.iter().position(|&b| b == 0) {
            Some(n) => &f[..n],
            None => f,
        }
    }

    /// Whether the block has the POSIX ustar magic.
    pub(super) fn is_ustar(&self) -> bool {
        &self.0[257..263] == b"ustar\0"
    }

    /// Whether the block has the (pre-POSIX) GNU magic.
    pub(super) fn is_gnu(&self) -> bool {
        &self.0[257..265] == b"ustar  \0"
    }

    /// The type flag as written.
    pub(super) fn type_flag(&self) -> u8 {
        self.0[156]
    }

    /// Checks the stored checksum against the unsigned sum of the block (or
    /// the signed sum some old writers used), the checksum field counted as
    /// spaces.
    pub(super) fn check_sum(&self, at: u64) -> Result<(), TarError> {
        let stored = number(self.field(148, 8), "checksum", at)?;
        let unsigned: u32 = self
            .0
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        let signed: i64 = self
            .0
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        if stored != u64::from(unsigned) && i64::try_from(stored).ok() != Some(signed) {
            return Err(TarError::Checksum {
                offset: at,
                stored: lode_common::escape(self.field(148, 8)),
                computed: unsigned,
            });
        }
        Ok(())
    }

    /// The stored size of the member.
    pub(super) fn size(&self, at: u64) -> Result<u64, TarError> {
        number(&self.0[124..136], "size", at)
    }

    /// The entry's name: ustar `prefix`, `/`, `name` (just `name` when the
    /// prefix is empty or the block is not ustar).
    pub(super) fn name(&self) -> Vec<u8> {
        if self.is_ustar() && !self.field(345, 155).is_empty() {
            [self.field(345, 155), b"/", self.field(0, 100)].concat()
        } else {
            self.field(0, 100).to_vec()
        }
    }

    /// The link target field.
    pub(super) fn link_name(&self) -> &[u8] {
        self.field(157, 100)
    }

    /// The header of the entry this block starts, before any PAX record: the
    /// type (`\0` as `0`; a v7 regular file whose `path` ends in `/` is a
    /// directory), the numeric fields, and `path`, `link` and `size` as given.
    pub(super) fn header(
        &self,
        at: u64,
        path: Vec<u8>,
        link: Vec<u8>,
        size: u64,
    ) -> Result<Header, TarError> {
        let block = self.0;
        let mut kind = match self.type_flag() {
            0 => b'0',
            k => k,
        };
        if kind == b'0' && !self.is_ustar() && !self.is_gnu() && path.ends_with(b"/") {
            kind = b'5';
        }
        let mtime_field = number(&block[136..148], "mtime", at)?;
        let mut h = Header {
            kind,
            path,
            link,
            mode: u32::try_from(number(&block[100..108], "mode", at)? & 0o7777_7777).unwrap_or(0),
            uid: number(&block[108..116], "uid", at)?,
            gid: number(&block[116..124], "gid", at)?,
            mtime: (i64::try_from(mtime_field).unwrap_or(i64::MAX), 0),
            size,
            dev: (0, 0),
            xattrs: BTreeMap::new(),
            offset: at,
        };
        if matches!(kind, b'3' | b'4') {
            h.dev = (
                number(&block[329..337], "devmajor", at)?,
                number(&block[337..345], "devminor", at)?,
            );
        }
        Ok(h)
    }
}

/// Parses a numeric header field: octal text (leading spaces or NULs, ended
/// by a space or NUL) or GNU base-256 (first byte 0x80). Negative base-256
/// values are refused.
pub(super) fn number(raw: &[u8], field: &'static str, offset: u64) -> Result<u64, TarError> {
    let bad = || TarError::Field {
        offset,
        field,
        value: lode_common::escape(raw),
    };
    if raw.first().is_some_and(|&b| b & 0x80 != 0) {
        if raw[0] & 0x40 != 0 {
            return Err(bad());
        }
        let mut v: u64 = u64::from(raw[0] & 0x3f);
        for &b in &raw[1..] {
            if v >> 56 != 0 {
                return Err(bad());
            }
            v = (v << 8) | u64::from(b);
        }
        return Ok(v);
    }
    let s = raw
        .iter()
        .position(|&b| b != b' ' && b != 0)
        .map_or(&raw[raw.len()..], |i| &raw[i..]);
    let end = s
        .iter()
        .position(|&b| b == b' ' || b == 0)
        .unwrap_or(s.len());
    if s[end..].iter().any(|&b| b != b' ' && b != 0) {
        return Err(bad());
    }
    let mut v: u64 = 0;
    for &b in &s[..end] {
        if !(b'0'..=b'7').contains(&b) {
            return Err(bad());
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(bad)?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{header, member, read_all, seal};
    use super::*;

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(number(b"0000644\0", "mode", 0).unwrap(), 0o644);
        assert_eq!(number(b"  644 \0\0", "mode", 0).unwrap(), 0o644);
        assert_eq!(number(b"\0\0\0\0", "mode", 0).unwrap(), 0);
        assert_eq!(
            number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0], "size", 0).unwrap(),
            256
        );
        for bad in [
            b"0000009\0".as_slice(),
            b"12 3\0".as_slice(),
            // Negative base-256.
            &[0xff, 0xff],
            // Over 64 bits.
            &[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            // Octal over 64 bits.
            b"7777777777777777777777",
        ] {
            assert!(
                matches!(
                    number(bad, "size", 7),
                    Err(TarError::Field { offset: 7, .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn base256_size() {
        let mut h = header(b"big", b'0', 0);
        h[124..136].fill(0);
        h[124] = 0x80;
        h[135] = 5;
        seal(&mut h);
        let mut tar = h.to_vec();
        tar.extend_from_slice(b"hello");
        tar.resize(1024, 0);
        let got = read_all(&tar).unwrap();
        assert_eq!(got[0].1, b"hello");
    }

    #[test]
    fn ustar_prefix() {
        let mut tar = Vec::new();
        let mut h = header(b"name", b'0', 0);
        h[345..351].copy_from_slice(b"prefix");
        seal(&mut h);
        tar.extend_from_slice(&h);
        let got = read_all(&tar).unwrap();
        assert_eq!(got[0].0.path, b"prefix/name");
    }

    #[test]
    fn v7_directory_and_nul_type() {
        let mut tar = Vec::new();
        let mut h = header(b"dir/", 0, 0);
        h[257..265].fill(0);
        seal(&mut h);
        tar.extend_from_slice(&h);
        member(&mut tar, b"file", 0, b"");
        let got = read_all(&tar).unwrap();
        assert_eq!(got[0].0.kind, b'5');
        assert_eq!(got[1].0.kind, b'0');
    }

    #[test]
    fn bad_fields_are_errors() {
        let mut bad_sum = header(b"a", b'0', 0);
        bad_sum[0] = b'b';
        assert!(matches!(read_all(&bad_sum), Err(TarError::Checksum { .. })));

        let mut h = header(b"f", b'0', 0);
        h[124..136].copy_from_slice(b"0000000009x\0");
        seal(&mut h);
        assert!(matches!(
            read_all(&h),
            Err(TarError::Field { field: "size", .. })
        ));
    }
}
