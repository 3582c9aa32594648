//! Prints the CPU limits of chunk sealing on this machine, in MB/s of
//! plaintext, on one core and on all cores: each pass of chunk format v2
//! alone (SHA-256, AES-256-CTR, the zstd attempt at the codec's level), the
//! sum of the passes a chunk needs (SHA-256 of the plaintext, zstd, AES and
//! SHA-256 of the stored bytes), and lode's `seal_chunk_buf` itself. The
//! data is random (incompressible: every chunk is stored raw, the push
//! benchmark's case) unless a file is given.
//!
//! `cargo run --release -p lode-chunk --example seal_limit [MiB] [FILE]`

use aes::cipher::{KeyIvInit, StreamCipher};
use lode_chunk::{codec, seal_chunk_buf, Salt, CHUNK_SIZE};
use sha2::{Digest, Sha256};
use std::time::Instant;

type Pass = fn(Vec<u8>);

fn sha(b: Vec<u8>) {
    std::hint::black_box(Sha256::digest(&b));
}

fn aes(mut b: Vec<u8>) {
    let mut c = ctr::Ctr128BE::<aes::Aes256>::new(&[7u8; 32].into(), &[0u8; 16].into());
    c.apply_keystream(&mut b);
    std::hint::black_box(b);
}

fn zstd_attempt(b: Vec<u8>) {
    std::hint::black_box(codec::compress(&b));
}

fn seal(b: Vec<u8>) {
    std::hint::black_box(seal_chunk_buf(&Salt([3; 32]), b));
}

/// MB/s of `f` over `chunks` (cycled to `mib` MiB per thread group).
fn rate(chunks: &[Vec<u8>], mib: usize, threads: usize, f: Pass) -> f64 {
    let per = mib * 2 / threads;
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            s.spawn(move || {
                for i in 0..per {
                    f(chunks[(i * threads + th) % chunks.len()].clone());
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    (per * threads) as f64 * CHUNK_SIZE as f64 / 1e6 / secs
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let cs = CHUNK_SIZE as usize;
    let chunks: Vec<Vec<u8>> = match args.next() {
        // The file's first 64 whole non-zero chunks (32 MiB).
        Some(path) => {
            let mut f = std::fs::File::open(&path)?;
            let mut out = Vec::new();
            let mut buf = vec![0u8; cs];
            while out.len() < 64 && std::io::Read::read_exact(&mut f, &mut buf).is_ok() {
                if buf.iter().any(|&b| b != 0) {
                    out.push(buf.clone());
                }
            }
            out
        }
        None => {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            (0..32)
                .map(|_| {
                    (0..cs)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect()
                })
                .collect()
        }
    };
    if chunks.is_empty() {
        return Err("no whole non-zero chunk in the input".into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(target_arch = "x86_64")]
    println!(
        "cpu features: sha={} aes={} vaes={} avx2={}",
        std::arch::is_x86_feature_detected!("sha"),
        std::arch::is_x86_feature_detected!("aes"),
        std::arch::is_x86_feature_detected!("vaes"),
        std::arch::is_x86_feature_detected!("avx2")
    );
    let stored: usize = chunks
        .iter()
        .map(|c| codec::compress(c).map_or(c.len(), |z| z.len()))
        .sum();
    let stored_frac = stored as f64 / (chunks.len() * cs) as f64;
    println!(
        "{} chunks of data, stored at {:.3} of their size",
        chunks.len(),
        stored_frac
    );
    println!("| pass | 1 core MB/s | {cores} cores MB/s |");
    println!("|---|---|---|");
    let mut one = Vec::new();
    for (label, f) in [
        ("SHA-256", sha as Pass),
        ("AES-256-CTR", aes),
        ("zstd attempt (level 3, output capped at 7/8)", zstd_attempt),
    ] {
        let (a, b) = (rate(&chunks, mib, 1, f), rate(&chunks, mib, cores, f));
        one.push((a, b));
        println!("| {label} | {a:.0} | {b:.0} |");
    }
    // Per plaintext byte: SHA-256 once, the zstd attempt once, AES and
    // SHA-256 over the stored bytes.
    let limit = |i: usize| {
        let pick = |p: (f64, f64)| if i == 0 { p.0 } else { p.1 };
        1.0 / (1.0 / pick(one[0])
            + 1.0 / pick(one[2])
            + stored_frac * (1.0 / pick(one[1]) + 1.0 / pick(one[0])))
    };
    println!(
        "| limit: SHA-256 + zstd + {stored_frac:.2} × (AES-256-CTR + SHA-256) | {:.0} | {:.0} |",
        limit(0),
        limit(1)
    );
    println!(
        "| lode seal_chunk_buf (the above in one call) | {:.0} | {:.0} |",
        rate(&chunks, mib, 1, seal),
        rate(&chunks, mib, cores, seal)
    );
    Ok(())
}
