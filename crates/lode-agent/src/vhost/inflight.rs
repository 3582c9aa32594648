//! In-flight request tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`): how
//! requests in flight when the agent dies are resubmitted by the next one.
//!
//! The agent allocates a shared memory region (a memfd) when QEMU asks
//! (`GET_INFLIGHT_FD`) and QEMU keeps it; after the agent restarts QEMU
//! hands it to the new agent (`SET_INFLIGHT_FD`). The layout is the split
//! virtqueue one of QEMU's libvhost-user, per queue:
//!
//! ```text
//! u64 features (0) | u16 version (1) | u16 desc_num | u16 last_batch_head | u16 used_idx
//! desc_num × { u8 inflight | u8 pad[5] | u16 next | u64 counter }
//! ```
//!
//! Popping a chain sets its head's `inflight` and `counter` (pop order).
//! Completing one sets `last_batch_head`, puts it on the used ring, then
//! clears `inflight` and stores the used ring's index in `used_idx`. On
//! recovery, a `used_idx` that lags the used ring means the agent died
//! between the two steps: that head completed. Every head still marked is
//! resubmitted, oldest first, and the ring resumes at `used_idx + in-flight`.
//! Resubmitting is safe for a block device: reads re-read, writes rewrite
//! the same guest buffers, flushes flush again.

use std::fs::File;
use std::sync::atomic::Ordering;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

/// Region layout version.
const VERSION: u16 = 1;
/// Header bytes of one queue's region.
const QUEUE_HEADER: u64 = 16;
/// Bytes per descriptor state.
const DESC_STATE: u64 = 16;

/// Why an in-flight region was refused.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The region QEMU sent is smaller than its queues need, or the queue
    /// geometry is impossible.
    #[error("in-flight region of {size} bytes at {offset} does not fit {queues} queue(s) of {queue_size}")]
    Geometry {
        /// Mapping size.
        size: u64,
        /// Offset in the file.
        offset: u64,
        /// Queues.
        queues: u16,
        /// Queue size.
        queue_size: u16,
    },
    /// Creating or mapping the memory failed.
    #[error("in-flight region: {0}")]
    Map(String),
}

/// Bytes of one queue's region (64-byte aligned).
pub fn queue_region_size(queue_size: u16) -> u64 {
    (QUEUE_HEADER + DESC_STATE * u64::from(queue_size)).next_multiple_of(64)
}

/// What recovery found for one queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Heads to run again, oldest first.
    pub resubmit: Vec<u16>,
    /// Where the avail ring resumes (`used_idx + resubmit.len()`).
    pub next_avail: u16,
    /// The next pop counter.
    pub counter: u64,
    /// The region was new (first connection): nothing was recovered.
    pub fresh: bool,
}

/// The mapped region shared with the frontend.
pub struct InflightRegion {
    map: MmapRegion<()>,
    queue_size: u16,
}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightRegion")
            .field("queue_size", &self.queue_size)
            .finish_non_exhaustive()
    }
}

impl InflightRegion {
    /// A fresh zeroed region (a memfd) for `queues` queues of `queue_size`,
    /// and the file to send to the frontend.
    pub fn create(
        queues: u16,
        queue_size: u16,
    ) -> Result<(InflightRegion, File, u64), InflightError> {
        let size = queue_region_size(queue_size) * u64::from(queues.max(1));
        let fd =
            nix::sys::memfd::memfd_create(c"lode-inflight", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| InflightError::Map(e.to_string()))?;
        let file = File::from(fd);
        file.set_len(size)
            .map_err(|e| InflightError::Map(e.to_string()))?;
        let dup = file
            .try_clone()
            .map_err(|e| InflightError::Map(e.to_string()))?;
        let region = InflightRegion::map(dup, 0, size, queues, queue_size)?;
        Ok((region, file, size))
    }

    /// Maps the region the frontend sent back.
    pub fn map(
        file: File,
        offset: u64,
        size: u64,
        queues: u16,
        queue_size: u16,
    ) -> Result<InflightRegion, InflightError> {
        let bad = || InflightError::Geometry {
            size,
            offset,
            queues,
            queue_size,
        };
        if queue_size == 0 || queues == 0 || size < queue_region_size(queue_size) || size > 1 << 30
        {
            return Err(bad());
        }
        let map = MmapRegion::from_file(FileOffset::new(file, offset), size as usize)
            .map_err(|e| InflightError::Map(e.to_string()))?;
        Ok(InflightRegion { map, queue_size })
    }

    /// A region over anonymous memory (tests).
    pub fn anonymous(queue_size: u16) -> Result<InflightRegion, InflightError> {
        let map = MmapRegion::new(queue_region_size(queue_size) as usize)
            .map_err(|e| InflightError::Map(e.to_string()))?;
        Ok(InflightRegion { map, queue_size })
    }

    /// Queue size the region was made for.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    fn q(&self) -> VolatileSlice<'_> {
        self.map.as_volatile_slice()
    }

    fn put<T: vm_memory::AtomicAccess>(&self, v: T, at: u64) {
        // In bounds: the size was checked against the queue size at map time.
        let _ = self.q().store(v, at as usize, Ordering::SeqCst);
    }

    fn get<T: vm_memory::AtomicAccess + Default>(&self, at: u64) -> T {
        self.q()
            .load(at as usize, Ordering::SeqCst)
            .unwrap_or_default()
    }

    fn desc(head: u16) -> u64 {
        QUEUE_HEADER + DESC_STATE * u64::from(head)
    }

    /// Recovers the queue of `size` entries whose used ring index is now
    /// `used_idx` (read from guest memory): see the module docs. A fresh
    /// (or unknown) region is initialised and nothing is resubmitted.
    pub fn recover(&self, used_idx: u16, size: u16) -> Recovery {
        let n = size.min(self.queue_size);
        let version: u16 = self.get(8);
        if version != VERSION {
            if version != 0 {
                tracing::warn!(version, "unknown in-flight region: starting it afresh");
            }
            for h in 0..self.queue_size {
                self.put(0u8, Self::desc(h));
            }
            self.put(0u64, 0);
            self.put(n, 10);
            self.put(used_idx, 14);
            self.put(VERSION, 8);
            return Recovery {
                resubmit: Vec::new(),
                next_avail: used_idx,
                counter: 0,
                fresh: true,
            };
        }
        if self.get::<u16>(14) != used_idx {
            let last: u16 = self.get(12);
            if last < self.queue_size {
                self.put(0u8, Self::desc(last));
            }
            self.put(used_idx, 14);
        }
        let mut live: Vec<(u64, u16)> = (0..n)
            .filter(|&h| self.get::<u8>(Self::desc(h)) == 1)
            .map(|h| (self.get::<u64>(Self::desc(h) + 8), h))
            .collect();
        live.sort_unstable();
        let counter = live.last().map_or(0, |(c, _)| c.wrapping_add(1));
        Recovery {
            next_avail: used_idx.wrapping_add(live.len() as u16),
            resubmit: live.into_iter().map(|(_, h)| h).collect(),
            counter,
            fresh: false,
        }
    }

    /// Marks `head` in flight, popped as number `counter`.
    pub fn popped(&self, head: u16, counter: u64) {
        if head < self.queue_size {
            self.put(counter, Self::desc(head) + 8);
            self.put(1u8, Self::desc(head));
        }
    }

    /// Before `head` goes on the used ring.
    pub fn completing(&self, head: u16) {
        self.put(head, 12);
    }

    /// After `head` went on the used ring, whose index is now `used_idx`.
    pub fn completed(&self, head: u16, used_idx: u16) {
        if head < self.queue_size {
            self.put(0u8, Self::desc(head));
        }
        self.put(used_idx, 14);
    }

    /// Overwrites the region with `words` (little-endian u64s from offset
    /// 0): what a broken or hostile frontend could hand over (fuzzing).
    pub fn fill_raw(&self, words: &[u64]) {
        let n = (queue_region_size(self.queue_size) / 8) as usize;
        for (i, w) in words.iter().take(n).enumerate() {
            self.put(*w, i as u64 * 8);
        }
    }

    /// Heads marked in flight now (tests, metrics).
    pub fn in_flight(&self) -> usize {
        (0..self.queue_size)
            .filter(|&h| self.get::<u8>(Self::desc(h)) == 1)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_resubmits_what_was_in_flight_oldest_first() {
        let r = InflightRegion::anonymous(8).unwrap_or_else(|e| panic!("{e}"));
        // Fresh: initialised, nothing to do.
        assert_eq!(r.recover(0, 8).resubmit, Vec::<u16>::new());
        // Pop 5, 2, 7 (in that order); complete 2 fully.
        r.popped(5, 0);
        r.popped(2, 1);
        r.popped(7, 2);
        r.completing(2);
        r.completed(2, 1);
        // Then 7 goes on the used ring (used idx 2) but the agent dies
        // before clearing its flag.
        r.completing(7);
        let rec = r.recover(2, 8);
        assert_eq!(rec.resubmit, vec![5], "7 completed, 5 is still in flight");
        assert_eq!(rec.next_avail, 3);
        assert_eq!(rec.counter, 1);
        assert_eq!(r.in_flight(), 1);
    }

    #[test]
    fn a_region_from_a_newer_or_broken_frontend_starts_afresh() {
        let r = InflightRegion::anonymous(4).unwrap_or_else(|e| panic!("{e}"));
        r.popped(1, 9);
        r.put(77u16, 8);
        assert_eq!(r.recover(10, 4).next_avail, 10);
        assert_eq!(r.in_flight(), 0);
        assert!(matches!(
            InflightRegion::map(
                tempfile::tempfile().unwrap_or_else(|e| panic!("{e}")),
                0,
                16,
                1,
                128
            ),
            Err(InflightError::Geometry { .. })
        ));
    }
}

#[cfg(test)]
mod memfd_tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn marks_reach_the_shared_file() {
        let (r, f, size) = InflightRegion::create(1, 8).unwrap_or_else(|e| panic!("{e}"));
        r.recover(0, 8);
        r.popped(3, 0);
        let mut b = vec![0u8; size as usize];
        f.read_exact_at(&mut b, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 1, "version");
        assert_eq!(b[16 + 16 * 3], 1, "head 3 marked");
    }
}
