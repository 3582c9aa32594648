//! Agent benchmark helper (used by `scripts/bench-agent.sh`).
//!
//! ```text
//! bench_agent fetch-all --store DIR --tenant T --name N --cache-dir D
//!             [--latency-ms 20] [--bandwidth 100000000] [--concurrency 16]
//! ```
//!
//! "Download everything first": opens the image the way the agent does and
//! reads every unique stored chunk through a [`ChunkReader`] (disk cache →
//! store tier), `--concurrency` chunks at a time. Every chunk is fetched,
//! checked against its name, written to the disk cache in `--cache-dir`, then
//! decrypted and verified against the sealed manifest, exactly as on the lazy
//! path; so a later `lode cat --cache-dir D` reads everything from local disk.
//!
//! The store tier is slowed down by lode's own [`Delayed`] wrapper, the one
//! behind `lode agent/cat --inject-store-latency-ms/--inject-store-bandwidth`:
//! every GET waits `latency` (GETs in flight wait in parallel), then its bytes
//! go through one shared link of `bandwidth` bytes/s (transfers queue behind
//! each other), i.e. a real 100 MB/s link.
//!
//! Prints one line of `key=value` pairs.

use futures::StreamExt;
use lode_agent::{ChunkReader, ImageHandle};
use lode_cache::{DiskCache, HostKey};
use lode_chunk::Keyring;
use lode_store::{open_image, Store};
use lode_tier::{ChunkTier, Delayed};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Opts {
    store: String,
    tenant: String,
    name: String,
    cache_dir: PathBuf,
    latency_ms: f64,
    bandwidth: u64,
    concurrency: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_agent fetch-all --store DIR --tenant T --name N --cache-dir D \
         [--latency-ms 20] [--bandwidth 100000000] [--concurrency 16]"
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut a = std::env::args().skip(1);
    if a.next().as_deref() != Some("fetch-all") {
        usage();
    }
    let mut o = Opts {
        store: String::new(),
        tenant: String::new(),
        name: String::new(),
        cache_dir: PathBuf::new(),
        latency_ms: 20.0,
        bandwidth: 100_000_000,
        concurrency: 16,
    };
    while let Some(k) = a.next() {
        let v = a.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--store" => o.store = v,
            "--tenant" => o.tenant = v,
            "--name" => o.name = v,
            "--cache-dir" => o.cache_dir = v.into(),
            "--latency-ms" => o.latency_ms = v.parse().unwrap_or_else(|_| usage()),
            "--bandwidth" => o.bandwidth = v.parse().unwrap_or_else(|_| usage()),
            "--concurrency" => o.concurrency = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if o.store.is_empty()
        || o.tenant.is_empty()
        || o.name.is_empty()
        || o.cache_dir.as_os_str().is_empty()
    {
        usage();
    }
    o
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = parse();
    let home = std::env::var_os("LODE_HOME")
        .map(PathBuf::from)
        .ok_or("LODE_HOME must be set")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let store = Store::open(&o.store)?;
        let keys = Keyring::new(home.join("keys"));
        let start = Instant::now();
        let opened = open_image(&store, &keys, &o.tenant, &o.name).await?;
        let latency = Duration::from_secs_f64(o.latency_ms / 1e3);
        let tier: Arc<dyn ChunkTier> =
            Arc::new(Delayed::new(store.clone(), latency, Some(o.bandwidth)));
        let disk = DiskCache::open(
            &o.cache_dir,
            64 << 30,
            HostKey::load_or_create(&home.join("disk-tier.key"))?,
        )?;
        // No memory cache: this is a download, the plaintext is not kept.
        let reader = Arc::new(ChunkReader::new(0, Some(disk), vec![tier]));
        let image = Arc::new(ImageHandle::new(format!("{}/{}", o.tenant, o.name), opened, reader.clone()));
        // One index per unique stored chunk.
        let mut seen = HashSet::new();
        let todo: Vec<u64> = image
            .image
            .manifest
            .names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.filter(|n| seen.insert(*n)).map(|_| i as u64))
            .collect();
        let unique = todo.len();
        let errors = futures::stream::iter(todo)
            .map(|i| {
                let image = image.clone();
                async move { image.chunk(i).await.is_err() }
            })
            .buffer_unordered(o.concurrency.max(1))
            .filter(|e| futures::future::ready(*e))
            .count()
            .await;
        let secs = start.elapsed().as_secs_f64();
        let (fetched, bytes) = reader.fetched_from(0);
        let disk_hits = reader.disk_metrics.hits.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "fetch-all concurrency={} image_size={} chunks={} unique_stored={} fetched={} disk_hits={} bytes={} errors={} secs={:.3} mb_per_s={:.1}",
            o.concurrency,
            image.size(),
            image.chunks(),
            unique,
            fetched,
            disk_hits,
            bytes,
            errors,
            secs,
            bytes as f64 / 1e6 / secs.max(1e-9)
        );
        if errors > 0 {
            return Err(format!("{errors} chunks failed").into());
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
