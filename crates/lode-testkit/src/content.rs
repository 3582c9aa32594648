//! File content descriptions that can be streamed without ever being held
//! whole in memory (pseudo-random, all-zero and sparse content of any size).

use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::sync::Arc;

/// The content of a regular file in a layer.
///
/// Everything except [`Content::Bytes`] is generated on the fly, so
/// multi-GiB files cost no memory.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// Literal bytes.
    Bytes(Arc<[u8]>),
    /// `size` bytes of deterministic pseudo-random (incompressible) data.
    Pattern {
        /// Length in bytes.
        size: u64,
        /// Seed; different seeds give unrelated data.
        seed: u64,
    },
    /// `size` zero bytes.
    Zeros(u64),
    /// A file of `size` bytes that is zero except for the given data
    /// regions (pseudo-random data, one seed per region). Regions must be
    /// sorted, non-overlapping and inside `size`.
    Sparse {
        /// Total length in bytes.
        size: u64,
        /// Data regions.
        regions: Vec<SparseRegion>,
    },
}

/// One non-zero region of a [`Content::Sparse`] file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseRegion {
    /// Offset of the region in the file.
    pub offset: u64,
    /// Length of the region.
    pub len: u64,
    /// Seed of the pseudo-random data in the region.
    pub seed: u64,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Bytes(b) if b.len() <= 64 => write!(f, "b\"{}\"", b.escape_ascii()),
            Content::Bytes(b) => write!(f, "Bytes(len {})", b.len()),
            Content::Pattern { size, seed } => write!(f, "Pattern(size {size}, seed {seed})"),
            Content::Zeros(n) => write!(f, "Zeros({n})"),
            Content::Sparse { size, regions } => {
                write!(f, "Sparse(size {size}")?;
                for r in regions {
                    write!(f, ", {}+{}#{}", r.offset, r.len, r.seed)?;
                }
                write!(f, ")")
            }
        }
    }
}

impl From<&[u8]> for Content {
    fn from(b: &[u8]) -> Self {
        Content::Bytes(Arc::from(b))
    }
}
impl From<Vec<u8>> for Content {
    fn from(b: Vec<u8>) -> Self {
        Content::Bytes(Arc::from(b))
    }
}
impl From<String> for Content {
    fn from(b: String) -> Self {
        Content::Bytes(Arc::from(b.into_bytes()))
    }
}
impl From<&str> for Content {
    fn from(b: &str) -> Self {
        Content::Bytes(Arc::from(b.as_bytes()))
    }
}
impl<const N: usize> From<&[u8; N]> for Content {
    fn from(b: &[u8; N]) -> Self {
        Content::Bytes(Arc::from(&b[..]))
    }
}

impl Content {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Pattern { size, .. } | Content::Zeros(size) | Content::Sparse { size, .. } => {
                *size
            }
        }
    }

    /// A streaming reader over the content.
    pub fn reader(&self) -> ContentReader {
        ContentReader {
            content: self.clone(),
            pos: 0,
        }
    }

    /// Number of non-zero-region bytes (bytes that are not guaranteed zero).
    /// For `Bytes` and `Pattern` this is the size, for `Zeros` 0.
    pub fn data_bytes(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Pattern { size, .. } => *size,
            Content::Zeros(_) => 0,
            Content::Sparse { regions, .. } => regions.iter().map(|r| r.len).sum(),
        }
    }

    /// SHA-256 of the content (streamed).
    pub fn sha256(&self) -> [u8; 32] {
        if let Content::Bytes(b) = self {
            return Sha256::digest(b).into();
        }
        let mut h = Sha256::new();
        let mut r = self.reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).expect("content reader never fails");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.finalize().into()
    }

    /// Materialize into memory (only for small content!).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(usize::try_from(self.size()).unwrap_or(0));
        self.reader()
            .read_to_end(&mut v)
            .expect("content reader never fails");
        v
    }
}

/// `len` bytes of [`Content::Pattern`] with `seed`: deterministic,
/// incompressible, unrelated for different seeds (test data for stores and
/// chunks).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    Content::Pattern {
        size: len as u64,
        seed,
    }
    .to_vec()
}

/// splitmix64 finalizer: a good cheap 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fill `buf` with the pattern bytes for absolute stream offset `pos`.
fn fill_pattern(seed: u64, pos: u64, buf: &mut [u8]) {
    let s = mix(seed ^ 0xA5A5_5A5A_DEAD_BEEF);
    let mut i = 0usize;
    let mut p = pos;
    while i < buf.len() {
        let word = mix(s ^ (p / 8));
        let bytes = word.to_le_bytes();
        let within = (p % 8) as usize;
        let n = (8 - within).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[within..within + n]);
        i += n;
        p += n as u64;
    }
}

/// Streaming reader returned by [`Content::reader`].
#[derive(Debug)]
pub struct ContentReader {
    content: Content,
    pos: u64,
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.content.size();
        if self.pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from((size - self.pos).min(buf.len() as u64)).unwrap_or(buf.len());
        let out = &mut buf[..n];
        match &self.content {
            Content::Bytes(b) => {
                let start = self.pos as usize;
                out.copy_from_slice(&b[start..start + n]);
            }
            Content::Pattern { seed, .. } => fill_pattern(*seed, self.pos, out),
            Content::Zeros(_) => out.fill(0),
            Content::Sparse { regions, .. } => {
                out.fill(0);
                let start = self.pos;
                let end = start + n as u64;
                for r in regions {
                    let rs = r.offset.max(start);
                    let re = (r.offset + r.len).min(end);
                    if rs < re {
                        let a = (rs - start) as usize;
                        let b = (re - start) as usize;
                        fill_pattern(r.seed, rs - r.offset, &mut out[a..b]);
                    }
                }
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pattern_is_position_consistent() {
        let c = Content::Pattern {
            size: 10_000,
            seed: 7,
        };
        let all = c.to_vec();
        assert_eq!(all.len(), 10_000);
        // Read in odd-sized pieces and compare.
        let mut r = c.reader();
        let mut pieces = Vec::new();
        let mut buf = [0u8; 13];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all, pieces);
        assert_ne!(
            all,
            Content::Pattern {
                size: 10_000,
                seed: 8
            }
            .to_vec()
        );
    }

    #[test]
    fn sparse_regions() {
        let c = Content::Sparse {
            size: 100,
            regions: vec![
                SparseRegion {
                    offset: 10,
                    len: 5,
                    seed: 1,
                },
                SparseRegion {
                    offset: 90,
                    len: 10,
                    seed: 2,
                },
            ],
        };
        let v = c.to_vec();
        assert_eq!(v.len(), 100);
        assert!(v[..10].iter().all(|&b| b == 0));
        assert!(v[15..90].iter().all(|&b| b == 0));
        assert_eq!(
            &v[10..15],
            &Content::Pattern { size: 5, seed: 1 }.to_vec()[..]
        );
        assert_eq!(
            &v[90..100],
            &Content::Pattern { size: 10, seed: 2 }.to_vec()[..]
        );
        assert_eq!(c.sha256(), <[u8; 32]>::from(Sha256::digest(&v)));
    }
}
