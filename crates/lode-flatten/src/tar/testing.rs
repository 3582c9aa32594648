//! Builders of small tar streams for the unit tests of the reader's parts.

use super::{Header, TarError, TarReader};
use std::io::Read;

/// Builds a ustar header block with a valid checksum.
pub(super) fn header(name: &[u8], kind: u8, size: u64) -> [u8; 512] {
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

/// Writes the checksum of a header block.
pub(super) fn seal(b: &mut [u8; 512]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

/// Appends a member (header, data, padding) to `out`.
pub(super) fn member(out: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8]) {
    out.extend_from_slice(&header(name, kind, data.len() as u64));
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// One PAX record, its length prefix counting itself.
pub(super) fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = [b" ".as_slice(), key, b"=", value, b"\n"].concat();
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    [format!("{len}").as_bytes(), &body].concat()
}

/// Every entry of a stream with its whole logical content.
pub(super) fn read_all(bytes: &[u8]) -> Result<Vec<(Header, Vec<u8>)>, TarError> {
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
