//! A streaming reader of layer tarballs: v7, ustar, GNU and PAX (POSIX.1-2001)
//! headers, GNU long names, GNU and PAX sparse files.
//!
//! Written for lode rather than taken from the `tar` crate because layer
//! contents are untrusted and must be read exactly: PAX records are
//! length-prefixed and may contain any byte, newlines included (a binary
//! `security.capability` value, a file name with `\n`), and a PAX `size`
//! that is misread desynchronises every header after it. Every limit is
//! explicit and every malformed header is an error naming its byte offset.

use base64::Engine as _;
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};

/// Size of a tar block.
const BLOCK: u64 = 512;
/// Largest PAX or GNU long-name member read into memory.
pub(crate) const MAX_META: u64 = 1 << 20;
/// Most data segments a sparse file may declare.
const MAX_SPARSE_SEGMENTS: usize = 1 << 16;

/// Why a layer's tar stream cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// The underlying (decompressed, verified) stream failed.
    #[error("at byte {offset}: {source}")]
    Io {
        /// Offset in the uncompressed tar stream.
        offset: u64,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The stream ended inside a header or an entry's data.
    #[error("at byte {offset}: archive truncated inside {inside}")]
    Truncated {
        /// Offset where the stream ended.
        offset: u64,
        /// What was being read.
        inside: &'static str,
    },
    /// A header's checksum does not match its bytes.
    #[error("at byte {offset}: header checksum mismatch (stored '{stored}', computed {computed})")]
    Checksum {
        /// Offset of the header.
        offset: u64,
        /// The stored checksum field, as text.
        stored: String,
        /// The unsigned sum of the header.
        computed: u32,
    },
    /// A header or PAX field that cannot be read.
    #[error("at byte {offset}: bad {field} field '{value}'")]
    Field {
        /// Offset of the header.
        offset: u64,
        /// The field.
        field: &'static str,
        /// Its raw value, lossily shown.
        value: String,
    },
    /// A structurally invalid archive (bad PAX record, bad sparse map, ...).
    #[error("at byte {offset}: {detail}")]
    Malformed {
        /// Offset of the header.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
}

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

/// Where the current entry's data lies.
#[derive(Debug, Default)]
struct Data {
    /// Stored bytes of the member still unread.
    stored_left: u64,
    /// Padding after the stored bytes.
    padding: u64,
    /// Data segments (offset, length) of a sparse file still ahead, in
    /// order; empty for a plain file.
    segments: VecDeque<(u64, u64)>,
    /// Logical position in the file.
    pos: u64,
    /// Logical size.
    size: u64,
    /// Whether the file is sparse.
    sparse: bool,
}

/// Reads headers and data from a tar stream.
pub(crate) struct TarReader<R> {
    inner: R,
    /// Bytes consumed from `inner`.
    offset: u64,
    /// PAX global records (`g` members) in force.
    globals: BTreeMap<Vec<u8>, Vec<u8>>,
    data: Data,
    done: bool,
}

/// Raw 512-byte header with field accessors.
struct Raw<'a>(&'a [u8; BLOCK as usize]);

impl Raw<'_> {
    fn field(&self, start: usize, len: usize) -> &[u8] {
        let f = &self.0[start..start + len];
        match f.iter().position(|&b| b == 0) {
            Some(n) => &f[..n],
            None => f,
        }
    }
    fn is_ustar(&self) -> bool {
        &self.0[257..263] == b"ustar\0"
    }
    fn is_gnu(&self) -> bool {
        &self.0[257..265] == b"ustar  \0"
    }
}

/// Parses a numeric header field: octal text (leading spaces or NULs, ended
/// by a space or NUL) or GNU base-256 (first byte 0x80). Negative base-256
/// values are refused.
fn number(raw: &[u8], field: &'static str, offset: u64) -> Result<u64, TarError> {
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

/// A decimal PAX number.
fn decimal(v: &[u8], field: &'static str, offset: u64) -> Result<u64, TarError> {
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

/// Base64 as libarchive writes it: standard alphabet, padding optional.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

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
    // PAX sparse format 0.0 lists its map as repeated GNU.sparse.offset /
    // GNU.sparse.numbytes records; they are collected, in order and
    // alternating, into the GNU.sparse.map value format 0.1 uses.
    let mut sparse_00: Option<Vec<u8>> = None;
    let mut want_offset = true;
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
        if key == b"GNU.sparse.offset" || key == b"GNU.sparse.numbytes" {
            if (key == b"GNU.sparse.offset") != want_offset {
                return Err(bad(format!("{} out of order", lode_common::escape(key))));
            }
            want_offset = !want_offset;
            let map = sparse_00.get_or_insert_with(Vec::new);
            if !map.is_empty() {
                map.push(b',');
            }
            map.extend_from_slice(value);
            rest = &rest[len..];
            continue;
        }
        if value.is_empty() {
            into.remove(key);
        } else {
            into.insert(key.to_vec(), value.to_vec());
        }
        rest = &rest[len..];
    }
    if let Some(map) = sparse_00 {
        if !want_offset {
            return Err(bad("GNU.sparse.offset without GNU.sparse.numbytes".into()));
        }
        if into.contains_key(b"GNU.sparse.map".as_slice()) {
            return Err(bad(
                "both GNU.sparse.map and GNU.sparse.offset records".into()
            ));
        }
        into.insert(b"GNU.sparse.map".to_vec(), map);
    }
    Ok(())
}

/// Trims trailing NULs of a GNU long name.
fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Checks a sparse map: segments in order, non-overlapping, within `size`.
fn check_segments(segments: &[(u64, u64)], size: u64, offset: u64) -> Result<u64, TarError> {
    let mut end = 0u64;
    let mut stored = 0u64;
    for &(off, len) in segments {
        let seg_end = off.checked_add(len).filter(|&e| e <= size);
        match seg_end {
            Some(e) if off >= end => {
                end = e;
                stored += len;
            }
            _ => {
                return Err(TarError::Malformed {
                    offset,
                    detail: format!(
                        "sparse map segment ({off}, {len}) overlaps, is out of order or \
                         passes the file size {size}"
                    ),
                })
            }
        }
    }
    Ok(stored)
}

impl<R: Read> TarReader<R> {
    /// Reads a tar stream.
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            globals: BTreeMap::new(),
            data: Data::default(),
            done: false,
        }
    }

    /// Gives the stream back (for reading it to its end).
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// The stream.
    pub(crate) fn inner(&self) -> &R {
        &self.inner
    }

    /// The stream, mutably.
    pub(crate) fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Fills `buf` completely; `Ok(false)` on a clean end before any byte.
    fn read_full(&mut self, buf: &mut [u8], inside: &'static str) -> Result<bool, TarError> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) if n == 0 => return Ok(false),
                Ok(0) => {
                    return Err(TarError::Truncated {
                        offset: self.offset + n as u64,
                        inside,
                    })
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TarError::Io {
                        offset: self.offset + n as u64,
                        source,
                    })
                }
            }
        }
        self.offset += n as u64;
        Ok(true)
    }

    /// Discards `n` bytes.
    fn skip(&mut self, mut n: u64, inside: &'static str) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            if !self.read_full(&mut buf[..k], inside)? {
                return Err(TarError::Truncated {
                    offset: self.offset,
                    inside,
                });
            }
            n -= k as u64;
        }
        Ok(())
    }

    /// Reads a whole member of `size` bytes (PAX records, long names), with
    /// its padding.
    fn read_member(&mut self, size: u64, what: &'static str, at: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_META {
            return Err(TarError::Malformed {
                offset: at,
                detail: format!("{what} of {size} bytes exceeds the limit of {MAX_META}"),
            });
        }
        let mut v = vec![0u8; size as usize];
        if !v.is_empty() && !self.read_full(&mut v, what)? {
            return Err(TarError::Truncated {
                offset: self.offset,
                inside: what,
            });
        }
        self.skip(size.next_multiple_of(BLOCK) - size, what)?;
        Ok(v)
    }

    /// Reads the next entry's header, skipping whatever is left of the current
    /// entry's data. `None` at the end of the archive.
    pub(crate) fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        if self.done {
            return Ok(None);
        }
        let left = self.data.stored_left + self.data.padding;
        self.data = Data::default();
        self.skip(left, "entry data")?;

        let mut pax: Option<BTreeMap<Vec<u8>, Vec<u8>>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pending_meta = false;
        loop {
            let at = self.offset;
            let mut block = [0u8; BLOCK as usize];
            if !self.read_full(&mut block, "a header")? {
                if pending_meta {
                    return Err(TarError::Truncated {
                        offset: at,
                        inside: "an extended header's entry",
                    });
                }
                self.done = true;
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                if pending_meta {
                    return Err(TarError::Malformed {
                        offset: at,
                        detail: "end of archive right after an extended header".into(),
                    });
                }
                self.done = true;
                return Ok(None);
            }
            let raw = Raw(&block);
            let stored = number(raw.field(148, 8), "checksum", at)?;
            let unsigned: u32 = block
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
            let signed: i64 = block
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
                    stored: lode_common::escape(raw.field(148, 8)),
                    computed: unsigned,
                });
            }
            let size = number(&block[124..136], "size", at)?;
            let kind = block[156];
            match kind {
                b'x' | b'g' => {
                    let what = if kind == b'x' {
                        "PAX header"
                    } else {
                        "PAX global header"
                    };
                    let data = self.read_member(size, what, at)?;
                    if kind == b'g' {
                        let mut globals = std::mem::take(&mut self.globals);
                        parse_pax(&data, at, &mut globals)?;
                        self.globals = globals;
                        continue;
                    }
                    if pax.is_some() {
                        return Err(TarError::Malformed {
                            offset: at,
                            detail: "two PAX headers for one entry".into(),
                        });
                    }
                    let mut map = BTreeMap::new();
                    parse_pax(&data, at, &mut map)?;
                    pax = Some(map);
                    pending_meta = true;
                    continue;
                }
                b'L' | b'K' => {
                    let slot = if kind == b'L' {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    if slot.is_some() {
                        return Err(TarError::Malformed {
                            offset: at,
                            detail: "two GNU long names for one entry".into(),
                        });
                    }
                    let v = self.read_member(size, "GNU long name", at)?;
                    let slot = if kind == b'L' {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    *slot = Some(trim_nul(v));
                    pending_meta = true;
                    continue;
                }
                _ => {}
            }
            return self
                .entry(&block, at, size, pax, long_name, long_link)
                .map(Some);
        }
    }

    /// Builds the header of a real entry and positions the reader at its data.
    fn entry(
        &mut self,
        block: &[u8; BLOCK as usize],
        at: u64,
        stored_size: u64,
        pax: Option<BTreeMap<Vec<u8>, Vec<u8>>>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Header, TarError> {
        let raw = Raw(block);
        let mut records = self.globals.clone();
        if let Some(p) = pax {
            for (k, v) in p {
                records.insert(k, v);
            }
        }
        let mut path = if raw.is_ustar() && !raw.field(345, 155).is_empty() {
            [raw.field(345, 155), b"/", raw.field(0, 100)].concat()
        } else {
            raw.field(0, 100).to_vec()
        };
        if let Some(n) = long_name {
            path = n;
        }
        let mut link = long_link.unwrap_or_else(|| raw.field(157, 100).to_vec());
        let mut kind = match block[156] {
            0 => b'0',
            k => k,
        };
        if kind == b'0' && !raw.is_ustar() && !raw.is_gnu() && path.ends_with(b"/") {
            kind = b'5';
        }
        let mtime_field = number(&block[136..148], "mtime", at)?;
        let mut h = Header {
            kind,
            path: Vec::new(),
            link: Vec::new(),
            mode: u32::try_from(number(&block[100..108], "mode", at)? & 0o7777_7777).unwrap_or(0),
            uid: number(&block[108..116], "uid", at)?,
            gid: number(&block[116..124], "gid", at)?,
            mtime: (i64::try_from(mtime_field).unwrap_or(i64::MAX), 0),
            size: stored_size,
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
        let mut stored = stored_size;
        let mut sparse_map: Option<Vec<(u64, u64)>> = None;
        let mut sparse_real: Option<u64> = None;
        let mut sparse_name: Option<Vec<u8>> = None;
        let mut sparse_major: Option<u64> = None;
        let mut libarchive_xattrs = BTreeMap::new();
        let mut sparse_blocks: Option<u64> = None;
        for (k, v) in &records {
            match k.as_slice() {
                b"path" => path = v.clone(),
                b"linkpath" => link = v.clone(),
                b"size" => stored = decimal(v, "PAX size", at)?,
                b"uid" => h.uid = decimal(v, "PAX uid", at)?,
                b"gid" => h.gid = decimal(v, "PAX gid", at)?,
                b"mtime" => {
                    h.mtime = parse_pax_time(v).ok_or_else(|| TarError::Field {
                        offset: at,
                        field: "PAX mtime",
                        value: lode_common::escape(v),
                    })?
                }
                b"GNU.sparse.major" => sparse_major = Some(decimal(v, "GNU.sparse.major", at)?),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                    sparse_real = Some(decimal(v, "GNU.sparse.realsize", at)?)
                }
                b"GNU.sparse.name" => sparse_name = Some(v.clone()),
                b"GNU.sparse.map" => {
                    let nums = v
                        .split(|&b| b == b',')
                        .map(|n| decimal(n, "GNU.sparse.map", at))
                        .collect::<Result<Vec<_>, _>>()?;
                    if nums.len() % 2 != 0 || nums.len() / 2 > MAX_SPARSE_SEGMENTS {
                        return Err(TarError::Field {
                            offset: at,
                            field: "GNU.sparse.map",
                            value: lode_common::escape(v),
                        });
                    }
                    sparse_map = Some(nums.chunks(2).map(|p| (p[0], p[1])).collect());
                }
                b"GNU.sparse.numblocks" => {
                    sparse_blocks = Some(decimal(v, "GNU.sparse.numblocks", at)?)
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
                    libarchive_xattrs.insert(name, value);
                }
                k if k.starts_with(b"SCHILY.xattr.") => {
                    h.xattrs
                        .insert(k[b"SCHILY.xattr.".len()..].to_vec(), v.clone());
                }
                _ => {}
            }
        }
        if !libarchive_xattrs.is_empty() {
            h.xattrs = libarchive_xattrs;
        }
        if let (Some(n), Some(map)) = (sparse_blocks, &sparse_map) {
            if n != map.len() as u64 {
                return Err(TarError::Field {
                    offset: at,
                    field: "GNU.sparse.numblocks",
                    value: format!("{n} for a map of {} segments", map.len()),
                });
            }
        }
        if let Some(n) = sparse_name {
            path = n;
        }
        h.path = path;
        h.link = link;
        h.size = stored;
        self.data = Data {
            stored_left: stored,
            padding: stored.next_multiple_of(BLOCK) - stored,
            segments: VecDeque::new(),
            pos: 0,
            size: stored,
            sparse: false,
        };
        if kind == b'S' {
            self.gnu_sparse(block, at, &mut h)?;
        } else if sparse_real.is_some() || sparse_map.is_some() || sparse_major.is_some() {
            self.pax_sparse(at, &mut h, sparse_major, sparse_real, sparse_map)?;
        }
        if h.path.is_empty() {
            return Err(TarError::Malformed {
                offset: at,
                detail: "entry with an empty path".into(),
            });
        }
        Ok(h)
    }

    /// Old GNU sparse files (type `S`): the map is in the header and in
    /// extension blocks after it.
    fn gnu_sparse(
        &mut self,
        block: &[u8; BLOCK as usize],
        at: u64,
        h: &mut Header,
    ) -> Result<(), TarError> {
        if !Raw(block).is_gnu() {
            return Err(TarError::Malformed {
                offset: at,
                detail: "sparse entry (type 'S') without a GNU header".into(),
            });
        }
        let mut segments = Vec::new();
        let push = |entry: &[u8], segments: &mut Vec<(u64, u64)>| -> Result<(), TarError> {
            if entry.iter().all(|&b| b == 0) {
                return Ok(());
            }
            segments.push((
                number(&entry[..12], "sparse offset", at)?,
                number(&entry[12..24], "sparse length", at)?,
            ));
            Ok(())
        };
        for i in 0..4 {
            push(&block[386 + i * 24..386 + (i + 1) * 24], &mut segments)?;
        }
        let real = number(&block[483..495], "sparse real size", at)?;
        let mut extended = block[482] != 0;
        while extended {
            let mut ext = [0u8; BLOCK as usize];
            if !self.read_full(&mut ext, "a sparse header")? {
                return Err(TarError::Truncated {
                    offset: self.offset,
                    inside: "a sparse header",
                });
            }
            for i in 0..21 {
                push(&ext[i * 24..(i + 1) * 24], &mut segments)?;
            }
            if segments.len() > MAX_SPARSE_SEGMENTS {
                return Err(TarError::Malformed {
                    offset: at,
                    detail: format!("more than {MAX_SPARSE_SEGMENTS} sparse segments"),
                });
            }
            extended = ext[504] != 0;
        }
        self.set_sparse(at, h, segments, real)
    }

    /// PAX sparse files, formats 0.1 (`GNU.sparse.map`) and 1.0 (map at the
    /// start of the data).
    fn pax_sparse(
        &mut self,
        at: u64,
        h: &mut Header,
        major: Option<u64>,
        real: Option<u64>,
        map: Option<Vec<(u64, u64)>>,
    ) -> Result<(), TarError> {
        let real = real.ok_or_else(|| TarError::Malformed {
            offset: at,
            detail: "PAX sparse file without GNU.sparse.realsize".into(),
        })?;
        let segments = match (major, map) {
            (Some(1), None) => self.sparse_map_in_data(at)?,
            (None | Some(0), Some(map)) => map,
            (m, _) => {
                return Err(TarError::Malformed {
                    offset: at,
                    detail: format!("unsupported PAX sparse format (major {m:?})"),
                })
            }
        };
        self.set_sparse(at, h, segments, real)
    }

    /// Reads the decimal sparse map that opens the data of a PAX 1.0 sparse
    /// member: a count, then offset and length pairs, one per line, padded
    /// to a block.
    fn sparse_map_in_data(&mut self, at: u64) -> Result<Vec<(u64, u64)>, TarError> {
        let mut consumed = 0u64;
        let mut line = Vec::new();
        let mut next_number = |this: &mut Self, consumed: &mut u64| -> Result<u64, TarError> {
            line.clear();
            loop {
                let mut b = [0u8; 1];
                if *consumed >= this.data.stored_left || !this.read_full(&mut b, "a sparse map")? {
                    return Err(TarError::Truncated {
                        offset: this.offset,
                        inside: "a sparse map",
                    });
                }
                *consumed += 1;
                if b[0] == b'\n' {
                    return decimal(&line, "sparse map", at);
                }
                if line.len() > 20 {
                    return Err(TarError::Field {
                        offset: at,
                        field: "sparse map",
                        value: lode_common::escape(&line),
                    });
                }
                line.push(b[0]);
            }
        };
        let count = next_number(self, &mut consumed)?;
        if count > MAX_SPARSE_SEGMENTS as u64 {
            return Err(TarError::Malformed {
                offset: at,
                detail: format!(
                    "sparse map of {count} segments, over the limit of {MAX_SPARSE_SEGMENTS}"
                ),
            });
        }
        let mut segments = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let off = next_number(self, &mut consumed)?;
            let len = next_number(self, &mut consumed)?;
            segments.push((off, len));
        }
        let pad = consumed.next_multiple_of(BLOCK) - consumed;
        if consumed + pad > self.data.stored_left {
            return Err(TarError::Malformed {
                offset: at,
                detail: "sparse map longer than the member".into(),
            });
        }
        self.skip(pad, "a sparse map")?;
        self.data.stored_left -= consumed + pad;
        Ok(segments)
    }

    fn set_sparse(
        &mut self,
        at: u64,
        h: &mut Header,
        segments: Vec<(u64, u64)>,
        real: u64,
    ) -> Result<(), TarError> {
        let stored = check_segments(&segments, real, at)?;
        if stored != self.data.stored_left {
            return Err(TarError::Malformed {
                offset: at,
                detail: format!(
                    "sparse map covers {stored} bytes but the member stores {}",
                    self.data.stored_left
                ),
            });
        }
        h.size = real;
        self.data.segments = segments.into_iter().filter(|&(_, len)| len > 0).collect();
        self.data.size = real;
        self.data.sparse = true;
        Ok(())
    }

    /// The current entry's data (zeros in the holes of a sparse file).
    pub(crate) fn data(&mut self) -> EntryData<'_, R> {
        EntryData { r: self }
    }
}

/// Reader of one entry's logical content.
pub(crate) struct EntryData<'a, R> {
    r: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let d = &mut self.r.data;
        if buf.is_empty() || d.pos >= d.size {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(d.size - d.pos);
        // How many bytes from here on are stored (inside a segment) or a hole.
        let (stored, n) = if !d.sparse {
            (true, want)
        } else {
            match d.segments.front() {
                Some(&(off, len)) if d.pos >= off => {
                    let n = want.min(off + len - d.pos);
                    (true, n)
                }
                Some(&(off, _)) => (false, want.min(off - d.pos)),
                None => (false, want),
            }
        };
        let n = n as usize;
        if stored {
            let k = loop {
                match self.r.inner.read(&mut buf[..n]) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "archive truncated at byte {} inside entry data",
                                self.r.offset
                            ),
                        ))
                    }
                    Ok(k) => break k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            self.r.offset += k as u64;
            let d = &mut self.r.data;
            d.stored_left -= k as u64;
            d.pos += k as u64;
            if let Some(&(off, len)) = d.segments.front() {
                if d.pos >= off + len {
                    d.segments.pop_front();
                }
            }
            Ok(k)
        } else {
            buf[..n].fill(0);
            self.r.data.pos += n as u64;
            Ok(n)
        }
    }
}

/// Holes of a sparse entry are reported, so the writer skips them without
/// reading a byte: a 1 TiB sparse file costs what it stores.
impl<R: Read> lode_ext4::FileData for EntryData<'_, R> {
    fn hole_ahead(&self) -> u64 {
        let d = &self.r.data;
        if !d.sparse || d.pos >= d.size {
            return 0;
        }
        match d.segments.front() {
            Some(&(off, _)) if d.pos >= off => 0,
            Some(&(off, _)) => off - d.pos,
            None => d.size - d.pos,
        }
    }

    fn skip_hole(&mut self, n: u64) -> io::Result<()> {
        if n > self.hole_ahead() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "skip_hole past the hole",
            ));
        }
        self.r.data.pos += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a ustar header block with a valid checksum.
    fn header(name: &[u8], kind: u8, size: u64) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..name.len()].copy_from_slice(name);
        b[100..107].copy_from_slice(b"0000644");
        b[108..115].copy_from_slice(b"0000000");
        b[116..123].copy_from_slice(b"0000000");
        b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        b[136..147].copy_from_slice(b"00000000001");
        b[156] = kind;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        seal(&mut b);
        b
    }

    fn seal(b: &mut [u8; 512]) {
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }

    fn member(out: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8]) {
        out.extend_from_slice(&header(name, kind, data.len() as u64));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }

    fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let body = [b" ".as_slice(), key, b"=", value, b"\n"].concat();
        let mut len = body.len() + 1;
        while format!("{len}").len() + body.len() != len {
            len += 1;
        }
        [format!("{len}").as_bytes(), &body].concat()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(Header, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(h) = r.next_header()? {
            let mut d = Vec::new();
            r.data()
                .read_to_end(&mut d)
                .map_err(|source| TarError::Io { offset: 0, source })?;
            out.push((h, d));
        }
        Ok(out)
    }

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
    fn gnu_long_names_and_prefix() {
        let long = vec![b'n'; 300];
        let mut tar = Vec::new();
        member(
            &mut tar,
            b"././@LongLink",
            b'L',
            &[long.as_slice(), b"\0"].concat(),
        );
        member(&mut tar, b"trunc", b'0', b"x");
        let mut h = header(b"name", b'0', 0);
        h[345..351].copy_from_slice(b"prefix");
        seal(&mut h);
        tar.extend_from_slice(&h);
        let got = read_all(&tar).unwrap();
        assert_eq!(got[0].0.path, long);
        assert_eq!(got[1].0.path, b"prefix/name");
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
    fn gnu_sparse() {
        let mut h = header(b"sparse", b'S', 6);
        h[257..265].copy_from_slice(b"ustar  \0");
        // Segments (10, 2) and (100, 4); real size 200.
        h[386..398].copy_from_slice(b"00000000012\0");
        h[398..410].copy_from_slice(b"00000000002\0");
        h[410..422].copy_from_slice(b"00000000144\0");
        h[422..434].copy_from_slice(b"00000000004\0");
        h[483..495].copy_from_slice(b"00000000310\0");
        seal(&mut h);
        let mut tar = h.to_vec();
        tar.extend_from_slice(b"abWXYZ");
        tar.resize(1024, 0);
        let got = read_all(&tar).unwrap();
        assert_eq!(got[0].0.size, 200);
        let mut want = vec![0u8; 200];
        want[10..12].copy_from_slice(b"ab");
        want[100..104].copy_from_slice(b"WXYZ");
        assert_eq!(got[0].1, want);
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
    fn pax_sparse_0_0() {
        let pax = |recs: &[(&[u8], &[u8])]| {
            recs.iter()
                .map(|(k, v)| record(k, v))
                .collect::<Vec<_>>()
                .concat()
        };
        let good = pax(&[
            (b"GNU.sparse.size", b"4096"),
            (b"GNU.sparse.numblocks", b"2"),
            (b"GNU.sparse.offset", b"4000"),
            (b"GNU.sparse.numbytes", b"3"),
            (b"GNU.sparse.offset", b"4096"),
            (b"GNU.sparse.numbytes", b"0"),
        ]);
        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', &good);
        member(&mut tar, b"sparse", b'0', b"end");
        let got = read_all(&tar).unwrap();
        assert_eq!(got[0].0.path, b"sparse");
        assert_eq!(got[0].1.len(), 4096);
        assert_eq!(&got[0].1[4000..4003], b"end");
        assert!(got[0].1[..4000].iter().all(|&b| b == 0));
        for bad in [
            // numbytes before offset
            pax(&[
                (b"GNU.sparse.size", b"4096"),
                (b"GNU.sparse.numbytes", b"3"),
            ]),
            // an offset without its numbytes
            pax(&[(b"GNU.sparse.size", b"4096"), (b"GNU.sparse.offset", b"0")]),
            // two offsets in a row
            pax(&[
                (b"GNU.sparse.size", b"4096"),
                (b"GNU.sparse.offset", b"0"),
                (b"GNU.sparse.offset", b"1"),
            ]),
            // numblocks disagrees with the map
            pax(&[
                (b"GNU.sparse.size", b"4096"),
                (b"GNU.sparse.numblocks", b"3"),
                (b"GNU.sparse.offset", b"0"),
                (b"GNU.sparse.numbytes", b"3"),
            ]),
        ] {
            let mut tar = Vec::new();
            member(&mut tar, b"x", b'x', &bad);
            member(&mut tar, b"sparse", b'0', b"end");
            assert!(read_all(&tar).is_err(), "{}", String::from_utf8_lossy(&bad));
        }
    }

    #[test]
    fn pax_sparse_1_0() {
        let mut tar = Vec::new();
        let pax = [
            record(b"GNU.sparse.major", b"1"),
            record(b"GNU.sparse.minor", b"0"),
            record(b"GNU.sparse.name", b"real/name"),
            record(b"GNU.sparse.realsize", b"4096"),
        ]
        .concat();
        member(&mut tar, b"x", b'x', &pax);
        let mut data = b"1\n4000\n3\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"end");
        member(&mut tar, b"GNUSparseFile.0/name", b'0', &data);
        let got = read_all(&tar).unwrap();
        assert_eq!(got[0].0.path, b"real/name");
        assert_eq!(got[0].1.len(), 4096);
        assert_eq!(&got[0].1[4000..4003], b"end");
        assert!(got[0].1[..4000].iter().all(|&b| b == 0));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let mut bad_sum = header(b"a", b'0', 0);
        bad_sum[0] = b'b';
        assert!(matches!(read_all(&bad_sum), Err(TarError::Checksum { .. })));

        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', b"99 path=a\n");
        assert!(matches!(read_all(&tar), Err(TarError::Malformed { .. })));

        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', &record(b"path", b"a"));
        assert!(matches!(read_all(&tar), Err(TarError::Truncated { .. })));

        let mut tar = header(b"f", b'0', 10).to_vec();
        tar.extend_from_slice(b"abc");
        assert!(read_all(&tar).is_err());

        let mut h = header(b"f", b'0', 0);
        h[124..136].copy_from_slice(b"0000000009x\0");
        seal(&mut h);
        assert!(matches!(
            read_all(&h),
            Err(TarError::Field { field: "size", .. })
        ));

        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', &record(b"size", b"-1"));
        member(&mut tar, b"f", b'0', b"");
        assert!(matches!(read_all(&tar), Err(TarError::Field { .. })));
    }

    #[test]
    fn end_without_trailer_is_fine() {
        let mut tar = Vec::new();
        member(&mut tar, b"a", b'0', b"1");
        assert_eq!(read_all(&tar).unwrap().len(), 1);
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

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// One generated entry: PAX-carried path and xattr (any bytes), data.
        fn entry() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<u8>)> {
            (
                proptest::collection::vec(1u8..=255, 1..300),
                proptest::collection::vec(any::<u8>(), 1..200),
                proptest::collection::vec(any::<u8>(), 0..2000),
            )
        }

        proptest! {
            #[test]
            fn pax_round_trip(entries in proptest::collection::vec(entry(), 1..6)) {
                let mut tar = Vec::new();
                for (path, xattr, data) in &entries {
                    let pax = [
                        record(b"path", path),
                        record(b"SCHILY.xattr.user.v", xattr),
                    ]
                    .concat();
                    member(&mut tar, b"pax", b'x', &pax);
                    member(&mut tar, b"placeholder", b'0', data);
                }
                tar.extend_from_slice(&[0u8; 1024]);
                let got = read_all(&tar).unwrap();
                prop_assert_eq!(got.len(), entries.len());
                for ((h, d), (path, xattr, data)) in got.iter().zip(&entries) {
                    prop_assert_eq!(&h.path, path);
                    prop_assert_eq!(&h.xattrs[b"user.v".as_slice()], xattr);
                    prop_assert_eq!(d, data);
                }
            }

            /// Mutated archives and garbage give errors or entries, never a
            /// panic, and never more data than the archive could hold.
            #[test]
            fn garbage_never_panics(
                entries in proptest::collection::vec(entry(), 1..3),
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
                cut in any::<usize>(),
            ) {
                let mut tar = Vec::new();
                for (path, xattr, data) in &entries {
                    let pax = [record(b"path", path), record(b"SCHILY.xattr.user.v", xattr)].concat();
                    member(&mut tar, b"pax", b'x', &pax);
                    member(&mut tar, b"f", b'0', data);
                }
                for (at, byte) in flips {
                    let n = tar.len();
                    tar[at % n] ^= byte;
                }
                tar.truncate(cut % (tar.len() + 1));
                let mut r = TarReader::new(tar.as_slice());
                let mut total = 0u64;
                while let Ok(Some(h)) = r.next_header() {
                    let mut d = Vec::new();
                    // Sparse files may expand; cap what is read.
                    let _ = r.data().take(1 << 20).read_to_end(&mut d);
                    total += d.len() as u64;
                    prop_assert!(h.size >= d.len() as u64);
                }
                prop_assert!(total <= (entries.len() as u64) << 20);
            }
        }
    }
}
