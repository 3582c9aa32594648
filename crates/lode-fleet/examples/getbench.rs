//! Cache-node GETs, side by side: two lode cache nodes (e.g. two builds of
//! `lode cache-node`) measured by the same client in the same run.
//!
//! ```text
//! cargo run --release -p lode-fleet --example getbench -- \
//!     --a H:P --b H:P [--gets 20000] [--rounds 6] [--round-secs 2] [--concurrency 16]
//! ```
//!
//! 1. One GET round trip on loopback, sequential, 128 KiB stripe, the two
//!    nodes interleaved in batches of 100: p50, p99, mean.
//! 2. Throughput: `--concurrency` GETs in flight over one HTTP/2
//!    connection, rounds alternating between the nodes: GETs per second.

use bytes::Bytes;
use lode_fleet::{stripe, Http2Nodes, StripeBackend};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STRIPE: usize = 128 * 1024 + stripe::HEADER;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 50.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let a = arg(&args, "--a").expect("--a HOST:PORT");
    let b = arg(&args, "--b").expect("--b HOST:PORT");
    let gets: usize = num(&args, "--gets", 20000);
    let rounds: usize = num(&args, "--rounds", 6);
    let round_secs: f64 = num(&args, "--round-secs", 2.0);
    let concurrency: usize = num(&args, "--concurrency", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let nodes: [Arc<dyn StripeBackend>; 2] = [
            Arc::new(Http2Nodes::new(vec![a.clone()])),
            Arc::new(Http2Nodes::new(vec![b.clone()])),
        ];
        let keys: Vec<String> = (0..64).map(|i| format!("g{i}")).collect();
        let value = Bytes::from(vec![0x5au8; STRIPE]);
        for n in &nodes {
            for k in &keys {
                n.put(0, k, value.clone()).await.expect("put");
            }
            for k in &keys {
                n.get(0, k).await.expect("warm-up get");
            }
        }
        println!("### One GET round trip, 128 KiB stripe (sequential, interleaved)\n");
        println!("| node | p50 µs | p99 µs | mean µs |");
        println!("|---|---:|---:|---:|");
        let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut i = 0;
        while i < gets {
            for (ni, n) in nodes.iter().enumerate() {
                for j in i..(i + 100).min(gets) {
                    let t = Instant::now();
                    let v = n.get(0, &keys[j % keys.len()]).await.expect("get");
                    lat[ni].push(t.elapsed().as_secs_f64() * 1e6);
                    assert_eq!(v.map(|v| v.len()), Some(STRIPE));
                }
            }
            i += 100;
        }
        let mut p50s = [0.0; 2];
        for (ni, name) in ["a", "b"].iter().enumerate() {
            let mut v = std::mem::take(&mut lat[ni]);
            v.sort_by(f64::total_cmp);
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            p50s[ni] = pct(&v, 50.0);
            println!(
                "| {name} | {:.1} | {:.1} | {mean:.1} |",
                pct(&v, 50.0),
                pct(&v, 99.0)
            );
        }
        println!("\nb/a p50: {:.3}\n", p50s[1] / p50s[0]);

        println!("### Throughput, {concurrency} GETs in flight (rounds alternate)\n");
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds * 2 {
            let ni = (round + round / 2) % 2;
            let n = nodes[ni].clone();
            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for t in 0..concurrency {
                let (n, stop, done, keys) = (n.clone(), stop.clone(), done.clone(), keys.clone());
                tasks.push(tokio::spawn(async move {
                    let mut j = t;
                    while !stop.load(Ordering::Relaxed) {
                        n.get(0, &keys[j % keys.len()])
                            .await
                            .expect("get")
                            .expect("present");
                        done.fetch_add(1, Ordering::Relaxed);
                        j += concurrency;
                    }
                }));
            }
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(round_secs)).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.await.expect("task");
            }
            rates[ni].push(done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64());
        }
        println!("| node | GETs/s per round | median |");
        println!("|---|---|---:|");
        let mut med = [0.0; 2];
        for (ni, name) in ["a", "b"].iter().enumerate() {
            let list: Vec<String> = rates[ni].iter().map(|r| format!("{r:.0}")).collect();
            med[ni] = median(rates[ni].clone());
            println!("| {name} | {} | {:.0} |", list.join(", "), med[ni]);
        }
        println!("\nb/a throughput: {:.3}", med[1] / med[0]);
    });
}
