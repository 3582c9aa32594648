//! The checked byte range: the only input [`crate::ImageHandle`] and
//! [`crate::overlay::Overlay`] accept.
//!
//! Every offset and length a client sends (NBD `READ`/`WRITE`/`TRIM`,
//! virtio-blk sectors and segment lengths, reads of the agent's own callers)
//! goes through one constructor, [`BlockRange::new`] (or
//! [`BlockRange::from_sectors`]), with `checked_add` before any I/O. Code
//! holding a `BlockRange` never checks again, and no arithmetic on it can
//! overflow: `offset + len <= size <= u64::MAX`.

/// Largest range accepted: 32 MiB (NBD's and virtio-blk's largest transfer).
pub const MAX_REQUEST: u32 = 32 << 20;

/// The virtio-blk sector.
pub const SECTOR: u64 = 512;

/// Why a range was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Zero bytes.
    #[error("empty range at offset {offset}")]
    Empty {
        /// Offset asked for.
        offset: u64,
    },
    /// More than [`MAX_REQUEST`] bytes.
    #[error(
        "{len} bytes at offset {offset} is more than the largest request ({MAX_REQUEST} bytes)"
    )]
    TooLarge {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
    },
    /// Past the end of the image (or overflowing).
    #[error("{len} bytes at offset {offset} is outside the image ({size} bytes)")]
    OutOfImage {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Image size.
        size: u64,
    },
    /// Not a whole number of 512-byte sectors (virtio-blk).
    #[error("{len} bytes at sector {sector} is not a whole number of sectors")]
    Misaligned {
        /// Sector asked for.
        sector: u64,
        /// Length asked for.
        len: u64,
    },
}

/// A non-empty byte range of at most [`MAX_REQUEST`] bytes inside an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRange {
    offset: u64,
    len: u32,
}

impl BlockRange {
    /// Checks `len` bytes at `offset` against an image of `size` bytes.
    pub fn new(offset: u64, len: u64, size: u64) -> Result<BlockRange, RangeError> {
        if len == 0 {
            return Err(RangeError::Empty { offset });
        }
        if len > u64::from(MAX_REQUEST) {
            return Err(RangeError::TooLarge { offset, len });
        }
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(BlockRange {
                offset,
                len: len as u32,
            }),
            _ => Err(RangeError::OutOfImage { offset, len, size }),
        }
    }

    /// `len` bytes at 512-byte `sector` (virtio-blk): also a whole number of sectors.
    pub fn from_sectors(sector: u64, len: u64, size: u64) -> Result<BlockRange, RangeError> {
        if !len.is_multiple_of(SECTOR) {
            return Err(RangeError::Misaligned { sector, len });
        }
        let offset = sector.checked_mul(SECTOR).ok_or(RangeError::OutOfImage {
            offset: u64::MAX,
            len,
            size,
        })?;
        BlockRange::new(offset, len, size)
    }

    /// First byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length in bytes (1 ..= [`MAX_REQUEST`]).
    pub fn len(&self) -> u64 {
        u64::from(self.len)
    }

    /// Never true (ranges are non-empty); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }

    /// The part of this range inside `[start, end)`, if any. A part of a
    /// checked range is checked too.
    pub fn clip(&self, start: u64, end: u64) -> Option<BlockRange> {
        let s = self.offset.max(start);
        let e = self.end().min(end);
        (s < e).then(|| BlockRange {
            offset: s,
            len: (e - s) as u32,
        })
    }

    /// The pieces of this range in each `unit`-sized block it touches, with
    /// the block's index, in order (`unit` > 0: chunks, pages).
    pub fn split(&self, unit: u64) -> impl Iterator<Item = (u64, BlockRange)> + '_ {
        let unit = unit.max(1);
        let first = self.offset / unit;
        let last = (self.end() - 1) / unit;
        (first..=last).filter_map(move |i| {
            let start = i * unit;
            self.clip(start, start.saturating_add(unit)).map(|r| (i, r))
        })
    }

    /// Index of the first and last `unit`-sized block touched.
    pub fn blocks(&self, unit: u64) -> (u64, u64) {
        let unit = unit.max(1);
        (self.offset / unit, (self.end() - 1) / unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn checks() {
        assert!(BlockRange::new(0, 4096, 8192).is_ok());
        assert!(BlockRange::new(4096, 4096, 8192).is_ok());
        assert_eq!(
            BlockRange::new(4097, 4096, 8192),
            Err(RangeError::OutOfImage {
                offset: 4097,
                len: 4096,
                size: 8192
            })
        );
        assert_eq!(
            BlockRange::new(7, 0, 8192),
            Err(RangeError::Empty { offset: 7 })
        );
        assert!(matches!(
            BlockRange::new(u64::MAX, 1, u64::MAX),
            Err(RangeError::OutOfImage { .. })
        ));
        assert!(matches!(
            BlockRange::new(0, u64::from(MAX_REQUEST) + 1, u64::MAX),
            Err(RangeError::TooLarge { .. })
        ));
        assert_eq!(
            BlockRange::from_sectors(8, 4096, 8192).map(|r| r.offset()),
            Ok(4096)
        );
        assert!(BlockRange::from_sectors(9, 4096, 8192).is_err());
        assert!(matches!(
            BlockRange::from_sectors(0, 100, 8192),
            Err(RangeError::Misaligned { .. })
        ));
        assert!(BlockRange::from_sectors(u64::MAX / 256, 512, u64::MAX).is_err());
    }

    proptest! {
        /// Whatever the input, a range that checks lies inside the image,
        /// and its pieces tile it exactly.
        #[test]
        fn accepted_ranges_are_inside_and_split_exactly(
            offset in any::<u64>(), len in 0u64..(MAX_REQUEST as u64 + 10),
            size in any::<u64>(), unit in 1u64..(1 << 21),
        ) {
            if let Ok(r) = BlockRange::new(offset, len, size) {
                prop_assert!(r.len() <= u64::from(MAX_REQUEST));
                prop_assert!(r.end() <= size && r.offset() < r.end());
                let mut at = r.offset();
                for (i, p) in r.split(unit) {
                    prop_assert_eq!(p.offset(), at);
                    prop_assert_eq!(p.offset() / unit, i);
                    prop_assert_eq!((p.end() - 1) / unit, i);
                    at = p.end();
                }
                prop_assert_eq!(at, r.end());
            } else {
                prop_assert!(len == 0 || len > u64::from(MAX_REQUEST)
                    || offset.checked_add(len).is_none_or(|e| e > size));
            }
        }
    }
}
