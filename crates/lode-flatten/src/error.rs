//! Errors of flattening.

use lode_ext4::Ext4Error;
use lode_oci::OciError;

/// Why a flatten failed. Every variant names the layer and, where there is
/// one, the entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlattenError {
    /// The image could not be opened or resolved.
    #[error(transparent)]
    Source(#[from] OciError),
    /// A layer's blob could not be opened or failed verification.
    #[error("layer {layer} ({digest}): {source}")]
    Layer {
        /// Layer index (0 = bottom).
        layer: usize,
        /// Blob digest.
        digest: String,
        /// What failed.
        #[source]
        source: OciError,
    },
    /// The layer's bytes could not be read as a tar archive.
    #[error("layer {layer} ({digest}): reading tar{after}: {source}")]
    Read {
        /// Layer index.
        layer: usize,
        /// Blob digest.
        digest: String,
        /// `" after entry 'x'"` when some entry was read.
        after: String,
        /// What failed.
        #[source]
        source: crate::TarError,
    },
    /// One entry is invalid.
    #[error("layer {layer} ({digest}): entry '{entry}': {source}")]
    Entry {
        /// Layer index.
        layer: usize,
        /// Blob digest.
        digest: String,
        /// Entry path as found in the tar.
        entry: String,
        /// What is wrong with it.
        #[source]
        source: EntryError,
    },
    /// The ext4 writer refused an entry.
    #[error("layer {layer} ({digest}): {source}")]
    Ext4 {
        /// Layer index.
        layer: usize,
        /// Blob digest.
        digest: String,
        /// What failed (it names the entry).
        #[source]
        source: Ext4Error,
    },
    /// The image config's run settings could not be read or written.
    #[error("reading the image config's run settings: {0}")]
    RunSettings(#[source] serde_json::Error),
    /// Finishing the filesystem failed.
    #[error("finishing the image: {0}")]
    Finish(#[source] Ext4Error),
    /// The image is over one of its limits (see [`crate::Limits`]).
    #[error("{at}{found}, over {limit} of {max}")]
    Limit {
        /// `"layer N (digest): "`, or empty for the image as a whole.
        at: String,
        /// Which limit.
        limit: crate::Limit,
        /// What the image has or needs.
        found: String,
        /// The limit's value.
        max: String,
    },
    /// The caller cancelled the flatten (SIGTERM, SIGINT): nothing was
    /// written in place of the output.
    #[error("interrupted: the flatten was stopped and its temp file removed")]
    Interrupted,
    /// The output file could not be created or renamed.
    #[error("output '{path}': {source}")]
    Output {
        /// Output path.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with one tar entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// A `..` component.
    #[error("path traversal ('..' component)")]
    Traversal,
    /// An absolute path.
    #[error("absolute path")]
    Absolute,
    /// A hard link with a bad target.
    #[error("hard link target '{target}': {reason}")]
    LinkTarget {
        /// The target as written.
        target: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An entry type lode does not store.
    #[error("unsupported tar entry type {0:?}")]
    UnsupportedType(u8),
    /// A header field that cannot be read.
    #[error("bad header field {field}: {detail}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A whiteout without a name.
    #[error("empty whiteout name")]
    EmptyWhiteout,
}
