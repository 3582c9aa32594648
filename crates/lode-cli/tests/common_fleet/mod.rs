//! Shared helpers of the AZ cache fleet tests: real `lode cache-node` and
//! `memcached` processes on loopback, a store copy without chunks (so an agent
//! can open manifests but must read every chunk from the fleet), fleet
//! warming, and fleet metrics.
//!
//! Test files include it next to `common_agent`:
//! `mod common_agent; mod common_fleet;`.
#![allow(dead_code, clippy::unwrap_used)]

use crate::common_agent::*;
pub use lode_testkit::services::Memcached;
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Per-stripe timeout the tests give agents: generous, because the test
/// machine may be heavily loaded; dead nodes refuse connections at once, so
/// failover does not depend on it.
pub const FLEET_TIMEOUT_MS: &str = "5000";

/// Fleet metrics of the agent (see `FleetTier::render`).
pub const FIRST4: &str = "lode_fleet_first4_total";
pub const NEEDED_FIFTH: &str = "lode_fleet_needed_fifth_total";
pub const RECONSTRUCTIONS: &str = "lode_fleet_reconstructions_total";
pub const FLEET_CORRUPT: &str = "lode_fleet_corrupt_total";
pub const FALLBACKS: &str = "lode_fleet_fallbacks_total";
pub const FILLS: &str = "lode_fleet_fills_total";
pub const FILLS_DROPPED: &str = "lode_fleet_fills_dropped_total";
pub const REPAIRS: &str = "lode_fleet_repairs_total";
pub const STRIPE_BYTES: &str = "lode_fleet_stripe_bytes_total";
pub const CHUNK_BYTES: &str = "lode_fleet_chunk_bytes_total";

/// `lode_tier_hits_total{tier="LABEL"}`.
pub fn tier_hits(label: &str) -> String {
    format!("lode_tier_hits_total{{tier=\"{label}\"}}")
}

/// The fleet tier's label: `fleet` for lode nodes, `fleet-memcached` for memcached.
pub fn fleet_label(spec: &str) -> &'static str {
    if spec.starts_with("memcached://") {
        "fleet-memcached"
    } else {
        "fleet"
    }
}

/// The fleet tests start many processes and read whole images; on a small
/// machine they run one at a time (within one test binary).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One HTTP/1.1 GET on `addr` (cache nodes speak HTTP/1.1 too); `None` if
/// the connection fails.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A `lode cache-node` process; SIGKILLed on drop.
pub struct CacheNode {
    child: Option<Child>,
    pub addr: String,
    pub log: PathBuf,
    /// Extra arguments (`--memory`, `--disk`, ...), reused by restarts.
    pub args: Vec<String>,
    /// A command the node runs under (e.g. `prlimit --nofile=64`), if any.
    pub prefix: Vec<String>,
}

impl CacheNode {
    /// Starts a node on a free loopback port with `args` (default `--memory 512M`).
    pub fn start(dir: &Path, tag: &str, args: &[&str]) -> CacheNode {
        Self::start_prefixed(dir, tag, &[], args)
    }

    /// [`CacheNode::start`] under `prefix` (a wrapper command such as
    /// `prlimit --nofile=64:64 --`).
    pub fn start_prefixed(dir: &Path, tag: &str, prefix: &[&str], args: &[&str]) -> CacheNode {
        let args: Vec<String> = if args.is_empty() {
            vec!["--memory".into(), "512M".into()]
        } else {
            args.iter().map(|s| s.to_string()).collect()
        };
        for attempt in 0..3 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut n = CacheNode {
                child: None,
                addr,
                log: dir.join(format!("node-{tag}.log")),
                args: args.clone(),
                prefix: prefix.iter().map(|s| s.to_string()).collect(),
            };
            match n.spawn() {
                Ok(()) => return n,
                Err(e) if attempt < 2 && e.contains("binding") => continue,
                Err(e) => panic!("cache node {tag}: {e}"),
            }
        }
        unreachable!()
    }

    /// Starts the process on `self.addr` and waits for `/health`.
    fn spawn(&mut self) -> Result<(), String> {
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(lode_bin());
                c
            }
            None => Command::new(lode_bin()),
        };
        let child = cmd
            .arg("cache-node")
            .arg("--listen")
            .arg(&self.addr)
            .args(&self.args)
            .env("LODE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("cannot start lode cache-node: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "exited ({st}) at start-up; log:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if matches!(http_get(&self.addr, "/health"), Some((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not healthy within 30 s; log:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (no chance to flush or say goodbye).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the node and starts it again on the same address with `args`
    /// (memory only by default: it comes back empty).
    pub fn restart(&mut self, args: &[&str]) {
        self.kill();
        self.args = if args.is_empty() {
            vec!["--memory".into(), "512M".into()]
        } else {
            args.iter().map(|s| s.to_string()).collect()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The port may linger for a moment after the kill.
                Err(e) if e.contains("binding") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("restarting cache node {}: {e}", self.addr),
            }
        }
    }

    /// The node's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, and the exit status (the test fails after 30 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("cache node did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The node's own metrics (`lode_node_*`).
    pub fn metrics(&self) -> HashMap<String, f64> {
        let (code, body) = http_get(&self.addr, "/metrics")
            .unwrap_or_else(|| panic!("node {} metrics unreachable", self.addr));
        assert_eq!(code, 200, "node {} /metrics", self.addr);
        parse_metrics(&body)
    }
}

impl Drop for CacheNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `n` lode cache nodes under `dir`.
pub fn start_nodes(dir: &Path, n: usize) -> Vec<CacheNode> {
    (0..n)
        .map(|i| CacheNode::start(dir, &i.to_string(), &[]))
        .collect()
}

/// `--cache-nodes` for lode nodes.
pub fn spec_of(nodes: &[CacheNode]) -> String {
    nodes
        .iter()
        .map(|n| n.addr.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `memcached://HOST:PORT,...`.
pub fn memcached_spec(m: &[Memcached]) -> String {
    format!(
        "memcached://{}",
        m.iter()
            .map(|m| m.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Copies a file store without any chunk (`roots/*/chunks`): manifests,
/// image pointers and root documents only. An agent on the copy can open
/// images but must get every chunk from the fleet.
pub fn copy_store_without_chunks(src: &Path, dst: &Path) {
    fn walk(s: &Path, d: &Path) {
        fs::create_dir_all(d).unwrap();
        for e in fs::read_dir(s).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let (sp, dp) = (e.path(), d.join(&name));
            if e.file_type().unwrap().is_dir() {
                if name == "chunks"
                    && s.parent()
                        .is_some_and(|p| p.file_name().is_some_and(|n| n == "roots"))
                {
                    fs::create_dir_all(&dp).unwrap();
                    continue;
                }
                walk(&sp, &dp);
            } else {
                fs::copy(&sp, &dp).unwrap();
            }
        }
    }
    walk(src, dst);
    // Every root (there may be more than one, e.g. a claim document).
    for root in fs::read_dir(dst.join("roots")).unwrap() {
        let (bytes, files) = files_under(&root.unwrap().path().join("chunks"));
        assert_eq!(
            (bytes, files.len()),
            (0, 0),
            "the chunk-less store copy has chunks"
        );
    }
}

/// An environment sharing `env`'s LODE_HOME (keys) but with another store
/// (e.g. a chunk-less copy); its own scratch directory.
pub fn env_with_store(env: &Env, store: &Path) -> Env {
    let dir = tempfile::Builder::new()
        .prefix("lode-fleet-it-")
        .tempdir()
        .unwrap();
    Env {
        dir,
        home: env.home.clone(),
        store: store.to_path_buf(),
    }
}

/// A sample, 0 if absent.
pub fn get(m: &HashMap<String, f64>, k: &str) -> f64 {
    m.get(k).copied().unwrap_or(0.0)
}

/// Fleet counters of an agent, for messages.
pub fn fleet_summary(m: &HashMap<String, f64>) -> String {
    let mut keys: Vec<&String> = m
        .keys()
        .filter(|k| k.starts_with("lode_fleet_") && !k.contains("_bucket"))
        .collect();
    keys.sort();
    let mut s = String::new();
    for k in keys {
        s.push_str(&format!("  {k} {}\n", m[k]));
    }
    for k in m.keys().filter(|k| k.starts_with("lode_tier_hits_total")) {
        s.push_str(&format!("  {k} {}\n", m[k]));
    }
    s
}

/// Waits until every fill the agent started has finished: fills + dropped
/// == chunks the agent fetched below the fleet. Returns the final metrics.
pub fn wait_fills_settled(
    agent: &Agent,
    below_fleet_hits: &str,
    limit: Duration,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + limit;
    loop {
        let m = agent.metrics();
        if get(&m, FILLS) + get(&m, FILLS_DROPPED) >= get(&m, below_fleet_hits) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "fills did not finish within {limit:?}:\n{}",
            fleet_summary(&m)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What [`warm_fleet`] did.
#[derive(Debug, Default)]
pub struct Warming {
    /// Full reads (one fresh agent each).
    pub passes: usize,
    /// Fills (chunks written to the fleet) over all passes.
    pub fills: f64,
    /// Fills dropped (MAX_FILLS running) over all passes.
    pub dropped: f64,
    /// Dropped fills of the first pass alone.
    pub first_pass_dropped: f64,
    /// stripe bytes / chunk bytes over all passes.
    pub stripe_bytes: f64,
    pub chunk_bytes: f64,
}

/// Reads the whole image with fresh agents (empty host caches, `env`'s
/// store) until the fleet holds every chunk: each pass's store misses fill
/// the fleet in the background; fills that were dropped because
/// `MAX_FILLS` were running are only retried by a later miss, so a pass
/// may leave chunks out. Stops after a pass that dropped no fill; at most
/// `max_passes`.
pub fn warm_fleet(
    env: &Env,
    spec: &str,
    export: &str,
    want: &[u8],
    unique: u64,
    max_passes: usize,
) -> Warming {
    let mut w = Warming::default();
    let label = fleet_label(spec);
    for pass in 0..max_passes {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = format!(
            "warm{}",
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let agent = env.agent(
            &tag,
            &[
                "--cache-nodes",
                spec,
                "--fleet-timeout-ms",
                FLEET_TIMEOUT_MS,
            ],
        );
        let out = env.path(&format!("{tag}.raw"));
        qemu_img_convert(&agent.uri(export), &out).ok();
        assert_file_is(
            &out,
            want,
            &format!("warming pass {pass}: full read through the fleet agent"),
        );
        fs::remove_file(&out).unwrap();
        let m = wait_fills_settled(&agent, &tier_hits("store"), Duration::from_secs(60));
        let (fleet, store) = (get(&m, &tier_hits(label)), get(&m, &tier_hits("store")));
        assert_eq!(
            fleet + store,
            unique as f64,
            "pass {pass}: every distinct chunk comes from the fleet or the store once:\n{}",
            fleet_summary(&m)
        );
        w.passes += 1;
        w.fills += get(&m, FILLS);
        w.dropped += get(&m, FILLS_DROPPED);
        if pass == 0 {
            w.first_pass_dropped = get(&m, FILLS_DROPPED);
        }
        w.stripe_bytes += get(&m, STRIPE_BYTES);
        w.chunk_bytes += get(&m, CHUNK_BYTES);
        eprintln!(
            "warming pass {pass}: fleet hits {fleet}, store hits {store}, fills {}, fills dropped {}",
            get(&m, FILLS),
            get(&m, FILLS_DROPPED)
        );
        // No fill dropped: every chunk this pass missed is in the fleet now.
        if get(&m, FILLS_DROPPED) == 0.0 {
            return w;
        }
    }
    panic!("the fleet was not warm after {max_passes} full reads: {w:?} (unique chunks {unique})");
}

/// The pushed test image and what we know about it.
pub struct Pushed {
    pub img: BlockImage,
    /// `lode pull` of it (the reference the fleet reads are compared to).
    pub pulled: Vec<u8>,
    pub unique: u64,
}

/// Creates a block image of `size` bytes (holes, a duplicated chunk,
/// patterns, random regions), pushes it as `tenant/name` and pulls it back.
pub fn push_image(env: &Env, tenant: &str, name: &str, size: u64) -> Pushed {
    require_tool("qemu-img", "qemu-utils");
    let img = BlockImage::create(&env.path("src.raw"), size);
    env.push(&img.path, tenant, name);
    let unique = env.inspect(tenant, name)["unique_chunks"].as_u64().unwrap();
    let pulled_path = env.path("pulled.raw");
    env.pull(tenant, name, &pulled_path);
    let pulled = fs::read(&pulled_path).unwrap();
    assert_same_bytes(&pulled, &img.data, "lode pull vs the pushed image");
    fs::remove_file(&pulled_path).unwrap();
    Pushed {
        img,
        pulled,
        unique,
    }
}

/// Every chunk of the export read with one NBD READ each: `(ok, failed)`.
/// Panics on the first chunk that comes back with wrong bytes.
pub fn read_chunks_checked(sock: &Path, export: &str, want: &[u8]) -> (u64, u64) {
    use crate::common_agent::nbd_client::Conn;
    let mut c = Conn::go_ok(sock, export);
    assert_eq!(c.size, want.len() as u64, "export size");
    let (mut ok, mut failed) = (0, 0);
    let mut off = 0u64;
    while off < c.size {
        let len = CHUNK.min(c.size - off);
        match c
            .read(off, len as u32)
            .unwrap_or_else(|e| panic!("READ at {off}: {e}"))
        {
            Ok(b) => {
                assert_same_bytes(
                    &b,
                    &want[off as usize..(off + len) as usize],
                    &format!("chunk at {off}"),
                );
                ok += 1;
            }
            Err(errno) => {
                assert_ne!(errno, 0);
                failed += 1;
            }
        }
        off += len;
    }
    c.disconnect();
    (ok, failed)
}
