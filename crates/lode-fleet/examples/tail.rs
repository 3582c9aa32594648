//! Chunk read latency with one slow cache node, four read schemes side by side.
//!
//! ```text
//! cargo run --release -p lode-fleet --example tail -- [--nodes 5] [--reads 5000]
//!     [--chunks 64] [--slow-pct 5] [--slow-ms 20] [--seed 1]
//! ```
//!
//! Starts `--nodes` in-process `lode_fleet::node` servers (`NodeStore` +
//! `node::serve` on 127.0.0.1:0, on their own runtime), stores `--chunks`
//! random 512 KiB chunks in every layout, and reads them with:
//!
//! * `4-of-5`: [`FleetTier`] — 4 data + 1 XOR parity stripe on 5 nodes,
//!   all 5 GETs at once, first 4 answers win (5th cancelled);
//! * `4-of-4`: the 4 data stripes only, must wait for all 4;
//! * `1 copy`: the whole chunk on one node;
//! * `2 replicas, hedged`: the whole chunk on two nodes; GET the first, and
//!   if it has not answered after the hedge delay (the p95 of an unhedged
//!   single-copy read, measured first), GET the second; first answer wins.
//!
//! Placement is the fleet's rendezvous hashing for every scheme (stripe j or
//! replica j on `placement()[j]`). One node (`SLOW`, index 0) is wrapped by
//! a [`StripeBackend`] that delays `--slow-pct` % of its GETs by `--slow-ms`.
//! Every scheme verifies the chunk name (SHA-256) of what it returns, as the
//! agent does. Reads are sequential; every iteration picks a chunk and runs
//! the 4 schemes in rotating order, with the slow node on and (as a
//! baseline) off, so all 8 variants share the machine's noise.

use bytes::Bytes;
use futures::future::BoxFuture;
use lode_chunk::ChunkName;
use lode_fleet::{
    client::placement, node, stripe, FleetTier, Http2Nodes, NodeStore, StripeBackend,
};
use lode_tier::{ChunkId, ChunkTier};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHUNK: usize = 512 * 1024;

/// xorshift64*: deterministic, no dependency.
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
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// [`Http2Nodes`] with a delay on a fraction of one node's GETs, and
/// counters of GETs issued and bytes received.
#[derive(Debug)]
struct SlowNode {
    inner: Http2Nodes,
    slow: usize,
    fraction: f64,
    delay: Duration,
    enabled: AtomicBool,
    rng: Mutex<Rng>,
    gets: AtomicU64,
    bytes: AtomicU64,
    delayed: AtomicU64,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rng")
    }
}

impl StripeBackend for SlowNode {
    fn nodes(&self) -> &[String] {
        self.inner.nodes()
    }

    fn get<'a>(
        &'a self,
        node: usize,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, lode_fleet::BackendError>> {
        Box::pin(async move {
            self.gets.fetch_add(1, Ordering::Relaxed);
            if node == self.slow && self.enabled.load(Ordering::Relaxed) {
                let hit = self.rng.lock().unwrap_or_else(|p| p.into_inner()).unit() < self.fraction;
                if hit {
                    self.delayed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.delay).await;
                }
            }
            let r = self.inner.get(node, key).await;
            if let Ok(Some(b)) = &r {
                self.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            r
        })
    }

    fn put<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), lode_fleet::BackendError>> {
        self.inner.put(node, key, value)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scheme {
    FourOfFive,
    FourOfFour,
    OneCopy,
    Hedged,
}

const SCHEMES: [Scheme; 4] = [
    Scheme::FourOfFive,
    Scheme::FourOfFour,
    Scheme::OneCopy,
    Scheme::Hedged,
];

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::FourOfFive => "4-of-5 (first 4 win)",
            Scheme::FourOfFour => "4-of-4 striping",
            Scheme::OneCopy => "1 copy",
            Scheme::Hedged => "2 replicas, hedged",
        }
    }
    /// Stored bytes per chunk byte (stripe headers of 8 bytes ignored).
    fn storage(self) -> f64 {
        match self {
            Scheme::FourOfFive => 1.25,
            Scheme::FourOfFour | Scheme::OneCopy => 1.0,
            Scheme::Hedged => 2.0,
        }
    }
}

struct Chunk {
    name: ChunkName,
    data: Bytes,
    nodes: [usize; stripe::TOTAL],
}

fn whole_key(name: &ChunkName, r: usize) -> String {
    format!("{}.w{r}", name.to_hex())
}

fn stripe_key(name: &ChunkName, j: usize) -> String {
    format!("{}.{j}", name.to_hex())
}

async fn read_4of4(b: &SlowNode, c: &Chunk) -> Bytes {
    let gets = (0..stripe::DATA).map(|j| {
        let k = stripe_key(&c.name, j);
        async move { b.get(c.nodes[j], &k).await }
    });
    let parts: Vec<Bytes> = futures::future::join_all(gets)
        .await
        .into_iter()
        .map(|p| p.expect("GET").expect("present"))
        .collect();
    let (_, len) = stripe::header(&parts[0]).expect("stripe header");
    let mut out = Vec::with_capacity(len + stripe::DATA);
    for (j, s) in parts.iter().enumerate() {
        assert_eq!(stripe::header(s).map(|h| h.0), Some(j), "stripe {j}");
        out.extend_from_slice(&s[stripe::HEADER..]);
    }
    out.truncate(len);
    Bytes::from(out)
}

async fn read_one(b: &SlowNode, c: &Chunk) -> Bytes {
    b.get(c.nodes[0], &whole_key(&c.name, 0))
        .await
        .expect("GET")
        .expect("present")
}

async fn read_hedged(b: &SlowNode, c: &Chunk, after: Duration, hedges: &AtomicU64) -> Bytes {
    let k0 = whole_key(&c.name, 0);
    let k1 = whole_key(&c.name, 1);
    let first = b.get(c.nodes[0], &k0);
    tokio::pin!(first);
    tokio::select! {
        r = &mut first => return r.expect("GET").expect("present"),
        _ = tokio::time::sleep(after) => {}
    }
    hedges.fetch_add(1, Ordering::Relaxed);
    let second = b.get(c.nodes[1], &k1);
    tokio::pin!(second);
    tokio::select! {
        r = &mut first => r.expect("GET").expect("present"),
        r = &mut second => r.expect("GET").expect("present"),
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

#[derive(Default)]
struct Samples {
    ms: Vec<f64>,
    gets: u64,
    bytes: u64,
    touched_slow: u64,
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}")))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_nodes: usize = arg(&args, "--nodes", 5);
    let reads: usize = arg(&args, "--reads", 5000);
    let n_chunks: usize = arg(&args, "--chunks", 64);
    let slow_pct: f64 = arg(&args, "--slow-pct", 5.0);
    let slow_ms: f64 = arg(&args, "--slow-ms", 20.0);
    let seed: u64 = arg(&args, "--seed", 1);
    assert!(
        n_nodes >= 5,
        "--nodes must be at least 5 (5 stripes on distinct nodes)"
    );

    // Servers on their own runtime (own threads), like separate processes.
    let (tx, rx) = std::sync::mpsc::channel();
    let stores: Vec<Arc<NodeStore>> = (0..n_nodes)
        .map(|_| Arc::new(NodeStore::new(2 << 30, None).expect("node store")))
        .collect();
    let server_stores = stores.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut addrs = Vec::new();
            for s in server_stores {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addrs.push(l.local_addr().expect("addr").to_string());
                tokio::spawn(node::Node::new(s, node::Limits::default()).serve(l));
            }
            tx.send(addrs).expect("send");
            futures::future::pending::<()>().await;
        });
    });
    let addrs = rx.recv().expect("node addresses");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let backend = Arc::new(SlowNode {
            inner: Http2Nodes::new(addrs.clone()),
            slow: 0,
            fraction: slow_pct / 100.0,
            delay: Duration::from_secs_f64(slow_ms / 1e3),
            enabled: AtomicBool::new(false),
            rng: Mutex::new(Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)),
            gets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        });
        let fleet = FleetTier::new(backend.clone(), Duration::from_secs(5), "fleet");

        // Store every chunk in every layout.
        let mut rng = Rng(seed | 1);
        let mut chunks = Vec::new();
        for _ in 0..n_chunks {
            let mut v = vec![0u8; CHUNK];
            for c in v.chunks_mut(8) {
                c.copy_from_slice(&rng.next().to_le_bytes()[..c.len()]);
            }
            let data = Bytes::from(v);
            let name = ChunkName::of(&data);
            let nodes = placement(&addrs, &name);
            for (j, s) in stripe::encode(&data).into_iter().enumerate() {
                backend.put(nodes[j], &stripe_key(&name, j), Bytes::from(s)).await.expect("put stripe");
            }
            for (r, &node) in nodes.iter().take(2).enumerate() {
                backend.put(node, &whole_key(&name, r), data.clone()).await.expect("put copy");
            }
            chunks.push(Chunk { name, data, nodes });
        }
        let slow_share = chunks.iter().filter(|c| c.nodes[..4].contains(&0)).count();
        eprintln!(
            "{n_nodes} nodes, {n_chunks} chunks of 512 KiB; node 0 slowed ({slow_pct}% of GETs +{slow_ms} ms); \
             it holds a data stripe of {slow_share} chunks and the primary copy of {}",
            chunks.iter().filter(|c| c.nodes[0] == 0).count()
        );

        // Warm-up, then the hedge delay: p95 of single-copy reads, slow node on.
        backend.enabled.store(true, Ordering::Relaxed);
        let mut cal = Vec::new();
        for i in 0..1000 {
            let c = &chunks[i % chunks.len()];
            let t = Instant::now();
            let _ = read_one(&backend, c).await;
            cal.push(t.elapsed().as_secs_f64() * 1e3);
        }
        cal.sort_by(f64::total_cmp);
        let hedge_after = Duration::from_secs_f64(pct(&cal, 95.0) / 1e3);
        eprintln!("hedge delay = p95 of 1000 single-copy reads = {:.3} ms", hedge_after.as_secs_f64() * 1e3);

        let hedges = AtomicU64::new(0);
        let mut hedges_on = 0;
        // [slow on?][scheme]
        let mut samples: Vec<Vec<Samples>> = (0..2).map(|_| (0..4).map(|_| Samples::default()).collect()).collect();
        let wall = Instant::now();
        for i in 0..reads {
            let c = &chunks[(rng.next() % chunks.len() as u64) as usize];
            let id = ChunkId { root: "bench".into(), name: c.name };
            for on in [i % 2 == 0, i % 2 != 0] {
                backend.enabled.store(on, Ordering::Relaxed);
                for k in 0..4 {
                    let s = SCHEMES[(i + k) % 4];
                    let (g0, b0) = (backend.gets.load(Ordering::Relaxed), backend.bytes.load(Ordering::Relaxed));
                    let h0 = hedges.load(Ordering::Relaxed);
                    let t = Instant::now();
                    let got = match s {
                        Scheme::FourOfFive => fleet.fetch(&id).await.expect("4-of-5 read"),
                        Scheme::FourOfFour => read_4of4(&backend, c).await,
                        Scheme::OneCopy => read_one(&backend, c).await,
                        Scheme::Hedged => read_hedged(&backend, c, hedge_after, &hedges).await,
                    };
                    // The agent checks every chunk against its name; so do
                    // all schemes here (FleetTier already did, inside).
                    if s != Scheme::FourOfFive {
                        assert!(ChunkName::of(&got) == c.name, "{} returned wrong bytes", s.name());
                    }
                    assert_eq!(got.len(), c.data.len(), "{}: chunk length", s.name());
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let e = &mut samples[on as usize][k_index(s)];
                    e.ms.push(ms);
                    e.gets += backend.gets.load(Ordering::Relaxed) - g0;
                    e.bytes += backend.bytes.load(Ordering::Relaxed) - b0;
                    let touched = match s {
                        Scheme::FourOfFive => true,
                        Scheme::FourOfFour => c.nodes[..4].contains(&0),
                        Scheme::OneCopy => c.nodes[0] == 0,
                        Scheme::Hedged => c.nodes[0] == 0 || (hedges.load(Ordering::Relaxed) > h0 && c.nodes[1] == 0),
                    };
                    e.touched_slow += touched as u64;
                    if on && s == Scheme::Hedged {
                        hedges_on += hedges.load(Ordering::Relaxed) - h0;
                    }
                }
            }
        }
        let m = &fleet.metrics;
        eprintln!(
            "{} reads per variant in {:.1} s; slow-node GETs delayed: {}; FleetTier first4 {} needed5th {} reconstructions {}",
            reads,
            wall.elapsed().as_secs_f64(),
            backend.delayed.load(Ordering::Relaxed),
            m.first4.load(Ordering::Relaxed),
            m.needed_fifth.load(Ordering::Relaxed),
            m.reconstructions.load(Ordering::Relaxed)
        );

        println!(
            "| scheme | slow node | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | mean ms | GETs / read | bytes received / chunk | storage × | reads touching slow node |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut med = [[0.0; 4]; 2];
        let mut p99 = [[0.0; 4]; 2];
        for on in [1usize, 0] {
            for s in SCHEMES {
                let e = &mut samples[on][k_index(s)];
                e.ms.sort_by(f64::total_cmp);
                let n = e.ms.len() as f64;
                let mean = e.ms.iter().sum::<f64>() / n;
                med[on][k_index(s)] = pct(&e.ms, 50.0);
                p99[on][k_index(s)] = pct(&e.ms, 99.0);
                println!(
                    "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.3} | {:.2} | {:.1} % |",
                    s.name(),
                    if on == 1 { "on" } else { "off" },
                    pct(&e.ms, 50.0),
                    pct(&e.ms, 90.0),
                    pct(&e.ms, 99.0),
                    pct(&e.ms, 99.9),
                    e.ms.last().copied().unwrap_or(f64::NAN),
                    mean,
                    e.gets as f64 / n,
                    e.bytes as f64 / n / CHUNK as f64,
                    s.storage(),
                    100.0 * e.touched_slow as f64 / n
                );
            }
        }
        println!();
        println!(
            "Hedge delay {:.3} ms; hedges sent (slow node on): {} of {} reads ({:.1} %).",
            hedge_after.as_secs_f64() * 1e3,
            hedges_on,
            reads,
            100.0 * hedges_on as f64 / reads as f64
        );
        println!();
        println!("| ratio (slow node on) | p50 | p99 |");
        println!("|---|---:|---:|");
        for s in [Scheme::FourOfFour, Scheme::OneCopy, Scheme::Hedged] {
            println!(
                "| 4-of-5 / {} | {:.2} | {:.2} |",
                s.name(),
                med[1][0] / med[1][k_index(s)],
                p99[1][0] / p99[1][k_index(s)]
            );
        }
        let _ = stores;
    });
}

fn k_index(s: Scheme) -> usize {
    SCHEMES.iter().position(|&x| x == s).expect("scheme")
}
