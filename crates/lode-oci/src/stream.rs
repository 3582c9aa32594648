//! The verifying, decompressing layer reader.
//!
//! Pipeline: file → (hash + count stored bytes) → 256 KiB buffer →
//! decompressor → (hash + count uncompressed bytes) → caller.
//! Memory use is bounded by the buffers and the decompressor state,
//! independent of the layer size.

use std::io::{self, BufReader, Read};

use sha2::{Digest as _, Sha256};

use crate::digest::finish_hex;
use crate::{Compression, LayerDesc, OciError};

/// Buffer between the stored blob and the decompressor.
const STORED_BUF: usize = 256 * 1024;

/// A reader that hashes and counts everything that passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = buf.get(..n).unwrap_or_default();
        self.hasher.update(data);
        self.count += n as u64;
        Ok(n)
    }
}

type Stored = BufReader<Hashing<Box<dyn Read + Send>>>;

enum Decoder {
    Plain(Stored),
    Gzip(Box<flate2::bufread::MultiGzDecoder<Stored>>),
    Zstd(zstd::stream::read::Decoder<'static, Stored>),
}

impl Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }

    /// The hashing reader below the buffer. Bytes sitting in the buffer have
    /// already been hashed.
    fn stored_mut(&mut self) -> &mut Hashing<Box<dyn Read + Send>> {
        match self {
            Decoder::Plain(r) => r.get_mut(),
            Decoder::Gzip(r) => r.get_mut().get_mut(),
            Decoder::Zstd(r) => r.get_mut().get_mut(),
        }
    }
}

/// Digests and sizes measured once the stream reached its end.
struct Outcome {
    stored_digest: String,
    stored_size: u64,
    diff_id: String,
}

/// Uncompressed tar bytes of one layer; verifies digest, size and diff_id.
///
/// Created by [`crate::Image::open_layer`]. Errors from `read` are
/// `io::Error`s whose inner error is an [`OciError`] (retrieve it with
/// `err.get_ref()` and `downcast_ref`, or call [`LayerReader::finish`]):
///
/// * corrupt/truncated compressed data: [`OciError::Decompress`] naming the
///   layer index and digest (io kind preserved, e.g. `UnexpectedEof`);
/// * at end of stream, a stored size/digest or diff_id mismatch:
///   [`OciError::SizeMismatch`] / [`OciError::DigestMismatch`] with kind
///   `InvalidData`.
pub struct LayerReader {
    layer: usize,
    expected_digest: String,
    expected_size: u64,
    expected_diff_id: String,
    decoder: Decoder,
    hasher: Sha256,
    count: u64,
    outcome: Option<Outcome>,
    /// Where the blob comes from (a registry URL), for errors.
    origin: Option<String>,
}

impl LayerReader {
    /// `stored` yields the stored blob from its start (and ends at its end);
    /// `origin` (a URL) is named in verification errors.
    pub(crate) fn new(
        stored: Box<dyn Read + Send>,
        desc: &LayerDesc,
        origin: Option<String>,
    ) -> Result<LayerReader, OciError> {
        let stored = BufReader::with_capacity(
            STORED_BUF,
            Hashing {
                inner: stored,
                hasher: Sha256::new(),
                count: 0,
            },
        );
        let decoder = match desc.compression {
            Compression::None => Decoder::Plain(stored),
            Compression::Gzip => {
                Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(stored)))
            }
            Compression::Zstd => {
                Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(stored).map_err(
                    |source| OciError::Decompress {
                        layer: desc.index,
                        digest: desc.digest.clone(),
                        source,
                    },
                )?)
            }
        };
        Ok(LayerReader {
            layer: desc.index,
            expected_digest: desc.digest.clone(),
            expected_size: desc.size,
            expected_diff_id: desc.diff_id.clone(),
            decoder,
            hasher: Sha256::new(),
            count: 0,
            outcome: None,
            origin,
        })
    }

    /// Uncompressed bytes read so far.
    pub fn uncompressed_bytes(&self) -> u64 {
        self.count
    }

    /// The layer index this reader streams.
    pub fn layer_index(&self) -> usize {
        self.layer
    }

    /// Read the rest of the stream (the tar reader may stop at the
    /// end-of-archive blocks) and verify the stored digest, stored size and
    /// the diff_id. Must be called by the consumer after the tar parser is done.
    pub fn finish(mut self) -> Result<(), OciError> {
        match io::copy(&mut self, &mut io::sink()) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.unwrap_io(e)),
        }
    }

    fn decompress_err(&self, source: io::Error) -> OciError {
        OciError::Decompress {
            layer: self.layer,
            digest: self.expected_digest.clone(),
            source,
        }
    }

    /// Recovers the `OciError` inside an `io::Error` produced by `read`.
    fn unwrap_io(&self, e: io::Error) -> OciError {
        if e.get_ref().is_some_and(|inner| inner.is::<OciError>()) {
            let kind = e.kind();
            match e.into_inner().map(|inner| inner.downcast::<OciError>()) {
                Some(Ok(oci)) => *oci,
                Some(Err(other)) => self.decompress_err(io::Error::new(kind, other)),
                None => self.decompress_err(io::Error::from(kind)),
            }
        } else {
            self.decompress_err(e)
        }
    }

    /// Called when the decompressor reports end of stream.
    fn on_eof(&mut self) -> Result<(), OciError> {
        if self.outcome.is_none() {
            // Hash any stored bytes the decompressor did not need, so the blob
            // digest and size cover the whole blob.
            let stored = self.decoder.stored_mut();
            if let Err(e) = io::copy(stored, &mut io::sink()) {
                return Err(self.decompress_err(e));
            }
            let stored = self.decoder.stored_mut();
            let stored_hasher = std::mem::take(&mut stored.hasher);
            let stored_size = stored.count;
            let stored_digest = finish_hex(stored_hasher);
            let diff_id = match self.decoder {
                Decoder::Plain(_) => stored_digest.clone(),
                _ => finish_hex(std::mem::take(&mut self.hasher)),
            };
            self.outcome = Some(Outcome {
                stored_digest,
                stored_size,
                diff_id,
            });
        }
        self.check()
    }

    /// `layer N blob` (and where it came from).
    fn blob_what(&self) -> String {
        match &self.origin {
            Some(o) => format!("layer {} blob at {o}", self.layer),
            None => format!("layer {} blob", self.layer),
        }
    }

    fn check(&self) -> Result<(), OciError> {
        let Some(o) = &self.outcome else {
            return Ok(());
        };
        let layer = self.layer;
        if o.stored_size != self.expected_size {
            return Err(OciError::SizeMismatch {
                what: self.blob_what(),
                expected: self.expected_size,
                actual: o.stored_size,
            });
        }
        if o.stored_digest != self.expected_digest {
            return Err(OciError::DigestMismatch {
                what: self.blob_what(),
                expected: self.expected_digest.clone(),
                actual: o.stored_digest.clone(),
            });
        }
        if o.diff_id != self.expected_diff_id {
            return Err(OciError::DigestMismatch {
                what: format!("layer {layer} diff_id"),
                expected: self.expected_diff_id.clone(),
                actual: o.diff_id.clone(),
            });
        }
        Ok(())
    }
}

fn verification_io(e: OciError) -> io::Error {
    let kind = match &e {
        OciError::Decompress { source, .. } => source.kind(),
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, e)
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.outcome.is_some() {
            return self.check().map(|()| 0).map_err(verification_io);
        }
        match self.decoder.read(buf) {
            Ok(0) => self.on_eof().map(|()| 0).map_err(verification_io),
            Ok(n) => {
                // An uncompressed blob's bytes are its tar bytes: the stored
                // digest is its diff_id, and one hash pass serves both.
                if !matches!(self.decoder, Decoder::Plain(_)) {
                    let data = buf.get(..n).unwrap_or_default();
                    self.hasher.update(data);
                }
                self.count += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            // The source's own error (a registry download that failed)
            // passes through: it names the URL, not the decompressor.
            Err(e) if e.get_ref().is_some_and(|i| i.is::<OciError>()) => Err(e),
            Err(e) => {
                let kind = e.kind();
                Err(io::Error::new(kind, self.decompress_err(e)))
            }
        }
    }
}

impl std::fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerReader")
            .field("layer", &self.layer)
            .field("digest", &self.expected_digest)
            .field("uncompressed_bytes", &self.count)
            .finish_non_exhaustive()
    }
}
