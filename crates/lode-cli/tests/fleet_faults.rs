//! The AZ cache fleet under faults, with real `lode cache-node` processes:
//! a node SIGKILLed during a read storm, a second node lost (store fallback,
//! then no store at all), stripes corrupted on a node's disk, and nodes that
//! restart empty.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;
mod common_fleet;

use common_agent::*;
use common_fleet::*;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const TENANT: &str = "acme";
const NAME: &str = "blk";
const EXPORT: &str = "acme/blk";

/// Waits (bounded) for background repairs to land on `node`.
fn wait_until_node_holds(
    node: &CacheNode,
    want: f64,
    limit: Duration,
    held: &dyn Fn(&CacheNode) -> f64,
) {
    let t = Instant::now();
    while held(node) < want && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stripe_errors(node: &CacheNode) -> String {
    format!("lode_fleet_stripe_errors_total{{node=\"{}\"}}", node.addr)
}

/// A chunk-less copy of `env`'s store and an environment on it: agents
/// there open manifests but can get chunks only from the fleet.
fn fleet_only_env(env: &Env) -> Env {
    let meta = env.path(&format!("store-meta-{}", std::process::id()));
    if !meta.exists() {
        copy_store_without_chunks(&env.store, &meta);
    }
    env_with_store(env, &meta)
}

fn fleet_args(spec: &str) -> [&str; 4] {
    [
        "--cache-nodes",
        spec,
        "--fleet-timeout-ms",
        FLEET_TIMEOUT_MS,
    ]
}

/// Case 3: Six nodes, warm fleet. Four qemu-img converts read through a fresh
/// agent that has no chunk in its store; one node is SIGKILLed mid-storm:
/// no client sees an error and every byte is right. With a second node
/// killed, a fresh agent with the store falls back to it for the chunks that
/// lost two stripes (right bytes, fallbacks > 0); with the store gone too,
/// those reads fail with EIO — never wrong bytes — and qemu-img fails.
#[test]
fn node_killed_during_read_storm_then_second_node_then_store() {
    let _serial = serial();
    let t = Instant::now();
    let env = Env::new();
    let p = push_image(&env, TENANT, NAME, 48 * MIB + 12 * KIB);
    let mut nodes = start_nodes(env.dir.path(), 6);
    let spec = spec_of(&nodes);
    warm_fleet(&env, &spec, EXPORT, &p.pulled, p.unique, 8);
    let fo = fleet_only_env(&env);

    // The storm: 4 concurrent full reads through one fresh fleet-only agent.
    let f = fo.agent("storm", &fleet_args(&spec));
    let uri = f.uri(EXPORT);
    let barrier = Arc::new(Barrier::new(5));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (uri, barrier, out) = (
                uri.clone(),
                barrier.clone(),
                fo.path(&format!("storm{i}.raw")),
            );
            std::thread::spawn(move || {
                barrier.wait();
                (qemu_img_convert(&uri, &out), out)
            })
        })
        .collect();
    barrier.wait();
    // SIGKILL node 0 once a tenth of the chunks are read.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done_at_kill = loop {
        let done = get(&f.metrics(), FIRST4);
        if done >= (p.unique / 10) as f64 {
            nodes[0].kill();
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "the storm read nothing in 60 s:\n{}",
            fleet_summary(&f.metrics())
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    for (i, c) in clients.into_iter().enumerate() {
        let (o, out) = c.join().unwrap();
        o.ok();
        assert_file_is(
            &out,
            &p.pulled,
            &format!("storm client {i} (node 0 killed after {done_at_kill} chunks)"),
        );
        fs::remove_file(&out).unwrap();
    }
    let m = f.metrics();
    let s = fleet_summary(&m);
    assert!(
        done_at_kill < p.unique as f64,
        "the storm was over before the kill\n{s}"
    );
    assert_eq!(
        get(&m, &tier_hits("fleet")),
        p.unique as f64,
        "storm: every chunk from the fleet\n{s}"
    );
    assert_eq!(
        get(&m, FALLBACKS),
        0.0,
        "storm: fallbacks with one node down\n{s}"
    );
    assert!(
        get(&m, &stripe_errors(&nodes[0])) > 0.0,
        "storm: no stripe request hit the killed node after the kill\n{s}"
    );
    assert!(
        get(&m, RECONSTRUCTIONS) > 0.0,
        "storm: no chunk rebuilt from parity after losing a node\n{s}"
    );
    eprintln!(
        "storm: node 0 killed after {done_at_kill} of {} chunks; {} stripe errors on it, {} reconstructions",
        p.unique,
        get(&m, &stripe_errors(&nodes[0])),
        get(&m, RECONSTRUCTIONS)
    );
    drop(f);

    // Second node down: chunks with stripes on both dead nodes (4 in 6 of
    // them) are lost to the fleet; an agent with the store falls back.
    nodes[1].kill();
    let g = env.agent("fallback", &fleet_args(&spec));
    let out = env.path("fallback.raw");
    qemu_img_convert(&g.uri(EXPORT), &out).ok();
    assert_file_is(
        &out,
        &p.pulled,
        "two nodes down, store reachable: full read",
    );
    fs::remove_file(&out).unwrap();
    let m = g.metrics();
    let s = fleet_summary(&m);
    let fb = get(&m, FALLBACKS);
    assert!(fb > 0.0, "two nodes down: no fallback to the store\n{s}");
    assert_eq!(
        get(&m, &tier_hits("store")),
        fb,
        "two nodes down: store hits = fleet fallbacks\n{s}"
    );
    assert_eq!(
        get(&m, &tier_hits("fleet")) + fb,
        p.unique as f64,
        "two nodes down: fleet + store hits\n{s}"
    );
    drop(g);

    // And no store either: those chunks fail with EIO, never wrong bytes.
    let h = fo.agent("nostore", &fleet_args(&spec));
    let (ok, failed) = read_chunks_checked(&h.sock, EXPORT, &p.pulled);
    assert!(
        failed > 0,
        "two nodes and the store gone: every chunk read succeeded ({ok})"
    );
    assert!(
        ok > 0,
        "two nodes gone: not even the chunks with 4 live stripes (or holes) were readable"
    );
    let o = qemu_img_convert(&h.uri(EXPORT), &fo.path("nostore.raw"));
    assert!(
        !o.status.success(),
        "qemu-img convert succeeded with two nodes and the store gone"
    );
    let m = h.metrics();
    assert!(
        get(&m, FALLBACKS) > 0.0,
        "no store: the fleet reported no failed read\n{}",
        fleet_summary(&m)
    );
    eprintln!(
        "two nodes down: {fb} of {} chunks from the store; without store: {ok} chunk reads ok, {failed} EIO; qemu-img: {}",
        p.unique,
        o.stderr.lines().last().unwrap_or("")
    );
    eprintln!(
        "node_killed_during_read_storm_then_second_node_then_store: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Files of a node's disk tier, sorted (stripe keys `<chunk hex>.<j>`).
/// Damages stripe files of a node's disk tier: swaps one for another
/// chunk's stripe with the same index, truncates one, flips a payload byte
/// in the rest. Returns how many were damaged (all but the swap's source).
fn damage(files: &[std::path::PathBuf]) -> usize {
    let idx = |p: &Path| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .rsplit('.')
            .next()
            .unwrap()
            .to_string()
    };
    let mut swapped = None;
    'outer: for a in files {
        for b in files {
            if a != b
                && idx(a) == idx(b)
                && fs::metadata(a).unwrap().len() == fs::metadata(b).unwrap().len()
            {
                swapped = Some((a.clone(), b.clone()));
                break 'outer;
            }
        }
    }
    let (sa, sb) = swapped.expect("two full-size stripes with the same index on node 0");
    fs::copy(&sb, &sa).unwrap();
    let mut truncated = None;
    for f in files {
        if *f == sa || *f == sb {
            continue;
        }
        if truncated.is_none() {
            // Stripes of compressed chunks can be small: cut up to 1000
            // bytes, never into the header.
            let len = fs::metadata(f).unwrap().len();
            let cut = ((len - 8) / 2).clamp(1, 1000);
            fs::OpenOptions::new()
                .write(true)
                .open(f)
                .unwrap()
                .set_len(len - cut)
                .unwrap();
            truncated = Some(f.clone());
            continue;
        }
        let mut b = fs::read(f).unwrap();
        let mid = 8 + (b.len() - 8) / 2;
        b[mid] ^= 0x40;
        fs::write(f, b).unwrap();
    }
    files.len() - 1
}

fn disk_stripes(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Case 4: Five nodes; node 0 keeps its stripes on disk only (`--memory 1`).
/// Its stripe files are damaged in place: payload bytes flipped, one stripe
/// swapped for another chunk's stripe of the same index (valid header, wrong
/// content), one truncated. A fleet-only agent still reads every byte
/// right: damaged sets fail the chunk-name check and the 5th stripe rebuilds
/// the chunk. Read repair rewrites every damaged stripe in that one pass
/// (those node 0 sends after the first 4 served a read included): a second
/// agent finds no damaged set. Damaged again and with a second node down,
/// damaged chunks cannot be rebuilt and fail with EIO — never wrong bytes.
#[test]
fn corrupt_stripes_on_a_node_are_detected_never_served() {
    let _serial = serial();
    let t = Instant::now();
    let env = Env::new();
    let p = push_image(&env, TENANT, NAME, 32 * MIB + 12 * KIB);
    let disk = env.path("node0-disk");
    let d = disk.to_str().unwrap();
    let mut nodes = vec![CacheNode::start(
        env.dir.path(),
        "0",
        &["--memory", "1", "--disk", d, "--disk-size", "1G"],
    )];
    nodes.extend((1..5).map(|i| CacheNode::start(env.dir.path(), &i.to_string(), &[])));
    let spec = spec_of(&nodes);
    warm_fleet(&env, &spec, EXPORT, &p.pulled, p.unique, 8);

    // Five nodes, five stripes per chunk: node 0 holds one stripe of each.
    let files = disk_stripes(&disk);
    assert_eq!(
        files.len() as u64,
        p.unique,
        "node 0's disk tier holds one stripe per chunk: {files:?}"
    );
    let m0 = nodes[0].metrics();
    assert_eq!(
        get(&m0, "lode_node_stripes{tier=\"memory\"}"),
        0.0,
        "node 0 kept stripes in memory"
    );
    let damaged = damage(&files);
    assert_eq!(damaged, files.len() - 1);

    let fo = fleet_only_env(&env);
    let a = fo.agent("a", &fleet_args(&spec));
    let out = fo.path("a.raw");
    qemu_img_convert(&a.uri(EXPORT), &out).ok();
    assert_file_is(
        &out,
        &p.pulled,
        "fleet-only read with node 0's stripes damaged",
    );
    fs::remove_file(&out).unwrap();
    let m = a.metrics();
    let s = fleet_summary(&m);
    let hits_disk = get(&nodes[0].metrics(), "lode_node_hits_disk_total")
        - get(&m0, "lode_node_hits_disk_total");
    assert!(hits_disk > 0.0, "node 0 served no stripe from disk");
    assert_eq!(
        get(&m, &tier_hits("fleet")),
        p.unique as f64,
        "damaged node: fleet hits\n{s}"
    );
    assert_eq!(get(&m, FALLBACKS), 0.0, "damaged node: fallbacks\n{s}");
    assert!(
        get(&m, NEEDED_FIFTH) > 0.0,
        "damaged node: no read needed the 5th stripe\n{s}"
    );
    assert!(
        get(&m, FLEET_CORRUPT) > 0.0,
        "damaged node: no corrupt stripe set detected\n{s}"
    );
    assert_eq!(
        get(&m, FIRST4) + get(&m, NEEDED_FIFTH),
        p.unique as f64,
        "damaged node: first-4 + needed-5th reads\n{s}"
    );
    eprintln!(
        "damaged node 0: {} of {} reads needed the 5th stripe, {} corrupt stripe sets detected, node 0 disk hits {hits_disk}",
        get(&m, NEEDED_FIFTH),
        p.unique,
        get(&m, FLEET_CORRUPT)
    );
    // Read repair rewrote every damaged stripe: those in a set that needed
    // the 5th, and those node 0 sent after the first 4 had served the read
    // (checked against the chunk's re-encoding).
    let t0 = Instant::now();
    while get(&a.metrics(), REPAIRS) < damaged as f64 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = a.metrics();
    assert_eq!(
        get(&m, REPAIRS),
        damaged as f64,
        "damaged stripes rewritten by read repair\n{}",
        fleet_summary(&m)
    );
    drop(a);
    let a2 = fo.agent("a2", &fleet_args(&spec));
    qemu_img_convert(&a2.uri(EXPORT), &out).ok();
    assert_file_is(&out, &p.pulled, "fleet-only read after read repair");
    fs::remove_file(&out).unwrap();
    let m = a2.metrics();
    assert_eq!(
        (get(&m, NEEDED_FIFTH), get(&m, FLEET_CORRUPT)),
        (0.0, 0.0),
        "after read repair no stripe set is damaged\n{}",
        fleet_summary(&m)
    );
    drop(a2);

    // Damaged again, and a second node down: only 4 stripes left per chunk,
    // one of them damaged.
    damage(&disk_stripes(&disk));
    nodes[4].kill();
    let b = fo.agent("b", &fleet_args(&spec));
    let (ok, failed) = read_chunks_checked(&b.sock, EXPORT, &p.pulled);
    let m = b.metrics();
    let s = fleet_summary(&m);
    assert!(
        failed > 0,
        "damaged node + dead node: every chunk read succeeded ({ok})\n{s}"
    );
    assert!(
        get(&m, FLEET_CORRUPT) > 0.0,
        "damaged node + dead node: nothing detected as corrupt\n{s}"
    );
    eprintln!(
        "damaged node 0 + node 4 dead: {ok} chunk reads ok (holes and intact sets), {failed} EIO"
    );
    eprintln!(
        "corrupt_stripes_on_a_node_are_detected_never_served: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Case 5: Five nodes, warm fleet; node 0 sits behind a link with 40 ms of
/// one-way delay, so it is always the last to answer. Node 0 restarts empty:
/// reads still come from the fleet (4 of 5 stripes, rebuilt from parity) and
/// one read pass writes all of node 0's stripes back: its late "not found"
/// answers are followed after the reads completed (before, they were
/// cancelled, and a node that answers last was never repaired). Nodes 1
/// and 2 restart empty together: now every chunk misses (3 stripes left),
/// comes from the store, and the fills write all 5 stripes again. Then node 3
/// is SIGKILLed and a fleet-only agent still reads everything: node 0 was
/// repaired and nodes 1 and 2 refilled.
#[test]
fn nodes_restarted_empty_are_refilled_by_later_misses() {
    let _serial = serial();
    let t = Instant::now();
    let env = Env::new();
    let p = push_image(&env, TENANT, NAME, 32 * MIB + 12 * KIB);
    let mut nodes = start_nodes(env.dir.path(), 5);
    let far = lode_testkit::proxy::LinkOptions {
        delay: Duration::from_millis(40),
        ..Default::default()
    };
    let link0 = lode_testkit::proxy::Proxy::start("127.0.0.1:0", &nodes[0].addr, far).unwrap();
    let spec = spec_of(&nodes).replacen(&nodes[0].addr, &link0.addr, 1);
    warm_fleet(&env, &spec, EXPORT, &p.pulled, p.unique, 8);
    let u = p.unique as f64;
    let held = |n: &CacheNode| get(&n.metrics(), "lode_node_stripes{tier=\"memory\"}");
    assert_eq!(held(&nodes[0]), u, "node 0 before the restart");

    nodes[0].restart(&[]);
    assert_eq!(held(&nodes[0]), 0.0, "node 0 after the restart");
    let a = env.agent("degraded", &fleet_args(&spec));
    let out = env.path("degraded.raw");
    qemu_img_convert(&a.uri(EXPORT), &out).ok();
    assert_file_is(&out, &p.pulled, "node 0 empty: full read");
    let m = a.metrics();
    let s = fleet_summary(&m);
    assert_eq!(
        get(&m, &tier_hits("fleet")),
        u,
        "node 0 empty: all chunks still from the fleet\n{s}"
    );
    let n0 = nodes[0].metrics();
    assert!(
        get(&n0, "lode_node_misses_total") > 0.0,
        "node 0 saw no GET after its restart"
    );
    // One pass: every chunk's late "not found" from node 0 is repaired.
    wait_until_node_holds(&nodes[0], u, Duration::from_secs(30), &held);
    let m = a.metrics();
    assert_eq!(
        held(&nodes[0]),
        u,
        "node 0 after one read pass with read repair:\n{}",
        fleet_summary(&m)
    );
    assert!(
        get(&m, "lode_fleet_late_stripes_checked_total") > 0.0,
        "node 0 never answered after the first 4:\n{}",
        fleet_summary(&m)
    );
    drop(a);

    // Two nodes restarted empty: every chunk misses (3 stripes left), comes
    // from the store, and fills write all 5 stripes again.
    nodes[1].restart(&[]);
    nodes[2].restart(&[]);
    let w = warm_fleet(&env, &spec, EXPORT, &p.pulled, p.unique, 8);
    assert!(
        w.fills >= u,
        "nodes 1 and 2 empty: {} fills for {u} chunks",
        w.fills
    );
    assert_eq!(held(&nodes[1]), u, "node 1 after the refill");
    assert_eq!(held(&nodes[2]), u, "node 2 after the refill");

    nodes[3].kill();
    let fo = fleet_only_env(&env);
    let b = fo.agent("after", &fleet_args(&spec));
    let out = fo.path("after.raw");
    qemu_img_convert(&b.uri(EXPORT), &out).ok();
    assert_file_is(
        &out,
        &p.pulled,
        "node 0 repaired, nodes 1 and 2 refilled, node 3 dead, no store: full read",
    );
    let m = b.metrics();
    assert_eq!(
        get(&m, &tier_hits("fleet")),
        u,
        "after the refill: fleet hits\n{}",
        fleet_summary(&m)
    );
    eprintln!(
        "nodes_restarted_empty_are_refilled_by_later_misses: {:.1} s (refill passes {})",
        t.elapsed().as_secs_f64(),
        w.passes
    );
}
