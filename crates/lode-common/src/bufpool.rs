//! Reused byte buffers for the 512 KiB-class allocations of the data path
//! (a push's chunk buffers, the disk tier's page reads): a fresh allocation
//! that size costs page faults on every page (the allocator hands such
//! blocks back to the kernel on free). A buffer lent out as [`Bytes`]
//! returns to its bounded pool when the last reference is dropped, so a
//! pool holds at most `max_buffers` idle buffers and nothing queues.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// A bounded free list of byte buffers between `min_len` and `max_len`
/// bytes of capacity.
#[derive(Debug)]
pub struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_buffers: usize,
    min_len: usize,
    max_len: usize,
}

impl BufPool {
    /// A pool keeping at most `max_buffers` idle buffers; only requests and
    /// buffers of `min_len..=max_len` bytes are served from and kept in it.
    pub fn new(max_buffers: usize, min_len: usize, max_len: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            free: Mutex::new(Vec::with_capacity(max_buffers)),
            max_buffers,
            min_len,
            max_len: max_len.max(min_len),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified (a
    /// previous user's): the caller overwrites all of it.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let fits = (self.min_len..=self.max_len).contains(&len);
        match fits.then(|| self.lock().pop()).flatten() {
            Some(mut v) => {
                // Zero-fills only bytes the buffer never held.
                v.resize(len, 0);
                v
            }
            None => {
                let cap = if fits {
                    self.max_len.min(len.max(self.min_len))
                } else {
                    len
                };
                let mut v = Vec::with_capacity(cap);
                v.resize(len, 0);
                v
            }
        }
    }

    /// Returns `v` for reuse (freed instead when the pool is full or `v`'s
    /// capacity is outside the pool's range).
    pub fn give(&self, v: Vec<u8>) {
        if !(self.min_len..=self.max_len).contains(&v.capacity()) {
            return;
        }
        let mut free = self.lock();
        if free.len() < self.max_buffers {
            free.push(v);
        }
    }

    /// `v` as [`Bytes`] (zero-copy) whose buffer returns to this pool when
    /// the last reference is dropped.
    pub fn bytes(self: &Arc<Self>, v: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent {
            buf: v,
            pool: self.clone(),
        })
    }

    /// Buffers waiting for reuse.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// A buffer on loan from a [`BufPool`] as the owner of a [`Bytes`].
struct Lent {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_return_when_the_last_bytes_drop_and_the_pool_is_bounded() {
        let pool = BufPool::new(2, 64 << 10, 1 << 20);
        let mut a = pool.take(512 << 10);
        a[0] = 7;
        let ptr = a.as_ptr();
        let b = pool.bytes(a);
        let s = b.slice(0..10);
        drop(b);
        assert_eq!(pool.idle(), 0, "still referenced");
        assert_eq!(s[0], 7);
        drop(s);
        assert_eq!(pool.idle(), 1);
        // Reused at another length: the same buffer, not grown.
        let c = pool.take(300 << 10);
        assert_eq!((c.as_ptr(), c.len(), pool.idle()), (ptr, 300 << 10, 0));
        let bufs: Vec<_> = (0..4).map(|_| pool.take(128 << 10)).collect();
        for v in bufs {
            pool.give(v);
        }
        pool.give(c);
        assert_eq!(pool.idle(), 2, "bounded");
        // Small and oversized requests and buffers are not pooled.
        pool.give(pool.take(4096));
        pool.give(pool.take(2 << 20));
        pool.give(vec![0; 8]);
        assert_eq!(pool.idle(), 2);
        assert_eq!(pool.take(4096).len(), 4096);
        assert_eq!(pool.idle(), 2, "a small request takes no pooled buffer");
    }
}
