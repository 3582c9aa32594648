//! Routing decisions per second of the worker manager against a simulated
//! fleet (issue 16's benchmark): `cargo bench -p lode-manager --bench routing`.
//!
//! The fleet: W workers of 32 slots and 32 GiB each, reporting every
//! second; F functions with Zipf-like popularity; every worker holds a few
//! idle warm sandboxes and caches a share of the images. Each decision is a
//! `place` then a `release` (capacity returns at once, so the fleet stays in
//! a steady state), measured over N decisions, single-threaded (the manager
//! takes one lock per decision). Reports are re-sent every 1,000 decisions
//! (W reports a second at 1,000 decisions per W ms).

use lode_lambda::{FunctionSpec, ImageRef, SandboxReport, WorkerReport};
use lode_manager::{Limits, Placer};
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn function(i: usize) -> FunctionSpec {
    FunctionSpec {
        tenant: format!("t{}", i % 50),
        name: format!("f{i}"),
        arn: format!("arn:aws:lambda:us-east-1:000000000000:function:f{i}"),
        revision: 1,
        image: format!("t{}/img{i}@sha256:{:064x}", i % 50, i)
            .parse::<ImageRef>()
            .expect("ref"),
        memory_mib: 512,
        timeout_s: 30,
        environment: Default::default(),
        entry_point: None,
        command: None,
        working_directory: None,
        image_config: Default::default(),
    }
}

fn reports(workers: usize, fns: &[FunctionSpec], rng: &mut Rng) -> Vec<WorkerReport> {
    (0..workers)
        .map(|w| {
            let sandboxes = (0..8)
                .map(|k| {
                    let f = &fns
                        [(rng.next() as usize % fns.len()).min(rng.next() as usize % fns.len())];
                    SandboxReport {
                        id: format!("w{w}-s{k}"),
                        key: f.sandbox_key(),
                        tenant: f.tenant.clone(),
                        memory_mib: f.memory_mib,
                        running: (k < 2).then(|| "busy".to_string()),
                        idle_ms: rng.next() % 60_000,
                    }
                })
                .collect();
            let images = (0..40)
                .map(|_| {
                    fns[rng.next() as usize % fns.len()]
                        .image
                        .digest
                        .clone()
                        .unwrap_or_default()
                })
                .collect();
            WorkerReport {
                worker: format!("w{w}"),
                epoch: 1,
                url: format!("http://127.0.1.{}:{}", w % 250 + 1, 9000 + w / 250),
                slots: 32,
                memory_mib: 32 * 1024,
                used_memory_mib: 4096,
                sandboxes,
                images,
            }
        })
        .collect()
}

fn main() {
    println!("| workers | functions | decisions | decisions/s | µs/decision | warm | cold (cached) | cold | shed |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &(workers, nfns) in &[(100usize, 1000usize), (1000, 10_000), (1000, 100_000)] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let fns: Vec<FunctionSpec> = (0..nfns).map(function).collect();
        let mut p = Placer::new(Limits::default(), 1);
        let now = Instant::now();
        let reps = reports(workers, &fns, &mut rng);
        for r in &reps {
            p.report(r.clone(), now);
        }
        let n = 200_000usize;
        let start = Instant::now();
        for i in 0..n {
            // Popular functions more often: min of two uniform draws.
            let f = &fns[(rng.next() as usize % nfns).min(rng.next() as usize % nfns)];
            if let Ok(Some(pl)) = p.place(f, now) {
                p.release(&pl.lease);
            }
            if i % 1000 == 999 {
                let w = rng.next() as usize % workers;
                p.report(reps[w].clone(), now);
            }
        }
        let took = start.elapsed();
        let c = p.counts;
        println!(
            "| {workers} | {nfns} | {n} | {:.0} | {:.2} | {} | {} | {} | {} |",
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / n as f64,
            c.warm,
            c.cold_cached,
            c.cold,
            c.shed_capacity + c.shed_tenant,
        );
        assert!(took < Duration::from_secs(600));
    }
}
