//! The agent's state directory: the volume table, its lock, and where
//! volume overlays, cached manifests and sockets live.
//!
//! ```text
//! STATE/            0711  (VM users traverse it to reach their socket)
//!   lock            0600  flock'ed by the one agent serving this state
//!   volumes.json    0600  the volume table (format: docs/format.md §8)
//!   volumes/        0700  overlays of volumes without a named overlay
//!   manifests/      0700  sealed manifests of attached images, by tenant
//!   sockets/        0711  one socket per volume (0600, owned by its VM user)
//! ```
//!
//! The table is rewritten whole on every attach and detach (temp file,
//! fsync, rename, fsync of the directory), so a crash leaves the old or the
//! new table, never a torn one.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Version of `volumes.json`.
pub const TABLE_VERSION: u32 = 1;

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// File system access.
    #[error("state {path}: {source}")]
    Io {
        /// What was accessed.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The table does not parse.
    #[error("volume table {path}: {source}")]
    BadTable {
        /// File.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The table is of a version this agent does not read.
    #[error("volume table {path}: version {found} (this agent reads {TABLE_VERSION})")]
    TableVersion {
        /// File.
        path: String,
        /// The table's version.
        found: u32,
    },
    /// Another agent holds the state directory.
    #[error("state directory {path} is in use by another agent (waited {waited:?})")]
    Locked {
        /// The lock file.
        path: String,
        /// How long this agent waited.
        waited: Duration,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One attached volume as the table records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecord {
    /// Volume id (`v` and 16 hex digits).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Image name.
    pub image: String,
    /// Manifest digest the volume is pinned to (`sha256:…`).
    pub digest: String,
    /// Named overlay, if any.
    pub overlay: Option<String>,
    /// Writable.
    pub rw: bool,
    /// `nbd` or `vhost-user`.
    pub via: String,
    /// Socket path.
    pub socket: PathBuf,
    /// Owner of the socket.
    pub uid: u32,
    /// Group of the socket.
    pub gid: u32,
    /// Seconds since the epoch when attached.
    pub attached_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    version: u32,
    volumes: Vec<VolumeRecord>,
}

/// The state directory of one agent, locked for it.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    sockets: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

fn ensure_dir(p: &Path, mode: u32) -> Result<(), StateError> {
    std::fs::create_dir_all(p).map_err(io(p))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))
}

impl StateDir {
    /// Opens (creating) `root`, with volume sockets in `sockets` (default
    /// `root/sockets`), and takes its lock, waiting up to `wait` for a
    /// previous agent to release it (an upgrade: the new agent starts, the
    /// old one is told to exit).
    pub async fn open(
        root: &Path,
        sockets: Option<&Path>,
        wait: Duration,
    ) -> Result<StateDir, StateError> {
        ensure_dir(root, 0o711)?;
        let sockets = sockets
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.join("sockets"));
        ensure_dir(&sockets, 0o711)?;
        ensure_dir(&root.join("volumes"), 0o700)?;
        ensure_dir(&root.join("manifests"), 0o700)?;
        let lock_path = root.join("lock");
        let t = std::time::Instant::now();
        let mut announced = false;
        let lock = loop {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(io(&lock_path))?;
            match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if t.elapsed() >= wait {
                        return Err(StateError::Locked {
                            path: lock_path.display().to_string(),
                            waited: t.elapsed(),
                        });
                    }
                    if !announced {
                        tracing::warn!(path = %lock_path.display(), "waiting for the agent holding the state directory to exit");
                        announced = true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((_, e)) => return Err(io(&lock_path)(std::io::Error::from(e))),
            }
        };
        Ok(StateDir {
            root: root.to_path_buf(),
            sockets,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of volume sockets.
    pub fn sockets(&self) -> &Path {
        &self.sockets
    }

    /// The overlay file of volume `id` (when it has no named overlay).
    pub fn volume_overlay(&self, id: &str) -> PathBuf {
        self.root.join("volumes").join(format!("{id}.overlay"))
    }

    /// Directory of cached sealed manifests.
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }

    fn table_path(&self) -> PathBuf {
        self.root.join("volumes.json")
    }

    /// Reads the table (empty when there is none yet).
    pub fn load(&self) -> Result<Vec<VolumeRecord>, StateError> {
        let p = self.table_path();
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&p)(e)),
        };
        let t: Table = serde_json::from_slice(&bytes).map_err(|source| StateError::BadTable {
            path: p.display().to_string(),
            source,
        })?;
        if t.version != TABLE_VERSION {
            return Err(StateError::TableVersion {
                path: p.display().to_string(),
                found: t.version,
            });
        }
        Ok(t.volumes)
    }

    /// Replaces the table atomically (on the blocking pool: it syncs).
    pub async fn save(&self, volumes: &[VolumeRecord]) -> Result<(), StateError> {
        let root = self.root.clone();
        let volumes = volumes.to_vec();
        tokio::task::spawn_blocking(move || save_table(&root, volumes))
            .await
            .map_err(|e| io(&self.root)(std::io::Error::other(e)))?
    }
}

/// Writes `volumes` as `root/volumes.json`: temp file, fsync, rename, fsync
/// of the directory.
fn save_table(root: &Path, volumes: Vec<VolumeRecord>) -> Result<(), StateError> {
    let p = root.join("volumes.json");
    let tmp = root.join("volumes.json.tmp");
    let body = serde_json::to_vec_pretty(&Table {
        version: TABLE_VERSION,
        volumes,
    })
    .map_err(|e| io(&p)(std::io::Error::other(e)))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(&body).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io(&p))?;
    File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(io(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn table_round_trips_and_the_lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = StateDir::open(d.path(), None, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.load().unwrap_or_else(|e| panic!("{e}")).is_empty());
        let r = VolumeRecord {
            id: "v0123456789abcdef".into(),
            tenant: "t".into(),
            image: "img".into(),
            digest: "sha256:00".into(),
            overlay: None,
            rw: true,
            via: "nbd".into(),
            socket: d.path().join("sockets/v.sock"),
            uid: 0,
            gid: 0,
            attached_at: 1,
        };
        s.save(std::slice::from_ref(&r))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.load().unwrap_or_else(|e| panic!("{e}")), vec![r]);
        let again = StateDir::open(d.path(), None, Duration::from_millis(50)).await;
        assert!(matches!(again, Err(StateError::Locked { .. })));
        drop(s);
        assert!(StateDir::open(d.path(), None, Duration::ZERO).await.is_ok());
        std::fs::write(
            d.path().join("volumes.json"),
            b"{\"version\": 9, \"volumes\": []}",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let s = StateDir::open(d.path(), None, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            s.load(),
            Err(StateError::TableVersion { found: 9, .. })
        ));
        std::fs::write(d.path().join("volumes.json"), b"{\"version\": 1,").unwrap();
        let e = s.load().unwrap_err();
        assert!(
            matches!(e, StateError::BadTable { .. }) && std::error::Error::source(&e).is_some(),
            "{e:?}"
        );
    }
}
