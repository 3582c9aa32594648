//! The AZ cache fleet over plain memcached servers (meta protocol):
//! `--cache-nodes memcached://...`.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;
mod common_fleet;

use common_agent::*;
use common_fleet::*;
use std::fs;
use std::time::{Duration, Instant};

const TENANT: &str = "acme";
const NAME: &str = "blk";
const EXPORT: &str = "acme/blk";
const SIZE: u64 = 32 * MIB + 12 * KIB;

/// Case 2: Five real memcached processes: a full read through agent A equals
/// `lode pull` and fills memcached with 5 stripes per chunk (1.25× the
/// chunk bytes); once every chunk is in, agent B with `--no-store` (the
/// store tier removed; manifests still come from the store) and an empty
/// cache reads the whole image from memcached alone, byte-identical.
#[test]
fn five_memcached_fill_then_fleet_alone_serves_the_image() {
    let _serial = serial();
    let t = Instant::now();
    let env = Env::new();
    let p = push_image(&env, TENANT, NAME, SIZE);
    let mcs: Vec<Memcached> = (0..5).map(|_| Memcached::start()).collect();
    let spec = memcached_spec(&mcs);
    let label = fleet_label(&spec);

    let a = env.agent(
        "a",
        &[
            "--cache-nodes",
            &spec,
            "--fleet-timeout-ms",
            FLEET_TIMEOUT_MS,
        ],
    );
    let out = env.path("a.raw");
    qemu_img_convert(&a.uri(EXPORT), &out).ok();
    assert_file_is(&out, &p.pulled, "agent A full read vs lode pull");
    fs::remove_file(&out).unwrap();
    let m = wait_fills_settled(&a, &tier_hits("store"), Duration::from_secs(60));
    let s = fleet_summary(&m);
    assert_eq!(
        get(&m, &tier_hits("store")),
        p.unique as f64,
        "agent A: store fetches\n{s}"
    );
    assert_eq!(
        get(&m, &tier_hits(label)),
        0.0,
        "agent A: memcached was empty\n{s}"
    );
    let (fills, dropped) = (get(&m, FILLS), get(&m, FILLS_DROPPED));
    let (sb, cb) = (get(&m, STRIPE_BYTES), get(&m, CHUNK_BYTES));
    assert!(fills > 0.0 && cb > 0.0, "agent A filled nothing\n{s}");
    assert!(
        sb >= 1.25 * cb && sb <= 1.25 * cb + 3.75 * fills,
        "stripe bytes {sb} / chunk bytes {cb} = {} (want 1.25)",
        sb / cb
    );
    let items: f64 = mcs.iter().map(|m| get(&m.stats(), "curr_items")).sum();
    assert_eq!(items, 5.0 * fills, "memcached items after {fills} fills");
    eprintln!(
        "agent A: fills {fills}, dropped {dropped} of {} chunks; stripe/chunk bytes = {:.6}",
        p.unique,
        sb / cb
    );
    drop(a);

    let mut warm = Warming::default();
    if dropped > 0.0 {
        warm = warm_fleet(&env, &spec, EXPORT, &p.pulled, p.unique, 6);
    }
    let items: f64 = mcs.iter().map(|m| get(&m.stats(), "curr_items")).sum();
    assert_eq!(
        items,
        5.0 * p.unique as f64,
        "memcached items once the fleet is warm"
    );

    let hits_before: f64 = mcs.iter().map(|m| get(&m.stats(), "get_hits")).sum();
    let conns_before: f64 = mcs
        .iter()
        .map(|m| get(&m.stats(), "total_connections"))
        .sum();
    let b = env.agent(
        "b",
        &[
            "--cache-nodes",
            &spec,
            "--fleet-timeout-ms",
            FLEET_TIMEOUT_MS,
            "--no-store",
        ],
    );
    let out = env.path("b.raw");
    qemu_img_convert(&b.uri(EXPORT), &out).ok();
    assert_file_is(
        &out,
        &p.pulled,
        "agent B (--no-store) full read vs lode pull",
    );
    let m = b.metrics();
    let s = fleet_summary(&m);
    assert_eq!(
        get(&m, &tier_hits(label)),
        p.unique as f64,
        "agent B: fleet hits\n{s}"
    );
    assert!(
        !m.contains_key(&tier_hits("store")),
        "agent B has a store tier despite --no-store\n{s}"
    );
    assert_eq!(get(&m, FALLBACKS), 0.0, "agent B: fallbacks\n{s}");
    assert_eq!(
        get(&m, FIRST4),
        p.unique as f64,
        "agent B: first-4 reads\n{s}"
    );
    let hits: f64 = mcs.iter().map(|m| get(&m.stats(), "get_hits")).sum::<f64>() - hits_before;
    let u = p.unique as f64;
    assert!(
        hits >= 4.0 * u && hits <= 5.0 * u,
        "agent B: {hits} memcached get hits for {u} chunks"
    );
    // Connections opened for agent B's read (each `stats` call above and
    // below opens one per server too: 5 of them are ours).
    let conns: f64 = mcs
        .iter()
        .map(|m| get(&m.stats(), "total_connections"))
        .sum::<f64>()
        - conns_before
        - 5.0;
    eprintln!(
        "agent B: {conns} memcached connections opened for {u} chunk reads ({:.2} per chunk)",
        conns / u
    );
    eprintln!(
        "five_memcached_fill_then_fleet_alone_serves_the_image: {:.1} s (warming passes {}, {:.2} gets per chunk)",
        t.elapsed().as_secs_f64(),
        warm.passes,
        hits / u
    );
}
