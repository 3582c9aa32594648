//! `lode agent [--listen ADDR] [--vhost-user SOCKET=EXPORT[,ro]]... ...`:
//! the NBD server and vhost-user-blk exports.

use super::common::{key_provider, lode_home, open_store, runtime, StoreArgs};
use crate::units::parse_size;
use anyhow::{bail, Context, Result};
use lode_agent::{ChunkReader, Exports, Prefetch, Server, ServerConfig, VhostUserExport};
use lode_cache::{Bounded, ChunkTier, Delayed, DiskCache, StoreTier};
use lode_fleet::FleetTier;
use std::path::PathBuf;
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
    #[arg(long)]
    pub cache_nodes: Option<String>,
    /// Time limit of one stripe request to a cache node, milliseconds.
    #[arg(long, default_value_t = 500)]
    pub fleet_timeout_ms: u64,
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
        let disk = DiskCache::open(&dir, self.cache_size)
            .with_context(|| format!("opening cache {}", dir.display()))?;
        let mut base: Arc<dyn ChunkTier> = Arc::new(StoreTier::new(store.clone()));
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
        if let Some(spec) = &self.cache_nodes {
            let f = Arc::new(
                lode_fleet::from_spec(spec, Duration::from_millis(self.fleet_timeout_ms))
                    .map_err(|e| anyhow::anyhow!(e))?,
            );
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

/// One `--vhost-user` export.
#[derive(Clone, Debug)]
struct VhostSpec {
    socket: PathBuf,
    export: String,
    read_only: bool,
}

fn parse_vhost(s: &str) -> std::result::Result<VhostSpec, String> {
    let (socket, rest) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected SOCKET=TENANT/NAME[@OVERLAY][,ro], got '{s}'"))?;
    let (export, read_only) = match rest.strip_suffix(",ro") {
        Some(e) => (e, true),
        None => (rest, false),
    };
    if socket.is_empty() || lode_agent::ExportName::parse(export).is_none() {
        return Err(format!(
            "expected SOCKET=TENANT/NAME[@OVERLAY][,ro], got '{s}'"
        ));
    }
    Ok(VhostSpec {
        socket: socket.into(),
        export: export.into(),
        read_only,
    })
}

/// Arguments of `lode agent`.
#[derive(clap::Args)]
pub struct Args {
    /// NBD: listen on `unix:PATH` or `HOST:PORT`; clients pick the export
    /// (`TENANT/NAME[@OVERLAY]`) by name.
    #[arg(long, required_unless_present = "vhost_user")]
    listen: Option<String>,
    /// vhost-user-blk: serve `TENANT/NAME[@OVERLAY]` on the unix socket
    /// `SOCKET` (created; QEMU connects with `-chardev socket,path=SOCKET
    /// -device vhost-user-blk`, guest RAM shared, e.g. `-object
    /// memory-backend-memfd,share=on`). One VM at a time per socket, each with a
    /// private copy-on-write overlay (kept across VMs when `@OVERLAY` is
    /// given). `,ro` makes the disk read-only. Repeatable.
    #[arg(long = "vhost-user", value_name = "SOCKET=TENANT/NAME[,ro]", value_parser = parse_vhost)]
    vhost_user: Vec<VhostSpec>,
    #[command(flatten)]
    cache: CacheArgs,
    /// Serve Prometheus metrics on `HOST:PORT`.
    #[arg(long)]
    metrics: Option<String>,
    /// Directory of copy-on-write overlays (default `$LODE_HOME/overlays`).
    #[arg(long)]
    overlay_dir: Option<PathBuf>,
    /// Record the order in which each image's chunks are first read and store
    /// it, sealed, beside the manifest (written when a connection ends).
    #[arg(long)]
    record: bool,
    /// Background fetch when an image is first opened: `none`, `recorded`
    /// (the stored working set), or `all` (working set, then the rest).
    #[arg(long, default_value = "recorded", value_parser = ["none", "recorded", "all"])]
    prefetch: String,
}

/// Runs `lode agent` until interrupted.
pub fn run(args: Args) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, reader, fleet) = args.cache.reader_with_fleet()?;
        let prefetch = match args.prefetch.as_str() {
            "none" => Prefetch::None,
            "all" => Prefetch::All,
            _ => Prefetch::Recorded,
        };
        let exports = Arc::new(
            Exports::new(store, key_provider(), reader).with_policy(prefetch, args.record),
        );
        let overlay_dir = args
            .overlay_dir
            .clone()
            .unwrap_or_else(|| lode_home().join("overlays"));
        let server = Arc::new(Server::new(exports, ServerConfig { overlay_dir }));
        if let Some(m) = &args.metrics {
            let l = tokio::net::TcpListener::bind(m)
                .await
                .with_context(|| format!("binding metrics {m}"))?;
            // The fleet's metrics, if any, and the store's alarm counters.
            let extra: lode_agent::metrics::Extra = Arc::new(move |out: &mut String| {
                if let Some(f) = &fleet {
                    f.render(out);
                }
                lode_store::alarm::render_metrics(out);
            });
            tokio::spawn(lode_agent::metrics::serve(l, server.clone(), Some(extra)));
        }
        let mut vhost = Vec::new();
        for v in &args.vhost_user {
            let exp = VhostUserExport::bind(server.clone(), &v.export, &v.socket, v.read_only)
                .await
                .with_context(|| format!("--vhost-user {}", v.socket.display()))?;
            eprintln!(
                "lode agent serving {} over vhost-user-blk on {}{}",
                v.export,
                v.socket.display(),
                if v.read_only { " (read-only)" } else { "" }
            );
            let stop = exp.stop_handle();
            let thread = std::thread::Builder::new()
                .name("vhost-user".into())
                .spawn(move || exp.serve())
                .context("starting a vhost-user thread")?;
            vhost.push((stop, thread));
        }
        let served = match args.listen.as_deref() {
            Some(listen) => serve_nbd(listen, &server).await,
            None => tokio::signal::ctrl_c().await.context("waiting for ctrl-c"),
        };
        // Disconnect the VMs; each session drops its overlay before its thread ends.
        for (stop, _) in &vhost {
            stop.stop();
        }
        for (_, thread) in vhost {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        server.exports().reader().settle().await;
        served
    })
}

/// Accepts NBD clients on `listen` until ctrl-c.
async fn serve_nbd(listen: &str, server: &Arc<Server>) -> Result<()> {
    if let Some(path) = listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {path}"))?;
        eprintln!("lode agent listening on unix:{path}");
        loop {
            tokio::select! {
                a = l.accept() => {
                    let (s, _) = a.context("accept")?;
                    tokio::spawn(server.clone().serve(s));
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        let _ = std::fs::remove_file(path);
    } else {
        if listen.contains('/') {
            bail!("--listen takes unix:PATH or HOST:PORT, got '{listen}'");
        }
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        eprintln!("lode agent listening on {}", l.local_addr()?);
        loop {
            tokio::select! {
                a = l.accept() => {
                    let (s, _) = a.context("accept")?;
                    let _ = s.set_nodelay(true);
                    tokio::spawn(server.clone().serve(s));
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    }
    Ok(())
}
