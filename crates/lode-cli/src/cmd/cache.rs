//! Options of the host cache and the store tier, shared by `agent`, `cat`
//! and `run`.

use super::common::{lode_home, open_store, StoreArgs};
use crate::units::parse_size;
use anyhow::{bail, Context, Result};
use lode_agent::ChunkReader;
use lode_cache::{DiskCache, HostKey};
use lode_fleet::FleetTier;
use lode_tier::{Bounded, ChunkTier, Delayed};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Options of the host cache and the store tier, shared by `agent` and `cat`.
#[derive(clap::Args, Clone, Debug)]
pub struct CacheArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Host disk cache directory (default `$LODE_HOME/cache`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// The disk cache's host key: 32 random bytes that seal its pages,
    /// created (mode 0600) on first use; must lie outside the cache
    /// directory (default `$LODE_HOME/disk-tier.key`). Another key makes
    /// the files in the cache directory unusable: they are deleted.
    #[arg(long)]
    pub host_key: Option<PathBuf>,
    /// Disk cache bound in bytes (e.g. `10G`).
    #[arg(long, value_parser = parse_size, default_value = "10G")]
    pub cache_size: u64,
    /// Memory cache bound in bytes (plaintext of hot chunks).
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    pub memory_cache: u64,
    /// Time limit of one store request, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub store_timeout: f64,
    /// Retries of a failed store request (with exponential backoff).
    #[arg(long, default_value_t = 2)]
    pub store_retries: u32,
    /// AZ cache fleet: `HOST:PORT,...` (lode cache nodes) or `memcached://HOST:PORT,...`.
    /// Chunks are read from it before the store, as 4-of-5 erasure-coded stripes.
    /// A node reached at an address of this host's own (a proxy, NAT) is
    /// `NAME=HOST:PORT`, NAME being how the other hosts list it (placement
    /// hashes the name).
    #[arg(long, conflicts_with = "cache_nodes_file")]
    pub cache_nodes: Option<String>,
    /// The fleet as a file holding a `--cache-nodes` spec (nodes separated by
    /// commas or lines). `lode agent` re-reads it on SIGHUP and changes its
    /// fleet membership without a restart.
    #[arg(long)]
    pub cache_nodes_file: Option<PathBuf>,
    /// Sign every write to lode cache nodes with the key in this file (the nodes'
    /// `--write-key`).
    #[arg(long)]
    pub fleet_key: Option<PathBuf>,
    /// Time limit of one stripe request to a cache node, milliseconds.
    #[arg(long, default_value_t = 500)]
    pub fleet_timeout_ms: u64,
    /// Fill leases: after a fleet miss, one host per chunk fetches it from the
    /// store and fills the fleet while the others wait for that fill. The
    /// lease's time to live in milliseconds (what a dead holder costs the
    /// waiters; memcached rounds it up to whole seconds); 0 turns fill
    /// coordination off (every host that misses goes to the store).
    #[arg(long, default_value_t = 2000)]
    pub fleet_lease_ms: u64,
    /// Longest a host waits for other hosts' fill of a chunk before it
    /// fetches the chunk from the store itself, milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub fleet_lease_wait_ms: u64,
    /// Read only from the fleet, never from the store (tests of fleet-only reads).
    #[arg(long, hide = true)]
    pub no_store: bool,
    /// Benchmarks: latency added to every store fetch, milliseconds.
    #[arg(long, default_value_t = 0.0, hide = true)]
    pub inject_store_latency_ms: f64,
    /// Benchmarks: store bandwidth cap, bytes per second.
    #[arg(long, value_parser = parse_size, hide = true)]
    pub inject_store_bandwidth: Option<u64>,
}

impl CacheArgs {
    /// The fleet spec: `--cache-nodes`, or the contents of `--cache-nodes-file`.
    pub fn fleet_spec(&self) -> Result<Option<String>> {
        match (&self.cache_nodes, &self.cache_nodes_file) {
            (Some(s), _) => Ok(Some(s.clone())),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|s| Some(s.trim().to_string()))
                .with_context(|| format!("reading --cache-nodes-file {}", f.display())),
            (None, None) => Ok(None),
        }
    }

    /// Builds the reader: memory → disk → fleet (if any) → store.
    pub fn reader(&self) -> Result<(lode_store::Store, Arc<ChunkReader>)> {
        let (store, reader, _) = self.reader_with_fleet()?;
        Ok((store, reader))
    }

    /// Like [`Self::reader`], also returning the fleet tier for its metrics.
    pub fn reader_with_fleet(
        &self,
    ) -> Result<(lode_store::Store, Arc<ChunkReader>, Option<Arc<FleetTier>>)> {
        let store = open_store(self.store.store.as_deref())?;
        let dir = self
            .cache_dir
            .clone()
            .unwrap_or_else(|| lode_home().join("cache"));
        let key_path = self
            .host_key
            .clone()
            .unwrap_or_else(|| lode_home().join("disk-tier.key"));
        let disk = open_disk(&dir, &key_path, self.cache_size)?;
        let mut base: Arc<dyn ChunkTier> = Arc::new(store.clone());
        if self.inject_store_latency_ms > 0.0 || self.inject_store_bandwidth.is_some() {
            let latency = Duration::from_secs_f64(self.inject_store_latency_ms / 1e3);
            base = Arc::new(Delayed::new(base, latency, self.inject_store_bandwidth));
        }
        let tier: Arc<dyn ChunkTier> = Arc::new(Bounded::new(
            base,
            Duration::from_secs_f64(self.store_timeout),
            self.store_retries,
            Duration::from_millis(50),
        ));
        let mut tiers: Vec<Arc<dyn ChunkTier>> = Vec::new();
        let mut fleet = None;
        if let Some(spec) = &self.fleet_spec()? {
            let key = self
                .fleet_key
                .as_deref()
                .map(lode_fleet::auth::WriteKey::load)
                .transpose()?;
            let mut f = lode_fleet::from_spec_with_key(
                spec,
                Duration::from_millis(self.fleet_timeout_ms),
                key,
            )?;
            if self.fleet_lease_ms > 0 {
                f = f.with_leases(lode_fleet::LeaseConfig {
                    ttl: Duration::from_millis(self.fleet_lease_ms),
                    wait: Duration::from_millis(self.fleet_lease_wait_ms),
                });
            }
            let f = Arc::new(f);
            let n = spec
                .trim_start_matches("memcached://")
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .count();
            if n < 5 {
                eprintln!(
                    "lode: warning: {n} cache node(s): the 5 stripes of a chunk share nodes, so losing one node can lose 2 stripes \
                     and those reads fall back to the store (use 5 or more nodes for single-node fault tolerance)"
                );
            }
            tiers.push(f.clone());
            fleet = Some(f);
        }
        if !self.no_store {
            tiers.push(tier);
        }
        Ok((
            store,
            Arc::new(ChunkReader::new(self.memory_cache, Some(disk), tiers)),
            fleet,
        ))
    }
}

/// Opens the disk cache in `dir` with the host key in `key_path`, which must
/// not lie inside `dir` (whoever can write the cache could then forge pages).
fn open_disk(dir: &Path, key_path: &Path, size: u64) -> Result<DiskCache> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating cache {}", dir.display()))?;
    let canon_dir = dir
        .canonicalize()
        .with_context(|| format!("resolving cache {}", dir.display()))?;
    let key_parent = key_path.parent().unwrap_or(Path::new("."));
    let key_dir = match key_parent.canonicalize() {
        Ok(p) => p,
        Err(_) => std::path::absolute(key_parent).unwrap_or(key_parent.to_path_buf()),
    };
    if key_dir.starts_with(&canon_dir) {
        bail!(
            "--host-key {} lies inside the cache directory {}: keep the disk tier's key out of the directory it protects",
            key_path.display(),
            dir.display()
        );
    }
    let key = HostKey::load_or_create(key_path)
        .with_context(|| format!("loading the disk tier's host key {}", key_path.display()))?;
    DiskCache::open(dir, size, key).with_context(|| format!("opening cache {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host key inside the cache directory is refused (a writer of the
    /// cache could read or replace it); outside, it is created once and the
    /// cache opens.
    #[test]
    fn host_key_must_live_outside_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        let err = open_disk(&cache, &cache.join("sub/k.key"), 1 << 20).unwrap_err();
        assert!(
            format!("{err:#}").contains("inside the cache directory"),
            "{err:#}"
        );
        assert!(!cache.join("sub/k.key").exists());
        let key = d.path().join("state/disk-tier.key");
        let c = open_disk(&cache, &key, 1 << 20).unwrap();
        assert!(key.exists() && c.is_empty());
        assert!(cache.join(lode_cache::disk::MARKER).exists());
    }
}
