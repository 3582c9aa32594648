//! Chunks of the image that are final while it is still being written, told
//! to a consumer as they settle (how `lode push` uploads during a flatten).

use lode_ext4::{SettleHook, Settled};
use std::sync::Arc;

/// Where to tell that chunks of the image are final.
#[derive(Clone)]
pub struct Settle {
    /// Chunk size in bytes (the chunk store's).
    pub chunk_size: u64,
    /// Called on the flatten's thread with the index of each chunk whose
    /// bytes will not change any more, in ascending order, at most once per
    /// chunk, every 8 MiB of file data and at each layer's end. Chunks never
    /// told (the header, inode tables, the tail) are final when the flatten
    /// returns. It may block: the flatten waits, which is how a slow
    /// consumer bounds the bytes written ahead of it.
    pub chunk: Arc<dyn Fn(u64) + Send + Sync>,
}

/// The builder hook that tells each settled chunk once.
pub(crate) fn hook(to: Settle) -> SettleHook {
    // Next chunk index not yet looked at: chunks still open when the settled
    // bytes pass them stay untold (they settle at finish).
    let mut next = 0u64;
    Box::new(move |s: &Settled<'_>| {
        let size = to.chunk_size;
        if size == 0 {
            return;
        }
        while (next + 1) * size <= s.below() {
            if s.contains(next * size..(next + 1) * size) {
                (to.chunk)(next);
            }
            next += 1;
        }
    })
}
