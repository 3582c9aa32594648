//! Herds: many cold hosts (`lode cat` processes, each with its own empty
//! cache directory) read one file of a new image at the same moment through
//! an empty fleet. Fill leases make the herd cost one store GET per distinct
//! chunk, with lode cache nodes and with plain memcached; a node SIGKILLed
//! and restarted during a herd costs no client error; a store that fails or
//! hangs during a herd leaves no host waiting beyond its bounds.
#![allow(clippy::unwrap_used, missing_docs)]

mod common_agent;
mod common_fleet;

use common_agent::*;
use common_fleet::*;
use std::path::Path;
use std::time::{Duration, Instant};

const TENANT: &str = "acme";
const NAME: &str = "fs";
const FILE: &str = "/data/big.bin";

/// What one host of a herd reported.
struct Host {
    out: Out,
    fleet: u64,
    store: u64,
}

/// Parses `fleet N` / `store N` out of `lode cat`'s stats line.
fn tier_count(stderr: &str, label: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("lode cat:"))
        .unwrap_or_else(|| panic!("no stats line in:\n{stderr}"));
    let inner = line.split_once('(').unwrap().1.split_once(')').unwrap().0;
    inner
        .split(", ")
        .find_map(|p| p.strip_prefix(label)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Starts `k` `lode cat` processes at once, each with its own new cache
/// directory under `tag`, and waits for all of them (at most `limit`).
fn herd(env: &Env, tag: &str, k: usize, spec: &str, extra: &[&str], limit: Duration) -> Vec<Host> {
    let store = env.store.to_str().unwrap().to_string();
    let threads: Vec<_> = (0..k)
        .map(|i| {
            let mut c = env.lode();
            let cache = env.path(&format!("{tag}-cache-{i}"));
            c.args(["cat", NAME, FILE, "--tenant", TENANT, "--store", &store])
                .arg("--cache-dir")
                .arg(&cache)
                .args([
                    "--cache-nodes",
                    spec,
                    "--fleet-timeout-ms",
                    FLEET_TIMEOUT_MS,
                ])
                .args(extra);
            std::thread::spawn(move || run_timeout(&mut c, limit))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| {
            let out = t.join().unwrap();
            let (fleet, store) = if out.status.success() {
                let l = fleet_label(spec);
                (tier_count(&out.stderr, l), tier_count(&out.stderr, "store"))
            } else {
                (0, 0)
            };
            Host { out, fleet, store }
        })
        .collect()
}

/// Every host succeeded with the right bytes; returns the most chunks one
/// host read (fleet + store). Readahead may make one host read a chunk more
/// than another, so this bounds the distinct chunks of the herd from below.
fn all_right(hosts: &[Host], want: &[u8], what: &str) -> u64 {
    let mut most = 0;
    for (i, h) in hosts.iter().enumerate() {
        assert!(
            h.out.status.success(),
            "{what}: host {i} failed: {}",
            h.out.stderr
        );
        assert_same_bytes(&h.out.stdout, want, &format!("{what}: host {i}"));
        most = most.max(h.fleet + h.store);
    }
    most
}

fn store_gets(hosts: &[Host]) -> u64 {
    hosts.iter().map(|h| h.store).sum()
}

fn setup() -> (Env, Vec<u8>) {
    let env = Env::new();
    let img = FsImage::build(&env);
    env.push(&img.path, TENANT, NAME);
    let want = img.file(FILE.trim_start_matches('/')).to_vec();
    (env, want)
}

/// Store latency for herds: every host misses at about the same time.
const SLOW_STORE: [&str; 2] = ["--inject-store-latency-ms", "20"];
/// Waits long enough that, on a loaded test machine, no host gives up on
/// the lease holder: then the store count is exact.
const PATIENT: [&str; 2] = ["--fleet-lease-wait-ms", "60000"];

fn herd_costs_one_store_get_per_chunk(spec: &str, env: &Env, want: &[u8], what: &str) {
    let mut extra = SLOW_STORE.to_vec();
    extra.extend(PATIENT);
    let hosts = herd(env, what, 8, spec, &extra, Duration::from_secs(120));
    let chunks = all_right(&hosts, want, what);
    let gets = store_gets(&hosts);
    eprintln!("{what}: 8 hosts, {chunks} chunks each, {gets} store GETs");
    assert!(chunks >= 6, "{what}: a 3 MiB file is at least 6 chunks");
    assert!(
        gets <= chunks,
        "{what}: {gets} store GETs for {chunks} chunks: the herd must fetch each distinct chunk from the store once"
    );
}

/// 8 cold hosts through 5 empty lode nodes: one store GET per chunk. The
/// same herd with coordination off (`--fleet-lease-ms 0`, the behaviour
/// before fill leases) goes to the store more than once per chunk, which
/// shows this test can fail.
#[test]
fn a_herd_through_lode_nodes_costs_one_store_get_per_chunk() {
    let _serial = serial();
    let (env, want) = setup();
    let nodes = start_nodes(env.dir.path(), 5);
    herd_costs_one_store_get_per_chunk(&spec_of(&nodes), &env, &want, "lode-nodes");
    let granted: f64 = nodes
        .iter()
        .map(|n| get(&n.metrics(), "lode_node_leases_granted_total"))
        .sum();
    assert!(granted >= 6.0, "nodes granted {granted} leases");

    let fresh_dir = env.path("fresh");
    std::fs::create_dir_all(&fresh_dir).unwrap();
    let fresh = start_nodes(&fresh_dir, 5);
    let mut extra = SLOW_STORE.to_vec();
    extra.extend(["--fleet-lease-ms", "0"]);
    let hosts = herd(
        &env,
        "off",
        8,
        &spec_of(&fresh),
        &extra,
        Duration::from_secs(120),
    );
    let chunks = all_right(&hosts, &want, "coordination off");
    assert!(
        store_gets(&hosts) > chunks,
        "without leases 8 simultaneous cold hosts went to the store only {} times for {chunks} chunks",
        store_gets(&hosts)
    );
}

/// The same herd with plain memcached as the fleet (meta-protocol leases).
#[test]
fn a_herd_through_memcached_costs_one_store_get_per_chunk() {
    let _serial = serial();
    let (env, want) = setup();
    let mcs: Vec<Memcached> = (0..5).map(|_| Memcached::start()).collect();
    herd_costs_one_store_get_per_chunk(&memcached_spec(&mcs), &env, &want, "memcached");
}

/// A node SIGKILLed in the middle of a herd, then restarted empty, and a
/// second herd right after: no host fails, every host gets the right bytes;
/// the lease of a dead node moves to the next node of the placement.
#[test]
fn a_node_killed_and_restarted_during_a_herd_costs_no_client_error() {
    let _serial = serial();
    let (env, want) = setup();
    let mut nodes = start_nodes(env.dir.path(), 5);
    let spec = spec_of(&nodes);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            herd(
                &env,
                "kill",
                12,
                &spec,
                &SLOW_STORE,
                Duration::from_secs(180),
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        nodes[2].kill();
        std::thread::sleep(Duration::from_millis(300));
        nodes[2].restart(&[]);
        let hosts = h.join().unwrap();
        all_right(&hosts, &want, "herd with node 2 killed and restarted");
    });
    let hosts = herd(
        &env,
        "after",
        8,
        &spec,
        &SLOW_STORE,
        Duration::from_secs(120),
    );
    let chunks = all_right(&hosts, &want, "herd after the restart");
    let from_fleet: u64 = hosts.iter().map(|h| h.fleet).sum();
    assert_eq!(
        from_fleet,
        8 * chunks,
        "after the first herd filled the fleet, 4-of-5 reads hide the restarted node"
    );
}

/// Runs a herd against a store that cannot serve the chunks, and returns
/// how long the slowest host took; every host must fail cleanly.
fn failing_herd(env: &Env, spec: &str, tag: &str, extra: &[&str]) -> Duration {
    let t = Instant::now();
    let hosts = herd(env, tag, 8, spec, extra, Duration::from_secs(120));
    for (i, h) in hosts.iter().enumerate() {
        assert!(
            !h.out.status.success(),
            "{tag}: host {i} succeeded without a store"
        );
        assert!(
            h.out.stderr.contains(FILE) || h.out.stderr.contains("chunk"),
            "{tag}: host {i} error names nothing: {}",
            h.out.stderr
        );
    }
    t.elapsed()
}

/// The store hangs (every GET takes 10 minutes) or fails (chunks missing)
/// during a herd: every host ends with an error within its bounds (lease
/// wait + store timeout), none waits on a lease holder that gave up.
#[test]
fn a_failing_or_hanging_store_during_a_herd_ends_in_bounded_time() {
    let _serial = serial();
    let (env, _want) = setup();
    let nodes = start_nodes(env.dir.path(), 5);
    let spec = spec_of(&nodes);
    let hang = [
        "--inject-store-latency-ms",
        "600000",
        "--store-timeout",
        "1",
        "--store-retries",
        "0",
        "--fleet-lease-wait-ms",
        "2000",
    ];
    let took = failing_herd(&env, &spec, "hang", &hang);
    // Unbounded, a host would wait 10 minutes; bounded, about lease wait +
    // store timeout per chunk in the file's path (generous for a loaded box).
    assert!(
        took < Duration::from_secs(100),
        "hanging store: herd took {took:?}"
    );

    let root = store_root(&env.store);
    remove_chunks(&root);
    let took = failing_herd(&env, &spec, "missing", &["--fleet-lease-wait-ms", "2000"]);
    assert!(
        took < Duration::from_secs(100),
        "failing store: herd took {took:?}"
    );
}

/// Deletes every chunk object under a store root (manifests stay).
fn remove_chunks(root: &Path) {
    let chunks = root.join("chunks");
    assert!(chunks.is_dir(), "no chunks dir under {}", root.display());
    std::fs::remove_dir_all(&chunks).unwrap();
    std::fs::create_dir_all(&chunks).unwrap();
}

/// A lease holder that dies: one host starts first, wins the leases of the
/// first chunks, hangs on the store (10 minutes per GET) and is SIGKILLed.
/// The herd that was waiting for its fills takes over once those leases
/// expire (`--fleet-lease-ms 2000`): every other host gets the right bytes,
/// and no one waits for the dead host's store GET.
#[test]
fn a_lease_holder_that_dies_stalls_the_herd_only_for_the_lease_ttl() {
    let _serial = serial();
    let (env, want) = setup();
    let nodes = start_nodes(env.dir.path(), 5);
    let spec = spec_of(&nodes);
    let store = env.store.to_str().unwrap().to_string();
    let mut holder = env.lode();
    holder
        .args(["cat", NAME, FILE, "--tenant", TENANT, "--store", &store])
        .arg("--cache-dir")
        .arg(env.path("holder-cache"))
        .args([
            "--cache-nodes",
            &spec,
            "--fleet-timeout-ms",
            FLEET_TIMEOUT_MS,
        ])
        .args([
            "--inject-store-latency-ms",
            "600000",
            "--store-timeout",
            "900",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut holder = holder.spawn().unwrap();
    // Let it win the first leases before the herd arrives.
    let t = Instant::now();
    let granted = || -> f64 {
        nodes
            .iter()
            .map(|n| get(&n.metrics(), "lode_node_leases_granted_total"))
            .sum()
    };
    while granted() < 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the holder took no lease"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            herd(
                &env,
                "after-holder",
                6,
                &spec,
                &["--fleet-lease-ms", "2000", "--fleet-lease-wait-ms", "60000"],
                Duration::from_secs(120),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        holder.kill().unwrap();
        holder.wait().unwrap();
        let hosts = h.join().unwrap();
        all_right(&hosts, &want, "herd after the lease holder died");
    });
    let expired: f64 = nodes
        .iter()
        .map(|n| get(&n.metrics(), "lode_node_leases_expired_total"))
        .sum();
    assert!(
        expired >= 1.0,
        "the dead holder's leases never expired ({expired})"
    );
}
