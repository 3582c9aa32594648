//! Chunk-level comparison of two images, for layer-stability checks.

use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// Calls `each(chunk_bytes)` for every fixed-size chunk of the file at
/// offsets `0, chunk, 2*chunk, ...` (the last one may be short).
fn for_each_chunk(path: &Path, chunk: usize, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; chunk];
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        each(&buf[..n]);
        if n < chunk {
            return Ok(());
        }
    }
}

/// Bytes of `b`'s non-zero chunks (aligned, `chunk` bytes each) whose
/// content does not occur as any chunk of `a` — i.e. what a chunk-deduping
/// store would have to add for `b` after storing `a`. All-zero chunks are
/// free and never counted.
pub fn unique_chunk_bytes(a: &Path, b: &Path, chunk: usize) -> io::Result<u64> {
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    for_each_chunk(a, chunk, |c| {
        if c.iter().any(|&x| x != 0) {
            seen.insert(Sha256::digest(c).into());
        }
    })?;
    let mut unique = 0u64;
    for_each_chunk(b, chunk, |c| {
        if c.iter().any(|&x| x != 0) && !seen.contains(&<[u8; 32]>::from(Sha256::digest(c))) {
            unique += c.len() as u64;
        }
    })?;
    Ok(unique)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_new_nonzero_chunks() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        let mut av = vec![0u8; 40];
        av[0..10].fill(1); // chunk 0: 1s
        av[20..30].fill(2); // chunk 2: 2s ; chunks 1, 3 zero
        let mut bv = av.clone();
        bv[10..20].fill(3); // new chunk 1
        bv[30..40].copy_from_slice(&av[0..10]); // chunk 3 == a's chunk 0 (moved)
        bv.extend_from_slice(&[9, 9, 9]); // short last chunk, new
        std::fs::write(&a, &av).unwrap();
        std::fs::write(&b, &bv).unwrap();
        assert_eq!(unique_chunk_bytes(&a, &b, 10).unwrap(), 13);
        assert_eq!(unique_chunk_bytes(&a, &a, 10).unwrap(), 0);
    }
}
