//! Chunk buffers reused across a push: the buffer a chunk is read into
//! (which, for a raw chunk, is encrypted in place and becomes the upload)
//! goes back to the pool when the store is done with the upload, so a push
//! allocates, zeroes and page-faults a bounded set of buffers instead of a
//! fresh 512 KiB buffer per chunk.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// A bounded free list of byte buffers.
pub(crate) struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers kept at most (more are freed).
    keep: usize,
    /// Smallest capacity worth keeping (the chunk size).
    min_capacity: usize,
}

impl BufPool {
    /// A pool keeping up to `keep` buffers of at least `min_capacity` bytes.
    pub(crate) fn new(keep: usize, min_capacity: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
            min_capacity,
        })
    }

    /// A buffer of exactly `len` bytes; its contents are unspecified (the
    /// caller overwrites them all).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(mut v) => {
                // Zero-fills only bytes the buffer never held.
                v.resize(len, 0);
                v
            }
            None => {
                let mut v = Vec::with_capacity(len.max(self.min_capacity));
                v.resize(len, 0);
                v
            }
        }
    }

    /// Returns `v` to the pool (or frees it when the pool is full or `v`
    /// is too small to serve a chunk).
    pub(crate) fn give(&self, v: Vec<u8>) {
        if v.capacity() < self.min_capacity {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep {
            free.push(v);
        }
    }

    /// `v` as [`Bytes`] whose buffer returns to this pool when the last
    /// reference (for example the store's upload) is dropped.
    pub(crate) fn bytes(self: &Arc<Self>, v: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf: v,
            pool: self.clone(),
        })
    }
}

/// A buffer on loan from a [`BufPool`].
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_bytes_are_dropped() {
        let pool = BufPool::new(2, 16);
        let mut a = pool.take(16);
        a.copy_from_slice(&[7; 16]);
        let ptr = a.as_ptr();
        let b = pool.bytes(a);
        assert_eq!(&b[..], &[7; 16]);
        let b2 = b.clone();
        drop(b);
        assert!(pool.free.lock().unwrap().is_empty(), "still referenced");
        drop(b2);
        let again = pool.take(10);
        assert_eq!((again.as_ptr(), again.len()), (ptr, 10), "the same buffer");
        // Too small to keep; a full pool frees the rest.
        pool.give(vec![0; 8]);
        for _ in 0..3 {
            pool.give(vec![0; 16]);
        }
        assert_eq!(pool.free.lock().unwrap().len(), 2);
        assert_eq!(pool.take(20).len(), 20);
    }
}
