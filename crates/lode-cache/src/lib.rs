//! Where chunks come from on a host, nearest first.
//!
//! * [`MemoryCache`]: verified plaintext of hot chunks (bounded, S3-FIFO);
//! * [`DiskCache`]: verified plaintext on local disk as page files, each
//!   4 KiB page sealed alone under the host key ([`HostKey`], [`pagefile`]),
//!   so a read authenticates only the pages it needs (bounded, S3-FIFO,
//!   survives restarts);
//! * [`ChunkTier`]: anything further away — the chunk store ([`StoreTier`]),
//!   later the AZ cache fleet — with [`Bounded`] (timeouts, bounded retries)
//!   and [`Delayed`] (injected latency) wrappers.

pub mod disk;
pub mod hostkey;
pub mod memory;
pub mod metrics;
pub mod pagefile;
pub mod s3fifo;
pub mod tier;

pub use disk::{DiskCache, DiskError};
pub use hostkey::{HostKey, HostKeyError};
pub use memory::MemoryCache;
pub use metrics::{Histogram, TierMetrics};
pub use tier::{Bounded, ChunkId, ChunkTier, Delayed, StoreTier, TierError};
