//! Extended headers: PAX records (POSIX.1-2001 `x` and `g` members) and GNU
//! long names (`L` and `K` members), and what the records say about an entry.

use super::header::Header;
use super::sparse::{PaxSparse, Sparse00};
use super::TarError;
use base64::Engine as _;
use std::collections::BTreeMap;

/// Base64 as libarchive writes it: standard alphabet, padding optional.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A decimal PAX number.
pub(super) fn decimal(v: &[u8], field: &'static str, offset: u64) -> Result<u64, TarError> {
    std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TarError::Field {
            offset,
            field,
            value: lode_common::escape(v),
        })
}

/// Parses a PAX time (`"1700000000.5"`, `"-1.25"`) into seconds and
/// nanoseconds (floored, so `-1.25` is `(-2, 750_000_000)`).
pub(crate) fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    Some(if !neg {
        (secs, nsec)
    } else if nsec == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nsec)
    })
}

/// Decodes `%XX` escapes; `None` on a bad escape or an empty result.
fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Parses PAX extended header records (`"%d %s=%s\n"`, the length counting the
/// whole record) into `into`. An empty value removes the keyword.
pub(crate) fn parse_pax(
    data: &[u8],
    offset: u64,
    into: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), TarError> {
    let bad = |detail: String| TarError::Malformed {
        offset,
        detail: format!("malformed PAX record: {detail}"),
    };
    let mut sparse_00 = Sparse00::default();
    let mut rest = data;
    while !rest.is_empty() {
        // Some writers pad the member with NULs after the last record.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length".into()))?;
        let len = std::str::from_utf8(&rest[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| bad(format!("length '{}'", lode_common::escape(&rest[..sp]))))?;
        if len <= sp + 1 || len > rest.len() {
            return Err(bad(format!(
                "length {len} does not fit the {} bytes left",
                rest.len()
            )));
        }
        let record = &rest[sp + 1..len];
        let Some((&b'\n', kv)) = record.split_last() else {
            return Err(bad(format!(
                "record of length {len} does not end in a newline"
            )));
        };
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no '=' in record".into()))?;
        let (key, value) = (&kv[..eq], &kv[eq + 1..]);
        if key.is_empty() {
            return Err(bad("empty keyword".into()));
        }
        rest = &rest[len..];
        if sparse_00.record(key, value).map_err(bad)? {
            continue;
        }
        if value.is_empty() {
            into.remove(key);
        } else {
            into.insert(key.to_vec(), value.to_vec());
        }
    }
    sparse_00.finish(into).map_err(bad)
}

/// Trims trailing NULs of a GNU long name.
pub(super) fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// What the PAX records in force for one entry (globals overridden by its
/// own) say about it.
#[derive(Default)]
pub(super) struct PaxEntry {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    /// `SCHILY.xattr.*` records.
    schily: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `LIBARCHIVE.xattr.*` records, decoded.
    libarchive: BTreeMap<Vec<u8>, Vec<u8>>,
    sparse: PaxSparse,
}

impl PaxEntry {
    /// Reads the records of one entry; a record that cannot be read is an
    /// error at the entry's header offset `at`.
    pub(super) fn read(records: &BTreeMap<Vec<u8>, Vec<u8>>, at: u64) -> Result<Self, TarError> {
        let mut e = PaxEntry::default();
        for (k, v) in records {
            if e.sparse.record(k, v, at)? {
                continue;
            }
            match k.as_slice() {
                b"path" => e.path = Some(v.clone()),
                b"linkpath" => e.link = Some(v.clone()),
                b"size" => e.size = Some(decimal(v, "PAX size", at)?),
                b"uid" => e.uid = Some(decimal(v, "PAX uid", at)?),
                b"gid" => e.gid = Some(decimal(v, "PAX gid", at)?),
                b"mtime" => {
                    e.mtime = Some(parse_pax_time(v).ok_or_else(|| TarError::Field {
                        offset: at,
                        field: "PAX mtime",
                        value: lode_common::escape(v),
                    })?)
                }
                // libarchive (bsdtar): URL-encoded name, base64 value. It
                // writes a SCHILY record beside each, but with the name still
                // URL-encoded, so where these exist they are the xattrs.
                k if k.starts_with(b"LIBARCHIVE.xattr.") => {
                    let bad = |field| TarError::Field {
                        offset: at,
                        field,
                        value: lode_common::escape(k),
                    };
                    let name = percent_decode(&k[b"LIBARCHIVE.xattr.".len()..])
                        .ok_or_else(|| bad("LIBARCHIVE.xattr name"))?;
                    let value = BASE64
                        .decode(v)
                        .map_err(|_| bad("LIBARCHIVE.xattr value (base64)"))?;
                    e.libarchive.insert(name, value);
                }
                k if k.starts_with(b"SCHILY.xattr.") => {
                    e.schily
                        .insert(k[b"SCHILY.xattr.".len()..].to_vec(), v.clone());
                }
                _ => {}
            }
        }
        e.sparse.check(at)?;
        Ok(e)
    }

    /// Applies the records to `h` (whose `size` is the stored size) and gives
    /// back what they say about sparse storage.
    pub(super) fn apply(mut self, h: &mut Header) -> PaxSparse {
        if let Some(p) = self.sparse.name.take().or(self.path) {
            h.path = p;
        }
        if let Some(l) = self.link {
            h.link = l;
        }
        h.size = self.size.unwrap_or(h.size);
        h.uid = self.uid.unwrap_or(h.uid);
        h.gid = self.gid.unwrap_or(h.gid);
        h.mtime = self.mtime.unwrap_or(h.mtime);
        h.xattrs = if self.libarchive.is_empty() {
            self.schily
        } else {
            self.libarchive
        };
        self.sparse
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{header, member, read_all, record};
    use super::*;

    #[test]
    fn pax_records_may_contain_newlines() {
        let mut tar = Vec::new();
        let pax = [
            record(
                b"SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x0a\n\x00",
            ),
            record(b"path", b"dir/a\nb"),
            record(b"size", b"3"),
        ]
        .concat();
        member(&mut tar, b"PaxHeaders/x", b'x', &pax);
        // The header's own size is wrong on purpose: PAX size wins.
        tar.extend_from_slice(&header(b"short", b'0', 1));
        tar.extend_from_slice(b"abc");
        tar.resize(tar.len().next_multiple_of(512), 0);
        member(&mut tar, b"next", b'0', b"zz");
        tar.extend_from_slice(&[0u8; 1024]);
        let got = read_all(&tar).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.path, b"dir/a\nb");
        assert_eq!(got[0].1, b"abc");
        assert_eq!(
            got[0].0.xattrs[b"security.capability".as_slice()],
            b"\x01\x00\x00\x02\x0a\n\x00"
        );
        assert_eq!(got[1].0.path, b"next");
        assert_eq!(got[1].1, b"zz");
    }

    #[test]
    fn globals_apply_until_overridden() {
        let mut tar = Vec::new();
        member(&mut tar, b"g", b'g', &record(b"uid", b"77"));
        member(&mut tar, b"a", b'0', b"");
        member(&mut tar, b"x", b'x', &record(b"uid", b"5"));
        member(&mut tar, b"b", b'0', b"");
        member(&mut tar, b"g", b'g', &record(b"uid", b""));
        member(&mut tar, b"c", b'0', b"");
        let got = read_all(&tar).unwrap();
        let uids: Vec<u64> = got.iter().map(|(h, _)| h.uid).collect();
        assert_eq!(uids, [77, 5, 0]);
    }

    #[test]
    fn gnu_long_names() {
        let long = vec![b'n'; 300];
        let mut tar = Vec::new();
        member(
            &mut tar,
            b"././@LongLink",
            b'L',
            &[long.as_slice(), b"\0"].concat(),
        );
        member(&mut tar, b"trunc", b'0', b"x");
        let got = read_all(&tar).unwrap();
        assert_eq!(got[0].0.path, long);
    }

    #[test]
    fn libarchive_xattrs_are_decoded() {
        let mut tar = Vec::new();
        let pax = [
            // "user.a=b" URL-encoded; value with a newline and a NUL, no padding.
            record(b"LIBARCHIVE.xattr.user.a%3Db", b"dgoAeA"),
            record(b"LIBARCHIVE.xattr.user.both", b"bGli"),
            // As libarchive writes it: the name left URL-encoded.
            record(b"SCHILY.xattr.user.a%3Db", b"v"),
            record(b"SCHILY.xattr.user.both", b"lib"),
            record(b"LIBARCHIVE.xattr.security.capability", b"AQAAAg=="),
        ]
        .concat();
        member(&mut tar, b"x", b'x', &pax);
        member(&mut tar, b"f", b'0', b"data");
        let got = read_all(&tar).unwrap();
        let x = &got[0].0.xattrs;
        assert_eq!(x[b"user.a=b".as_slice()], b"v\n\0x");
        assert_eq!(x[b"user.both".as_slice()], b"lib");
        assert_eq!(
            x.len(),
            3,
            "SCHILY names left URL-encoded must not appear: {x:?}"
        );
        assert_eq!(x[b"security.capability".as_slice()], [1, 0, 0, 2]);
        for bad in [
            record(b"LIBARCHIVE.xattr.user.%zz", b"dg"),
            record(b"LIBARCHIVE.xattr.user.%4", b"dg"),
            record(b"LIBARCHIVE.xattr.", b"dg"),
            record(b"LIBARCHIVE.xattr.user.v", b"!!"),
        ] {
            let mut tar = Vec::new();
            member(&mut tar, b"x", b'x', &bad);
            member(&mut tar, b"f", b'0', b"data");
            assert!(
                matches!(read_all(&tar), Err(TarError::Field { .. })),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn malformed_records_are_errors() {
        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', b"99 path=a\n");
        assert!(matches!(read_all(&tar), Err(TarError::Malformed { .. })));

        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', &record(b"path", b"a"));
        assert!(matches!(read_all(&tar), Err(TarError::Truncated { .. })));

        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', &record(b"size", b"-1"));
        member(&mut tar, b"f", b'0', b"");
        assert!(matches!(read_all(&tar), Err(TarError::Field { .. })));

        let mut map = BTreeMap::new();
        for bad in [
            b"5 a=b".as_slice(),
            b"x a=b\n",
            b"6 ab\n\n",
            b"5 =b\n",
            b"12345678901234567890123 a=b\n",
        ] {
            assert!(
                matches!(
                    parse_pax(bad, 3, &mut map),
                    Err(TarError::Malformed { offset: 3, .. })
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        parse_pax(b"6 a=b\n\0\0\0", 0, &mut map).unwrap();
        assert_eq!(map[b"a".as_slice()], b"b");
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }
}
