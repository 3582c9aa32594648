//! Shared helpers: a fixed key provider, a byte cursor, scratch directories
//! and runtimes.

use lode_chunk::keys::{unwrap_with, wrap_with};
use lode_chunk::{ChunkError, DataKey, KeyProvider, Salt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The tenant key of [`FixedKeys`].
pub const KEK: [u8; 32] = [0x4b; 32];
/// The salt every root gets from [`FixedKeys`].
pub const SALT: [u8; 32] = [0x53; 32];
/// A manifest digest that working sets are bound to.
pub const DIGEST: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A key provider with one fixed tenant key for every tenant and one salt,
/// touching no files (so fuzz inputs sealed by it open in any process).
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedKeys;

impl KeyProvider for FixedKeys {
    fn wrap(&self, tenant: &str, key: &DataKey) -> Result<Vec<u8>, ChunkError> {
        wrap_with(&KEK, tenant, key)
    }
    fn unwrap(&self, tenant: &str, wrapped: &[u8]) -> Result<DataKey, ChunkError> {
        unwrap_with(&KEK, tenant, wrapped)
    }
    fn new_salt(&self) -> Result<String, ChunkError> {
        Ok("5a175a17".into())
    }
    fn salt(&self, _salt_id: &str) -> Result<Salt, ChunkError> {
        Ok(Salt(SALT))
    }
}

/// Reads structured values from fuzz bytes; past the end everything is zero.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    /// Next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    /// Next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// Up to `n` next bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
    /// Exactly `n` bytes, zero-padded.
    pub fn padded(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.take(n).to_vec();
        v.resize(n, 0);
        v
    }
    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// A directory for one target's files in this process and thread, on tmpfs when there
/// is one (`/dev/shm`), emptied by the caller as needed. The process's
/// directory is `lode-fuzz-<pid>`; those of processes that are gone are
/// removed the first time (statics are never dropped, so nothing else would).
pub fn scratch(name: &str) -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let stale = n
                    .strip_prefix("lode-fuzz-")
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if stale {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        root.join(format!("lode-fuzz-{}", std::process::id()))
    });
    // One directory per thread: the corpus tests run targets on parallel
    // threads, and two of them resetting one directory raced (a cache
    // node store found the other's marker file in it).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    thread_local! {
        static THREAD: u64 = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let d = base.join(format!("{name}-{}", THREAD.with(|t| *t)));
    create_dir_retrying(&d);
    d
}

/// `create_dir_all` that rides out a concurrent [`reset_dir`] of the same
/// directory by another test thread (its remove between our create and our
/// check reads as "already exists").
fn create_dir_retrying(d: &Path) {
    let mut tries = 0;
    loop {
        match std::fs::create_dir_all(d) {
            Ok(()) => return,
            Err(_) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => panic!("cannot create the scratch directory {}: {e}", d.display()),
        }
    }
}

/// Empties (and recreates) `dir`.
pub fn reset_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    create_dir_retrying(dir);
}

/// A fresh single-threaded runtime whose clock is paused: timers fire as
/// soon as every task waits (a wait that would never end, ends).
pub fn runtime_paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
}

/// A fresh single-threaded runtime (tasks from one input never leak into the next).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
