//! Shared helpers of the `lode agent` integration tests: a test environment
//! (LODE_HOME, store), a supervised agent process, deterministic images,
//! qemu/libnbd tool wrappers with timeouts, and metrics scraping.
#![allow(dead_code, clippy::unwrap_used)]

pub mod nbd_client;
pub mod service;
pub mod vhost_client;

pub use lode_testkit::services::{free_port, require_tool};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
/// lode's chunk size.
pub const CHUNK: u64 = 512 * KIB;
/// Region of one byte pattern in [`BlockImage`].
pub const REGION: u64 = 64 * KIB;

/// The `lode` binary cargo built for this package.
pub fn lode_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lode")
}

/// Output of a finished command.
pub struct Out {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
    pub what: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` ({}, {:?}):\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.status,
            self.elapsed,
            self.stdout_str(),
            self.stderr
        )
    }
}

impl Out {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Panics unless the command succeeded.
    pub fn ok(self) -> Out {
        assert!(
            self.status.success(),
            "`{}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.status,
            self.stdout_str(),
            self.stderr
        );
        self
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, killing it and failing the test after `limit`.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Out {
    let what = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = t_err.join().unwrap_or_default();
            panic!(
                "`{what}` did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let stdout = t_out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Out {
        status,
        stdout,
        stderr,
        elapsed,
        what,
    }
}

/// A scratch directory with its own LODE_HOME and file store.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub store: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("lode-agent-it-")
            .tempdir()
            .unwrap();
        let home = dir.path().join("home");
        let store = dir.path().join("store");
        fs::create_dir_all(&home).unwrap();
        Env { dir, home, store }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `lode` with this environment's LODE_HOME.
    pub fn lode(&self) -> Command {
        let mut c = Command::new(lode_bin());
        c.env("LODE_HOME", &self.home).env_remove("LODE_LOG");
        c
    }

    /// Runs `lode ARGS` and requires success.
    pub fn lode_ok(&self, args: &[&str]) -> Out {
        run_timeout(self.lode().args(args), Duration::from_secs(120)).ok()
    }

    /// Pushes a raw/ext4 image file as `tenant/name`.
    pub fn push(&self, image: &Path, tenant: &str, name: &str) {
        let src = format!("ext4:{}", image.display());
        self.lode_ok(&[
            "push",
            &src,
            "--tenant",
            tenant,
            "--name",
            name,
            "--store",
            self.store.to_str().unwrap(),
        ]);
    }

    /// `lode inspect --json`.
    pub fn inspect(&self, tenant: &str, name: &str) -> serde_json::Value {
        let o = self.lode_ok(&[
            "inspect",
            name,
            "--tenant",
            tenant,
            "--store",
            self.store.to_str().unwrap(),
            "--json",
        ]);
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "inspect --json output is not JSON ({e}): {}",
                o.stdout_str()
            )
        })
    }

    /// `lode pull` into `out`.
    pub fn pull(&self, tenant: &str, name: &str, out: &Path) {
        self.lode_ok(&[
            "pull",
            name,
            "--tenant",
            tenant,
            "--store",
            self.store.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
    }

    /// Starts an agent on a fresh socket with this store and its own cache
    /// and overlay directories, plus `extra` arguments.
    pub fn agent(&self, tag: &str, extra: &[&str]) -> Agent {
        Agent::start(self, tag, &self.path(&format!("cache-{tag}")), extra)
    }

    /// Like [`Env::agent`] but listening on TCP `127.0.0.1:PORT` with
    /// mutual TLS (certificates made by [`tls_certs`]).
    pub fn agent_tcp(&self, tag: &str, extra: &[&str]) -> Agent {
        Agent::start_on(self, tag, &self.path(&format!("cache-{tag}")), true, extra)
    }
}

/// Test certificates (openssl): a CA, a server certificate for 127.0.0.1
/// and localhost, a client certificate; QEMU `tls-creds-x509` directories
/// with and without the client certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// `ca-cert.pem`, `client-cert.pem`, `client-key.pem`.
    pub client_dir: PathBuf,
    /// `ca-cert.pem` only: a client without a certificate.
    pub anonymous_dir: PathBuf,
    /// A client certificate signed by another CA.
    pub stranger_dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Makes a CA and a certificate signed by it (`ext`: extensions).
fn signed(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    openssl(dir, &["genrsa", "-out", &format!("{name}-key.pem"), "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-cert.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &format!("{name}-cert.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn make_ca(dir: &Path, name: &str) {
    fs::write(
        dir.join(format!("{name}.ext")),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    openssl(dir, &["genrsa", "-out", &format!("{name}-key.pem"), "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-signkey",
            &format!("{name}-key.pem"),
            "-days",
            "30",
            "-out",
            &format!("{name}-cert.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// Generates [`TlsFiles`] under `dir`.
pub fn tls_certs(dir: &Path) -> TlsFiles {
    require_tool("openssl", "openssl");
    fs::create_dir_all(dir).unwrap();
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    signed(
        dir,
        "ca",
        "server",
        "localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    );
    let client_ext = "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";
    signed(dir, "ca", "client", "lode-test-client", client_ext);
    signed(dir, "other-ca", "stranger", "stranger", client_ext);
    let qemu_dir = |name: &str, client: Option<&str>| {
        let d = dir.join(name);
        fs::create_dir_all(&d).unwrap();
        fs::copy(dir.join("ca-cert.pem"), d.join("ca-cert.pem")).unwrap();
        if let Some(c) = client {
            fs::copy(dir.join(format!("{c}-cert.pem")), d.join("client-cert.pem")).unwrap();
            fs::copy(dir.join(format!("{c}-key.pem")), d.join("client-key.pem")).unwrap();
        }
        d
    };
    TlsFiles {
        ca: dir.join("ca-cert.pem"),
        server_cert: dir.join("server-cert.pem"),
        server_key: dir.join("server-key.pem"),
        client_dir: qemu_dir("qemu-client", Some("client")),
        anonymous_dir: qemu_dir("qemu-anonymous", None),
        stranger_dir: qemu_dir("qemu-stranger", Some("stranger")),
    }
}

/// qemu-io on an NBD export over TCP with TLS credentials from `creds_dir`.
pub fn qemu_io_tls(addr: &str, export: &str, creds_dir: &Path, cmds: &[String]) -> Out {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut c = Command::new("qemu-io");
    c.arg("--object")
        .arg(format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", creds_dir.display()))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,server.type=inet,server.host={host},server.port={port},export={export},tls-creds=tls0,tls-hostname=localhost"
        ));
    for x in cmds {
        c.arg("-c").arg(x);
    }
    run_timeout(&mut c, Duration::from_secs(60))
}

/// A running `lode agent`, killed on drop.
pub struct Agent {
    child: Option<Child>,
    pub sock: PathBuf,
    /// Its control socket and state directory.
    pub control: PathBuf,
    pub state: PathBuf,
    /// TLS files of a TCP agent.
    pub tls: Option<TlsFiles>,
    /// `HOST:PORT` when listening on TCP instead of `sock`.
    pub tcp_addr: Option<String>,
    pub metrics_addr: String,
    pub log: PathBuf,
    pub cache_dir: PathBuf,
    pub overlay_dir: PathBuf,
}

impl Agent {
    /// Starts `lode agent` and waits until both its NBD socket and its
    /// metrics endpoint accept connections.
    pub fn start(env: &Env, tag: &str, cache_dir: &Path, extra: &[&str]) -> Agent {
        Agent::start_on(env, tag, cache_dir, false, extra)
    }

    /// Starts an agent on a unix socket, or on TCP when `tcp`.
    pub fn start_on(env: &Env, tag: &str, cache_dir: &Path, tcp: bool, extra: &[&str]) -> Agent {
        let sock = env.path(&format!("{tag}.sock"));
        let log = env.path(&format!("agent-{tag}.log"));
        let overlays = env.path(&format!("overlays-{tag}"));
        let control = env.path(&format!("{tag}.ctl"));
        let state = env.path(&format!("state-{tag}"));
        let tls = tcp.then(|| tls_certs(&env.path(&format!("tls-{tag}"))));
        for attempt in 0..3 {
            let metrics_addr = format!("127.0.0.1:{}", free_port());
            let tcp_addr = tcp.then(|| format!("127.0.0.1:{}", free_port()));
            let listen = match &tcp_addr {
                Some(a) => a.clone(),
                None => format!("unix:{}", sock.display()),
            };
            let _ = fs::remove_file(&sock);
            let logf = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let mut cmd = env.lode();
            cmd.arg("agent")
                .arg("--listen")
                .arg(&listen)
                .arg("--dev-open-exports")
                .arg("--control")
                .arg(format!("unix:{}", control.display()))
                .arg("--state-dir")
                .arg(&state)
                .arg("--store")
                .arg(&env.store)
                .arg("--cache-dir")
                .arg(cache_dir)
                .arg("--overlay-dir")
                .arg(&overlays)
                .arg("--metrics")
                .arg(&metrics_addr)
                .args(extra)
                .env("LODE_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf);
            if let Some(t) = &tls {
                cmd.arg("--tls-cert")
                    .arg(&t.server_cert)
                    .arg("--tls-key")
                    .arg(&t.server_key)
                    .arg("--tls-client-ca")
                    .arg(&t.ca);
            }
            // Exact fetch counts need the agent to read only what clients ask for.
            if !extra.contains(&"--prefetch") {
                cmd.args(["--prefetch", "none"]);
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start lode agent: {e}"));
            let mut a = Agent {
                child: Some(child),
                sock: sock.clone(),
                control: control.clone(),
                state: state.clone(),
                tls: tls.clone(),
                tcp_addr,
                metrics_addr,
                log: log.clone(),
                cache_dir: cache_dir.to_path_buf(),
                overlay_dir: overlays.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(st) = a.child.as_mut().unwrap().try_wait().unwrap() {
                    a.child = None;
                    let text = a.log_text();
                    if attempt < 2 && text.contains("binding") {
                        break; // port taken meanwhile: try another
                    }
                    panic!("lode agent exited ({st}) at start-up; log:\n{text}");
                }
                let nbd_up = match &a.tcp_addr {
                    Some(t) => TcpStream::connect(t).is_ok(),
                    None => std::os::unix::net::UnixStream::connect(&sock).is_ok(),
                };
                let metrics_up = nbd_up && TcpStream::connect(&a.metrics_addr).is_ok();
                if nbd_up && metrics_up {
                    return a;
                }
                assert!(
                    Instant::now() < deadline,
                    "lode agent did not come up within 30 s; log:\n{}",
                    a.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!("agent start retries exhausted")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `nbd+unix:///EXPORT?socket=SOCK`.
    pub fn uri(&self, export: &str) -> String {
        match &self.tcp_addr {
            Some(t) => format!("nbd://{t}/{export}"),
            None => format!("nbd+unix:///{export}?socket={}", self.sock.display()),
        }
    }

    /// One qemu-io run on `export` (over TLS for a TCP agent).
    pub fn qemu_io(&self, export: &str, cmds: &[String]) -> Out {
        match (&self.tcp_addr, &self.tls) {
            (Some(addr), Some(t)) => qemu_io_tls(addr, export, &t.client_dir, cmds),
            _ => qemu_io(&self.uri(export), cmds),
        }
    }

    /// Panics if the agent process has exited.
    pub fn assert_alive(&mut self) {
        let st = self
            .child
            .as_mut()
            .expect("agent was stopped")
            .try_wait()
            .unwrap();
        assert!(
            st.is_none(),
            "lode agent died ({st:?}); log:\n{}",
            self.log_text()
        );
    }

    /// Waits (up to 10 s) until no per-connection overlay files are left:
    /// every anonymous overlay is deleted when its connection ends.
    pub fn assert_no_connection_overlays(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<String> = fs::read_dir(&self.overlay_dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("conn-"))
                        .collect()
                })
                .unwrap_or_default();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "overlay files of closed connections left behind: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the agent (SIGKILL) and waits for it.
    /// Waits (bounded) until the disk-cache writes that run off the read
    /// path have landed, so a kill right after keeps every fetched chunk.
    pub fn settle_disk_writes(&self) {
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let m = self.metrics();
            if m.get("lode_cache_writes_pending{tier=\"disk\"}")
                .copied()
                .unwrap_or(0.0)
                == 0.0
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("disk-cache writes still pending after 30 s");
    }

    /// SIGKILLs the agent (after nothing: pending disk writes may be lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The metrics endpoint's text.
    pub fn metrics_text(&self) -> String {
        metrics_text_at(&self.metrics_addr)
    }

    /// All samples: `name{labels}` → value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        parse_metrics(&self.metrics_text())
    }

    /// One sample, e.g. `lode_tier_hits_total{tier="store"}`; panics if absent.
    pub fn metric(&self, key: &str) -> f64 {
        let m = self.metrics();
        *m.get(key)
            .unwrap_or_else(|| panic!("metric {key} missing; metrics:\n{}", self.metrics_text()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- agent log {} ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// The text of the metrics endpoint at `addr` (`HOST:PORT`).
pub fn metrics_text_at(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let (head, body) = body
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("bad HTTP answer from metrics: {body:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "metrics answered {head}");
    body.to_string()
}

/// Parses Prometheus text into `name{labels}` → value.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                m.insert(k.to_string(), v);
            }
        }
    }
    m
}

pub const STORE_HITS: &str = "lode_tier_hits_total{tier=\"store\"}";
pub const DISK_HITS: &str = "lode_tier_hits_total{tier=\"disk\"}";
pub const MEMORY_HITS: &str = "lode_tier_hits_total{tier=\"memory\"}";
pub const STORE_ERRORS: &str = "lode_tier_errors_total{tier=\"store\"}";
pub const CORRUPT: &str = "lode_cache_corrupt_discarded_total{tier=\"disk\"}";

/// A tiny deterministic PRNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// What a 64 KiB region of a [`BlockImage`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// All zeros (its chunk is a hole).
    Zero,
    /// Pseudo-random bytes.
    Random,
    /// One byte repeated.
    Pattern(u8),
}

/// A raw block image with known content per 64 KiB region:
///
/// * every chunk `c` with `c % 5 == 3` is all zeros (a hole);
/// * chunks 10, 20 and 30 are byte-identical (0x5a): one stored chunk name;
/// * chunks with `c % 7 == 1` are pseudo-random;
/// * every other region is one byte pattern, different in neighbouring regions;
/// * the image ends with a partial chunk (`size` need not be chunk aligned).
pub struct BlockImage {
    pub path: PathBuf,
    pub data: Vec<u8>,
}

impl BlockImage {
    pub fn region(r: u64) -> Region {
        let c = r * REGION / CHUNK;
        if c % 5 == 3 {
            Region::Zero
        } else if c == 10 || c == 20 || c == 30 {
            Region::Pattern(0x5a)
        } else if c % 7 == 1 {
            Region::Random
        } else {
            // 1..=250, never 0, and different for neighbours.
            Region::Pattern(1 + ((r * 37 + 11) % 250) as u8)
        }
    }

    /// Writes the image (sparse) to `path`; `size` must be a multiple of 512.
    pub fn create(path: &Path, size: u64) -> BlockImage {
        assert_eq!(size % 512, 0);
        let mut data = vec![0u8; size as usize];
        let mut r = 0;
        while r * REGION < size {
            let s = (r * REGION) as usize;
            let e = ((r + 1) * REGION).min(size) as usize;
            match Self::region(r) {
                Region::Zero => {}
                Region::Random => Rng::new(0xB10C_0000 + r).fill(&mut data[s..e]),
                Region::Pattern(p) => data[s..e].fill(p),
            }
            r += 1;
        }
        let f = fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        for (i, c) in data.chunks(CHUNK as usize).enumerate() {
            if c.iter().any(|&b| b != 0) {
                f.write_all_at(c, i as u64 * CHUNK).unwrap();
            }
        }
        f.sync_all().unwrap();
        BlockImage {
            path: path.to_path_buf(),
            data,
        }
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// Regions with a byte pattern: (region index, byte).
    pub fn pattern_regions(&self) -> Vec<(u64, u8)> {
        (0..self.size().div_ceil(REGION))
            .filter_map(|r| match Self::region(r) {
                Region::Pattern(p) => Some((r, p)),
                _ => None,
            })
            .collect()
    }

    /// Region length (the last one may be short).
    pub fn region_len(&self, r: u64) -> u64 {
        ((r + 1) * REGION).min(self.size()) - r * REGION
    }

    pub fn slice(&self, off: u64, len: u64) -> &[u8] {
        &self.data[off as usize..(off + len) as usize]
    }
}

/// Compares two byte slices and panics naming the first difference.
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} != expected {}",
        got.len(),
        want.len()
    );
    let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
    panic!(
        "{what}: first difference at byte {i} (chunk {}): got {:#04x}, expected {:#04x}",
        i as u64 / CHUNK,
        got[i],
        want[i]
    );
}

/// Compares a file with expected bytes.
pub fn assert_file_is(path: &Path, want: &[u8], what: &str) {
    let got =
        fs::read(path).unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", path.display()));
    assert_same_bytes(&got, want, what);
}

/// `qemu-img convert -f raw -O raw URI OUT`.
pub fn qemu_img_convert(uri: &str, out: &Path) -> Out {
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-f", "raw", "-O", "raw", uri]).arg(out);
    run_timeout(&mut c, Duration::from_secs(60))
}

/// Runs one qemu-io invocation (one NBD connection) with `cmds`.
pub fn qemu_io(uri: &str, cmds: &[String]) -> Out {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", uri]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    run_timeout(&mut c, Duration::from_secs(60))
}

/// qemu-io output reports a failure (pattern mismatch, I/O error), whatever
/// its exit status (older qemu-io exits 0 after failed commands).
pub fn qemu_io_failed(o: &Out) -> bool {
    let text = format!("{}{}", o.stdout_str(), o.stderr);
    !o.status.success()
        || text.contains("Pattern verification failed")
        || text.contains("failed:")
        || text.contains("error")
}

/// Runs one read-only qemu-io invocation (`-r`) with `cmds`.
pub fn qemu_io_ro(uri: &str, cmds: &[String]) -> Out {
    let mut c = Command::new("qemu-io");
    c.args(["-r", "-f", "raw", uri]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    run_timeout(&mut c, Duration::from_secs(60))
}

/// Runs qemu-io and requires every command to succeed.
pub fn qemu_io_ok(uri: &str, cmds: &[String]) -> Out {
    let o = qemu_io(uri, cmds);
    assert!(
        !qemu_io_failed(&o),
        "qemu-io {uri} {cmds:?} reported a failure ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        o.stdout_str(),
        o.stderr
    );
    o
}

/// Parses `qemu-io -c "read -v OFF LEN"` hex dumps (lines
/// `OFFSET:  xx xx ...  ascii`, 16 bytes per line) back into bytes.
pub fn parse_qemu_io_dump(text: &str, off: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut expect_at = off;
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(a) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        if a != expect_at || out.len() as u64 >= len {
            continue;
        }
        let n = (len - out.len() as u64).min(16) as usize;
        let toks: Vec<&str> = rest.split_whitespace().take(n).collect();
        assert_eq!(toks.len(), n, "short qemu-io dump line {line:?}");
        for t in toks {
            out.push(
                u8::from_str_radix(t, 16).unwrap_or_else(|_| panic!("bad hex {t:?} in {line:?}")),
            );
        }
        expect_at += n as u64;
    }
    assert_eq!(
        out.len() as u64,
        len,
        "qemu-io dump of {len} bytes at {off} incomplete:\n{text}"
    );
    out
}

/// Total bytes of regular files under `dir` and their paths.
pub fn files_under(dir: &Path) -> (u64, Vec<PathBuf>) {
    let mut total = 0;
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
                files.push(e.path());
            }
        }
    }
    files.sort();
    (total, files)
}

/// The single root directory of a file store.
pub fn store_root(store: &Path) -> PathBuf {
    let roots: Vec<PathBuf> = fs::read_dir(store.join("roots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        // Roots are directories; `roots/GENESIS` is the first root's claim.
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(roots.len(), 1, "expected one store root, found {roots:?}");
    roots.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------
// A minimal OCI image layout (plain tar layers) for filesystem tests.

/// One file of a layer: path (relative), content, mode.
pub struct FileSpec {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

impl FileSpec {
    pub fn new(path: &str, data: impl Into<Vec<u8>>) -> FileSpec {
        FileSpec {
            path: path.to_string(),
            data: data.into(),
            mode: 0o644,
        }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn layer_tar(files: &[FileSpec]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for f in files {
        let mut p = String::new();
        let parts: Vec<&str> = f.path.split('/').collect();
        for d in &parts[..parts.len() - 1] {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(d);
            if !dirs.contains(&p) {
                dirs.push(p.clone());
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(1_700_000_000);
                h.set_uid(0);
                h.set_gid(0);
                b.append_data(&mut h, format!("{p}/"), std::io::empty())
                    .unwrap();
            }
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(f.mode);
        h.set_size(f.data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, &f.path, f.data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes an OCI image layout with one uncompressed layer per entry of `layers`.
pub fn write_oci_layout(dir: &Path, layers: &[Vec<FileSpec>]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |b: &[u8]| {
        let h = sha256_hex(b);
        fs::write(blobs.join(&h), b).unwrap();
        (format!("sha256:{h}"), b.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let (d, n) = put(&layer_tar(l));
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}));
        diff_ids.push(d);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let (cd, cn) = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": descs,
    }))
    .unwrap();
    let (md, mn) = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": mn,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A small filesystem image: two layers, a 3 MiB file in each, small text
/// files, and a file the upper layer replaces. `files` holds the final view.
pub struct FsImage {
    pub path: PathBuf,
    pub files: Vec<(String, Vec<u8>)>,
}

impl FsImage {
    /// Builds the OCI layout under `env` and flattens it with `lode flatten`.
    pub fn build(env: &Env) -> FsImage {
        let mut rng = Rng::new(42);
        let big = rng.bytes((3 * MIB) as usize);
        let other = rng.bytes((3 * MIB + 12345) as usize);
        let lower = vec![
            FileSpec::new("etc/hostname", "lode-test\n"),
            FileSpec::new("etc/motd", "old motd\n"),
            FileSpec::new("data/big.bin", big.clone()),
            FileSpec::new("usr/share/doc/readme.txt", "x".repeat(10_000)),
        ];
        let upper = vec![
            FileSpec::new("etc/motd", "new motd from the upper layer\n"),
            FileSpec::new("opt/app/other.bin", other.clone()),
            FileSpec::new("opt/app/config.json", r#"{"lode": true}"#),
        ];
        let oci = env.path("oci");
        write_oci_layout(&oci, &[lower, upper]);
        let path = env.path("fs.ext4");
        env.lode_ok(&[
            "flatten",
            &format!("oci:{}:latest", oci.display()),
            "-o",
            path.to_str().unwrap(),
        ]);
        let files = vec![
            ("etc/hostname".to_string(), b"lode-test\n".to_vec()),
            (
                "etc/motd".to_string(),
                b"new motd from the upper layer\n".to_vec(),
            ),
            ("data/big.bin".to_string(), big),
            (
                "usr/share/doc/readme.txt".to_string(),
                "x".repeat(10_000).into_bytes(),
            ),
            ("opt/app/other.bin".to_string(), other),
            (
                "opt/app/config.json".to_string(),
                br#"{"lode": true}"#.to_vec(),
            ),
        ];
        FsImage { path, files }
    }

    pub fn file(&self, p: &str) -> &[u8] {
        &self.files.iter().find(|(n, _)| n == p).unwrap().1
    }
}
