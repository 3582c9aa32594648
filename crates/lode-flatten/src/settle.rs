//! Chunks of the image that are final while it is still being written, told
//! to a consumer as they settle (how `lode push` uploads during a flatten).

use lode_ext4::Builder;

/// Where to tell that chunks of the image are final.
#[derive(Clone, Copy)]
pub struct Settle<'a> {
    /// Chunk size in bytes (the chunk store's).
    pub chunk_size: u64,
    /// Called on the flatten's thread with the index of each chunk whose
    /// bytes will not change any more, in ascending order, at most once per
    /// chunk. Chunks never told (the header, inode tables, the tail) are
    /// final when the flatten returns. It may block: the flatten waits,
    /// which is how a slow consumer bounds the bytes written ahead of it.
    pub chunk: &'a (dyn Fn(u64) + Sync),
}

/// Follows the builder's settled bytes and tells each chunk once.
pub(crate) struct Settling<'a> {
    to: Option<Settle<'a>>,
    /// Next chunk index not yet looked at.
    next: u64,
    /// The builder's settled bytes when last looked at.
    seen: u64,
}

impl<'a> Settling<'a> {
    pub(crate) fn new(to: Option<Settle<'a>>) -> Self {
        Settling {
            to,
            next: 0,
            seen: 0,
        }
    }

    /// Tells the chunks that settled since the last call. Chunks still open
    /// when the settled bytes pass them stay untold (they settle at finish).
    pub(crate) fn advance(&mut self, b: &Builder) {
        let Some(to) = self.to else { return };
        let below = b.settled_below();
        if below == self.seen || to.chunk_size == 0 {
            return;
        }
        self.seen = below;
        while (self.next + 1) * to.chunk_size <= below {
            let c = self.next;
            if b.is_settled(c * to.chunk_size..(c + 1) * to.chunk_size) {
                (to.chunk)(c);
            }
            self.next += 1;
        }
    }
}
