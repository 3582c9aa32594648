//! Measures zstd levels on the chunks of a real image, to choose the chunk
//! codec's level (docs/benchmarks.md, "Chunk compression level"): for each
//! level, the bytes stored under chunk format v2's rule (a chunk is kept
//! compressed only when that saves an eighth), and single-core compression
//! and decompression speed over the image's non-zero chunks.
//!
//! `cargo run --release -p lode-chunk --example codec_levels IMAGE [LEVEL...]`

use lode_chunk::codec::worth_limit;
use lode_chunk::CHUNK_SIZE;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: codec_levels IMAGE [LEVEL...]")?;
    let mut levels: Vec<i32> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if levels.is_empty() {
        levels = vec![1, 3, 6];
    }
    let image = std::fs::read(&path)?;
    let chunks: Vec<&[u8]> = image
        .chunks(CHUNK_SIZE as usize)
        .filter(|c| c.iter().any(|&b| b != 0))
        .collect();
    let logical: usize = chunks.iter().map(|c| c.len()).sum();
    println!(
        "{path}: {} non-zero chunks, {:.1} MB of plaintext",
        chunks.len(),
        logical as f64 / 1e6
    );
    println!("| zstd level | stored MB (rule: keep if it saves 1/8) | ratio | chunks compressed | compress MB/s (1 core) | decompress MB/s (1 core) |");
    println!("|---|---|---|---|---|---|");
    for level in levels {
        let mut c = zstd::bulk::Compressor::new(level)?;
        let t = Instant::now();
        let frames: Vec<Vec<u8>> = chunks
            .iter()
            .map(|p| c.compress(p))
            .collect::<Result<_, _>>()?;
        let ct = t.elapsed().as_secs_f64();
        let mut stored = 0usize;
        let mut kept = 0usize;
        for (p, f) in chunks.iter().zip(&frames) {
            if f.len() <= worth_limit(p.len()) {
                stored += f.len();
                kept += 1;
            } else {
                stored += p.len();
            }
        }
        let mut d = zstd::bulk::Decompressor::new()?;
        let t = Instant::now();
        for (p, f) in chunks.iter().zip(&frames) {
            std::hint::black_box(d.decompress(f, p.len())?);
        }
        let dt = t.elapsed().as_secs_f64();
        println!(
            "| {level} | {:.1} | {:.2} | {kept} of {} | {:.0} | {:.0} |",
            stored as f64 / 1e6,
            logical as f64 / stored as f64,
            chunks.len(),
            logical as f64 / 1e6 / ct,
            logical as f64 / 1e6 / dt
        );
    }
    Ok(())
}
