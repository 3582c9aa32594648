//! The error type of this crate.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while resolving an image or streaming a layer.
///
/// Every variant names what failed and with which input (path, digest, layer
/// index, media type, ...), so the `Display` output is enough to diagnose the
/// problem without a backtrace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// Reading a file (or a blob file in an OCI layout) failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Reading a member of a tar archive (docker-archive) failed.
    #[error("I/O error reading member {member:?} of archive {}: {source}", archive.display())]
    ArchiveIo {
        /// The archive file.
        archive: PathBuf,
        /// The member name inside the archive.
        member: String,
        /// The underlying error.
        source: io::Error,
    },

    /// The image source string could not be parsed.
    #[error("invalid image source {input:?}: {reason}")]
    BadSource {
        /// The string as given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A JSON document (index, manifest, config, manifest.json) could not be parsed.
    #[error("invalid JSON in {what} ({}): {source}", path.display())]
    Json {
        /// Which document, e.g. `"manifest sha256:…"`.
        what: String,
        /// The file (or archive) that holds it.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },

    /// A JSON document parsed but is structurally invalid (e.g. empty index).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which document.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The requested reference does not exist in the image source.
    #[error("reference {reference:?} not found; available: {}", list(available))]
    RefNotFound {
        /// The reference asked for.
        reference: String,
        /// The references that do exist.
        available: Vec<String>,
    },

    /// No reference was given and the source holds more than one image.
    #[error(
        "source holds several images, pick one with :REF; available: {}",
        list(available)
    )]
    AmbiguousRef {
        /// The references that exist.
        available: Vec<String>,
    },

    /// An image index has no manifest for the wanted platform.
    #[error(
        "no image for platform {wanted} in index; available platforms: {}",
        list(available)
    )]
    NoPlatform {
        /// The wanted platform, `os/arch`.
        wanted: String,
        /// The platforms in the index (`os/arch[/variant]`).
        available: Vec<String>,
    },

    /// A layer has a media type this crate cannot unpack.
    #[error("layer {layer} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The layer index (0 = bottom).
        layer: usize,
        /// The declared media type.
        media_type: String,
    },

    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was hashed, e.g. `"layer 2 blob"`, `"layer 2 diff_id"`, `"manifest"`, `"config"`.
        what: String,
        /// The digest declared by the referrer.
        expected: String,
        /// The digest of the content actually read.
        actual: String,
    },

    /// Content did not have the size declared by its descriptor.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was measured, e.g. `"layer 2 blob"`.
        what: String,
        /// The declared size in bytes.
        expected: u64,
        /// The size actually read.
        actual: u64,
    },

    /// A JSON document or blob is larger than this crate is willing to read into memory.
    #[error("{what} is too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// Which document.
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// Decompressing (or reading) a layer stream failed, e.g. corrupt or truncated gzip/zstd.
    #[error("layer {layer} ({digest}): reading/decompressing the layer stream failed: {source}")]
    Decompress {
        /// The layer index.
        layer: usize,
        /// The layer's stored digest.
        digest: String,
        /// The underlying error (kind `UnexpectedEof` for truncation).
        source: io::Error,
    },

    /// A digest string is malformed or uses an unsupported algorithm
    /// (only `sha256:<64 lowercase hex>` is accepted).
    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex digits>")]
    BadDigest {
        /// The offending digest string.
        digest: String,
    },

    /// The manifest lists a different number of layers than the config has diff_ids.
    #[error("manifest has {layers} layers but config has {diff_ids} diff_ids")]
    LayerCountMismatch {
        /// Number of layers in the manifest.
        layers: usize,
        /// Number of `rootfs.diff_ids` in the config.
        diff_ids: usize,
    },

    /// A docker-archive refers to a member that is not in the tar (or is not a regular file).
    #[error("archive {} has no regular file member {member:?}", archive.display())]
    MissingMember {
        /// The archive file.
        archive: PathBuf,
        /// The member name that was looked up.
        member: String,
    },

    /// `open_layer` was called with an index past the last layer.
    #[error("layer index {index} out of range: image has {count} layers")]
    LayerIndex {
        /// The requested index.
        index: usize,
        /// The number of layers.
        count: usize,
    },

    /// A `--platform` value is not `OS/ARCH[/VARIANT]`.
    #[error("invalid platform {input:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")]
    BadPlatform {
        /// The string as given.
        input: String,
    },

    /// Talking to a registry (`docker://`) failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),

    /// The image uses a format/schema this crate does not support
    /// (e.g. docker schema1 manifest, unknown layout version, artifact manifest).
    #[error("unsupported image format: {0}")]
    UnsupportedSchema(String),
}

fn list(items: &[String]) -> ListDisplay<'_> {
    ListDisplay(items)
}

/// Formats a list of names as `a, b, c` or `(none)`.
struct ListDisplay<'a>(&'a [String]);

impl fmt::Display for ListDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(item)?;
        }
        Ok(())
    }
}

impl OciError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        OciError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl Into<String>) -> Self {
        OciError::Malformed {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
