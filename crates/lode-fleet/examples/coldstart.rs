//! Where the time of a cold `lode cat` goes: the same steps as
//! `lode cat NAME PATH` (crates/lode-cli/src/cmd/cat.rs) with a clock on
//! each, and every chunk fetch from the fleet logged.
//!
//! ```text
//! LODE_HOME=... cargo run --release -p lode-fleet --example coldstart -- \
//!     --store DIR --tenant T --name N --path /usr/bin/python3.11 \
//!     --cache-nodes H:P,... [--runs 20] [--fetches]
//! ```
//!
//! Each run uses a fresh empty host cache directory and a fresh reader (a
//! cold host, as `lode cat` is), in one process: process start-up is not
//! included, as it is not in `lode cat`'s own "first byte" figure either.
//! With `--fetches`, the first run prints each fleet fetch (start and
//! duration relative to the run's start).

use bytes::Bytes;
use futures::future::BoxFuture;
use lode_agent::{ChunkReader, ImageHandle};
use lode_cache::{DiskCache, HostKey};
use lode_chunk::{Keyring, Manifest};
use lode_store::{open_image, Store};
use lode_tier::{ChunkId, ChunkTier, TierError};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tier that logs every fetch: (start since t0, duration, phase).
#[derive(Debug)]
struct Logged {
    inner: Arc<dyn ChunkTier>,
    t0: Instant,
    phase: Arc<Mutex<&'static str>>,
    log: Mutex<Vec<(f64, f64, &'static str)>>,
}

impl ChunkTier for Logged {
    fn label(&self) -> &'static str {
        self.inner.label()
    }
    fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move {
            let s = Instant::now();
            let r = self.inner.fetch(id).await;
            let phase = *self.phase.lock().unwrap_or_else(|p| p.into_inner());
            self.log.lock().unwrap_or_else(|p| p.into_inner()).push((
                (s - self.t0).as_secs_f64() * 1e3,
                s.elapsed().as_secs_f64() * 1e3,
                phase,
            ));
            r
        })
    }
    fn fill(&self, id: &ChunkId, ciphertext: Bytes) {
        self.inner.fill(id, ciphertext)
    }
}

struct Lazy {
    image: Arc<ImageHandle>,
    rt: tokio::runtime::Handle,
    reads: Arc<Mutex<(u64, f64)>>,
}

impl ext4_view::Ext4Read for Lazy {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let t = Instant::now();
        let range = self.image.range(start, dst.len() as u64)?;
        let b = self.rt.block_on(self.image.read(range))?;
        dst.copy_from_slice(&b);
        let mut g = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        g.1 += t.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[i.clamp(1, s.len()) - 1]
}

const PHASES: [&str; 9] = [
    "runtime",
    "reader",
    "image pointer",
    "manifest get",
    "manifest decode",
    "key unwrap",
    "open_image",
    "ext4 load",
    "path lookup",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let store_url = arg(&args, "--store").expect("--store");
    let tenant = arg(&args, "--tenant").expect("--tenant");
    let name = arg(&args, "--name").expect("--name");
    let path = arg(&args, "--path").expect("--path");
    let spec = arg(&args, "--cache-nodes");
    let runs: usize = arg(&args, "--runs")
        .map(|r| r.parse().expect("--runs"))
        .unwrap_or(20);
    let show = args.iter().any(|a| a == "--fetches");
    let home = PathBuf::from(std::env::var_os("LODE_HOME").expect("LODE_HOME"));
    let scratch = tempfile::tempdir().expect("tempdir");

    // [phase] -> ms per run; plus first byte, total, fetches.
    let mut phase_ms: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len() + 3];
    let mut ext4_reads = Vec::new();
    let mut fetch_ms = Vec::new();
    let mut fetches_per_run = Vec::new();
    for run in 0..runs {
        let t0 = Instant::now();
        let mut mark = Instant::now();
        let lap = |i: usize, m: &mut Instant, v: &mut Vec<Vec<f64>>| {
            v[i].push(m.elapsed().as_secs_f64() * 1e3);
            *m = Instant::now();
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        lap(0, &mut mark, &mut phase_ms);
        let store = Store::open(&store_url).expect("store");
        let key = HostKey::load_or_create(&scratch.path().join("disk-tier.key")).expect("host key");
        let disk = DiskCache::open(scratch.path().join(format!("cache{run}")), 10 << 30, key)
            .expect("disk cache");
        let phase = Arc::new(Mutex::new("open"));
        let mut tiers: Vec<Arc<dyn ChunkTier>> = Vec::new();
        let logged = spec.as_ref().map(|s| {
            let f: Arc<dyn ChunkTier> =
                Arc::new(lode_fleet::from_spec(s, Duration::from_millis(500)).expect("fleet"));
            Arc::new(Logged {
                inner: f,
                t0,
                phase: phase.clone(),
                log: Mutex::new(Vec::new()),
            })
        });
        if let Some(l) = &logged {
            tiers.push(l.clone());
        }
        tiers.push(Arc::new(store.clone()));
        let reader = Arc::new(ChunkReader::new(256 << 20, Some(disk), tiers));
        lap(1, &mut mark, &mut phase_ms);
        // The steps of open_image, timed one by one...
        let keys = Keyring::new(home.join("keys"));
        let digest = rt
            .block_on(store.get_image(&tenant, &name))
            .expect("image pointer");
        lap(2, &mut mark, &mut phase_ms);
        let bytes = rt
            .block_on(store.get_manifest(&tenant, &digest))
            .expect("manifest");
        lap(3, &mut mark, &mut phase_ms);
        let manifest = Manifest::decode(&bytes).expect("decode");
        lap(4, &mut mark, &mut phase_ms);
        let _table = manifest.open(&keys).expect("keys");
        lap(5, &mut mark, &mut phase_ms);
        // ... and the real call `lode cat` makes (it repeats them all).
        let opened = rt
            .block_on(open_image(&store, &keys, &tenant, &name))
            .expect("open_image");
        lap(6, &mut mark, &mut phase_ms);
        let image = Arc::new(ImageHandle::new(
            format!("{tenant}/{name}"),
            opened,
            reader.clone(),
        ));
        let reads = Arc::new(Mutex::new((0u64, 0f64)));
        *phase.lock().unwrap_or_else(|p| p.into_inner()) = "ext4 load";
        let fs = ext4_view::Ext4::load(Box::new(Lazy {
            image: image.clone(),
            rt: rt.handle().clone(),
            reads: reads.clone(),
        }))
        .expect("ext4 load");
        lap(7, &mut mark, &mut phase_ms);
        *phase.lock().unwrap_or_else(|p| p.into_inner()) = "path lookup";
        let mut file = fs.open(path.as_str()).expect("open path");
        lap(8, &mut mark, &mut phase_ms);
        *phase.lock().unwrap_or_else(|p| p.into_inner()) = "file data";
        let mut buf = vec![0u8; 1 << 20];
        let mut first = None;
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64() * 1e3);
            total += n as u64;
        }
        std::hint::black_box(total);
        phase_ms[PHASES.len()].push(first.unwrap_or_default());
        phase_ms[PHASES.len() + 1].push(t0.elapsed().as_secs_f64() * 1e3);
        ext4_reads.push(reads.lock().unwrap_or_else(|p| p.into_inner()).0 as f64);
        if let Some(l) = &logged {
            let log = l.log.lock().unwrap_or_else(|p| p.into_inner());
            fetches_per_run.push(log.len() as f64);
            fetch_ms.extend(log.iter().map(|x| x.1));
            if show && run == 0 {
                println!(
                    "run 0: {} fleet fetches (start ms, took ms, phase):",
                    log.len()
                );
                for (s, d, p) in log.iter() {
                    println!("  {s:8.2} {d:7.2}  {p}");
                }
                println!();
            }
        }
        drop(fs);
        drop(rt);
    }
    println!("| step ({runs} cold runs, one process) | p50 ms | p99 ms |");
    println!("|---|---:|---:|");
    for (i, p) in PHASES.iter().enumerate() {
        println!(
            "| {p} | {:.2} | {:.2} |",
            pct(&phase_ms[i], 50.0),
            pct(&phase_ms[i], 99.0)
        );
    }
    println!(
        "| **first byte** (from start) | {:.2} | {:.2} |",
        pct(&phase_ms[PHASES.len()], 50.0),
        pct(&phase_ms[PHASES.len()], 99.0)
    );
    println!(
        "| **total** (from start) | {:.2} | {:.2} |",
        pct(&phase_ms[PHASES.len() + 1], 50.0),
        pct(&phase_ms[PHASES.len() + 1], 99.0)
    );
    if !fetch_ms.is_empty() {
        println!(
            "\nfleet fetches per run {:.0}; one fetch p50 {:.2} ms, p99 {:.2} ms; ext4 reads per run {:.0}",
            pct(&fetches_per_run, 50.0),
            pct(&fetch_ms, 50.0),
            pct(&fetch_ms, 99.0),
            pct(&ext4_reads, 50.0)
        );
    }
    // Per-chunk CPU work on the read path besides the fetch, for scale.
    let data = Bytes::from(vec![0x5au8; 512 * 1024]);
    let mut h = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        std::hint::black_box(lode_chunk::ChunkName::of(&data));
        h.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let key = HostKey::load_or_create(&scratch.path().join("disk-tier.key")).expect("host key");
    let disk = DiskCache::open(scratch.path().join("puts"), 1 << 30, key).expect("disk cache");
    let mut w = Vec::new();
    for i in 0..50u8 {
        let mut v = data.to_vec();
        v[0] = i;
        let v = Bytes::from(v);
        let name = lode_chunk::ChunkName::of(&v);
        let plain_sha = name.0; // the SHA-256 of these bytes
        let t = Instant::now();
        rt.block_on(disk.put(name, plain_sha, v));
        w.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "per 512 KiB chunk: SHA-256 p50 {:.2} ms (done 3× per fleet chunk: FleetTier name check, reader name check, plaintext check); \
         host disk-cache put (in the background unless 32 are pending) p50 {:.2} ms, p99 {:.2} ms",
        pct(&h, 50.0),
        pct(&w, 50.0),
        pct(&w, 99.0)
    );
}
