//! The stripes of one cache node: a memory tier that spills to an optional
//! disk tier, both bounded and evicting by LRU-2.
//!
//! The disk tier lives in a directory the node created: it writes a marker
//! file ([`MARKER`]) there and, on a later start, uses a directory only if it
//! holds the marker (or nothing at all). A directory holding other files is
//! refused, never cleaned: `--disk` pointed at the wrong place must not
//! delete what it finds. In its own directory the node removes only its own
//! temp files (`.tmp-<key>`, left by a killed run) and leaves any other
//! stranger alone.

use super::{valid_key, MAX_STRIPE};
use crate::lru2::Lru2;
use bytes::Bytes;
use lode_common::prom::{self, Histogram};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The file that marks a directory as a cache node's disk tier.
pub const MARKER: &str = ".lode-cache-node";
/// What the marker holds (its format version).
const MARKER_TEXT: &str = "lode cache-node disk tier, version 1\n";
/// Prefix of the disk tier's temp files.
const TEMP_PREFIX: &str = ".tmp-";

/// Why the disk tier cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// The directory holds files but no marker: not the node's to use.
    #[error(
        "refusing --disk {dir}: it holds {count} entries (e.g. '{example}') and no {MARKER} marker; \
         a cache node uses only a directory it created (new or empty)"
    )]
    NotOurs {
        /// The directory.
        dir: String,
        /// Entries found.
        count: usize,
        /// One of them, escaped.
        example: String,
    },
    /// File I/O on the directory failed.
    #[error("disk tier {path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
pub(super) struct StoreMetrics {
    pub gets: AtomicU64,
    pub hits_memory: AtomicU64,
    pub hits_disk: AtomicU64,
    pub misses: AtomicU64,
    pub puts: AtomicU64,
    pub get_latency: Histogram,
}

#[derive(Debug)]
struct Disk {
    dir: PathBuf,
    policy: Mutex<Lru2<String>>,
}

/// The stripes of one cache node.
#[derive(Debug)]
pub struct NodeStore {
    mem: Mutex<(Lru2<String>, HashMap<String, Bytes>)>,
    disk: Option<Disk>,
    pub(super) metrics: StoreMetrics,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Makes sure `dir` is the node's own (creating it and its marker when new
/// or empty), then indexes the stripes there into a policy of `size` bytes.
fn open_disk(dir: &Path, size: u64) -> Result<Lru2<String>, DiskError> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let marker = dir.join(MARKER);
    if !marker.exists() {
        let entries: Vec<String> = std::fs::read_dir(dir)
            .map_err(io_at(dir))?
            .filter_map(|e| e.ok())
            .map(|e| lode_common::escape(e.file_name().as_encoded_bytes()))
            .collect();
        if let Some(example) = entries.first() {
            return Err(DiskError::NotOurs {
                dir: dir.display().to_string(),
                count: entries.len(),
                example: example.clone(),
            });
        }
        std::fs::write(&marker, MARKER_TEXT).map_err(io_at(&marker))?;
    }
    let mut policy = Lru2::new(size);
    for e in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let e = e.map_err(io_at(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_file = e.file_type().map_err(io_at(&e.path()))?.is_file();
        if name == MARKER {
            continue;
        }
        if valid_key(&name) && is_file {
            let len = e.metadata().map_err(io_at(&e.path()))?.len();
            for gone in policy.insert(name, len) {
                let _ = std::fs::remove_file(dir.join(gone));
            }
        } else if name.starts_with(TEMP_PREFIX) && is_file {
            // A killed run's half-written stripe.
            let _ = std::fs::remove_file(e.path());
        } else {
            tracing::warn!(dir = %dir.display(), entry = %lode_common::escape_str(&name), "ignoring a file the cache node did not write");
        }
    }
    Ok(policy)
}

/// Reads a stripe file of at most [`MAX_STRIPE`] bytes; `None` when it is
/// missing or larger (then it is not a stripe this node wrote).
fn read_stripe(path: &Path) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut v = Vec::new();
    f.take(MAX_STRIPE as u64 + 1).read_to_end(&mut v).ok()?;
    (v.len() <= MAX_STRIPE).then_some(v)
}

impl NodeStore {
    /// A store with `memory` bytes of RAM and an optional `(dir, bytes)` disk
    /// tier, indexed from what a previous run left there. The directory must
    /// be new, empty, or one a cache node created (see the module docs).
    pub fn new(memory: u64, disk: Option<(PathBuf, u64)>) -> Result<Self, DiskError> {
        let disk = match disk {
            None => None,
            Some((dir, size)) => {
                let policy = open_disk(&dir, size)?;
                Some(Disk {
                    dir,
                    policy: Mutex::new(policy),
                })
            }
        };
        Ok(NodeStore {
            mem: Mutex::new((Lru2::new(memory), HashMap::new())),
            disk,
            metrics: StoreMetrics::default(),
        })
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, (Lru2<String>, HashMap<String, Bytes>)> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the disk tier's temp files (at a clean exit: no write is in
    /// flight any more).
    pub fn remove_temp_files(&self) {
        let Some(d) = &self.disk else { return };
        let Ok(entries) = std::fs::read_dir(&d.dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Stores a stripe.
    pub fn put(&self, key: String, value: Bytes) {
        self.metrics.puts.fetch_add(1, Ordering::Relaxed);
        let demoted: Vec<(String, Bytes)> = {
            let mut g = self.mem();
            let evicted = g.0.insert(key.clone(), value.len() as u64);
            let mut out = Vec::new();
            for e in evicted {
                if e == key {
                    out.push((key.clone(), value.clone()));
                } else if let Some(v) = g.1.remove(&e) {
                    out.push((e, v));
                }
            }
            if g.0.contains(&key) {
                g.1.insert(key, value);
            }
            out
        };
        if let Some(d) = &self.disk {
            for (k, v) in demoted {
                let tmp = d.dir.join(format!("{TEMP_PREFIX}{k}"));
                if std::fs::write(&tmp, &v)
                    .and_then(|_| std::fs::rename(&tmp, d.dir.join(&k)))
                    .is_ok()
                {
                    let gone = d
                        .policy
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(k, v.len() as u64);
                    for g in gone {
                        let _ = std::fs::remove_file(d.dir.join(g));
                    }
                } else {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
    }

    /// Looks a stripe up.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        let t = Instant::now();
        self.metrics.gets.fetch_add(1, Ordering::Relaxed);
        {
            let mut g = self.mem();
            if let Some(v) = g.1.get(key).cloned() {
                g.0.touch(&key.to_string());
                drop(g);
                self.metrics.hits_memory.fetch_add(1, Ordering::Relaxed);
                self.metrics.get_latency.observe(t.elapsed());
                return Some(v);
            }
        }
        if let Some(d) = &self.disk {
            let known = d
                .policy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .touch(&key.to_string());
            if known {
                if let Some(v) = read_stripe(&d.dir.join(key)) {
                    self.metrics.hits_disk.fetch_add(1, Ordering::Relaxed);
                    self.metrics.get_latency.observe(t.elapsed());
                    return Some(Bytes::from(v));
                }
            }
        }
        self.metrics.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Prometheus text of the tiers.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.metrics;
        for (n, v) in [
            ("lode_node_gets_total", &m.gets),
            ("lode_node_hits_memory_total", &m.hits_memory),
            ("lode_node_hits_disk_total", &m.hits_disk),
            ("lode_node_misses_total", &m.misses),
            ("lode_node_puts_total", &m.puts),
        ] {
            prom::sample(&mut out, n, "", prom::load(v));
        }
        m.get_latency
            .render(&mut out, "lode_node_get_seconds", "tier=\"any\"");
        let g = self.mem();
        prom::sample(&mut out, "lode_node_bytes", "tier=\"memory\"", g.0.weight());
        prom::sample(&mut out, "lode_node_stripes", "tier=\"memory\"", g.0.len());
        drop(g);
        if let Some(d) = &self.disk {
            let p = d.policy.lock().unwrap_or_else(|p| p.into_inner());
            prom::sample(&mut out, "lode_node_bytes", "tier=\"disk\"", p.weight());
            prom::sample(&mut out, "lode_node_stripes", "tier=\"disk\"", p.len());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_spills_to_disk_and_back() {
        let d = tempfile::tempdir().unwrap();
        let s = NodeStore::new(100, Some((d.path().to_path_buf(), 1000))).unwrap();
        for i in 0..5 {
            s.put(format!("k{i}"), Bytes::from(vec![i as u8; 40]));
        }
        for i in 0..5 {
            assert_eq!(s.get(&format!("k{i}")).map(|b| b[0]), Some(i as u8), "k{i}");
        }
        assert!(s.render().contains("lode_node_hits_disk_total"));
    }

    /// Found by fuzzing (fleet_node_request): `.` and `..` were valid keys,
    /// which the disk tier turns into file names (`dir/..`); the failed
    /// rename left `.tmp-..` behind, itself a valid key on the next start.
    #[test]
    fn keys_are_plain_file_names() {
        for k in [".", "..", ".tmp-ab.1", ".hidden"] {
            assert!(!valid_key(k), "{k}");
        }
        let d = tempfile::tempdir().unwrap();
        let s = NodeStore::new(0, Some((d.path().to_path_buf(), 1000))).unwrap();
        assert!(valid_key("a..b") && valid_key("0.4"));
        s.put("0.4".into(), Bytes::from_static(b"x"));
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [MARKER, "0.4"]);
    }

    /// `--disk` on a directory of someone else's files is refused and
    /// nothing is deleted; its own directory is reused across restarts, and
    /// only its own temp files are swept there.
    #[test]
    fn a_directory_it_did_not_create_is_refused_untouched() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("precious.db"), "keep").unwrap();
        std::fs::write(d.path().join("0.1"), "looks like a key").unwrap();
        let e = NodeStore::new(0, Some((d.path().to_path_buf(), 1000))).unwrap_err();
        assert!(matches!(e, DiskError::NotOurs { count: 2, .. }), "{e}");
        assert!(e.to_string().contains(MARKER), "{e}");
        assert_eq!(
            std::fs::read(d.path().join("precious.db")).unwrap(),
            b"keep"
        );
        assert!(d.path().join("0.1").exists());

        let own = d.path().join("tier");
        let s = NodeStore::new(0, Some((own.clone(), 1000))).unwrap();
        s.put("ab.2".into(), Bytes::from_static(b"stripe"));
        drop(s);
        std::fs::write(own.join(".tmp-cd.3"), "half").unwrap();
        std::fs::write(own.join("notes.txt"), "a stranger").unwrap();
        let s = NodeStore::new(0, Some((own.clone(), 1000))).unwrap();
        assert_eq!(s.get("ab.2").as_deref(), Some(&b"stripe"[..]));
        assert!(!own.join(".tmp-cd.3").exists(), "a killed run's temp file");
        assert!(own.join("notes.txt").exists(), "other files are left alone");
    }
}
