//! Prints the CPU limits of chunk sealing on this machine, in MB/s:
//! the raw single pass (SHA-256 of plaintext + AES-256-CTR + SHA-256 of
//! ciphertext) and lode's `seal_chunk` (which also hashes salt ‖ plaintext for
//! the key), on one core and on all cores.
//!
//! `cargo run --release -p lode-chunk --example seal_limit [MiB]`

use aes::cipher::{KeyIvInit, StreamCipher};
use lode_chunk::{seal_chunk, Salt, CHUNK_SIZE};
use sha2::{Digest, Sha256};
use std::time::Instant;

fn raw_pass(buf: &mut [u8]) -> [u8; 32] {
    let k: [u8; 32] = Sha256::digest(&*buf).into();
    let mut c = ctr::Ctr128BE::<aes::Aes256>::new(&k.into(), &[0u8; 16].into());
    c.apply_keystream(buf);
    Sha256::digest(&*buf).into()
}

fn rate(mib: usize, threads: usize, f: fn(&mut [u8])) -> f64 {
    let per = mib / threads;
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            s.spawn(move || {
                let mut buf = vec![th as u8 + 1; CHUNK_SIZE as usize];
                for i in 0..per * 2 {
                    buf[0] = i as u8;
                    f(&mut buf);
                }
            });
        }
    });
    (per * threads) as f64 * 1.048576 / t.elapsed().as_secs_f64()
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    #[cfg(target_arch = "x86_64")]
    println!(
        "cpu features: sha={} aes={} vaes={} avx2={}",
        std::arch::is_x86_feature_detected!("sha"),
        std::arch::is_x86_feature_detected!("aes"),
        std::arch::is_x86_feature_detected!("vaes"),
        std::arch::is_x86_feature_detected!("avx2")
    );
    let salt = Salt([3; 32]);
    let _ = seal_chunk(&salt, b"warm up");
    fn seal(b: &mut [u8]) {
        std::hint::black_box(seal_chunk(&Salt([3; 32]), b));
    }
    fn raw(b: &mut [u8]) {
        std::hint::black_box(raw_pass(b));
    }
    println!("| pass | 1 core MB/s | {cores} cores MB/s |");
    println!("|---|---|---|");
    println!(
        "| raw single pass (SHA-256 + AES-256-CTR + SHA-256) | {:.0} | {:.0} |",
        rate(mib, 1, raw),
        rate(mib, cores, raw)
    );
    println!(
        "| lode seal_chunk (+ SHA-256 of salt ‖ plaintext) | {:.0} | {:.0} |",
        rate(mib, 1, seal),
        rate(mib, cores, seal)
    );
}
