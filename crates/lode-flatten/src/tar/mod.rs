//! A streaming reader of layer tarballs: v7, ustar, GNU and PAX (POSIX.1-2001)
//! headers, GNU long names, GNU and PAX sparse files.
//!
//! Written for lode rather than taken from the `tar` crate because layer
//! contents are untrusted and must be read exactly: PAX records are
//! length-prefixed and may contain any byte, newlines included (a binary
//! `security.capability` value, a file name with `\n`), and a PAX `size`
//! that is misread desynchronises every header after it. Every limit is
//! explicit and every malformed header is an error naming its byte offset.
//!
//! One grammar per file: [`reader`] walks the stream (headers, extended
//! members, padding), [`header`] reads the fields of a 512-byte header block
//! (octal and base-256 numbers, names with the ustar prefix, the checksum),
//! [`pax`] the extended headers (PAX records, GNU long names) and what they
//! say about an entry, [`sparse`] the sparse maps (old GNU, PAX 0.0, 0.1 and
//! 1.0), and [`data`] hands out an entry's content, zeros in its holes.

mod data;
mod header;
mod pax;
mod reader;
mod sparse;
#[cfg(test)]
mod testing;

pub(crate) use header::Header;
pub(crate) use reader::TarReader;

use std::io;

/// Size of a tar block.
const BLOCK: u64 = 512;
/// Largest PAX or GNU long-name member read into memory.
const MAX_META: u64 = 1 << 20;
/// Most data segments a sparse file may declare.
const MAX_SPARSE_SEGMENTS: usize = 1 << 16;

/// Why a layer's tar stream cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// The underlying (decompressed, verified) stream failed.
    #[error("at byte {offset}: {source}")]
    Io {
        /// Offset in the uncompressed tar stream.
        offset: u64,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The stream ended inside a header or an entry's data.
    #[error("at byte {offset}: archive truncated inside {inside}")]
    Truncated {
        /// Offset where the stream ended.
        offset: u64,
        /// What was being read.
        inside: &'static str,
    },
    /// A header's checksum does not match its bytes.
    #[error("at byte {offset}: header checksum mismatch (stored '{stored}', computed {computed})")]
    Checksum {
        /// Offset of the header.
        offset: u64,
        /// The stored checksum field, as text.
        stored: String,
        /// The unsigned sum of the header.
        computed: u32,
    },
    /// A header or PAX field that cannot be read.
    #[error("at byte {offset}: bad {field} field '{value}'")]
    Field {
        /// Offset of the header.
        offset: u64,
        /// The field.
        field: &'static str,
        /// Its raw value, lossily shown.
        value: String,
    },
    /// A structurally invalid archive (bad PAX record, bad sparse map, ...).
    #[error("at byte {offset}: {detail}")]
    Malformed {
        /// Offset of the header.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
}
