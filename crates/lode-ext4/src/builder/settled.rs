//! Which bytes of the image are final while it is still being written.
//!
//! The builder allocates with one cursor and writes every block once, except
//! what [`Builder::finish`](super::Builder::finish) writes: the header chunk
//! (superblock, descriptors, bitmaps when they fit, group 0's table), the
//! inode tables reserved at each section's end, and the tail past the last
//! section. The blocks between a layer's end and the next chunk boundary
//! settle only when the next section starts (a packed layer may still use
//! them). So bytes below the flushed cursor that hold no reserved table
//! never change again: data, and the blocks of symlinks, xattrs, extent
//! trees and directories (an upper layer that changes a directory writes it
//! anew in its own section).

use crate::layout::{BLOCK_SIZE, HEADER_BLOCKS, INODE_TABLE_BLOCKS};
use std::ops::Range;

/// A view of the settled bytes, as of one moment of the build.
#[derive(Clone, Copy, Debug)]
pub struct Settled<'a> {
    /// Blocks below this are written (or stay zero) for good, tables aside.
    pub(super) below: u64,
    /// First block of each reserved inode table, ascending.
    pub(super) tables: &'a [u64],
}

/// What [`Builder::on_settle`](super::Builder::on_settle) calls.
pub type SettleHook = Box<dyn FnMut(&Settled<'_>) + Send>;

impl Settled<'_> {
    /// Bytes below which writing is over, except in the ranges
    /// [`Settled::contains`] excludes.
    pub fn below(&self) -> u64 {
        self.below * BLOCK_SIZE
    }

    /// True if the bytes `range` hold their final content: the range lies
    /// below [`Settled::below`] and outside the header chunk and every
    /// reserved inode table.
    pub fn contains(&self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return true;
        }
        if range.start < HEADER_BLOCKS * BLOCK_SIZE || range.end > self.below() {
            return false;
        }
        let (first, last) = (range.start / BLOCK_SIZE, (range.end - 1) / BLOCK_SIZE);
        // Tables are handed out in ascending order: the first one ending
        // after `first` is the only one that may overlap.
        let i = self
            .tables
            .partition_point(|&t| t + INODE_TABLE_BLOCKS <= first);
        self.tables.get(i).is_none_or(|&t| t > last)
    }
}
