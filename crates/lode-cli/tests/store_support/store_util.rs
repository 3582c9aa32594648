//! Helpers for the chunk-store CLI tests (`tests/store_*.rs`): a private
//! `LODE_HOME` and store per test, running `lode` with a deadline, checking
//! the one-line error contract, parsing push summaries, and generating images.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Chunk size of the store (a format parameter).
pub const CS: usize = 512 * 1024;
/// 1 MiB.
pub const MIB: usize = 1024 * 1024;

/// The `lode` binary under test.
pub fn lode_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lode")
}

/// A test's world: `LODE_HOME`, a store URL, a work directory, and the
/// environment every `lode` run gets.
pub struct World {
    tmp: tempfile::TempDir,
    /// `$LODE_HOME`.
    pub home: PathBuf,
    /// `--store` value.
    pub store: String,
    /// Local store directory (`None` for S3).
    pub store_dir: Option<PathBuf>,
    /// Extra environment (AWS for S3).
    pub env: Vec<(String, String)>,
}

impl World {
    /// A world with a local directory store (given as a plain path).
    pub fn local() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("lode-store-it-")
            .tempdir()
            .unwrap();
        let home = tmp.path().join("home");
        let store_dir = tmp.path().join("store");
        std::fs::create_dir_all(tmp.path().join("work")).unwrap();
        World {
            store: store_dir.display().to_string(),
            store_dir: Some(store_dir),
            home,
            env: Vec::new(),
            tmp,
        }
    }

    /// A world whose store is `s3://BUCKET/PREFIX` on a moto server.
    pub fn s3(endpoint_env: Vec<(&'static str, String)>, bucket: &str, prefix: &str) -> World {
        let mut w = World::local();
        w.store = format!("s3://{bucket}/{prefix}");
        w.store_dir = None;
        w.env = endpoint_env
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        w
    }

    /// Another `LODE_HOME` on the same store (a second machine).
    pub fn other_home(&self, name: &str) -> World {
        let mut w = World::local();
        w.store = self.store.clone();
        w.store_dir = self.store_dir.clone();
        w.env = self.env.clone();
        w.home = w.tmp.path().join(name);
        w
    }

    /// The test's temporary directory (holds home, store and work).
    pub fn tmp_root(&self) -> &Path {
        self.tmp.path()
    }

    /// A scratch directory for inputs and outputs.
    pub fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    /// The local store directory (panics for S3 worlds).
    pub fn store_dir(&self) -> &Path {
        self.store_dir.as_deref().expect("a local store")
    }

    /// `lode ARGS` with this world's environment (nothing else leaks in:
    /// no AWS_* from the caller, no LODE_LOG, no RUST_BACKTRACE).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(lode_bin());
        c.args(args);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("AWS_") || k == "LODE_LOG" || k == "RUST_BACKTRACE" || k == "RUST_LOG"
            {
                c.env_remove(&k);
            }
        }
        c.env("LODE_HOME", &self.home);
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs `lode ARGS` (plus `--store` when `with_store`), failing the test
    /// if it runs longer than `limit`.
    pub fn run_limit(&self, args: &[&str], with_store: bool, limit: Duration) -> Run {
        let mut a: Vec<&str> = args.to_vec();
        if with_store {
            a.extend(["--store", self.store.as_str()]);
        }
        let start = Instant::now();
        let child = self.command(&a).spawn().expect("spawn lode");
        let out = wait_with_deadline(child, limit, &a);
        Run {
            args: a.iter().map(|s| s.to_string()).collect(),
            status: out.0,
            stdout: out.1,
            stderr: out.2,
            elapsed: start.elapsed(),
        }
    }

    /// `lode ARGS --store STORE`, 180 s limit.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_limit(args, true, Duration::from_secs(180))
    }

    /// `lode push ext4:FILE --tenant T --name N [--concurrency C]`, which must succeed.
    pub fn push(&self, file: &Path, tenant: &str, name: &str) -> Summary {
        let src = format!("ext4:{}", file.display());
        self.run(&["push", &src, "--tenant", tenant, "--name", name])
            .ok()
            .summary()
    }

    /// `lode flatten SOURCE -o OUT` (no store), which must succeed.
    pub fn flatten(&self, source: &str, out: &Path) -> Run {
        self.run_limit(
            &["flatten", source, "-o", out.to_str().unwrap()],
            false,
            Duration::from_secs(120),
        )
        .ok()
    }

    /// `lode pull NAME --tenant T -o OUT`, which must succeed.
    pub fn pull(&self, tenant: &str, name: &str, out: &Path) -> Run {
        self.run(&[
            "pull",
            name,
            "--tenant",
            tenant,
            "-o",
            out.to_str().unwrap(),
        ])
        .ok()
    }

    /// `lode inspect NAME --tenant T --json`, parsed.
    pub fn inspect(&self, tenant: &str, name: &str) -> serde_json::Value {
        let r = self
            .run(&["inspect", name, "--tenant", tenant, "--json"])
            .ok();
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("inspect --json output is not JSON ({e}): {}", r.stdout))
    }

    /// `lode root list`, as (id, state) pairs.
    pub fn roots(&self) -> Vec<(String, String)> {
        let r = self.run(&["root", "list"]).ok();
        r.stdout
            .lines()
            .filter(|l| l.starts_with('r'))
            .map(|l| {
                let mut it = l.split_whitespace();
                (
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Every regular file under the local store, relative paths.
    pub fn store_files(&self) -> Vec<PathBuf> {
        files_under(self.store_dir())
    }

    /// Chunk files (`roots/<root>/chunks/<xx>/<name>`) of the local store.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        self.store_files()
            .into_iter()
            .filter(|p| {
                p.components()
                    .nth(2)
                    .is_some_and(|c| c.as_os_str() == "chunks")
                    && is_hex64(p)
            })
            .collect()
    }
}

fn is_hex64(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Every regular file under `dir`, relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(base, &e.path(), out);
            } else if ft.is_file() {
                out.push(e.path().strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Waits for `child`, killing it and failing the test after `limit`.
pub fn wait_with_deadline(
    mut child: Child,
    limit: Duration,
    what: &[&str],
) -> (ExitStatus, String, String) {
    // Drain pipes on threads so a chatty child cannot block.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut so, &mut s).ok();
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut se, &mut s).ok();
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "lode {what:?} did not finish within {limit:?}; stderr so far: {}",
                t2.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, t1.join().unwrap(), t2.join().unwrap())
}

/// One finished `lode` run.
#[derive(Debug)]
pub struct Run {
    /// Arguments.
    pub args: Vec<String>,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Run {
    /// Asserts success.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert!(
            self.status.success(),
            "lode {:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "lode {:?} panicked: {}",
            self.args,
            self.stderr
        );
        self
    }

    /// Asserts lode's error contract: non-zero exit (not a signal), exactly one
    /// line on stderr, starting `lode: error: `, no panic. Returns the line.
    #[track_caller]
    pub fn err(self) -> String {
        assert!(
            !self.status.success(),
            "lode {:?} succeeded but should have failed:\nstdout: {}\nstderr: {}",
            self.args,
            self.stdout,
            self.stderr
        );
        assert!(
            self.status.code().is_some_and(|c| c != 0),
            "lode {:?} died by a signal: {}",
            self.args,
            self.status
        );
        assert!(
            !self.stderr.contains("panicked"),
            "lode {:?} panicked: {}",
            self.args,
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "lode {:?}: want exactly one line on stderr, got:\n{}",
            self.args,
            self.stderr
        );
        assert!(
            lines[0].starts_with("lode: error: "),
            "lode {:?}: stderr does not start with 'lode: error: ': {}",
            self.args,
            self.stderr
        );
        assert!(
            !lines[0].contains('\x1b'),
            "lode {:?}: escape codes on stderr: {:?}",
            self.args,
            lines[0]
        );
        lines[0].to_string()
    }

    /// Parses the push summary line on stdout.
    #[track_caller]
    pub fn summary(&self) -> Summary {
        Summary::parse(&self.stdout)
    }
}

/// The numbers of a `lode push` summary line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// `chunks total`.
    pub chunks: u64,
    /// `holes`.
    pub holes: u64,
    /// `already stored`.
    pub already: u64,
    /// `uploaded`.
    pub uploaded: u64,
    /// `bytes uploaded`.
    pub bytes_uploaded: u64,
    /// `streamed`: chunks uploaded while the image was still being written.
    pub streamed: u64,
    /// `sha256:...`.
    pub manifest: String,
}

fn number_after(line: &str, key: &str) -> u64 {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("no '{key}' in push summary: {line}"))
        + key.len();
    let digits: String = line[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after '{key}' in push summary: {line}"))
}

impl Summary {
    /// Parses `pushed T/N: chunks total A / holes B / already stored C / uploaded D, bytes uploaded E, ... (manifest sha256:...)`.
    #[track_caller]
    pub fn parse(stdout: &str) -> Summary {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("pushed "))
            .unwrap_or_else(|| panic!("no push summary in: {stdout}"));
        let manifest = line
            .split("(manifest ")
            .nth(1)
            .map(|s| s.trim_end_matches(')').to_string())
            .unwrap_or_else(|| panic!("no manifest digest in push summary: {line}"));
        assert!(
            manifest.starts_with("sha256:") && manifest.len() == 71,
            "bad manifest digest in: {line}"
        );
        Summary {
            chunks: number_after(line, "chunks total"),
            holes: number_after(line, "/ holes"),
            already: number_after(line, "already stored"),
            uploaded: number_after(line, "/ uploaded"),
            bytes_uploaded: number_after(line, "bytes uploaded"),
            streamed: number_after(line, "MB/s, streamed"),
            manifest,
        }
    }
}

// ---------------------------------------------------------------- images

pub use lode_testkit::noise;

/// A distinctive 1 MiB plaintext: 64-byte records, all different.
pub fn canary() -> Vec<u8> {
    let mut v = Vec::with_capacity(MIB);
    let mut i = 0u64;
    while v.len() < MIB {
        let rec = format!("LODE-PLAINTEXT-CANARY record {i:010} do-not-store-in-clear!!\n");
        assert_eq!(rec.len(), 64);
        v.extend_from_slice(rec.as_bytes());
        i += 1;
    }
    v.truncate(MIB);
    v
}

/// The standard test image, 44 chunks + a 777-byte tail (22 MiB):
/// random chunks, all-zero chunks (holes) at 3, 10, 17, 24, 31, 38, four
/// copies of one chunk at 5, 14, 23, 32 (dedup within the image), the 1 MiB [`canary`] at an
/// unaligned offset (spanning chunks 40..42), and a partial last chunk.
pub fn standard_image() -> Vec<u8> {
    let mut img = Vec::with_capacity(44 * CS + 777);
    for i in 0..44u64 {
        if i % 7 == 3 {
            img.extend(std::iter::repeat_n(0u8, CS));
        } else if i % 9 == 5 {
            img.extend(noise(1_000_000, CS));
        } else {
            img.extend(noise(i + 1, CS));
        }
    }
    let at = 40 * CS + 4321;
    img[at..at + MIB].copy_from_slice(&canary());
    img.extend(noise(99, 777));
    img
}

/// Expected counts of an image: (chunks, holes, stored, unique stored).
pub fn expected_counts(img: &[u8]) -> (u64, u64, u64, u64) {
    let mut holes = 0;
    let mut unique = HashSet::new();
    let chunks = img.chunks(CS).count() as u64;
    for c in img.chunks(CS) {
        if c.iter().all(|&b| b == 0) {
            holes += 1;
        } else {
            unique.insert(c);
        }
    }
    (chunks, holes, chunks - holes, unique.len() as u64)
}

/// Writes `bytes` to `path`.
pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// True if the two files have the same bytes (streamed: any size).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Asserts the pulled file equals the source.
#[track_caller]
pub fn assert_same(src: &Path, pulled: &Path) {
    assert!(pulled.is_file(), "{} was not written", pulled.display());
    assert!(
        same_file(src, pulled),
        "{} differs from {}",
        pulled.display(),
        src.display()
    );
}

/// Writes a large pseudo-random file in 1 MiB steps (no big buffer).
pub fn write_noise_file(path: &Path, seed: u64, len: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut done = 0;
    let mut k = 0;
    while done < len {
        let n = (len - done).min(MIB);
        f.write_all(&noise(seed.wrapping_mul(1_000_003).wrapping_add(k), n))
            .unwrap();
        done += n;
        k += 1;
    }
    f.flush().unwrap();
}

/// Flips one bit of the byte at `offset` of `path`.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).unwrap();
}

// ------------------------------------------------- searching for plaintext

/// Every 64-byte window of `pattern`, as rolling hashes, to find any of them
/// in other bytes with [`find_window`].
pub struct Windows<'a> {
    pattern: &'a [u8],
    hashes: HashSet<u64>,
    pow: u64,
}

/// Window length searched for.
pub const WINDOW: usize = 64;
const BASE: u64 = 0x100_0000_01B3;

fn roll_init(w: &[u8]) -> u64 {
    w.iter().fold(0u64, |h, &b| {
        h.wrapping_mul(BASE).wrapping_add(u64::from(b) + 1)
    })
}

impl<'a> Windows<'a> {
    /// Indexes every window of `pattern`.
    pub fn new(pattern: &'a [u8]) -> Self {
        let pow = (0..WINDOW - 1).fold(1u64, |p, _| p.wrapping_mul(BASE));
        let mut hashes = HashSet::with_capacity(pattern.len());
        each_window(pattern, pow, |_, h| {
            hashes.insert(h);
            false
        });
        Windows {
            pattern,
            hashes,
            pow,
        }
    }

    /// Offset in `hay` of a 64-byte window of the pattern, if any.
    pub fn find_in(&self, hay: &[u8]) -> Option<usize> {
        let mut found = None;
        each_window(hay, self.pow, |at, h| {
            if self.hashes.contains(&h) {
                let w = &hay[at..at + WINDOW];
                if self.pattern.windows(WINDOW).any(|p| p == w) {
                    found = Some(at);
                    return true;
                }
            }
            false
        });
        found
    }
}

/// Calls `f(offset, hash)` for every window; stops when `f` returns true.
fn each_window(data: &[u8], pow: u64, mut f: impl FnMut(usize, u64) -> bool) {
    if data.len() < WINDOW {
        return;
    }
    let mut h = roll_init(&data[..WINDOW]);
    if f(0, h) {
        return;
    }
    for i in WINDOW..data.len() {
        let out = u64::from(data[i - WINDOW]) + 1;
        h = h
            .wrapping_sub(out.wrapping_mul(pow))
            .wrapping_mul(BASE)
            .wrapping_add(u64::from(data[i]) + 1);
        if f(i - WINDOW + 1, h) {
            return;
        }
    }
}

// ------------------------------------------------------- OCI layouts

/// A file in a hand-written layer tar.
pub enum TarEntry<'a> {
    /// A directory (path without trailing slash).
    Dir(&'a str),
    /// A regular file.
    File(&'a str, &'a [u8]),
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}", width = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

/// A plain ustar archive of `entries` (fixed owner, mode and time).
pub fn tar(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, data, typ, mode): (String, &[u8], u8, u64) = match e {
            TarEntry::Dir(p) => (format!("{p}/"), &[], b'5', 0o755),
            TarEntry::File(p, d) => (p.to_string(), d, b'0', 0o644),
        };
        assert!(name.len() < 100);
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], mode);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 1_700_000_000);
        h[156] = typ;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn sha256_digest(bytes: &[u8]) -> String {
    lode_chunk::Manifest::digest_of(bytes)
}

fn put_blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let d = sha256_digest(bytes);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
    (d, bytes.len())
}

/// Writes an OCI image layout at `dir` with uncompressed `layers`, tagged `reference`.
pub fn write_oci_layout(dir: &Path, layers: &[Vec<u8>], reference: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for l in layers {
        let (d, n) = put_blob(dir, l);
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cn) = put_blob(dir, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": descs,
    });
    let (md, mn) = put_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
            "annotations": {"org.opencontainers.image.ref.name": reference},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

// ------------------------------------------------------- the store's objects

/// Reads the manifest an image pointer names, from a local store:
/// (manifest path, manifest bytes).
pub fn manifest_of(store: &Path, tenant: &str, name: &str) -> (PathBuf, Vec<u8>) {
    let ptr: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.join(format!("tenants/{tenant}/images/{name}"))).unwrap(),
    )
    .unwrap();
    let digest = ptr["manifest"].as_str().unwrap().to_string();
    let p = store.join(format!("tenants/{tenant}/manifests/{}", &digest[7..]));
    let bytes = std::fs::read(&p).unwrap();
    (p, bytes)
}
