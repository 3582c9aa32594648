//! Where chunks come from on a host, nearest first.
//!
//! * [`MemoryCache`]: verified plaintext of hot chunks (bounded, S3-FIFO);
//! * [`DiskCache`]: ciphertext on local disk (bounded, S3-FIFO, survives
//!   restarts, re-verified on every read);
//! * [`ChunkTier`]: anything further away — the chunk store ([`StoreTier`]),
//!   later the AZ cache fleet — with [`Bounded`] (timeouts, bounded retries)
//!   and [`Delayed`] (injected latency) wrappers.

pub mod disk;
pub mod memory;
pub mod metrics;
pub mod s3fifo;
pub mod tier;

pub use disk::DiskCache;
pub use memory::MemoryCache;
pub use metrics::{Histogram, TierMetrics};
pub use tier::{Bounded, ChunkId, ChunkTier, Delayed, StoreTier, TierError};
