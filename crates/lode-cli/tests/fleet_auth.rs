//! Who may write to the fleet: cache nodes started with `--write-key` accept
//! stripe PUTs and fill leases only with the key's MAC. Hosts with the key
//! (`--fleet-key`) fill the fleet and coordinate; a host without it, or a raw
//! client forging a MAC, is refused, counted, and stores nothing.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;
mod common_fleet;

use common_agent::*;
use common_fleet::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TENANT: &str = "acme";
const NAME: &str = "fs";
const FILE: &str = "/data/big.bin";

/// One raw HTTP/1.1 request; the status code.
fn raw(addr: &str, head: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn put(addr: &str, key: &str, body: &[u8], auth: Option<&str>) -> u16 {
    let auth = auth.map_or(String::new(), |a| format!("x-lode-auth: {a}\r\n"));
    raw(
        addr,
        &format!(
            "PUT /s/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n",
            body.len()
        ),
        body,
    )
}

fn stripes_held(nodes: &[CacheNode]) -> f64 {
    nodes
        .iter()
        .map(|n| {
            n.metrics()
                .iter()
                .filter(|(k, _)| k.starts_with("lode_node_stripes{"))
                .map(|(_, v)| v)
                .sum::<f64>()
        })
        .sum()
}

fn unauthenticated(nodes: &[CacheNode], reason: &str) -> f64 {
    let k = format!("lode_node_writes_unauthenticated_total{{reason=\"{reason}\"}}");
    nodes.iter().map(|n| get(&n.metrics(), &k)).sum()
}

#[test]
fn only_hosts_with_the_write_key_fill_the_fleet() {
    let _serial = serial();
    let env = Env::new();
    let img = FsImage::build(&env);
    env.push(&img.path, TENANT, NAME);
    let want = img.file(FILE.trim_start_matches('/')).to_vec();
    let key = env.path("fleet.key");
    std::fs::write(&key, format!("{}\n", "k3y".repeat(16))).unwrap();
    let key_s = key.to_str().unwrap();
    let nodes: Vec<CacheNode> = (0..5)
        .map(|i| {
            CacheNode::start(
                env.dir.path(),
                &i.to_string(),
                &["--memory", "512M", "--write-key", key_s],
            )
        })
        .collect();
    let spec = spec_of(&nodes);
    let store = env.store.to_str().unwrap().to_string();
    let cat = |tag: &str, extra: &[&str]| {
        let mut c = env.lode();
        c.args(["cat", NAME, FILE, "--tenant", TENANT, "--store", &store])
            .arg("--cache-dir")
            .arg(env.path(tag))
            .args([
                "--cache-nodes",
                &spec,
                "--fleet-timeout-ms",
                FLEET_TIMEOUT_MS,
            ])
            .args(extra);
        let o = run_timeout(&mut c, Duration::from_secs(120)).ok();
        assert_same_bytes(&o.stdout, &want, tag);
        o
    };

    // A host without the key: reads work (the store), writes are refused.
    cat("nokey", &[]);
    assert_eq!(
        stripes_held(&nodes),
        0.0,
        "a host without the key stored stripes"
    );
    assert!(
        unauthenticated(&nodes, "missing") > 0.0,
        "refusals not counted"
    );

    // A forged MAC and a replayed header on another key are refused too.
    let a = &nodes[0].addr;
    assert_eq!(put(a, "ab.0", b"poison", None), 401);
    let forged = format!("v1 {} {}", 0, "00".repeat(32));
    assert_eq!(put(a, "ab.0", b"poison", Some(&forged)), 401);
    assert!(unauthenticated(&nodes, "stale") + unauthenticated(&nodes, "bad_mac") > 0.0);
    assert_eq!(stripes_held(&nodes), 0.0);

    // Hosts with the key fill the fleet; then a cold host with the key
    // reads everything from it.
    cat("withkey", &["--fleet-key", key_s]);
    assert!(
        stripes_held(&nodes) > 0.0,
        "a host with the key stored nothing"
    );
    let o = cat("cold", &["--fleet-key", key_s]);
    assert!(
        o.stderr.contains(" store 0,"),
        "a cold host after the fill still went to the store: {}",
        o.stderr
    );

    // A key file that is too short is refused with a clear error.
    std::fs::write(env.path("short.key"), "short").unwrap();
    let mut c = env.lode();
    c.args(["cat", NAME, FILE, "--tenant", TENANT, "--store", &store])
        .args(["--cache-nodes", &spec, "--fleet-key"])
        .arg(env.path("short.key"));
    let o = run_timeout(&mut c, Duration::from_secs(60));
    assert!(!o.status.success());
    assert!(o.stderr.contains("at least 32"), "{}", o.stderr);
}
