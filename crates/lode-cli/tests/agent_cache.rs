//! The agent's read path under load and failure, observed through its
//! metrics: single-flight fetches with concurrent clients, the bounded disk
//! cache across restarts (and a corrupt cache file), and a failing store.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;

use common_agent::nbd_client::*;
use common_agent::*;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const TENANT: &str = "acme";
const NAME: &str = "blk";
const EXPORT: &str = "acme/blk";
const SIZE: u64 = 40 * MIB + 12 * KIB;

fn setup() -> (Env, BlockImage, u64) {
    require_tool("qemu-img", "qemu-utils");
    require_tool("qemu-io", "qemu-utils");
    let env = Env::new();
    let img = BlockImage::create(&env.path("src.raw"), SIZE);
    env.push(&img.path, TENANT, NAME);
    let info = env.inspect(TENANT, NAME);
    let unique = info["unique_chunks"].as_u64().unwrap();
    let stored = info["stored_chunks"].as_u64().unwrap();
    // The image has holes and three identical chunks: the counts differ.
    assert!(
        stored > unique && info["holes"].as_u64().unwrap() > 0,
        "fixture lost its holes or duplicates: {info}"
    );
    (env, img, unique)
}

/// The disk cache's page files (not its marker) and their total size.
fn page_files(cache: &Path) -> (u64, Vec<std::path::PathBuf>) {
    let (_, files) = files_under(cache);
    let pages: Vec<_> = files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "pages"))
        .collect();
    let bytes = pages.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    (bytes, pages)
}

/// A full read with qemu-img convert, checked against the source.
fn full_read(agent: &Agent, img: &BlockImage, out: &Path, what: &str) {
    qemu_img_convert(&agent.uri(EXPORT), out).ok();
    assert_file_is(out, &img.data, what);
    fs::remove_file(out).unwrap();
}

/// Test 5 of the brief: Eight qemu-img convert processes read the freshly pushed image at once
/// through an empty cache: every distinct chunk comes from the store exactly
/// once (identical chunks share one fetch, holes none).
#[test]
fn concurrent_clients_fetch_each_chunk_once() {
    let t = Instant::now();
    let (env, img, unique) = setup();
    // Some store latency widens the window in which clients overlap.
    let agent = env.agent("a", &["--inject-store-latency-ms", "20"]);
    let (store_bytes, _) = files_under(&store_root(&env.store).join("chunks"));
    let uri = agent.uri(EXPORT);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (uri, barrier, out) = (
                uri.clone(),
                barrier.clone(),
                env.path(&format!("out{i}.raw")),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let o = qemu_img_convert(&uri, &out);
                (o, out)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (o, out) = h.join().unwrap();
        o.ok();
        assert_file_is(&out, &img.data, &format!("client {i} of 8"));
    }
    let m = agent.metrics();
    assert_eq!(
        m[STORE_HITS], unique as f64,
        "chunks fetched from the store by 8 concurrent full reads (unique chunks: {unique})"
    );
    assert_eq!(
        m["lode_tier_bytes_total{tier=\"store\"}"], store_bytes as f64,
        "bytes fetched from the store vs bytes stored"
    );
    assert_eq!(m[STORE_ERRORS], 0.0);
    assert_eq!(m["lode_fetches_in_flight"], 0.0);
    assert!(m["lode_nbd_connections_total"] >= 8.0);
    eprintln!(
        "concurrent_clients_fetch_each_chunk_once: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Test 6 of the brief: The disk cache stays within --cache-size; after a restart it serves
/// what it kept (store fetches drop by as much), discards a corrupted file
/// instead of serving it, and a third run needs no store at all.
#[test]
fn disk_cache_is_bounded_survives_restart_and_discards_corruption() {
    let t = Instant::now();
    let (env, img, unique) = setup();
    let cache = env.path("cache");
    let out = env.path("out.raw");
    // A third of what the store holds for the image (chunks are stored
    // compressed where that pays, and so cached).
    let (store_bytes, _) = files_under(&store_root(&env.store).join("chunks"));
    let bound = store_bytes / 3;

    // Run 1: a cache much smaller than the image.
    let mut a = Agent::start(&env, "a", &cache, &["--cache-size", &bound.to_string()]);
    full_read(&a, &img, &out, "run 1: full read");
    full_read(&a, &img, &out, "run 1: second full read");
    let m = a.metrics();
    assert_eq!(m[STORE_HITS], unique as f64, "run 1: store fetches");
    assert!(
        m["lode_cache_bytes{tier=\"disk\"}"] <= bound as f64,
        "run 1: disk cache reports {} bytes",
        m["lode_cache_bytes{tier=\"disk\"}"]
    );
    a.settle_disk_writes();
    a.kill();
    let (bytes, files) = page_files(&cache);
    assert!(
        bytes <= bound,
        "disk cache holds {bytes} bytes in {} files, bound {bound}",
        files.len()
    );
    let kept = files.len() as u64;
    assert!(
        kept >= 2,
        "disk cache kept only {kept} chunks under a {bound}-byte bound"
    );
    assert!(
        kept < unique,
        "disk cache kept all {kept} chunks: the bound was not applied"
    );

    // Corrupt one cached chunk: flip a byte in its middle.
    let victim = &files[0];
    let mut b = fs::read(victim).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    fs::write(victim, b).unwrap();

    // Run 2: same cache dir, larger bound.
    let mut a = Agent::start(&env, "b", &cache, &["--cache-size", "1G"]);
    full_read(
        &a,
        &img,
        &out,
        "run 2 (after restart, one cache file corrupted): full read",
    );
    let m = a.metrics();
    assert_eq!(m[CORRUPT], 1.0, "run 2: corrupt cache files discarded");
    assert!(
        m[DISK_HITS] >= (kept - 1) as f64 && m[DISK_HITS] > 0.0,
        "run 2: disk hits {} (kept {kept}, one corrupt)",
        m[DISK_HITS]
    );
    assert_eq!(
        m[STORE_HITS],
        (unique - (kept - 1)) as f64,
        "run 2: store fetches (unique {unique}, kept {kept}, one corrupt)"
    );
    a.settle_disk_writes();
    a.kill();
    let (_, files) = page_files(&cache);
    assert_eq!(
        files.len() as u64,
        unique,
        "run 2: cache holds every distinct chunk"
    );

    // Run 3: everything from disk.
    let a = Agent::start(&env, "c", &cache, &["--cache-size", "1G"]);
    full_read(&a, &img, &out, "run 3: full read from the disk cache");
    let m = a.metrics();
    assert_eq!(m[STORE_HITS], 0.0, "run 3: store fetches");
    assert!(
        m[DISK_HITS] >= unique as f64,
        "run 3: disk hits {}",
        m[DISK_HITS]
    );
    assert_eq!(m[CORRUPT], 0.0, "run 3: corrupt files");
    eprintln!(
        "disk_cache_is_bounded_survives_restart_and_discards_corruption: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// A READ that must fail with EIO within `limit`; returns how long it took.
fn read_fails(c: &mut Conn, off: u64, len: u32, limit: Duration, what: &str) -> Duration {
    let t = Instant::now();
    let r = c
        .read(off, len)
        .unwrap_or_else(|e| panic!("{what}: connection broken instead of an error reply: {e}"));
    let took = t.elapsed();
    match r {
        Ok(b) => panic!(
            "{what}: READ {len} at {off} returned {} bytes from a broken store",
            b.len()
        ),
        Err(e) => assert_eq!(e, EIO, "{what}: error code"),
    }
    assert!(
        took <= limit,
        "{what}: error took {took:?} (limit {limit:?})"
    );
    took
}

/// Test 8 of the brief: With the store gone (chunks moved away) or hanging (chunk files
/// replaced by FIFOs that block on open), reads of uncached chunks fail with
/// EIO within the bounded time (--store-timeout 2 --store-retries 1), never
/// return wrong bytes, and cached chunks are still served. Once the store is
/// back, the same reads succeed.
#[test]
fn store_failure_gives_bounded_errors_and_cached_data_stays_served() {
    require_tool("mkfifo", "coreutils");
    let t = Instant::now();
    let (env, img, _) = setup();
    let mut agent = env.agent("a", &["--store-timeout", "2", "--store-retries", "1"]);
    let uri = agent.uri(EXPORT);
    let mut c = Conn::go_ok(&agent.sock, EXPORT);
    // Cache chunks 0..4.
    assert_same_bytes(
        &c.read_ok(0, (4 * CHUNK) as u32),
        img.slice(0, 4 * CHUNK),
        "warm-up read",
    );

    let chunks = store_root(&env.store).join("chunks");
    let away = env.path("chunks-away");
    fs::rename(&chunks, &away).unwrap();

    // Store gone: missing chunks fail fast.
    read_fails(
        &mut c,
        40 * CHUNK + 100,
        5000,
        Duration::from_secs(10),
        "store gone",
    );
    let (r, p) = img
        .pattern_regions()
        .into_iter()
        .find(|&(r, _)| r * REGION / CHUNK == 42)
        .unwrap();
    let o = qemu_io(&uri, &[format!("read -P {p:#04x} {} 4096", r * REGION)]);
    let text = format!("{}{}", o.stdout_str(), o.stderr);
    assert!(
        qemu_io_failed(&o),
        "qemu-io read of an uncached chunk with the store gone succeeded:\n{text}"
    );
    assert!(
        !text.contains("Pattern verification failed"),
        "wrong bytes served with the store gone:\n{text}"
    );
    // Cached data is still served, on the same and on new connections.
    assert_same_bytes(
        &c.read_ok(CHUNK, (2 * CHUNK) as u32),
        img.slice(CHUNK, 2 * CHUNK),
        "cached read, store gone",
    );
    let (r0, p0) = img.pattern_regions()[0];
    qemu_io_ok(
        &uri,
        &[format!("read -P {p0:#04x} {} {}", r0 * REGION, REGION)],
    );

    // Store hanging: every chunk file is a FIFO nobody writes to.
    for f in files_under(&away).1 {
        let rel = f.strip_prefix(&away).unwrap();
        let fifo = chunks.join(rel);
        fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        let mut mk = std::process::Command::new("mkfifo");
        mk.arg(&fifo);
        run_timeout(&mut mk, Duration::from_secs(10)).ok();
    }
    let errors_before = agent.metric(STORE_ERRORS);
    // Two attempts of 2 s plus a 50 ms backoff: about 4 s, never a hang.
    let took = read_fails(
        &mut c,
        50 * CHUNK,
        4096,
        Duration::from_secs(15),
        "store hanging",
    );
    assert!(
        took >= Duration::from_millis(1500),
        "store hanging: error after only {took:?}, before any timeout could fire"
    );
    assert!(
        agent.metric(STORE_ERRORS) > errors_before,
        "store timeouts not counted as errors"
    );
    assert_same_bytes(
        &c.read_ok(0, CHUNK as u32),
        img.slice(0, CHUNK),
        "cached read, store hanging",
    );
    agent.assert_alive();

    // Store back: the failures were not remembered.
    fs::remove_dir_all(&chunks).unwrap();
    fs::rename(&away, &chunks).unwrap();
    assert_same_bytes(
        &c.read_ok(40 * CHUNK, CHUNK as u32),
        img.slice(40 * CHUNK, CHUNK),
        "read after the store came back",
    );
    assert_same_bytes(
        &c.read_ok(50 * CHUNK, CHUNK as u32),
        img.slice(50 * CHUNK, CHUNK),
        "read after the store came back",
    );
    c.disconnect();
    qemu_img_convert(&uri, &env.path("out.raw")).ok();
    assert_file_is(
        &env.path("out.raw"),
        &img.data,
        "full read after the store came back",
    );
    eprintln!(
        "store_failure_gives_bounded_errors_and_cached_data_stays_served: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
