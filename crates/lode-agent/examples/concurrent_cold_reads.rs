//! Reproduction: concurrent cold reads of the same chunk each decrypt it.
//!
//! ```text
//! LODE_HOME=... cargo run --release -p lode-agent --example concurrent_cold_reads -- STORE TENANT NAME [CHUNKS]
//! ```
//!
//! Single-flight in [`ChunkReader`] covers the ciphertext fetch only: every
//! caller waiting on the flight gets the ciphertext back and then runs
//! `open_chunk` (AES-256-CTR + SHA-256 of 512 KiB) itself. An NBD client
//! (kernel readahead of 128 KiB, nbdcopy's 256 KiB requests) usually has
//! several requests inside one 512 KiB chunk in flight at once, so a cold
//! chunk is decrypted and verified up to that many times.
//!
//! For R = 1, 2, 4, 8 concurrent readers per chunk, this reads the first
//! CHUNKS (default 256) stored chunks of the image cold (fresh reader, no
//! disk cache, store behind 20 ms so that the R readers overlap) and prints
//! the store fetches and the process CPU time per chunk. With one decrypt per
//! chunk the CPU per chunk would stay flat as R grows.

use lode_agent::{ChunkReader, ImageHandle};
use lode_chunk::Keyring;
use lode_store::{open_image, Store};
use lode_tier::{ChunkTier, Delayed};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cpu_secs() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/PID/stat; `after` starts at field 3.
    (t(11) + t(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 3 {
        eprintln!(
            "usage: concurrent_cold_reads STORE TENANT NAME [CHUNKS]  (LODE_HOME holds the keys)"
        );
        std::process::exit(2);
    }
    let n: usize = a.get(3).and_then(|v| v.parse().ok()).unwrap_or(256);
    let home = std::env::var_os("LODE_HOME")
        .map(PathBuf::from)
        .ok_or("LODE_HOME must be set")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let store = Store::open(&a[0])?;
        let keys = Keyring::new(home.join("keys"));
        let opened = open_image(&store, &keys, &a[1], &a[2]).await?;
        let stored: Vec<u64> =
            opened.manifest.names.iter().enumerate().filter(|(_, x)| x.is_some()).map(|(i, _)| i as u64).take(n).collect();
        println!("| readers per chunk | chunks | store fetches | memory misses | CPU s | CPU ms per chunk | wall s |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for r in [1usize, 2, 4, 8] {
            let tier: Arc<dyn ChunkTier> = Arc::new(Delayed::new(store.clone(), Duration::from_millis(20), None));
            let reader = Arc::new(ChunkReader::new(8 << 30, None, vec![tier]));
            let image = Arc::new(ImageHandle::new("x/y".into(), opened.clone(), reader.clone()));
            let (c0, t0) = (cpu_secs(), Instant::now());
            futures::future::join_all(stored.chunks(16).map(|group| {
                let image = image.clone();
                let group = group.to_vec();
                async move {
                    for i in group {
                        let reads = (0..r).map(|_| image.chunk(i));
                        for x in futures::future::join_all(reads).await {
                            x.expect("chunk read");
                        }
                    }
                }
            }))
            .await;
            let (cpu, wall) = (cpu_secs() - c0, t0.elapsed().as_secs_f64());
            println!(
                "| {r} | {} | {} | {} | {cpu:.2} | {:.2} | {wall:.2} |",
                stored.len(),
                reader.fetched_from(0).0,
                reader.memory_metrics.misses.load(Ordering::Relaxed),
                cpu * 1e3 / stored.len() as f64
            );
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
