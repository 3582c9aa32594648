//! Convergent encryption of one chunk.

use crate::codec::{self, Codec, Compression};
use crate::error::ChunkError;
use crate::keys::Salt;
use aes::cipher::{KeyIvInit, StreamCipher};
use sha2::{Digest, Sha256};
use std::fmt;

/// Size of a chunk in bytes (a format parameter, recorded in every manifest).
pub const CHUNK_SIZE: u32 = 512 * 1024;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// A chunk's encryption key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChunkKey(pub [u8; 32]);

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkKey(..)")
    }
}

/// A chunk's name: SHA-256 of its ciphertext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkName(pub [u8; 32]);

impl ChunkName {
    /// The name of `ciphertext`.
    pub fn of(ciphertext: &[u8]) -> Self {
        ChunkName(Sha256::digest(ciphertext).into())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ChunkName(out))
    }
}

impl fmt::Display for ChunkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkName({})", self.to_hex())
    }
}

/// Everything a reader needs to open one stored chunk: its key-table entry
/// (key, plaintext hash, codec, stored length) and its logical length,
/// which the manifest's geometry gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSecret {
    /// Decryption key.
    pub key: ChunkKey,
    /// SHA-256 of the plaintext.
    pub plain_sha: [u8; 32],
    /// How the plaintext is stored before encryption.
    pub codec: Codec,
    /// Length of the stored (encrypted) object in bytes.
    pub stored_len: u32,
    /// Length of the plaintext in bytes (the chunk size, or less for an
    /// image's last chunk).
    pub plain_len: u32,
}

/// A chunk after encryption.
#[derive(Clone, Debug)]
pub struct SealedChunk {
    /// SHA-256 of the ciphertext.
    pub name: ChunkName,
    /// What opens it again (goes into the manifest's key table).
    pub secret: ChunkSecret,
    /// The stored object: AES-256-CTR(key, codec IV, plaintext or its zstd frame).
    pub ciphertext: Vec<u8>,
}

/// The counter block a codec's keystream starts at. Raw chunks start at 0
/// (as in chunk format v1); zstd frames at 2^64, so a plaintext stored both
/// ways under one key never reuses keystream.
fn iv(codec: Codec) -> [u8; 16] {
    let mut iv = [0u8; 16];
    if codec == Codec::Zstd {
        iv[7] = 1;
    }
    iv
}

/// Bytes encrypted and hashed per step of [`encrypt_and_name`]: small
/// enough to stay in the core's cache between the two passes.
const STEP: usize = 64 * 1024;

/// Encrypts `data` in place and returns the name of the result, in one
/// sweep over memory (each step is hashed while still in cache).
fn encrypt_and_name(key: &ChunkKey, codec: Codec, data: &mut [u8]) -> ChunkName {
    let mut c = Aes256Ctr::new(&key.0.into(), &iv(codec).into());
    let mut h = Sha256::new();
    for step in data.chunks_mut(STEP) {
        c.apply_keystream(step);
        h.update(&*step);
    }
    ChunkName(h.finalize().into())
}

fn ctr_apply(key: &ChunkKey, codec: Codec, data: &mut [u8]) {
    let mut c = Aes256Ctr::new(&key.0.into(), &iv(codec).into());
    c.apply_keystream(data);
}

/// Encrypts one chunk convergently under `salt` (chunk format v2): the
/// plaintext hash `P = SHA-256(plaintext)`, the key `SHA-256(salt ‖ P)`, the
/// plaintext zstd-compressed when that saves an eighth, encrypted with
/// AES-256-CTR from the codec's counter block, the name SHA-256 of the
/// result. One SHA-256 pass over the plaintext, one over the stored bytes.
pub fn seal_chunk(salt: &Salt, plaintext: &[u8]) -> SealedChunk {
    seal(salt, plaintext, None, Compression::Auto)
}

/// [`seal_chunk`] of a plaintext the caller no longer needs: a chunk stored
/// raw is encrypted in `plaintext`'s own buffer (no copy).
pub fn seal_chunk_buf(salt: &Salt, plaintext: Vec<u8>) -> SealedChunk {
    seal(salt, &[], Some(plaintext), Compression::Auto)
}

/// [`seal_chunk_buf`] under a compression policy: with
/// [`Compression::Never`] the chunk is stored raw (codec 0, counter from 0)
/// whatever its content; key and plaintext hash are the same either way.
pub fn seal_chunk_buf_with(
    salt: &Salt,
    plaintext: Vec<u8>,
    compression: Compression,
) -> SealedChunk {
    seal(salt, &[], Some(plaintext), compression)
}

/// Seals `owned` if given (its buffer becomes a raw chunk's ciphertext),
/// else `borrowed`.
fn seal(
    salt: &Salt,
    borrowed: &[u8],
    owned: Option<Vec<u8>>,
    compression: Compression,
) -> SealedChunk {
    let plaintext = owned.as_deref().unwrap_or(borrowed);
    let plain_len = plaintext.len() as u32;
    let plain_sha: [u8; 32] = Sha256::digest(plaintext).into();
    let mut h = Sha256::new();
    h.update(salt.0);
    h.update(plain_sha);
    let key = ChunkKey(h.finalize().into());
    let (codec, mut ciphertext) = match compression.apply(plaintext) {
        Some(z) => (Codec::Zstd, z),
        None => (Codec::Raw, owned.unwrap_or_else(|| borrowed.to_vec())),
    };
    let name = encrypt_and_name(&key, codec, &mut ciphertext);
    SealedChunk {
        name,
        secret: ChunkSecret {
            key,
            plain_sha,
            codec,
            stored_len: ciphertext.len() as u32,
            plain_len,
        },
        ciphertext,
    }
}

/// Encrypts one chunk in chunk format v1 (key `SHA-256(salt ‖ plaintext)`,
/// stored raw, counter from 0): what lode wrote before format v2, for
/// compatibility tests and tools that write manifest versions 1 and 2.
pub fn seal_chunk_v1(salt: &Salt, plaintext: &[u8]) -> SealedChunk {
    let mut h = Sha256::new();
    h.update(salt.0);
    h.update(plaintext);
    let key = ChunkKey(h.finalize().into());
    let plain_sha: [u8; 32] = Sha256::digest(plaintext).into();
    let mut ciphertext = plaintext.to_vec();
    let name = encrypt_and_name(&key, Codec::Raw, &mut ciphertext);
    SealedChunk {
        name,
        secret: ChunkSecret {
            key,
            plain_sha,
            codec: Codec::Raw,
            stored_len: ciphertext.len() as u32,
            plain_len: plaintext.len() as u32,
        },
        ciphertext,
    }
}

/// Verifies `ciphertext` against `name`, then opens it with
/// [`open_named_chunk`]. `index` only labels errors. No byte is usable
/// unless every check passes.
pub fn open_chunk(
    index: u64,
    name: &ChunkName,
    secret: &ChunkSecret,
    ciphertext: Vec<u8>,
) -> Result<Vec<u8>, ChunkError> {
    let got = ChunkName::of(&ciphertext);
    if &got != name {
        return Err(ChunkError::NameMismatch {
            index,
            expected: name.to_hex(),
            actual: got.to_hex(),
        });
    }
    open_named_chunk(index, secret, ciphertext)
}

/// [`open_chunk`] for ciphertext its caller has already checked against the
/// chunk's name (a cache tier or the agent's reader does, to tell a corrupt
/// tier from a good one): checks the stored length, decrypts in place,
/// decodes a zstd frame into at most `plain_len` bytes (bounded, see
/// [`codec::decompress`]) and verifies the plaintext hash, which alone
/// decides whether any byte is usable. Saves one SHA-256 pass.
pub fn open_named_chunk(
    index: u64,
    secret: &ChunkSecret,
    mut ciphertext: Vec<u8>,
) -> Result<Vec<u8>, ChunkError> {
    if ciphertext.len() as u64 != u64::from(secret.stored_len) {
        return Err(ChunkError::StoredLength {
            index,
            expected: secret.stored_len.into(),
            actual: ciphertext.len() as u64,
        });
    }
    ctr_apply(&secret.key, secret.codec, &mut ciphertext);
    let plain = match secret.codec {
        Codec::Raw if secret.stored_len == secret.plain_len => ciphertext,
        Codec::Raw => {
            return Err(ChunkError::StoredLength {
                index,
                expected: secret.plain_len.into(),
                actual: ciphertext.len() as u64,
            })
        }
        Codec::Zstd => codec::decompress(index, &ciphertext, secret.plain_len as usize)?,
    };
    let sha: [u8; 32] = Sha256::digest(&plain).into();
    if sha != secret.plain_sha {
        return Err(ChunkError::PlaintextMismatch { index });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn convergent_and_verifiable() {
        let salt = Salt([7; 32]);
        for pt in [b"some chunk".repeat(1000), noise(CHUNK_SIZE as usize, 5)] {
            let a = seal_chunk(&salt, &pt);
            let b = seal_chunk(&salt, &pt);
            assert_eq!(a.name, b.name);
            assert_ne!(a.ciphertext, pt);
            let other = seal_chunk(&Salt([8; 32]), &pt);
            assert_ne!(other.name, a.name, "a new salt gives new names");
            let back = open_chunk(0, &a.name, &a.secret, a.ciphertext.clone()).unwrap();
            assert_eq!(back, pt);
        }
    }

    #[test]
    fn codecs_by_content() {
        let salt = Salt([2; 32]);
        let cs = CHUNK_SIZE as usize;
        let zeros = seal_chunk(&salt, &vec![0u8; cs]);
        assert_eq!(zeros.secret.codec, Codec::Zstd);
        assert!(zeros.ciphertext.len() < 1024);
        let text = seal_chunk(&salt, &b"#!/bin/sh\necho hello\n".repeat(cs / 22));
        assert_eq!(text.secret.codec, Codec::Zstd);
        let random = seal_chunk(&salt, &noise(cs, 9));
        assert_eq!(random.secret.codec, Codec::Raw);
        assert_eq!(random.ciphertext.len(), cs);
        let owned = seal_chunk_buf(&salt, noise(cs, 9));
        assert_eq!((owned.name, owned.secret), (random.name, random.secret));
        for s in [&zeros, &text, &random] {
            assert_eq!(s.secret.stored_len as usize, s.ciphertext.len());
            assert_eq!(s.name, ChunkName::of(&s.ciphertext));
            let pt = open_named_chunk(0, &s.secret, s.ciphertext.clone()).unwrap();
            assert_eq!(pt.len(), s.secret.plain_len as usize);
        }
        // Never: every chunk raw, same key, and it opens to the same bytes.
        let text_pt = b"#!/bin/sh\necho hello\n".repeat(cs / 22);
        let never = seal_chunk_buf_with(&salt, text_pt.clone(), Compression::Never);
        assert_eq!(never.secret.codec, Codec::Raw);
        assert_eq!(never.ciphertext.len(), text_pt.len());
        assert_eq!(never.secret.key, text.secret.key);
        assert_ne!(never.name, text.name);
        assert_eq!(
            open_chunk(0, &never.name, &never.secret, never.ciphertext.clone()).unwrap(),
            text_pt
        );
        let auto = seal_chunk_buf_with(&salt, text_pt, Compression::Auto);
        assert_eq!((auto.name, auto.secret), (text.name, text.secret));
        // v1 chunks still open (raw, counter from 0, the old key).
        let v1 = seal_chunk_v1(&salt, b"old chunk");
        assert_eq!(v1.secret.codec, Codec::Raw);
        assert_eq!(
            open_chunk(0, &v1.name, &v1.secret, v1.ciphertext.clone()).unwrap(),
            b"old chunk"
        );
    }

    #[test]
    fn open_named_chunk_still_checks_the_plaintext() {
        let salt = Salt([3; 32]);
        let pt = b"named".repeat(500);
        let a = seal_chunk(&salt, &pt);
        let back = open_named_chunk(0, &a.secret, a.ciphertext.clone()).unwrap();
        assert_eq!(back, pt);
        let mut bad = a.ciphertext.clone();
        bad[7] ^= 1;
        assert!(open_named_chunk(4, &a.secret, bad).is_err());
        let other = seal_chunk(&salt, b"other chunk");
        assert!(open_named_chunk(0, &a.secret, other.ciphertext).is_err());
    }

    /// Tampering with the compressed ciphertext, the stored length or the
    /// codec byte: refused with a typed error, never a wrong byte.
    #[test]
    fn tampering_is_refused() {
        let salt = Salt([1; 32]);
        let s = seal_chunk(&salt, &b"compressible ".repeat(4000));
        assert_eq!(s.secret.codec, Codec::Zstd);
        for i in 0..s.ciphertext.len() {
            let mut bad = s.ciphertext.clone();
            bad[i] ^= 0x10;
            assert!(matches!(
                open_chunk(3, &s.name, &s.secret, bad.clone()),
                Err(ChunkError::NameMismatch { index: 3, .. })
            ));
            // Past the name check (a tier that skipped it): refused, or
            // (a frame header bit zstd ignores) exactly the plaintext.
            match open_named_chunk(3, &s.secret, bad) {
                Err(_) => {}
                Ok(pt) => assert_eq!(pt, b"compressible ".repeat(4000), "byte {i}"),
            }
        }
        let mut short = s.secret;
        short.stored_len -= 1;
        assert!(matches!(
            open_named_chunk(5, &short, s.ciphertext.clone()),
            Err(ChunkError::StoredLength { index: 5, .. })
        ));
        assert!(
            open_named_chunk(5, &short, s.ciphertext[..s.ciphertext.len() - 1].to_vec()).is_err()
        );
        let mut raw = s.secret;
        raw.codec = Codec::Raw;
        assert!(open_named_chunk(6, &raw, s.ciphertext.clone()).is_err());
        let r = seal_chunk(&salt, &noise(8192, 3));
        let mut as_zstd = r.secret;
        as_zstd.codec = Codec::Zstd;
        assert!(matches!(
            open_named_chunk(7, &as_zstd, r.ciphertext.clone()),
            Err(ChunkError::BadFrame { index: 7, .. })
        ));
        let mut longer = s.secret;
        longer.plain_len += 1;
        assert!(open_named_chunk(8, &longer, s.ciphertext.clone()).is_err());
        let mut wrong_key = s.secret;
        wrong_key.key = ChunkKey([0; 32]);
        assert!(open_chunk(4, &s.name, &wrong_key, s.ciphertext.clone()).is_err());
    }

    #[test]
    fn known_answer() {
        // v1: key = SHA-256(salt ‖ pt); AES-256-CTR with IV 0; name = SHA-256(ct).
        let salt = Salt([0; 32]);
        let s = seal_chunk_v1(&salt, b"");
        assert_eq!(
            s.name.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(b"abc");
        let s = seal_chunk_v1(&salt, b"abc");
        assert_eq!(s.secret.key.0, <[u8; 32]>::from(h.finalize()));
        // v2: key = SHA-256(salt ‖ SHA-256(pt)); "abc" is stored raw.
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(Sha256::digest(b"abc"));
        let s = seal_chunk(&salt, b"abc");
        assert_eq!(s.secret.key.0, <[u8; 32]>::from(h.finalize()));
        assert_eq!(s.secret.codec, Codec::Raw);
        let mut ct = b"abc".to_vec();
        ctr_apply(&s.secret.key, Codec::Raw, &mut ct);
        assert_eq!(s.ciphertext, ct);
    }
}
