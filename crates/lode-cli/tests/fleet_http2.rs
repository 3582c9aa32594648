//! The AZ cache fleet over real `lode cache-node` processes: a full read
//! through an agent fills the fleet, and a second agent that cannot reach
//! any chunk in the store reads the whole image from the fleet alone.
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

/// Case 1: Six nodes: a full read through agent A equals `lode pull`; its
/// background fills store 5 stripes of ceil(len/4) bytes per chunk (1.25×);
/// once the fleet holds every chunk, agent B — empty cache, a store with
/// manifests but no chunks — reads the whole image byte-identical, every
/// chunk from the first 4 stripes, nothing from the store.
#[test]
fn six_nodes_fill_then_fleet_alone_serves_the_image() {
    let _serial = serial();
    let t = Instant::now();
    let env = Env::new();
    let p = push_image(&env, TENANT, NAME, SIZE);
    let nodes = start_nodes(env.dir.path(), 6);
    let spec = spec_of(&nodes);

    // Agent A: a cold full read through the fleet tier (every chunk misses
    // the fleet, comes from the store, and is filled in the background).
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
    assert_eq!(
        get(&m, &tier_hits("store")),
        p.unique as f64,
        "agent A: store fetches\n{}",
        fleet_summary(&m)
    );
    assert_eq!(
        get(&m, &tier_hits("fleet")),
        0.0,
        "agent A: the fleet was empty\n{}",
        fleet_summary(&m)
    );
    assert_eq!(
        get(&m, FALLBACKS),
        p.unique as f64,
        "agent A: fleet misses\n{}",
        fleet_summary(&m)
    );
    let (fills, dropped) = (get(&m, FILLS), get(&m, FILLS_DROPPED));
    assert!(fills > 0.0, "agent A filled nothing\n{}", fleet_summary(&m));
    // Storage overhead of the 4+1 code: 5 stripes of ceil(len / 4) bytes.
    let (sb, cb) = (get(&m, STRIPE_BYTES), get(&m, CHUNK_BYTES));
    assert!(
        cb > 0.0 && sb >= 1.25 * cb && sb <= 1.25 * cb + 3.75 * fills,
        "stripe bytes {sb} / chunk bytes {cb} = {} (want 1.25)",
        sb / cb
    );
    eprintln!(
        "agent A: fills {fills}, dropped {dropped} of {} chunks; stripe/chunk bytes = {:.6}",
        p.unique,
        sb / cb
    );
    // Each node holds stripes of the filled chunks: 5 per chunk over 6 nodes.
    let stored: f64 = nodes
        .iter()
        .map(|n| get(&n.metrics(), "lode_node_stripes{tier=\"memory\"}"))
        .sum();
    assert_eq!(
        stored,
        5.0 * fills,
        "stripes held by the 6 nodes after {fills} fills"
    );
    drop(a);

    // Fills dropped while MAX_FILLS were running are only retried by a
    // later miss: fresh agents read until the fleet holds every chunk.
    let mut warm = Warming::default();
    if dropped > 0.0 {
        warm = warm_fleet(&env, &spec, EXPORT, &p.pulled, p.unique, 6);
    }
    assert!(
        fills + warm.fills >= p.unique as f64,
        "fills {fills} + {} < unique chunks {}",
        warm.fills,
        p.unique
    );

    // Agent B: no chunk reachable in its store; empty host cache.
    let meta = env.path("store-meta");
    copy_store_without_chunks(&env.store, &meta);
    let env_b = env_with_store(&env, &meta);
    let gets_before: f64 = nodes
        .iter()
        .map(|n| get(&n.metrics(), "lode_node_gets_total"))
        .sum();
    let b = env_b.agent(
        "b",
        &[
            "--cache-nodes",
            &spec,
            "--fleet-timeout-ms",
            FLEET_TIMEOUT_MS,
        ],
    );
    let out = env_b.path("b.raw");
    qemu_img_convert(&b.uri(EXPORT), &out).ok();
    assert_file_is(
        &out,
        &p.pulled,
        "agent B (fleet only) full read vs lode pull",
    );
    let m = b.metrics();
    let s = fleet_summary(&m);
    assert_eq!(
        get(&m, &tier_hits("fleet")),
        p.unique as f64,
        "agent B: fleet hits\n{s}"
    );
    assert_eq!(
        get(&m, &tier_hits("store")),
        0.0,
        "agent B: store hits\n{s}"
    );
    assert_eq!(get(&m, FALLBACKS), 0.0, "agent B: fallbacks\n{s}");
    assert_eq!(
        get(&m, FIRST4),
        p.unique as f64,
        "agent B: reads done by the first 4 stripes\n{s}"
    );
    assert_eq!(
        get(&m, FLEET_CORRUPT),
        0.0,
        "agent B: corrupt stripe sets\n{s}"
    );
    // Every node served stripes (rendezvous placement spreads them).
    for n in &nodes {
        let k = format!("lode_fleet_stripe_get_seconds_count{{node=\"{}\"}}", n.addr);
        assert!(
            get(&m, &k) > 0.0,
            "agent B read no stripe from node {}\n{s}",
            n.addr
        );
    }
    // Request amplification: all 5 stripe GETs go out at once; the read
    // completes on the first 4 and drops the 5th, which the node has
    // usually already served. Between 4 and 5 GETs per chunk reach the nodes.
    let gets: f64 = nodes
        .iter()
        .map(|n| get(&n.metrics(), "lode_node_gets_total"))
        .sum::<f64>()
        - gets_before;
    let u = p.unique as f64;
    assert!(
        gets >= 4.0 * u && gets <= 5.0 * u,
        "agent B: {gets} stripe GETs reached the nodes for {u} chunks"
    );
    eprintln!(
        "agent B: {u} chunks, {gets} stripe GETs at the nodes ({:.2} per chunk)",
        gets / u
    );
    eprintln!(
        "six_nodes_fill_then_fleet_alone_serves_the_image: {:.1} s (warming passes {})",
        t.elapsed().as_secs_f64(),
        warm.passes
    );
}
