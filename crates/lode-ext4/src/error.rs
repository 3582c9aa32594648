//! Errors of the ext4 writer.

use crate::format::xattr::XattrProblem;

/// Everything that can go wrong while building an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Ext4Error {
    /// Reading input or writing the image failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A path goes through a symbolic link, which lode never follows.
    #[error("entry '{path}' passes through symlink '{symlink}'")]
    ThroughSymlink {
        /// The entry.
        path: String,
        /// The symlink on its way.
        symlink: String,
    },
    /// A path needs a directory where the layer itself put something else.
    #[error("entry '{path}' needs '{component}' to be a directory, but this layer made it a non-directory")]
    NotADirectory {
        /// The entry.
        path: String,
        /// The component that is not a directory.
        component: String,
    },
    /// The same path appears twice in one layer.
    #[error("duplicate entry '{path}' in one layer")]
    Duplicate {
        /// The entry.
        path: String,
    },
    /// A name component is longer than ext4's 255 bytes.
    #[error("entry '{path}': name is {len} bytes, ext4 allows 255")]
    NameTooLong {
        /// The entry.
        path: String,
        /// Length of the offending component.
        len: usize,
    },
    /// A path that is not a valid entry name (empty, `.`/`..`, or the root where a name is needed).
    #[error("entry '{path}': {reason}")]
    BadPath {
        /// The entry.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A hard link names a target that does not exist.
    #[error("hard link '{path}' points to missing target '{target}'")]
    HardlinkTargetMissing {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A hard link names a directory.
    #[error("hard link '{path}' points to directory '{target}'")]
    HardlinkToDirectory {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A file would have more hard links than ext4 allows.
    #[error("entry '{path}': more than 65000 hard links")]
    TooManyLinks {
        /// The entry.
        path: String,
    },
    /// Extended attributes that ext4 cannot store.
    #[error("entry '{path}': extended attributes: {problem}")]
    Xattr {
        /// The entry.
        path: String,
        /// What is wrong.
        problem: XattrProblem,
    },
    /// A symlink target that ext4 cannot store (empty or longer than a block).
    #[error("symlink '{path}': target of {len} bytes (ext4 allows 1 to 4095)")]
    BadSymlink {
        /// The symlink.
        path: String,
        /// Length of its target.
        len: usize,
    },
    /// A file's data ended before its declared size.
    #[error("entry '{path}': data ends after {got} of {expected} bytes")]
    ShortData {
        /// The entry.
        path: String,
        /// Declared size.
        expected: u64,
        /// Bytes actually read.
        got: u64,
    },
    /// The image would exceed what this ext4 layout can address.
    #[error("image too large: {what}")]
    TooLarge {
        /// Which limit was hit.
        what: String,
    },
    /// The layers create more inodes than the limit allows.
    #[error("the layers create more than {limit} inodes, the inode limit (each 1024 inodes take a 128 MiB block group of the device)")]
    InodeLimit {
        /// The limit.
        limit: u64,
    },
    /// The content implies a device larger than the limit.
    #[error("the content implies a device of {bytes} bytes, over the device size limit of {limit} bytes")]
    DeviceLimit {
        /// Device size implied so far.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// `--size` is smaller than the content needs.
    #[error("requested size {requested} bytes is below the {minimum} bytes this image needs")]
    SizeTooSmall {
        /// Requested size.
        requested: u64,
        /// Smallest size that fits.
        minimum: u64,
    },
    /// An operation was called outside `begin_layer`/`end_layer`.
    #[error("builder misuse: {0}")]
    Misuse(&'static str),
}

/// Result alias for this crate.
pub type Result<T, E = Ext4Error> = std::result::Result<T, E>;

/// Shows a path of name components as `a/b/c`, escaped for messages
/// (control characters and bytes that are not UTF-8 as `\xNN`, see
/// [`lode_common::escape`]).
pub fn show_path(components: &[Vec<u8>]) -> String {
    if components.is_empty() {
        return "/".to_string();
    }
    let mut out = String::new();
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&lode_common::escape(c));
    }
    out
}
