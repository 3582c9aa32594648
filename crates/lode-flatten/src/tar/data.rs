//! An entry's content: the stored bytes of a plain member, or the segments
//! of a sparse one with zeros (reported as holes) between them.

use super::reader::TarReader;
use std::collections::VecDeque;
use std::io::{self, Read};

/// Where the current entry's data lies.
#[derive(Debug, Default)]
pub(super) struct Data {
    /// Stored bytes of the member still unread.
    pub(super) stored_left: u64,
    /// Padding after the stored bytes.
    pub(super) padding: u64,
    /// Data segments (offset, length) of a sparse file still ahead, in
    /// order; empty for a plain file.
    pub(super) segments: VecDeque<(u64, u64)>,
    /// Logical position in the file.
    pub(super) pos: u64,
    /// Logical size.
    pub(super) size: u64,
    /// Whether the file is sparse.
    pub(super) sparse: bool,
}

impl Data {
    /// A plain member storing `stored` bytes.
    pub(super) fn plain(stored: u64) -> Self {
        Data {
            stored_left: stored,
            padding: stored.next_multiple_of(super::BLOCK) - stored,
            segments: VecDeque::new(),
            pos: 0,
            size: stored,
            sparse: false,
        }
    }
}

impl<R: Read> TarReader<R> {
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
    use super::super::testing::{header, member, read_all, record};
    use super::*;
    use lode_ext4::FileData;

    #[test]
    fn truncated_data_is_an_error() {
        let mut tar = header(b"f", b'0', 10).to_vec();
        tar.extend_from_slice(b"abc");
        assert!(read_all(&tar).is_err());
    }

    #[test]
    fn holes_are_reported_and_skipped() {
        let pax = [
            record(b"GNU.sparse.realsize", b"100"),
            record(b"GNU.sparse.map", b"10,2"),
        ]
        .concat();
        let mut tar = Vec::new();
        member(&mut tar, b"x", b'x', &pax);
        member(&mut tar, b"f", b'0', b"ab");
        let mut r = TarReader::new(tar.as_slice());
        r.next_header().unwrap().unwrap();
        let mut d = r.data();
        assert_eq!(d.hole_ahead(), 10);
        assert!(d.skip_hole(11).is_err());
        d.skip_hole(10).unwrap();
        assert_eq!(d.hole_ahead(), 0);
        let mut two = [0u8; 2];
        d.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"ab");
        assert_eq!(d.hole_ahead(), 88);
        d.skip_hole(88).unwrap();
        assert_eq!(d.read(&mut two).unwrap(), 0);
    }
}
