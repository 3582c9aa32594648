//! What [`crate::Builder::add_file`] reads: a file's bytes, and where it has
//! holes that need not be read at all.
//!
//! A sparse file from a layer (GNU `S`, PAX sparse formats) may claim a real
//! size of a terabyte while storing a few bytes. Its holes are zeros that the
//! image leaves unallocated anyway; reading them as zeros and scanning them
//! block by block would cost time in proportion to the claimed size. A
//! [`FileData`] says where the holes are, so whole blocks of hole are skipped
//! and the cost follows the bytes stored.

use std::io::{self, Read};

/// A regular file's content: its bytes in order, with holes skipped.
pub trait FileData: Read {
    /// Bytes of hole (zeros the source does not store) from the current
    /// position on; 0 when data comes next. The default knows of no holes.
    fn hole_ahead(&self) -> u64 {
        0
    }

    /// Moves past `n` bytes of hole (`n` at most [`FileData::hole_ahead`])
    /// without producing them.
    fn skip_hole(&mut self, n: u64) -> io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "skip_hole past the holes this data has",
            ))
        }
    }
}

impl FileData for &[u8] {}

/// Any reader as file data without holes.
#[derive(Debug)]
pub struct Dense<R>(pub R);

impl<R: Read> Read for Dense<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> FileData for Dense<R> {}
