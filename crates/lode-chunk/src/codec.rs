//! How a chunk's plaintext is stored before encryption: raw, or as one zstd
//! frame when that saves at least an eighth (chunk format v2, see
//! `docs/format.md`).
//!
//! Decoding is bounded: [`decompress`] never writes, or allocates for, more
//! than the plaintext length the caller expects (at most the manifest's chunk
//! size). The frame must declare exactly that content size, be a single
//! frame with nothing after it, and decode to exactly that many bytes; any
//! other input is a typed error. A zstd bomb therefore costs at most one
//! chunk of output and the decoder's fixed working memory.

use crate::error::ChunkError;
use std::cell::RefCell;

/// zstd level of [`compress`], chosen by measurement on real image chunks
/// (docs/benchmarks.md, "Chunk compression level").
pub const ZSTD_LEVEL: i32 = 3;

/// Largest zstd window a chunk frame may ask for (2^27 = 128 MiB: above the
/// largest chunk size, so no frame written by lode is refused; the one-shot
/// decoder decodes into the caller's buffer and allocates no window anyway).
const WINDOW_LOG_MAX: u32 = 27;

/// The stored form of a chunk's plaintext (the codec byte of a manifest's
/// key-table entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// The plaintext itself.
    Raw = 0,
    /// One zstd frame with its content size in the header.
    Zstd = 1,
}

impl Codec {
    /// The codec of a codec byte, `None` for a byte no lode writes.
    pub fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// The codec's name in reports (`raw`, `zstd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
        }
    }
}

/// Whether chunks may be compressed when they are sealed (`lode push
/// --compress`). Either way the chunk format is v2; only the codec byte of
/// each key-table entry differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// zstd when that saves at least an eighth ([`worth_limit`]), else raw.
    #[default]
    Auto,
    /// Every chunk stored raw (codec 0), with no compression attempt: for
    /// already-compressed data, where an attempt only costs CPU.
    Never,
}

impl Compression {
    /// The stored form of `plain` under this policy: its zstd frame, or
    /// `None` for "store it raw" (see [`compress`]).
    pub fn apply(self, plain: &[u8]) -> Option<Vec<u8>> {
        match self {
            Compression::Auto => compress(plain),
            Compression::Never => None,
        }
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// The compressor's output buffer, kept per thread: most attempts on
    /// incompressible chunks fill most of it and are dropped, and a fresh
    /// buffer each time would cost its page faults every chunk.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The largest stored length that counts as worth compressing: the
/// plaintext less an eighth.
pub fn worth_limit(plain_len: usize) -> usize {
    plain_len - plain_len / 8
}

/// Compresses `plain` with zstd at [`ZSTD_LEVEL`] if the frame is at most
/// [`worth_limit`] bytes; `None` means "store it raw" (incompressible data,
/// or a compressor that failed, which only costs bytes). The work is bounded
/// too: the output buffer has exactly that capacity.
pub fn compress(plain: &[u8]) -> Option<Vec<u8>> {
    let limit = worth_limit(plain.len());
    if limit == 0 {
        return None;
    }
    COMPRESSOR.with(|c| {
        let mut slot = c.borrow_mut();
        if slot.is_none() {
            let mut z = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?;
            z.include_checksum(false).ok()?;
            z.include_contentsize(true).ok()?;
            z.include_dictid(false).ok()?;
            *slot = Some(z);
        }
        let z = slot.as_mut()?;
        SCRATCH.with(|scratch| {
            let mut out = scratch.borrow_mut();
            if out.len() < limit {
                out.resize(limit, 0);
            }
            // Exactly `limit` bytes of room: the encoder stops (with an
            // error) as soon as its output would not fit.
            match z.compress_to_buffer(plain, &mut out[..limit]) {
                Ok(n) if n <= limit => Some(out[..n].to_vec()),
                _ => None,
            }
        })
    })
}

fn corrupt(index: u64, reason: &'static str) -> ChunkError {
    ChunkError::BadFrame { index, reason }
}

/// Decodes the zstd frame `stored` of chunk `index` (only labels errors)
/// into exactly `plain_len` bytes. Untrusted input: the frame header's
/// content size must be `plain_len`, the frame must span `stored` exactly,
/// and the decoder writes into a buffer of `plain_len` capacity, so no
/// input makes it produce or allocate more.
pub fn decompress(index: u64, stored: &[u8], plain_len: usize) -> Result<Vec<u8>, ChunkError> {
    match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) if n == plain_len as u64 => {}
        Ok(Some(_)) => {
            return Err(corrupt(
                index,
                "the frame's content size is not the chunk's length",
            ))
        }
        Ok(None) => {
            return Err(corrupt(
                index,
                "the frame does not declare its content size",
            ))
        }
        Err(_) => return Err(corrupt(index, "not a zstd frame")),
    }
    match zstd::zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => {}
        _ => {
            return Err(corrupt(
                index,
                "the frame does not span the stored bytes exactly",
            ))
        }
    }
    DECOMPRESSOR.with(|d| {
        let mut slot = d.borrow_mut();
        if slot.is_none() {
            let mut z = zstd::bulk::Decompressor::new()
                .map_err(|_| corrupt(index, "the zstd decoder cannot be created"))?;
            z.window_log_max(WINDOW_LOG_MAX)
                .map_err(|_| corrupt(index, "the zstd decoder refuses its window limit"))?;
            *slot = Some(z);
        }
        let z = slot.as_mut().expect("set above");
        let mut out = Vec::with_capacity(plain_len);
        match z.decompress_to_buffer(stored, &mut out) {
            Ok(n) if n == plain_len && out.len() == plain_len => Ok(out),
            Ok(_) => Err(corrupt(index, "the frame decodes to the wrong length")),
            Err(_) => Err(corrupt(index, "the frame does not decode")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn zeros_compress_and_noise_does_not() {
        let z = compress(&[0u8; 512 * 1024]).expect("zeros compress");
        assert!(z.len() < 1024);
        assert_eq!(
            decompress(0, &z, 512 * 1024).unwrap(),
            vec![0u8; 512 * 1024]
        );
        let mut noise = vec![0u8; 512 * 1024];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        assert_eq!(compress(&noise), None);
        assert_eq!(compress(&[]), None);
    }

    #[test]
    fn the_eighth_rule() {
        // Half noise, half zeros: compresses to about half, so it is kept.
        let mut half = vec![0u8; 8192];
        for (i, b) in half.iter_mut().take(4096).enumerate() {
            *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
        }
        let z = compress(&half).expect("half compressible");
        assert!(z.len() <= worth_limit(half.len()));
        assert_eq!(worth_limit(8), 7);
    }

    /// The compressed bytes of a chunk decide its name and reuse its key's
    /// keystream, so the encoder's output must not drift unnoticed: a new
    /// zstd or level that changes it must come with a new codec byte
    /// (docs/format.md). This known answer catches the drift.
    #[test]
    fn encoder_output_is_pinned() {
        let text: Vec<u8> = (0..512 * 1024u32)
            .map(|i| b"lode chunk format v2 "[(i % 21) as usize] ^ (i / 4096) as u8)
            .collect();
        let z = compress(&text).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&z)),
            "9194012c1adfcba86929aad178e8bfae5735381506bfd267eb4d8669104f85eb",
            "zstd output changed ({} bytes): assign a new codec byte",
            z.len()
        );
    }

    #[test]
    fn a_bomb_stops_at_the_cap() {
        // A frame of 4 MiB of zeros, offered as a 512 KiB chunk.
        let bomb = zstd::bulk::compress(&vec![0u8; 4 << 20], 19).unwrap();
        assert!(matches!(
            decompress(1, &bomb, 512 * 1024),
            Err(ChunkError::BadFrame { index: 1, .. })
        ));
        // The same frame with its content size field lying.
        let mut z = zstd::bulk::Compressor::new(1).unwrap();
        z.include_contentsize(false).unwrap();
        let no_size = z.compress(&vec![0u8; 4 << 20]).unwrap();
        assert!(decompress(2, &no_size, 512 * 1024).is_err());
        // Two frames back to back, each honest about its own size.
        let one = compress(&[1u8; 4096]).unwrap();
        let two = [one.clone(), one.clone()].concat();
        assert!(decompress(3, &two, 4096).is_err());
        assert!(decompress(3, &two, 8192).is_err());
        assert_eq!(decompress(3, &one, 4096).unwrap(), vec![1u8; 4096]);
    }

    proptest! {
        #[test]
        fn roundtrip(seed in any::<u64>(), runs in proptest::collection::vec((any::<u8>(), 1usize..3000), 1..40)) {
            let mut plain = Vec::new();
            let mut x = seed | 1;
            for (b, n) in runs {
                if b % 3 == 0 {
                    for _ in 0..n { x ^= x << 13; x ^= x >> 7; x ^= x << 17; plain.push(x as u8); }
                } else {
                    plain.extend(std::iter::repeat_n(b, n));
                }
            }
            match compress(&plain) {
                Some(z) => {
                    prop_assert!(z.len() <= worth_limit(plain.len()));
                    // The capped output buffer changes nothing in the frame
                    // (it decides names): same bytes as an uncapped encoder.
                    let mut free = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
                    free.include_checksum(false).unwrap();
                    free.include_dictid(false).unwrap();
                    prop_assert_eq!(&free.compress(&plain).unwrap(), &z);
                    prop_assert_eq!(decompress(0, &z, plain.len()).unwrap(), plain.clone());
                    prop_assert!(decompress(0, &z, plain.len() + 1).is_err());
                    prop_assert!(decompress(0, &z[..z.len() - 1], plain.len()).is_err());
                }
                None => prop_assert!(plain.len() < 8 || zstd::bulk::compress(&plain, ZSTD_LEVEL).unwrap().len() > worth_limit(plain.len())),
            }
        }

        #[test]
        fn garbage_never_panics_or_overflows(bytes in proptest::collection::vec(any::<u8>(), 0..2000), len in 0usize..70_000) {
            if let Ok(out) = decompress(0, &bytes, len) {
                prop_assert_eq!(out.len(), len);
            }
            // A valid frame header in front of garbage.
            let mut framed = compress(&vec![7u8; len.max(64)]).unwrap();
            framed.truncate(framed.len().min(12));
            framed.extend_from_slice(&bytes);
            if let Ok(out) = decompress(0, &framed, len.max(64)) {
                prop_assert_eq!(out.len(), len.max(64));
            }
        }
    }
}
