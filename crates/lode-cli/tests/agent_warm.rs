//! Which images a host is warm for, from a real `lode agent` with small
//! caches, read through its real NBD exports with qemu-io:
//!
//! * `GET /v1/images` lists image A once a client read it, with every chunk
//!   read resident; the worker's report (a real `Worker` asking the agent)
//!   lists A;
//! * image B, read next, evicts most of A's chunks from the disk cache: A's
//!   resident count drops (checked against the caches, not remembered), and
//!   the worker's report lists B and no longer A;
//! * once the agent is gone the report lists no image (not the stale list).
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;

use common_agent::service::Service;
use common_agent::*;
use lode_agent::control::{Client, ImageInfo};
use lode_worker::sandbox::Host;
use lode_worker::{Config, Worker};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TENANT: &str = "acme";
/// Chunks of image A and of image B.
const A_CHUNKS: u64 = 8;
const B_CHUNKS: u64 = 12;
/// Page files the disk cache holds: all of A, then B pushes out 6 of A's.
const DISK_FILES: u64 = 14;

/// A raw image of `chunks` incompressible, distinct chunks.
fn image(env: &Env, name: &str, chunks: u64, seed: u64) {
    let path = env.path(&format!("{name}.raw"));
    std::fs::write(&path, Rng::new(seed).bytes((chunks * CHUNK) as usize)).unwrap();
    env.push(&path, TENANT, name);
}

/// `GET /v1/images` over the raw socket (the exact JSON spelling).
fn images(svc: &Service) -> Vec<ImageInfo> {
    let (status, body) =
        svc.http(b"GET /v1/images HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for i in v["images"].as_array().unwrap() {
        let keys: Vec<&str> = i.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for k in [
            "digest",
            "tenant",
            "image",
            "read_chunks",
            "resident_chunks",
        ] {
            assert!(keys.contains(&k), "{k} missing in {i}");
        }
    }
    serde_json::from_value(v["images"].clone()).unwrap()
}

fn find<'a>(all: &'a [ImageInfo], digest: &str) -> &'a ImageInfo {
    all.iter()
        .find(|i| i.digest == digest)
        .unwrap_or_else(|| panic!("{digest} not listed: {all:?}"))
}

/// Attaches `name` read-only and reads all of it through NBD; returns its
/// manifest digest.
fn attach_and_read(svc: &Service, name: &str, chunks: u64) -> String {
    let a = svc.attach(&[&format!("{TENANT}/{name}")]);
    let uri = format!(
        "nbd+unix:///{}?socket={}",
        a["export"].as_str().unwrap(),
        a["socket"].as_str().unwrap()
    );
    let o = qemu_io_ro(&uri, &[format!("read 0 {}", chunks * CHUNK)]).ok();
    assert!(!qemu_io_failed(&o), "{o:?}");
    let id = a["id"].as_str().unwrap();
    let v = svc.volumes();
    let d = v.iter().find(|x| x["id"] == id).unwrap()["digest"].clone();
    d.as_str().unwrap().to_string()
}

/// Waits until the disk cache's writes have landed and it holds `files`.
fn settle(svc: &Service, files: u64) {
    let t = Instant::now();
    loop {
        let m = svc.metrics();
        let pending = m
            .get("lode_cache_writes_pending{tier=\"disk\"}")
            .copied()
            .unwrap_or(-1.0);
        let held = m
            .get("lode_cache_chunks{tier=\"disk\"}")
            .copied()
            .unwrap_or(-1.0);
        if pending == 0.0 && held == files as f64 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "disk cache: {pending} writes pending, {held} chunks held, expected {files}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A worker whose sandboxes would run on this host (none is started: only
/// its report is asked for).
fn worker(env: &Env, svc: &Service) -> Arc<Worker> {
    let host = Host {
        agent: Client::new(&svc.control),
        kernel: env.path("no-kernel"),
        base_initrd: Arc::new(Vec::new()),
        relay: Vec::new(),
        dir: env.path("sandboxes"),
        vmm_ids: None,
        init_timeout: Duration::from_secs(1),
        ledger: Arc::new(lode_worker::ledger::Ledger::new(None)),
    };
    let config = Config {
        id: "w1".into(),
        url: "http://127.0.0.1:1".into(),
        slots: 1,
        memory_mib: 128,
        keep_alive: Duration::from_secs(60),
    };
    Arc::new(Worker::new(config, host))
}

#[test]
fn evicted_images_are_no_longer_reported_warm() {
    require_tool("qemu-io", "qemu-utils");
    let env = Env::new();
    image(&env, "a", A_CHUNKS, 0xA);
    image(&env, "b", B_CHUNKS, 0xB);
    let file = lode_cache::pagefile::file_len(CHUNK as usize);
    let mut svc = Service::new(&env, "warm");
    svc.extra = [
        "--cache-size",
        &(DISK_FILES * file + file / 2).to_string(),
        "--memory-cache",
        "1M",
        "--prefetch",
        "none",
    ]
    .map(String::from)
    .to_vec();
    svc.start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let w = worker(&env, &svc);

    assert_eq!(images(&svc), Vec::new(), "nothing read yet");
    let a = attach_and_read(&svc, "a", A_CHUNKS);
    settle(&svc, A_CHUNKS);
    let all = images(&svc);
    let ia = find(&all, &a);
    assert_eq!((ia.tenant.as_str(), ia.image.as_str()), (TENANT, "a"));
    assert_eq!((ia.read_chunks, ia.resident_chunks), (A_CHUNKS, A_CHUNKS));
    assert!(a.starts_with("sha256:") && a.len() == 71, "{a}");
    assert_eq!(rt.block_on(w.report()).images, vec![a.clone()]);

    // B is read through the same small caches: the disk cache keeps 14
    // chunk files, so 6 of A's 8 go (oldest first); memory holds 2 of B's.
    let b = attach_and_read(&svc, "b", B_CHUNKS);
    settle(&svc, DISK_FILES);
    let all = images(&svc);
    let (ia, ib) = (find(&all, &a), find(&all, &b));
    assert_eq!(ia.read_chunks, A_CHUNKS, "{all:?}");
    assert!(
        ia.resident_chunks * 2 < ia.read_chunks,
        "A's chunks were evicted, yet {} of {} are resident",
        ia.resident_chunks,
        ia.read_chunks
    );
    assert_eq!((ib.read_chunks, ib.resident_chunks), (B_CHUNKS, B_CHUNKS));
    assert_eq!(all[0].digest, b, "most recently used first: {all:?}");
    assert_eq!(svc.metrics()["lode_images_read_remembered"], 2.0);
    // `lode warm` prints the same list.
    let listed: Vec<ImageInfo> =
        serde_json::from_slice(&svc.lode(&["warm", "--json"]).ok().stdout).unwrap();
    assert_eq!(listed, all);
    let table = String::from_utf8(svc.lode(&["warm"]).ok().stdout).unwrap();
    assert!(
        table.contains(&format!("{TENANT}/b")) && table.contains("100.0%"),
        "{table}"
    );

    // The worker's answer is at most ANSWER_TTL old.
    std::thread::sleep(lode_worker::warm::ANSWER_TTL + Duration::from_millis(100));
    assert_eq!(rt.block_on(w.report()).images, vec![b.clone()]);

    // Other methods are refused.
    let (status, body) =
        svc.http(b"DELETE /v1/images HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 405, "{body}");

    // No agent to ask: no image is warm.
    svc.kill();
    std::thread::sleep(lode_worker::warm::ANSWER_TTL + Duration::from_millis(100));
    assert_eq!(rt.block_on(w.report()).images, Vec::<String>::new());
}
