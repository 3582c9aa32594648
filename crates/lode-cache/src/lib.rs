//! Where chunks come from on a host, nearest first.
//!
//! * [`MemoryCache`]: verified plaintext of hot chunks (bounded, S3-FIFO);
//! * [`DiskCache`]: verified plaintext on local disk as page files, each
//!   4 KiB page sealed alone under the host key ([`HostKey`], [`pagefile`]),
//!   so a read authenticates only the pages it needs (bounded, S3-FIFO,
//!   survives restarts);
//!
//! Both hold verified plaintext keyed by chunk name and plaintext hash, so
//! they are not `lode_tier::ChunkTier`s (which move ciphertext by chunk id):
//! the reader (lode-agent) asks them first and the tiers behind the seam
//! (the fleet, the store) after. Both pass the tier conformance suite
//! (`tests/tier_conformance.rs`).

pub mod disk;
pub mod hostkey;
pub mod memory;
pub mod pagefile;
pub mod s3fifo;

pub use disk::{DiskCache, DiskError};
pub use hostkey::{HostKey, HostKeyError};
pub use memory::MemoryCache;
