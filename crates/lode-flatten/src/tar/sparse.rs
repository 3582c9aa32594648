//! Sparse maps: old GNU sparse members (type `S`, the map in the header and
//! extension blocks), and the PAX sparse formats 0.0 (repeated
//! `GNU.sparse.offset`/`numbytes` records), 0.1 (`GNU.sparse.map`) and 1.0
//! (the map at the start of the member's data).

use super::header::{number, Header, Raw};
use super::pax::decimal;
use super::reader::TarReader;
use super::{TarError, BLOCK, MAX_SPARSE_SEGMENTS};
use std::collections::BTreeMap;
use std::io::Read;

/// Collects a PAX 0.0 sparse map: repeated `GNU.sparse.offset` /
/// `GNU.sparse.numbytes` records, in order and alternating, become the
/// `GNU.sparse.map` value format 0.1 uses.
pub(super) struct Sparse00 {
    map: Option<Vec<u8>>,
    /// Whether an offset record comes next.
    want_offset: bool,
}

impl Default for Sparse00 {
    fn default() -> Self {
        Sparse00 {
            map: None,
            want_offset: true,
        }
    }
}

impl Sparse00 {
    /// Takes the record if it is part of a 0.0 map (`Ok(true)`); otherwise
    /// leaves it to the caller. The error is the detail of a malformed record.
    pub(super) fn record(&mut self, key: &[u8], value: &[u8]) -> Result<bool, String> {
        let is_offset = key == b"GNU.sparse.offset";
        if !is_offset && key != b"GNU.sparse.numbytes" {
            return Ok(false);
        }
        if is_offset != self.want_offset {
            return Err(format!("{} out of order", lode_common::escape(key)));
        }
        self.want_offset = !is_offset;
        let map = self.map.get_or_insert_with(Vec::new);
        if !map.is_empty() {
            map.push(b',');
        }
        map.extend_from_slice(value);
        Ok(true)
    }

    /// Stores the collected map, if any, as `GNU.sparse.map` in `into`.
    pub(super) fn finish(self, into: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), String> {
        let Some(map) = self.map else {
            return Ok(());
        };
        if !self.want_offset {
            return Err("GNU.sparse.offset without GNU.sparse.numbytes".into());
        }
        if into.contains_key(b"GNU.sparse.map".as_slice()) {
            return Err("both GNU.sparse.map and GNU.sparse.offset records".into());
        }
        into.insert(b"GNU.sparse.map".to_vec(), map);
        Ok(())
    }
}

/// The `GNU.sparse.*` records of an entry.
#[derive(Default)]
pub(super) struct PaxSparse {
    major: Option<u64>,
    real: Option<u64>,
    /// The file's real name (formats 0.1 and 1.0 give the member another).
    pub(super) name: Option<Vec<u8>>,
    map: Option<Vec<(u64, u64)>>,
    blocks: Option<u64>,
}

impl PaxSparse {
    /// Takes the record if it is a sparse keyword (`Ok(true)`).
    pub(super) fn record(&mut self, k: &[u8], v: &[u8], at: u64) -> Result<bool, TarError> {
        match k {
            b"GNU.sparse.major" => self.major = Some(decimal(v, "GNU.sparse.major", at)?),
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                self.real = Some(decimal(v, "GNU.sparse.realsize", at)?)
            }
            b"GNU.sparse.name" => self.name = Some(v.to_vec()),
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
                self.map = Some(nums.chunks(2).map(|p| (p[0], p[1])).collect());
            }
            b"GNU.sparse.numblocks" => self.blocks = Some(decimal(v, "GNU.sparse.numblocks", at)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks that a declared segment count agrees with the map.
    pub(super) fn check(&self, at: u64) -> Result<(), TarError> {
        if let (Some(n), Some(map)) = (self.blocks, &self.map) {
            if n != map.len() as u64 {
                return Err(TarError::Field {
                    offset: at,
                    field: "GNU.sparse.numblocks",
                    value: format!("{n} for a map of {} segments", map.len()),
                });
            }
        }
        Ok(())
    }

    /// Whether the records make the entry a sparse file.
    pub(super) fn is_sparse(&self) -> bool {
        self.real.is_some() || self.map.is_some() || self.major.is_some()
    }
}

/// Checks a sparse map: segments in order, non-overlapping, within `size`.
/// Gives the bytes the segments store.
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
    /// Old GNU sparse files (type `S`): the map is in the header and in
    /// extension blocks after it.
    pub(super) fn gnu_sparse(
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

    /// PAX sparse files, formats 0.0 and 0.1 (`GNU.sparse.map`) and 1.0 (map
    /// at the start of the data).
    pub(super) fn pax_sparse(
        &mut self,
        at: u64,
        h: &mut Header,
        records: PaxSparse,
    ) -> Result<(), TarError> {
        let real = records.real.ok_or_else(|| TarError::Malformed {
            offset: at,
            detail: "PAX sparse file without GNU.sparse.realsize".into(),
        })?;
        let segments = match (records.major, records.map) {
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

    /// Makes the current entry a sparse file of `real` bytes whose data lies
    /// in `segments`, which must store exactly the member's bytes.
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::{header, member, read_all, record, seal};

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
            // both a 0.0 and a 0.1 map
            pax(&[
                (b"GNU.sparse.size", b"4096"),
                (b"GNU.sparse.map", b"0,3"),
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
    fn pax_sparse_0_1() {
        let mut tar = Vec::new();
        let pax = [
            record(b"GNU.sparse.realsize", b"100"),
            record(b"GNU.sparse.map", b"0,1,50,2"),
            record(b"GNU.sparse.name", b"real"),
        ]
        .concat();
        member(&mut tar, b"x", b'x', &pax);
        member(&mut tar, b"GNUSparseFile.0/real", b'0', b"abc");
        let got = read_all(&tar).unwrap();
        assert_eq!(got[0].0.path, b"real");
        let mut want = vec![0u8; 100];
        want[0] = b'a';
        want[50..52].copy_from_slice(b"bc");
        assert_eq!(got[0].1, want);
        for bad in [
            // An odd number of map values.
            record(b"GNU.sparse.map", b"0,1,50"),
            // Overlapping segments.
            record(b"GNU.sparse.map", b"0,2,1,1"),
            // Past the real size.
            record(b"GNU.sparse.map", b"0,1,99,2"),
        ] {
            let pax = [record(b"GNU.sparse.realsize", b"100"), bad.clone()].concat();
            let mut tar = Vec::new();
            member(&mut tar, b"x", b'x', &pax);
            member(&mut tar, b"f", b'0', b"abc");
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
}
