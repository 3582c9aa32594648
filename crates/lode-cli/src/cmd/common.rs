//! What several subcommands share: `LODE_HOME`, the store, the key provider.

use crate::shutdown::Shutdown;
use crate::units::parse_size;
use anyhow::{Context, Result};
use lode_chunk::{KeyProvider, Keyring};
use lode_store::{SeenVersions, Store, StoreError};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// The subcommand running (`pull`, `agent`, ...): names this process in alarms.
static COMMAND: OnceLock<&'static str> = OnceLock::new();

/// Records which subcommand runs (called once by `main`).
pub fn set_command(name: &'static str) {
    let _ = COMMAND.set(name);
}

fn command() -> &'static str {
    COMMAND.get().copied().unwrap_or("lode")
}

/// `$LODE_HOME`, default `~/.local/share/lode`.
pub fn lode_home() -> PathBuf {
    if let Some(h) = std::env::var_os("LODE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/lode")
}

/// The store URL given, or `$LODE_HOME/store`.
pub fn store_url(given: Option<&str>) -> String {
    match given {
        Some(u) => u.to_string(),
        None => lode_home().join("store").display().to_string(),
    }
}

/// Opens the store, with this host's record of image versions seen
/// (`$LODE_HOME/seen`, rollback detection) and the subcommand as the reader
/// named in alarms. Only `push` and `root rotate` create a local store that
/// does not exist; one-shot commands report it missing; the services
/// (`agent`, `cache-node`) start without it, as during a store outage (the
/// agent serves its volumes from its caches and sealed-manifest cache).
pub fn open_store(given: Option<&str>) -> Result<Store> {
    let url = store_url(given);
    if let Some(dir) = lode_store::open::local_dir(&url) {
        if !matches!(command(), "push" | "root" | "agent" | "cache-node") && !dir.is_dir() {
            return Err(StoreError::NoStore { url }.into());
        }
    }
    let store = Store::open(&url).with_context(|| format!("opening store {url}"))?;
    Ok(store
        .with_seen(SeenVersions::new(lode_home().join("seen"), &url))
        .with_reader(command()))
}

/// The default key provider: the keyring in `$LODE_KEYS`, else
/// `$LODE_HOME/keys`. Machines that push to one store share root salts (and
/// tenants their keys) by pointing `LODE_KEYS` at the same keyring.
pub fn key_provider() -> Arc<dyn KeyProvider> {
    let dir = std::env::var_os("LODE_KEYS")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| lode_home().join("keys"));
    Arc::new(Keyring::new(dir))
}

/// Warns on stderr (one line per root) when this command read from a root
/// that is not readable: the read returned data, and an alarm was recorded
/// in the store, which halts GC's deletions until acknowledged.
pub fn warn_unreadable_reads(store: &Store) {
    for (root, state) in store.unreadable_roots_read() {
        eprintln!(
            "lode: warning: read from root {root}, which is {state}; an alarm is recorded in the store and GC deletes nothing until `lode gc --ack-alarm {root}`"
        );
    }
}

/// A tokio runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Store options every store command takes.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// Chunk store: `file:///DIR`, a path, `s3://BUCKET/PREFIX` or `memory://` (default `$LODE_HOME/store`).
    #[arg(long)]
    pub store: Option<String>,
}

/// The limits of `lode flatten` (and of `lode push`, which flattens first):
/// what one image may cost. See `docs/format.md`.
#[derive(clap::Args, Clone, Debug)]
pub struct LimitArgs {
    /// Most layers an image may have (Docker's overlay2 stops near 128).
    #[arg(long, default_value_t = lode_flatten::Limits::default().layers)]
    pub max_layers: usize,
    /// Most tar entries of all layers together.
    #[arg(long, default_value_t = lode_flatten::Limits::default().entries)]
    pub max_entries: u64,
    /// Most decompressed bytes of all layers together (e.g. `64G`).
    #[arg(long, value_parser = parse_size, default_value = "64G")]
    pub max_bytes: u64,
    /// Most decompressed bytes per compressed byte of one layer, beyond its first 64 MiB.
    #[arg(long, default_value_t = lode_flatten::Limits::default().ratio)]
    pub max_ratio: u64,
    /// Most inodes the layers may create (every 1,024 take a 128 MiB block group of the device).
    #[arg(long, default_value_t = lode_flatten::Limits::default().inodes)]
    pub max_inodes: u64,
    /// Largest device the content may imply (e.g. `64G`); an explicit `--size` is not bound by it.
    #[arg(long, value_parser = parse_size, default_value = "64G")]
    pub max_device_size: u64,
}

impl LimitArgs {
    /// The limits to flatten with.
    pub fn limits(&self) -> lode_flatten::Limits {
        lode_flatten::Limits {
            layers: self.max_layers,
            entries: self.max_entries,
            bytes: self.max_bytes,
            ratio: self.max_ratio,
            inodes: self.max_inodes,
            device_bytes: self.max_device_size,
        }
    }
}

/// A flatten error as the CLI reports it: a cancel is [`Interrupted`], a
/// limit names the option that raises it.
pub fn flatten_error(e: lode_flatten::FlattenError, shutdown: &Shutdown) -> anyhow::Error {
    if matches!(e, lode_flatten::FlattenError::Interrupted) {
        return shutdown.interrupted().into();
    }
    if let lode_flatten::FlattenError::Limit { limit, .. } = &e {
        return anyhow::anyhow!("{e}; {} raises it", limit.flag());
    }
    e.into()
}
