//! Errors of the chunk format.

/// Everything that can go wrong with chunks, manifests and keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// A chunk's bytes do not hash to its name.
    #[error("chunk {index}: name mismatch (expected {expected}, got {actual}): corrupt or tampered chunk")]
    NameMismatch {
        /// Chunk index in the image.
        index: u64,
        /// Name recorded in the manifest.
        expected: String,
        /// SHA-256 of the bytes received.
        actual: String,
    },
    /// A decrypted chunk does not match its recorded plaintext hash.
    #[error("chunk {index}: plaintext hash mismatch after decryption: corrupt or tampered chunk")]
    PlaintextMismatch {
        /// Chunk index in the image.
        index: u64,
    },
    /// A stored chunk of another length than its key-table entry records
    /// (a truncated or padded object, or a tampered stored length).
    #[error("chunk {index}: {actual} stored bytes where the manifest records {expected}: corrupt or tampered chunk")]
    StoredLength {
        /// Chunk index in the image.
        index: u64,
        /// Stored length recorded in the manifest.
        expected: u64,
        /// Length of the bytes received.
        actual: u64,
    },
    /// A compressed chunk whose zstd frame is refused (bounded decoding:
    /// wrong content size, trailing bytes, or a frame that does not decode
    /// to exactly the chunk's length).
    #[error("chunk {index}: compressed frame refused: {reason}: corrupt or tampered chunk")]
    BadFrame {
        /// Chunk index in the image.
        index: u64,
        /// What is wrong with the frame.
        reason: &'static str,
    },
    /// A manifest that cannot be parsed.
    #[error("manifest: {0}")]
    BadManifest(String),
    /// The manifest's sealed part does not open: tampered, or the wrong key.
    #[error("manifest for tenant '{tenant}' does not authenticate: tampered manifest or wrong tenant key")]
    Unauthentic {
        /// Tenant named in the manifest.
        tenant: String,
    },
    /// An image pointer whose seal does not verify: forged, tampered, or
    /// copied from another image.
    #[error("the pointer of image '{tenant}/{name}' does not authenticate: forged, tampered or copied from another image")]
    PointerUnauthentic {
        /// Tenant.
        tenant: String,
        /// Image name.
        name: String,
    },
    /// The tenant has no key in the provider.
    #[error("no key for tenant '{tenant}' in {provider}")]
    MissingKey {
        /// Tenant.
        tenant: String,
        /// Where the key was looked for.
        provider: String,
    },
    /// A wrapped data key that the tenant's key does not open.
    #[error("the key of tenant '{tenant}' does not open this data key (another tenant's manifest, or a tampered one)")]
    WrongKey {
        /// Tenant.
        tenant: String,
    },
    /// A salt id the provider does not know.
    #[error("no salt '{salt_id}' in {provider}")]
    MissingSalt {
        /// Salt id.
        salt_id: String,
        /// Where it was looked for.
        provider: String,
    },
    /// A tenant name that is not allowed.
    #[error("invalid tenant name '{}': use 1-64 of [A-Za-z0-9._-], not starting with '.'", lode_common::escape_str(.0))]
    BadTenant(String),
    /// Key storage failed.
    #[error("key store {path}: {source}")]
    Io {
        /// File involved.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The system's random source failed.
    #[error("random source: {0}")]
    Random(String),
}
