//! Cache-node GET latency and fleet throughput: lode nodes vs memcached.
//!
//! ```text
//! cargo run --release -p lode-fleet --example nodebench -- \
//!     --lode-nodes H:P,H:P,H:P,H:P,H:P --memcached H:P,H:P,H:P,H:P,H:P \
//!     [--gets 20000] [--rounds 5] [--round-secs 2] [--concurrency 16] [--disk DIR]
//! ```
//!
//! 1. `NodeStore::get` in process (memory tier; and disk tier with `--disk`):
//!    the server-side cost of a GET, without any protocol.
//! 2. One GET round trip on loopback, sequential, to the first node of
//!    each list: lode (HTTP/2, [`Http2Nodes`]) vs memcached (meta protocol,
//!    [`Memcached`]), for a 128 KiB stripe and a 512 KiB value, interleaved
//!    in batches of 100.
//! 3. Fleet throughput: [`FleetTier`] reads (4 of 5 stripes, name check)
//!    of 64 distinct 512 KiB chunks with `--concurrency` reads in flight,
//!    alternating rounds of lode nodes and memcached.
//!
//! The nodes are separate processes the caller starts (scripts/bench-fleet.sh).

use bytes::Bytes;
use lode_chunk::ChunkName;
use lode_fleet::{
    client::placement, stripe, FleetTier, Http2Nodes, Memcached, NodeStore, StripeBackend,
};
use lode_tier::{ChunkId, ChunkTier};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Bytes {
        let mut v = vec![0u8; n];
        for c in v.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes()[..c.len()]);
        }
        Bytes::from(v)
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad {name}")))
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        pct(&v, 50.0),
        pct(&v, 99.0),
        pct(&v, 99.9),
        v.iter().sum::<f64>() / v.len() as f64,
    )
}

const STRIPE: usize = 128 * 1024 + stripe::HEADER;
const CHUNK: usize = 512 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lode: Vec<String> = arg(&args, "--lode-nodes")
        .expect("--lode-nodes")
        .split(',')
        .map(String::from)
        .collect();
    let mc: Vec<String> = arg(&args, "--memcached")
        .expect("--memcached")
        .split(',')
        .map(String::from)
        .collect();
    let gets: usize = num(&args, "--gets", 20000);
    let rounds: usize = num(&args, "--rounds", 5);
    let round_secs: f64 = num(&args, "--round-secs", 2.0);
    let concurrency: usize = num(&args, "--concurrency", 16);
    let disk = arg(&args, "--disk");
    let mut rng = Rng(0x5eed);

    // 1. NodeStore::get in process.
    println!("### NodeStore::get in process (no protocol)\n");
    println!("| tier | value | p50 µs | p99 µs | p99.9 µs | mean µs |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut tiers: Vec<(&str, NodeStore)> =
        vec![("memory", NodeStore::new(1 << 30, None).expect("store"))];
    if let Some(d) = &disk {
        let _ = std::fs::remove_dir_all(d);
        tiers.push((
            "disk (page cache)",
            NodeStore::new(1, Some((d.into(), 1 << 30))).expect("disk store"),
        ));
    }
    for (tier, store) in &tiers {
        for (label, size) in [("128 KiB stripe", STRIPE), ("512 KiB", CHUNK)] {
            let keys: Vec<String> = (0..64).map(|i| format!("k{size}-{i}")).collect();
            for k in &keys {
                store.put(k.clone(), rng.bytes(size));
            }
            let mut v = Vec::with_capacity(gets);
            for i in 0..gets {
                let t = Instant::now();
                let b = store.get(&keys[i % keys.len()]).expect("present");
                std::hint::black_box(&b);
                v.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let (p50, p99, p999, mean) = summary(v);
            println!("| {tier} | {label} | {p50:.2} | {p99:.2} | {p999:.2} | {mean:.2} |");
        }
    }
    if let Some(d) = &disk {
        let _ = std::fs::remove_dir_all(d);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let h2: Arc<dyn StripeBackend> = Arc::new(Http2Nodes::new(lode.clone()));
        let mcb: Arc<dyn StripeBackend> = Arc::new(Memcached::new(mc.clone()));
        let backends = [("lode cache-node (HTTP/2)", h2.clone()), ("memcached (meta protocol)", mcb.clone())];

        // 2. Round trips, sequential, interleaved in batches of 100.
        println!("\n### One GET round trip on loopback (sequential)\n");
        println!("| server | value | p50 µs | p99 µs | p99.9 µs | mean µs |");
        println!("|---|---|---:|---:|---:|---:|");
        for (label, size) in [("128 KiB stripe", STRIPE), ("512 KiB", CHUNK)] {
            let keys: Vec<String> = (0..64).map(|i| format!("rt{size}-{i}")).collect();
            for (_, b) in &backends {
                for k in &keys {
                    b.put(0, k, rng.bytes(size)).await.expect("put");
                }
                for k in keys.iter().take(32) {
                    b.get(0, k).await.expect("warm-up get");
                }
            }
            let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
            let mut i = 0;
            while i < gets {
                for (bi, (_, b)) in backends.iter().enumerate() {
                    for j in i..(i + 100).min(gets) {
                        let t = Instant::now();
                        let v = b.get(0, &keys[j % keys.len()]).await.expect("get").expect("present");
                        lat[bi].push(t.elapsed().as_secs_f64() * 1e6);
                        assert_eq!(v.len(), size);
                    }
                }
                i += 100;
            }
            for (bi, (name, _)) in backends.iter().enumerate() {
                let (p50, p99, p999, mean) = summary(std::mem::take(&mut lat[bi]));
                println!("| {name} | {label} | {p50:.1} | {p99:.1} | {p999:.1} | {mean:.1} |");
            }
        }

        // 3. FleetTier throughput.
        let mut chunks = Vec::new();
        for _ in 0..64 {
            let data = rng.bytes(CHUNK);
            chunks.push((ChunkName::of(&data), data));
        }
        for (_, b) in &backends {
            for (name, data) in &chunks {
                let nodes = placement(b.nodes(), name);
                for (j, s) in stripe::encode(data).into_iter().enumerate() {
                    b.put(nodes[j], &format!("{}.{j}", name.to_hex()), Bytes::from(s)).await.expect("put stripe");
                }
            }
        }
        let names: Arc<Vec<ChunkName>> = Arc::new(chunks.iter().map(|c| c.0).collect());
        let mut gbps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds * 2 {
            // Alternate which backend goes first.
            let bi = (round + round / 2) % 2;
            let tier = Arc::new(FleetTier::new(backends[bi].1.clone(), Duration::from_secs(5), "fleet"));
            let stop = Arc::new(AtomicBool::new(false));
            let bytes = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for w in 0..concurrency {
                let (tier, stop, bytes, names) = (tier.clone(), stop.clone(), bytes.clone(), names.clone());
                tasks.push(tokio::spawn(async move {
                    let mut l = Vec::new();
                    let mut i = w * 7;
                    while !stop.load(Ordering::Relaxed) {
                        let id = ChunkId { root: "b".into(), name: names[i % names.len()] };
                        let t = Instant::now();
                        let b = tier.fetch(&id).await.expect("fleet read");
                        l.push(t.elapsed().as_secs_f64() * 1e3);
                        bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        i += 1;
                    }
                    l
                }));
            }
            let t = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(round_secs)).await;
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                lat[bi].extend(task.await.expect("task"));
            }
            let secs = t.elapsed().as_secs_f64();
            gbps[bi].push(bytes.load(Ordering::Relaxed) as f64 / secs / 1e9);
        }
        println!("\n### FleetTier throughput, {concurrency} chunk reads in flight, 512 KiB chunks, {rounds} × {round_secs} s rounds each (interleaved)\n");
        println!("| nodes | GB/s median | GB/s min | GB/s max | chunk read p50 ms | p99 ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        let mut med = [0.0; 2];
        for (bi, (name, _)) in backends.iter().enumerate() {
            let mut g = gbps[bi].clone();
            g.sort_by(f64::total_cmp);
            med[bi] = pct(&g, 50.0);
            let (p50, p99, _, _) = summary(std::mem::take(&mut lat[bi]));
            println!("| {name} | {:.3} | {:.3} | {:.3} | {p50:.2} | {p99:.2} |", med[bi], g[0], g[g.len() - 1]);
        }
        println!("\nlode / memcached throughput ratio: {:.2}", med[0] / med[1]);

        // Connection churn: a first-4-wins read drops its 5th GET; the
        // memcached backend cannot return a connection with a reply still in
        // flight to its pool, so it closes it. Sequential reads, one at a time.
        let conns = |addrs: &[String]| -> u64 { addrs.iter().map(|a| memcached_stat(a, "total_connections")).sum() };
        let tier = FleetTier::new(mcb.clone(), Duration::from_secs(5), "fleet");
        let before = conns(&mc);
        let n = 1000;
        for i in 0..n {
            let id = ChunkId { root: "b".into(), name: names[i % names.len()] };
            tier.fetch(&id).await.expect("fleet read");
        }
        let opened = conns(&mc) - before - mc.len() as u64;
        println!(
            "\nmemcached connections opened by {n} sequential FleetTier reads (5 GETs each): {opened} ({:.2} per read)",
            opened as f64 / n as f64
        );
    });
}

/// One `stats` counter of a memcached server (opens its own connection).
fn memcached_stat(addr: &str, key: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("memcached stats");
    s.write_all(b"stats\r\n").expect("stats");
    let mut text = String::new();
    let mut b = [0u8; 8192];
    while !text.ends_with("END\r\n") {
        let n = s.read(&mut b).expect("stats");
        assert!(n > 0, "memcached closed during stats");
        text.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("STAT {key} "))
                .and_then(|v| v.trim().parse().ok())
        })
        .expect("stat present")
}
