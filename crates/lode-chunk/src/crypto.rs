//! Convergent encryption of one chunk.

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

/// A chunk after encryption.
#[derive(Clone, Debug)]
pub struct SealedChunk {
    /// SHA-256 of the ciphertext.
    pub name: ChunkName,
    /// SHA-256(salt ‖ plaintext).
    pub key: ChunkKey,
    /// SHA-256 of the plaintext.
    pub plain_sha: [u8; 32],
    /// AES-256-CTR(key, IV = 0, plaintext).
    pub ciphertext: Vec<u8>,
}

fn ctr_apply(key: &ChunkKey, data: &mut [u8]) {
    let mut c = Aes256Ctr::new(&key.0.into(), &[0u8; 16].into());
    c.apply_keystream(data);
}

/// Encrypts one chunk convergently under `salt`.
pub fn seal_chunk(salt: &Salt, plaintext: &[u8]) -> SealedChunk {
    let mut h = Sha256::new();
    h.update(salt.0);
    h.update(plaintext);
    let key = ChunkKey(h.finalize().into());
    let plain_sha: [u8; 32] = Sha256::digest(plaintext).into();
    let mut ciphertext = plaintext.to_vec();
    ctr_apply(&key, &mut ciphertext);
    SealedChunk {
        name: ChunkName::of(&ciphertext),
        key,
        plain_sha,
        ciphertext,
    }
}

/// Verifies `ciphertext` against `name`, decrypts it in place and verifies the
/// plaintext hash. `index` only labels errors. No byte is usable unless both
/// checks pass.
pub fn open_chunk(
    index: u64,
    name: &ChunkName,
    key: &ChunkKey,
    plain_sha: &[u8; 32],
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
    open_named_chunk(index, key, plain_sha, ciphertext)
}

/// [`open_chunk`] for ciphertext its caller has already checked against the
/// chunk's name (a cache tier or the agent's reader does, to tell a corrupt
/// tier from a good one): decrypts in place and verifies the plaintext hash,
/// which alone decides whether any byte is usable. Saves one SHA-256 pass.
pub fn open_named_chunk(
    index: u64,
    key: &ChunkKey,
    plain_sha: &[u8; 32],
    mut ciphertext: Vec<u8>,
) -> Result<Vec<u8>, ChunkError> {
    ctr_apply(key, &mut ciphertext);
    let sha: [u8; 32] = Sha256::digest(&ciphertext).into();
    if &sha != plain_sha {
        return Err(ChunkError::PlaintextMismatch { index });
    }
    Ok(ciphertext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convergent_and_verifiable() {
        let salt = Salt([7; 32]);
        let pt = b"some chunk".repeat(1000);
        let a = seal_chunk(&salt, &pt);
        let b = seal_chunk(&salt, &pt);
        assert_eq!(a.name, b.name);
        assert_ne!(a.ciphertext, pt);
        let other = seal_chunk(&Salt([8; 32]), &pt);
        assert_ne!(other.name, a.name, "a new salt gives new names");
        let back = open_chunk(0, &a.name, &a.key, &a.plain_sha, a.ciphertext.clone()).unwrap();
        assert_eq!(back, pt);
    }

    #[test]
    fn open_named_chunk_still_checks_the_plaintext() {
        let salt = Salt([3; 32]);
        let pt = b"named".repeat(500);
        let a = seal_chunk(&salt, &pt);
        let back = open_named_chunk(0, &a.key, &a.plain_sha, a.ciphertext.clone()).unwrap();
        assert_eq!(back, pt);
        let mut bad = a.ciphertext.clone();
        bad[7] ^= 1;
        assert!(matches!(
            open_named_chunk(4, &a.key, &a.plain_sha, bad),
            Err(ChunkError::PlaintextMismatch { index: 4 })
        ));
        let other = seal_chunk(&salt, b"other chunk");
        assert!(open_named_chunk(0, &a.key, &a.plain_sha, other.ciphertext).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let salt = Salt([1; 32]);
        let s = seal_chunk(&salt, &[5u8; 4096]);
        let mut bad = s.ciphertext.clone();
        bad[10] ^= 1;
        assert!(matches!(
            open_chunk(3, &s.name, &s.key, &s.plain_sha, bad),
            Err(ChunkError::NameMismatch { index: 3, .. })
        ));
        let wrong_key = ChunkKey([0; 32]);
        assert!(matches!(
            open_chunk(4, &s.name, &wrong_key, &s.plain_sha, s.ciphertext.clone()),
            Err(ChunkError::PlaintextMismatch { index: 4 })
        ));
    }

    #[test]
    fn known_answer() {
        // key = SHA-256(salt ‖ pt); AES-256-CTR with IV 0; name = SHA-256(ct).
        let salt = Salt([0; 32]);
        let s = seal_chunk(&salt, b"");
        assert_eq!(
            s.name.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(b"abc");
        let s = seal_chunk(&salt, b"abc");
        assert_eq!(s.key.0, <[u8; 32]>::from(h.finalize()));
    }
}
