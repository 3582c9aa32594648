//! The walk through a tar stream: header blocks, the extended members
//! (PAX `x`/`g`, GNU `L`/`K`) that qualify the next entry, data and padding.

use super::data::Data;
use super::header::{Header, Raw};
use super::pax::{parse_pax, trim_nul, PaxEntry};
use super::{TarError, BLOCK, MAX_META};
use std::collections::BTreeMap;
use std::io::{self, Read};

/// Reads headers and data from a tar stream.
pub(crate) struct TarReader<R> {
    pub(super) inner: R,
    /// Bytes consumed from `inner`.
    pub(super) offset: u64,
    /// PAX global records (`g` members) in force.
    globals: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The current entry's data.
    pub(super) data: Data,
    done: bool,
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
    pub(super) fn read_full(
        &mut self,
        buf: &mut [u8],
        inside: &'static str,
    ) -> Result<bool, TarError> {
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
    pub(super) fn skip(&mut self, mut n: u64, inside: &'static str) -> Result<(), TarError> {
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
            raw.check_sum(at)?;
            let size = raw.size(at)?;
            let kind = raw.type_flag();
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
        let path = long_name.unwrap_or_else(|| raw.name());
        let link = long_link.unwrap_or_else(|| raw.link_name().to_vec());
        let mut h = raw.header(at, path, link, stored_size)?;
        let sparse = PaxEntry::read(&records, at)?.apply(&mut h);
        self.data = Data::plain(h.size);
        if h.kind == b'S' {
            self.gnu_sparse(block, at, &mut h)?;
        } else if sparse.is_sparse() {
            self.pax_sparse(at, &mut h, sparse)?;
        }
        if h.path.is_empty() {
            return Err(TarError::Malformed {
                offset: at,
                detail: "entry with an empty path".into(),
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{member, read_all, record};
    use super::*;

    #[test]
    fn end_without_trailer_is_fine() {
        let mut tar = Vec::new();
        member(&mut tar, b"a", b'0', b"1");
        assert_eq!(read_all(&tar).unwrap().len(), 1);
    }

    #[test]
    fn extended_headers_need_their_entry() {
        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', &record(b"path", b"a"));
        assert!(matches!(read_all(&tar), Err(TarError::Truncated { .. })));
        tar.extend_from_slice(&[0u8; 1024]);
        assert!(matches!(read_all(&tar), Err(TarError::Malformed { .. })));

        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', &record(b"path", b"a"));
        member(&mut tar, b"x", b'x', &record(b"path", b"b"));
        member(&mut tar, b"f", b'0', b"");
        assert!(matches!(read_all(&tar), Err(TarError::Malformed { .. })));

        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', &vec![b'#'; MAX_META as usize + 1]);
        assert!(matches!(read_all(&tar), Err(TarError::Malformed { .. })));
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
