//! Reused read buffers for the disk tier's large reads.
//!
//! A whole-chunk read from the disk tier fills a 512 KiB buffer that lives
//! until the client's reply is sent (or the memory tier evicts it). A fresh
//! allocation per read costs page faults on every page (the allocator hands
//! such blocks back to the kernel on free): measured, a fifth of the CPU of a
//! disk-warm sequential read. Buffers here go back to a bounded pool when
//! the last [`Bytes`] referring to them is dropped.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// Reads of at least this many bytes use pooled buffers.
pub const MIN_POOLED: usize = 64 << 10;

/// A bounded pool of read buffers.
#[derive(Debug)]
pub struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_buffers: usize,
    max_len: usize,
}

/// A buffer taken from a pool; returns itself there when dropped.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl BufPool {
    /// A pool keeping at most `max_buffers` buffers of at most `max_len` bytes.
    pub fn new(max_buffers: usize, max_len: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            free: Mutex::new(Vec::new()),
            max_buffers,
            max_len,
        })
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified (a
    /// previous read's): the caller overwrites all of it before use.
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let reused = if (MIN_POOLED..=self.max_len).contains(&len) {
            self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()
        } else {
            None
        };
        let mut buf = reused.unwrap_or_default();
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        PooledBuf {
            buf,
            pool: self.clone(),
        }
    }

    /// Buffers waiting for reuse.
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl PooledBuf {
    /// The buffer's bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Bytes over this buffer (zero-copy); the buffer returns to its pool
    /// when the last of them is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if !(MIN_POOLED..=self.pool.max_len).contains(&self.buf.capacity()) {
            return;
        }
        // Keep the length: refilling a reused buffer needs no zeroing.
        let buf = std::mem::take(&mut self.buf);
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.pool.max_buffers {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_return_when_the_last_bytes_drop_and_the_pool_is_bounded() {
        let pool = BufPool::new(2, 1 << 20);
        let mut a = pool.take(512 << 10);
        a.as_mut_slice()[0] = 7;
        let b = a.freeze();
        let s = b.slice(0..10);
        drop(b);
        assert_eq!(pool.idle(), 0);
        assert_eq!(s[0], 7);
        drop(s);
        assert_eq!(pool.idle(), 1);
        // Reused at another length, without growing past its capacity.
        let c = pool.take(300 << 10);
        assert_eq!((c.as_ref().len(), pool.idle()), (300 << 10, 0));
        let bufs: Vec<_> = (0..4).map(|_| pool.take(128 << 10)).collect();
        drop(bufs);
        drop(c);
        assert_eq!(pool.idle(), 2);
        // Small and oversized buffers are not pooled.
        drop(pool.take(4096));
        drop(pool.take(2 << 20));
        assert_eq!(pool.idle(), 2);
    }
}
