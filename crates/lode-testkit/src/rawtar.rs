//! Tar members written byte by byte, for hostile-input tests: names no tar
//! library writes (control characters, NULs in PAX names), sparse files
//! claiming terabytes, headers in any order. Each function returns whole
//! 512-byte blocks.

use crate::tarw::pax_record;

/// The end-of-archive marker: two zero blocks.
pub const END: [u8; 1024] = [0; 1024];

fn set_checksum(b: &mut [u8; 512]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

/// A ustar header for `name` (at most 100 bytes) of type `kind` and `size`.
pub fn ustar_header(name: &[u8], kind: u8, size: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    b[100..107].copy_from_slice(b"0000755");
    b[108..115].copy_from_slice(b"0000000");
    b[116..123].copy_from_slice(b"0000000");
    b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    b[136..147].copy_from_slice(b"14000000000");
    b[156] = kind;
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    set_checksum(&mut b);
    b
}

/// A 12-byte numeric field: octal, or GNU base-256 when it does not fit 11
/// octal digits.
fn number12(field: &mut [u8], v: u64) {
    if v < 1 << 33 {
        field.copy_from_slice(format!("{v:011o}\0").as_bytes());
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[4..12].copy_from_slice(&v.to_be_bytes());
    }
}

/// Pads `v` to a whole number of blocks.
fn pad(mut v: Vec<u8>) -> Vec<u8> {
    v.resize(v.len().next_multiple_of(512), 0);
    v
}

/// A member: header and data, padded.
pub fn member(name: &[u8], kind: u8, data: &[u8]) -> Vec<u8> {
    let mut v = ustar_header(name, kind, data.len() as u64).to_vec();
    v.extend_from_slice(data);
    pad(v)
}

/// A PAX extended header (`x`) member holding `records` (applies to the
/// next member).
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        pax_record(&mut body, k, v);
    }
    member(b"PaxHeader", b'x', &body)
}

/// A directory whose path may be of any length (PAX `path` when long).
pub fn dir(path: &[u8]) -> Vec<u8> {
    if path.len() <= 100 {
        return ustar_header(path, b'5', 0).to_vec();
    }
    let mut v = pax(&[("path", path)]);
    v.extend_from_slice(&ustar_header(b"long-dir", b'5', 0));
    v
}

/// An old GNU sparse file (type `S`) of `real` bytes whose up to four data
/// `segments` (offset, length) hold `data` (their concatenation).
pub fn gnu_sparse(name: &[u8], real: u64, segments: &[(u64, u64)], data: &[u8]) -> Vec<u8> {
    assert!(segments.len() <= 4, "only the header's four segments");
    let mut b = ustar_header(name, b'S', data.len() as u64);
    b[257..265].copy_from_slice(b"ustar  \0");
    for (i, (off, len)) in segments.iter().enumerate() {
        let at = 386 + i * 24;
        number12(&mut b[at..at + 12], *off);
        number12(&mut b[at + 12..at + 24], *len);
    }
    number12(&mut b[483..495], real);
    set_checksum(&mut b);
    let mut v = b.to_vec();
    v.extend_from_slice(data);
    pad(v)
}

/// A PAX sparse file, format 1.0 (the map opens the member's data), of
/// `real` bytes whose data `segments` hold `data`.
pub fn pax_sparse_1_0(name: &[u8], real: u64, segments: &[(u64, u64)], data: &[u8]) -> Vec<u8> {
    let mut map = format!("{}\n", segments.len());
    for (off, len) in segments {
        map.push_str(&format!("{off}\n{len}\n"));
    }
    let mut stored = pad(map.into_bytes());
    stored.extend_from_slice(data);
    let mut v = pax(&[
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", name),
        ("GNU.sparse.realsize", real.to_string().as_bytes()),
    ]);
    v.extend_from_slice(&member(b"GNUSparseFile.0/x", b'0', &stored));
    v
}

/// A link (`kind` `1` hard, `2` symbolic) at `name` to the raw `target`
/// (at most 100 bytes).
pub fn link(name: &[u8], kind: u8, target: &[u8]) -> Vec<u8> {
    let mut b = ustar_header(name, kind, 0);
    let n = target.len().min(100);
    b[157..157 + n].copy_from_slice(&target[..n]);
    set_checksum(&mut b);
    b.to_vec()
}
