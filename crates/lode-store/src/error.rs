//! Errors of the chunk store.

use lode_chunk::ChunkError;

/// Everything that can go wrong talking to the store or moving images.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The `--store` URL is not understood.
    #[error("invalid store URL '{url}': {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A store operation failed (unreachable, denied, ...).
    #[error("store {op} '{path}': {source}")]
    Backend {
        /// Operation.
        op: &'static str,
        /// Object path.
        path: String,
        /// Underlying error.
        #[source]
        source: object_store::Error,
    },
    /// The tenant has no image of that name.
    #[error("tenant '{tenant}' has no image '{name}' in {store}")]
    ImageNotFound {
        /// Tenant.
        tenant: String,
        /// Image name.
        name: String,
        /// Store URL.
        store: String,
    },
    /// The image was removed (`lode rm`); its pointer is a sealed tombstone.
    #[error("image '{tenant}/{name}' was removed (at version {version}) from {store}")]
    ImageRemoved {
        /// Tenant.
        tenant: String,
        /// Image name.
        name: String,
        /// Version of the removal.
        version: u64,
        /// Store URL.
        store: String,
    },
    /// A pin was refused: the version cannot be held safely.
    #[error("cannot pin image '{tenant}/{image}' at {digest}: {reason}")]
    PinRefused {
        /// Tenant.
        tenant: String,
        /// Image name.
        image: String,
        /// Manifest digest.
        digest: String,
        /// Why.
        reason: String,
    },
    /// A pointer leads to a manifest bound to another image or version.
    #[error("image '{tenant}/{name}': {reason}; refusing a swapped or forged pointer")]
    Binding {
        /// Tenant asked for.
        tenant: String,
        /// Image name asked for.
        name: String,
        /// What does not match.
        reason: String,
    },
    /// The store offers an older version of an image than this host has seen.
    #[error("image '{tenant}/{name}': the store offers version {offered} but this host has already seen version {seen}; refusing a rolled-back pointer")]
    Rollback {
        /// Tenant.
        tenant: String,
        /// Image name.
        name: String,
        /// Version the store's pointer names.
        offered: u64,
        /// Highest version this host has seen.
        seen: u64,
    },
    /// A reading command named a local store that does not exist.
    #[error("no store at '{url}' (the directory does not exist)")]
    NoStore {
        /// Store URL.
        url: String,
    },
    /// Another collector holds the GC lease.
    #[error("the GC lease is held by '{holder}' (token {token}) for {remaining_ms} ms more; another `lode gc` is running")]
    LeaseHeld {
        /// Its holder.
        holder: String,
        /// Its fencing token.
        token: u64,
        /// Time left on it.
        remaining_ms: u64,
    },
    /// This collector lost its lease (expired and taken, or fenced by a newer one).
    #[error(
        "lost the GC lease (token {token}): {reason}; stopping before anything else is deleted"
    )]
    LeaseLost {
        /// The token this collector held.
        token: u64,
        /// What happened.
        reason: String,
    },
    /// A conditional write kept losing to other writers.
    #[error("{what} '{path}' kept changing under {attempts} attempts to update it")]
    Contended {
        /// What it is.
        what: &'static str,
        /// Object path.
        path: String,
        /// Attempts made.
        attempts: u32,
    },
    /// An object that must exist is missing.
    #[error("missing {what} '{path}' in the store")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Object path.
        path: String,
    },
    /// A chunk the manifest lists is not in the store.
    #[error("chunk {index} of the image (offset {offset}) is missing from the store: '{path}'")]
    ChunkMissing {
        /// Chunk index in the image.
        index: u64,
        /// Byte offset of the chunk in the image.
        offset: u64,
        /// Object path.
        path: String,
    },
    /// An object larger than objects of its kind may be (refused before any
    /// of it is read).
    #[error("{what} '{path}' is {size} bytes, over the limit of {limit} bytes for {what}s")]
    TooLarge {
        /// What it is (`chunk`, `manifest`, `image pointer`, ...).
        what: &'static str,
        /// Object path.
        path: String,
        /// Its size as the store reported it.
        size: u64,
        /// The limit for its kind.
        limit: u64,
    },
    /// An object whose size is not the one it must have.
    #[error("{what} '{path}' is {size} bytes, not the {expected} bytes of {why}")]
    WrongSize {
        /// What it is.
        what: &'static str,
        /// Object path.
        path: String,
        /// Its size (reported, or what the store sent).
        size: u64,
        /// The size it must have.
        expected: u64,
        /// Where that size comes from.
        why: &'static str,
    },
    /// A stored object does not hash to its name.
    #[error("{what} '{path}' is corrupt: expected {expected}, got {actual}")]
    Corrupt {
        /// What it is.
        what: &'static str,
        /// Object path.
        path: String,
        /// Expected digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// A manifest object whose header is not a manifest's (found before the
    /// rest is read, so before its digest can be checked).
    #[error("manifest {digest} at '{path}' is corrupt: {source}")]
    CorruptManifest {
        /// The digest it is stored under.
        digest: String,
        /// Object path.
        path: String,
        /// What is wrong with its header.
        #[source]
        source: ChunkError,
    },
    /// Chunk, manifest or key failure.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// A JSON document in the store cannot be read.
    #[error("{what} '{path}': {reason}")]
    BadDocument {
        /// What it is.
        what: &'static str,
        /// Object path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The roots are in a state that breaks the invariants.
    #[error("roots: {0}")]
    Roots(String),
    /// An image name that is not allowed.
    #[error("invalid image name '{}': use 1-128 of [A-Za-z0-9._:-], not starting with '.'", lode_common::escape_str(.0))]
    BadName(String),
    /// Local file I/O.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A background task failed.
    #[error("internal task failed: {0}")]
    Task(String),
    /// A streamed image ended before its producer said it was complete
    /// (the flatten feeding a push failed or stopped): nothing is published.
    #[error("the image being pushed ended before it was complete: nothing was published")]
    Incomplete,
    /// A streamed image's producer told a chunk past the image's end.
    #[error("chunk {index} was told ready, past the streamed image's {count} chunks")]
    ChunkPastEnd {
        /// The chunk told.
        index: u64,
        /// Chunks in the complete image.
        count: u64,
    },
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
