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

/// How a source is selected and reached: `--platform` for image indexes, and
/// the registry options of `docker://` sources (skopeo's flags).
#[derive(clap::Args, Clone, Debug)]
pub struct SourceArgs {
    /// Platform to pick from an image index / manifest list: `OS/ARCH[/VARIANT]` (default: the host's).
    #[arg(long)]
    pub platform: Option<String>,
    /// Registry credentials `USER:PASSWORD` (docker:// sources); wins over auth files.
    /// `-` reads them from the first line of stdin (kept out of the process list).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    /// Auth file (containers-auth.json / docker config.json); default: $REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json, ~/.docker/config.json.
    #[arg(long)]
    pub authfile: Option<PathBuf>,
    /// Directory of `*.crt` CA certificates and `NAME.cert`/`NAME.key` client certificates
    /// (default: /etc/containers/certs.d/HOST[:PORT], /etc/docker/certs.d/HOST[:PORT]).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Verify the registry's TLS certificate; `false` also allows plain HTTP (loopback
    /// registries may always fall back to plain HTTP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
    /// Registry blobs downloaded at once.
    #[arg(long, default_value_t = lode_oci::RegistryOptions::default().parallel)]
    pub parallel_downloads: usize,
    /// Seconds a registry may stay silent (no answer, no byte of a blob; retries
    /// included) before it has stopped answering; also bounds a credential helper's run.
    #[arg(long, default_value_t = lode_oci::RegistryOptions::default().timeout.as_secs())]
    pub registry_timeout: u64,
}

impl SourceArgs {
    /// The options to open a source with.
    pub fn open_options(&self) -> Result<lode_oci::OpenOptions> {
        let platform = match &self.platform {
            Some(p) => p.parse()?,
            None => lode_oci::Platform::host(),
        };
        let creds = match self.creds.as_deref() {
            Some("-") => {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading --creds from stdin")?;
                Some(lode_oci::Credentials::parse(
                    line.trim_end_matches(['\r', '\n']),
                )?)
            }
            Some(c) => Some(lode_oci::Credentials::parse(c)?),
            None => None,
        };
        Ok(lode_oci::OpenOptions {
            platform,
            registry: lode_oci::RegistryOptions {
                creds,
                authfile: self.authfile.clone(),
                cert_dir: self.cert_dir.clone(),
                tls_verify: self.tls_verify,
                parallel: self.parallel_downloads.max(1),
                timeout: std::time::Duration::from_secs(self.registry_timeout.max(1)),
                progress: Some(lode_oci::ProgressHook(std::sync::Arc::new(
                    DownloadBar::default(),
                ))),
            },
        })
    }
}

/// The progress bars of a command, drawn together on stderr; hidden when
/// stderr is not a terminal.
pub fn bars() -> &'static indicatif::MultiProgress {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(indicatif::MultiProgress::new)
}

/// The download bar of a `docker://` source: bytes of all layer blobs
/// received of the total the manifest gives, and the rate. It appears when
/// the registry source is resolved and goes when the last byte arrived.
#[derive(Default)]
struct DownloadBar(std::sync::OnceLock<indicatif::ProgressBar>);

impl lode_oci::DownloadProgress for DownloadBar {
    fn start(&self, bytes: u64) {
        let bar = indicatif::ProgressBar::new(bytes);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "download {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style);
        }
        if self.0.set(bars().insert(0, bar)).is_err() {
            tracing::debug!("a second image resolved for one download bar");
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.0.get() {
            bar.inc(bytes);
            if bar.length().is_some_and(|len| bar.position() >= len) {
                bar.finish_and_clear();
            }
        }
    }
}

/// The spinner `lode flatten` and `lode push` show while layers are read
/// (downloaded, for a registry): layer N/M, bytes read, rate. Hidden when
/// stderr is not a terminal.
pub fn layer_progress() -> Result<indicatif::ProgressBar> {
    let bar = bars().add(indicatif::ProgressBar::new_spinner());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} layer {msg} {bytes} read ({bytes_per_sec})",
        )
        .context("progress style")?,
    );
    Ok(bar)
}

/// Moves `bar` (from [`layer_progress`]) to `p`.
pub fn show_layer_progress(bar: &indicatif::ProgressBar, p: lode_flatten::Progress) {
    bar.set_message(format!("{}/{}", p.layer + 1, p.layers));
    bar.set_position(p.total_bytes);
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
