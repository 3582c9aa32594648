//! Byte accounting of an opened manifest: how much plaintext its chunks
//! hold and how much the store holds for them (what `lode inspect` shows).

use crate::codec::Codec;
use crate::crypto::ChunkName;
use crate::manifest::KeyTable;
use std::collections::HashSet;

/// Sizes of an image's stored chunks, each distinct chunk counted once
/// (an image that repeats a chunk stores it once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChunkSizes {
    /// Distinct stored chunks.
    pub chunks: u64,
    /// Plaintext bytes of the distinct chunks.
    pub logical_bytes: u64,
    /// Bytes the store holds for them (ciphertext).
    pub stored_bytes: u64,
    /// Distinct chunks stored as zstd frames.
    pub compressed_chunks: u64,
    /// Plaintext bytes of the compressed chunks.
    pub compressed_logical_bytes: u64,
    /// Stored bytes of the compressed chunks.
    pub compressed_stored_bytes: u64,
    /// Distinct chunks stored raw.
    pub raw_chunks: u64,
}

impl ChunkSizes {
    /// The sizes of the chunks `names` lists, from their opened `table`.
    pub fn of(names: &[Option<ChunkName>], table: &KeyTable) -> ChunkSizes {
        let mut seen = HashSet::new();
        let mut s = ChunkSizes::default();
        for (name, secret) in names.iter().zip(&table.0) {
            let (Some(name), Some(secret)) = (name, secret) else {
                continue;
            };
            if !seen.insert(*name) {
                continue;
            }
            let (logical, stored) = (u64::from(secret.plain_len), u64::from(secret.stored_len));
            s.chunks += 1;
            s.logical_bytes += logical;
            s.stored_bytes += stored;
            match secret.codec {
                Codec::Zstd => {
                    s.compressed_chunks += 1;
                    s.compressed_logical_bytes += logical;
                    s.compressed_stored_bytes += stored;
                }
                Codec::Raw => s.raw_chunks += 1,
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{ChunkKey, ChunkSecret};

    #[test]
    fn distinct_chunks_counted_once() {
        let secret = |codec, stored_len| {
            Some(ChunkSecret {
                key: ChunkKey([1; 32]),
                plain_sha: [2; 32],
                codec,
                stored_len,
                plain_len: 4096,
            })
        };
        let (a, b) = (Some(ChunkName([1; 32])), Some(ChunkName([2; 32])));
        let names = [a, None, b, a];
        let table = KeyTable(vec![
            secret(Codec::Zstd, 1000),
            None,
            secret(Codec::Raw, 4096),
            secret(Codec::Zstd, 1000),
        ]);
        let s = ChunkSizes::of(&names, &table);
        assert_eq!(
            s,
            ChunkSizes {
                chunks: 2,
                logical_bytes: 8192,
                stored_bytes: 5096,
                compressed_chunks: 1,
                compressed_logical_bytes: 4096,
                compressed_stored_bytes: 1000,
                raw_chunks: 1,
            }
        );
    }
}
