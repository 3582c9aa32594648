//! Rollback detection: this host's record of the highest version it has
//! seen of each image.
//!
//! Every reader (agent, `lode pull`, `lode cat`) and `lode push` records the
//! version of each image it reads or writes, per store; a pointer that
//! offers an older version than the one recorded is refused
//! ([`crate::StoreError::Rollback`]). The record is one small file per image,
//! `<dir>/<store key>/<tenant>/<name>` holding the version in decimal, updated
//! under an exclusive `flock` so concurrent processes only ever raise it. The
//! store key is a hash of the store's URL, so the same tenant and name in two
//! stores are separate images.

use crate::error::{Result, StoreError};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Highest versions seen on this host, per store and image.
#[derive(Clone, Debug)]
pub struct SeenVersions {
    dir: PathBuf,
    store_key: String,
}

/// The key that separates stores: 16 hex digits of SHA-256 of the URL,
/// made canonical (a local store's absolute path; `s3://` URLs with the
/// endpoint they are reached through).
pub fn store_key(url: &str) -> String {
    let canon = match crate::open::local_dir(url) {
        Some(p) => std::fs::canonicalize(&p).unwrap_or(p).display().to_string(),
        None if url.starts_with("s3://") => format!(
            "{}@{}",
            url.trim_end_matches('/'),
            std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .unwrap_or_default()
        ),
        None => url.to_string(),
    };
    hex::encode(&Sha256::digest(canon.as_bytes())[..8])
}

impl SeenVersions {
    /// The record in `dir` for the store at `url`.
    pub fn new(dir: impl Into<PathBuf>, url: &str) -> SeenVersions {
        SeenVersions {
            dir: dir.into(),
            store_key: store_key(url),
        }
    }

    fn path(&self, tenant: &str, name: &str) -> Result<PathBuf> {
        lode_chunk::keys::check_tenant(tenant)?;
        crate::store::check_name(name)?;
        Ok(self.dir.join(&self.store_key).join(tenant).join(name))
    }

    /// The highest version of `tenant/name` seen here (0: never).
    pub async fn highest(&self, tenant: &str, name: &str) -> Result<u64> {
        let path = self.path(tenant, name)?;
        blocking(move || match std::fs::read_to_string(&path) {
            Ok(s) => Ok(parse(&s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(io(&path, source)),
        })
        .await
    }

    /// Raises the record of `tenant/name` to `version` (never lowers it) and
    /// returns the highest version now recorded.
    pub async fn record(&self, tenant: &str, name: &str, version: u64) -> Result<u64> {
        let path = self.path(tenant, name)?;
        blocking(move || raise(&path, version)).await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An unreadable record counts as 0: it can only weaken detection, never
/// refuse a good image.
fn parse(s: &str) -> u64 {
    s.trim().parse().unwrap_or(0)
}

fn raise(path: &Path, version: u64) -> Result<u64> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io(path, e))?;
    let mut f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(path, e.into()))?;
    let mut s = String::new();
    f.read_to_string(&mut s).map_err(|e| io(path, e))?;
    let have = parse(&s);
    if version <= have {
        return Ok(have);
    }
    f.set_len(0).map_err(|e| io(path, e))?;
    f.rewind().map_err(|e| io(path, e))?;
    f.write_all(format!("{version}\n").as_bytes())
        .map_err(|e| io(path, e))?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_only_rise_per_store_and_image() {
        let d = tempfile::tempdir().unwrap();
        let a = SeenVersions::new(d.path(), "memory://a");
        let b = SeenVersions::new(d.path(), "memory://b");
        assert_eq!(a.highest("t", "app").await.unwrap(), 0);
        assert_eq!(a.record("t", "app", 3).await.unwrap(), 3);
        assert_eq!(a.record("t", "app", 2).await.unwrap(), 3);
        assert_eq!(a.highest("t", "app").await.unwrap(), 3);
        assert_eq!(a.highest("t", "other").await.unwrap(), 0);
        assert_eq!(b.highest("t", "app").await.unwrap(), 0, "another store");
        assert!(a.record("t", "../x", 1).await.is_err());
        let tasks: Vec<_> = (1..=20)
            .map(|v| {
                let a = a.clone();
                tokio::spawn(async move { a.record("t", "race", v).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(a.highest("t", "race").await.unwrap(), 20);
    }
}
