//! lode's chunk format: how an image becomes encrypted, deduplicable chunks.
//!
//! * [`crypto`]: convergent encryption of one chunk (chunk format v2). The
//!   key is `SHA-256(salt ‖ SHA-256(plaintext))`, the plaintext is stored as
//!   one zstd frame when that saves an eighth ([`codec`]), the cipher
//!   AES-256-CTR from a per-codec counter block, and the chunk's **name** is
//!   `SHA-256(ciphertext)`: equal plaintexts under one salt give one name and
//!   one stored object, whoever pushes them, and any tier can check a chunk
//!   against its name without holding keys. Format v1 chunks (key
//!   `SHA-256(salt ‖ plaintext)`, always raw) are still read.
//! * [`manifest`]: the per-image manifest (versioned binary format, see
//!   `docs/format.md`): chunk names in clear, keys and plaintext hashes sealed
//!   with AES-256-GCM under a per-image data key, the whole file authenticated.
//! * [`pointer`]: the seal of an image pointer (what it points at, under
//!   which name and version), made with the tenant's key.
//! * [`keys`]: the [`KeyProvider`] trait that wraps data keys under a tenant's
//!   key (KMS-style envelope) and holds root salts, with the default
//!   [`keys::Keyring`] directory provider.

pub mod codec;
pub mod crypto;
pub mod error;
pub mod keys;
pub mod manifest;
pub mod pointer;
pub mod sizes;
pub mod workingset;

pub use codec::{Codec, Compression};
pub use crypto::{
    open_chunk, open_named_chunk, seal_chunk, seal_chunk_buf, seal_chunk_buf_with, seal_chunk_v1,
    ChunkKey, ChunkName, ChunkSecret, SealedChunk, CHUNK_SIZE,
};
pub use error::ChunkError;
pub use keys::{DataKey, KeyProvider, Keyring, Salt};
pub use manifest::{ImageBinding, KeyTable, Manifest, ManifestHeader, SealSpec, MAX_CHUNK_SIZE};
pub use pointer::{open_pointer, seal_pointer, PointerClaim};
pub use sizes::ChunkSizes;
