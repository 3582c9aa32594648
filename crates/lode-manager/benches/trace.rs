//! Fraction of invocations served warm in a bursty synthetic trace (issue
//! 16's benchmark): `cargo bench -p lode-manager --bench trace`.
//!
//! The manager's real placement ([`Placer`]) against simulated workers, on
//! a simulated clock. Workers: 100 of 32 slots and 32 GiB. Functions: 500
//! with Zipf(1.1) popularity and 128-1024 MiB guests. Arrivals: Poisson at
//! 300/s, plus a burst every 10 s that sends 2× the base rate (600/s) to one
//! function for 1 s (a fan-out). An invocation runs 20-400 ms, a cold start adds
//! 1 s. A sandbox idle longer than the keep-alive is stopped; a worker
//! stops its least recently used idle sandbox when a cold start needs its
//! slot or memory. Workers report every second (the manager decides on
//! state up to 1 s old, as it does in service); a warm sandbox the manager
//! chose that is busy by then costs a cold start on that worker. A request
//! with no capacity waits (50 ms retries) up to 2 s, then is shed.

use lode_lambda::{FunctionSpec, ImageRef, SandboxReport, WorkerReport};
use lode_manager::{Limits, Placer};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn exp(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }
}

#[derive(Clone)]
struct Sandbox {
    id: String,
    key: String,
    tenant: String,
    memory: u32,
    busy: bool,
    last_used: f64,
}

struct SimWorker {
    sandboxes: Vec<Sandbox>,
    next: u64,
}

const WORKERS: usize = 100;
const SLOTS: usize = 32;
const MEMORY: u64 = 32 * 1024;

fn report(w: usize, sw: &SimWorker, now: f64) -> WorkerReport {
    WorkerReport {
        worker: format!("w{w}"),
        epoch: 1,
        url: format!("http://127.0.1.{}:9000", w + 1),
        slots: SLOTS as u32,
        memory_mib: MEMORY,
        used_memory_mib: sw.sandboxes.iter().map(|s| u64::from(s.memory)).sum(),
        sandboxes: sw
            .sandboxes
            .iter()
            .map(|s| SandboxReport {
                id: s.id.clone(),
                key: s.key.clone(),
                tenant: s.tenant.clone(),
                memory_mib: s.memory,
                running: s.busy.then(|| "r".to_string()),
                idle_ms: if s.busy {
                    0
                } else {
                    ((now - s.last_used) * 1e3) as u64
                },
            })
            .collect(),
        images: Vec::new(),
    }
}

enum Ev {
    Arrive(usize),
    Retry(usize, f64),
    Done {
        w: usize,
        sandbox: String,
        lease: String,
    },
    Report(usize),
}

fn simulate(keep_alive: f64, seconds: f64) -> (u64, u64, u64, u64, f64) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let nf = 500;
    let weights: Vec<f64> = (1..=nf).map(|i| 1.0 / (i as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let fns: Vec<FunctionSpec> = (0..nf)
        .map(|i| FunctionSpec {
            tenant: format!("t{}", i % 20),
            name: format!("f{i}"),
            arn: format!("arn:aws:lambda:us-east-1:000000000000:function:f{i}"),
            revision: 1,
            image: format!("t{}/i{i}@sha256:{:064x}", i % 20, i)
                .parse::<ImageRef>()
                .expect("ref"),
            memory_mib: 128 << (i % 4),
            timeout_s: 30,
            environment: Default::default(),
            entry_point: None,
            command: None,
            working_directory: None,
            image_config: Default::default(),
        })
        .collect();
    let pick = |rng: &mut Rng| {
        let mut x = rng.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        nf - 1
    };
    let base = Instant::now();
    let at = |t: f64| base + Duration::from_secs_f64(t);
    let mut placer = Placer::new(Limits::default(), 1);
    let mut workers: Vec<SimWorker> = (0..WORKERS)
        .map(|_| SimWorker {
            sandboxes: Vec::new(),
            next: 0,
        })
        .collect();
    // Events by time (µs), then sequence.
    let mut q: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut evs: HashMap<u64, Ev> = HashMap::new();
    let mut seq = 0u64;
    let mut push =
        |q: &mut BinaryHeap<Reverse<(u64, u64)>>, evs: &mut HashMap<u64, Ev>, t: f64, e: Ev| {
            seq += 1;
            q.push(Reverse(((t * 1e6) as u64, seq)));
            evs.insert(seq, e);
        };
    // The arrivals, bursts included.
    let mut t = 0.0;
    while t < seconds {
        t += rng.exp(300.0);
        let f = pick(&mut rng);
        push(&mut q, &mut evs, t, Ev::Arrive(f));
    }
    let mut b = 5.0;
    while b < seconds {
        let f = rng.next() as usize % 50;
        let mut tb = b;
        while tb < b + 1.0 {
            tb += rng.exp(600.0);
            push(&mut q, &mut evs, tb, Ev::Arrive(f));
        }
        b += 10.0;
    }
    for w in 0..WORKERS {
        push(&mut q, &mut evs, w as f64 / WORKERS as f64, Ev::Report(w));
    }
    let (mut warm, mut cold, mut shed, mut stale) = (0u64, 0u64, 0u64, 0u64);
    let mut waits: Vec<f64> = Vec::new();
    while let Some(Reverse((tu, s))) = q.pop() {
        let now = tu as f64 / 1e6;
        let Some(ev) = evs.remove(&s) else { continue };
        match ev {
            Ev::Report(w) => {
                let sw = &mut workers[w];
                sw.sandboxes
                    .retain(|s| s.busy || now - s.last_used < keep_alive);
                placer.report(report(w, sw, now), at(now));
                if now < seconds + 5.0 {
                    push(&mut q, &mut evs, now + 1.0, Ev::Report(w));
                }
            }
            Ev::Arrive(f) => push(&mut q, &mut evs, now, Ev::Retry(f, now)),
            Ev::Retry(f, since) => {
                let spec = &fns[f];
                match placer.place(spec, at(now)) {
                    Ok(Some(p)) => {
                        waits.push(now - since);
                        let w: usize = p.worker[1..].parse().expect("worker id");
                        let sw = &mut workers[w];
                        let run = 0.02 + rng.unit() * 0.38;
                        let chosen = p.sandbox.as_ref().and_then(|id| {
                            sw.sandboxes
                                .iter_mut()
                                .find(|s| &s.id == id && !s.busy && s.key == spec.sandbox_key())
                        });
                        let (id, took) = match chosen {
                            Some(s) => {
                                s.busy = true;
                                warm += 1;
                                (s.id.clone(), run)
                            }
                            None => {
                                if p.sandbox.is_some() {
                                    stale += 1;
                                }
                                // A cold start: make room from idle sandboxes, LRU first.
                                loop {
                                    let used: u64 =
                                        sw.sandboxes.iter().map(|s| u64::from(s.memory)).sum();
                                    let fits = sw.sandboxes.len() < SLOTS
                                        && used + u64::from(spec.memory_mib) <= MEMORY;
                                    if fits {
                                        break;
                                    }
                                    let lru = sw
                                        .sandboxes
                                        .iter()
                                        .enumerate()
                                        .filter(|(_, s)| !s.busy)
                                        .min_by(|a, b| a.1.last_used.total_cmp(&b.1.last_used))
                                        .map(|(i, _)| i);
                                    match lru {
                                        Some(i) => {
                                            sw.sandboxes.remove(i);
                                        }
                                        None => break,
                                    }
                                }
                                sw.next += 1;
                                let id = format!("w{w}-s{}", sw.next);
                                sw.sandboxes.push(Sandbox {
                                    id: id.clone(),
                                    key: spec.sandbox_key(),
                                    tenant: spec.tenant.clone(),
                                    memory: spec.memory_mib,
                                    busy: true,
                                    last_used: now,
                                });
                                cold += 1;
                                (id, run + 1.0)
                            }
                        };
                        push(
                            &mut q,
                            &mut evs,
                            now + took,
                            Ev::Done {
                                w,
                                sandbox: id,
                                lease: p.lease,
                            },
                        );
                    }
                    Ok(None) if now - since < 2.0 => {
                        push(&mut q, &mut evs, now + 0.05, Ev::Retry(f, since))
                    }
                    Ok(None) | Err(_) => shed += 1,
                }
            }
            Ev::Done { w, sandbox, lease } => {
                if let Some(s) = workers[w].sandboxes.iter_mut().find(|s| s.id == sandbox) {
                    s.busy = false;
                    s.last_used = now;
                }
                placer.release(&lease);
            }
        }
    }
    waits.sort_by(f64::total_cmp);
    let p99 = waits.get(waits.len() * 99 / 100).copied().unwrap_or(0.0);
    (warm, cold, stale, shed, p99)
}

fn main() {
    let seconds = 120.0;
    println!("| keep-alive | invocations | warm | cold | warm fraction | warm chosen but busy | shed | placement wait p99 |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for keep in [10.0, 60.0, 300.0] {
        let (warm, cold, stale, shed, p99) = simulate(keep, seconds);
        let n = warm + cold + shed;
        println!(
            "| {keep:.0} s | {n} | {warm} | {cold} | {:.3} | {stale} | {shed} | {:.0} ms |",
            warm as f64 / (warm + cold).max(1) as f64,
            p99 * 1e3
        );
    }
}
