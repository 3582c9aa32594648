//! `lode agent`: the host service. Volumes are attached and detached through
//! its control API (`lode attach`, `lode detach`, `lode volumes`); each one
//! gets a socket of its own. Kept for development and fixed set-ups: the
//! open-any-export NBD listener (`--listen ... --dev-open-exports`, TCP only
//! with mutual TLS) and static vhost-user sockets (`--vhost-user`).

use super::cache::CacheArgs;
use super::common::{key_provider, lode_home, runtime};
use anyhow::{bail, Context, Result};
use lode_agent::control::{api, sockets, Registry, StateDir};
use lode_agent::serve::Overflow;
use lode_agent::{Catalog, Exports, NbdService, Prefetch};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// `unix:PATH` (or a plain path) → the path.
pub fn unix_path(s: &str) -> PathBuf {
    PathBuf::from(s.strip_prefix("unix:").unwrap_or(s))
}

/// The control socket: `--agent`/`--control` or `$LODE_HOME/agent.sock`.
pub fn control_path(given: Option<&str>) -> PathBuf {
    given
        .map(unix_path)
        .unwrap_or_else(|| lode_home().join("agent.sock"))
}

/// `PORT` (on loopback) or `HOST:PORT`.
fn metrics_addr(s: &str) -> Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let a: SocketAddr = s
        .parse()
        .with_context(|| format!("--metrics takes PORT or HOST:PORT, got '{s}'"))?;
    if !a.ip().is_loopback() {
        eprintln!("lode: warning: metrics on {a} are reachable from the network (they name volumes, not tenants)");
    }
    Ok(a)
}

/// Arguments of `lode agent`.
#[derive(clap::Args)]
pub struct Args {
    /// Control API socket: `unix:PATH` (default `$LODE_HOME/agent.sock`,
    /// mode 0600). `lode attach`, `lode detach` and `lode volumes` talk to it.
    #[arg(long, value_name = "unix:PATH")]
    control: Option<String>,
    /// State directory: the volume table, volume overlays, cached manifests
    /// and volume sockets (default `$LODE_HOME/agent`). One agent at a time.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Directory of volume sockets (default `STATE_DIR/sockets`).
    #[arg(long)]
    socket_dir: Option<PathBuf>,
    /// Seconds to wait for a previous agent to release the state directory
    /// (an upgrade: start the new agent, then stop the old one).
    #[arg(long, default_value_t = 60.0)]
    takeover_wait: f64,
    /// Development: an NBD listener on `unix:PATH` or `HOST:PORT` where any
    /// client opens any export of the store by name (`TENANT/NAME[@OVERLAY]`).
    /// Needs `--dev-open-exports`; TCP also needs mutual TLS (`--tls-*`).
    #[arg(long)]
    listen: Option<String>,
    /// Allow `--listen`: whoever reaches that socket reads any tenant's images.
    #[arg(long)]
    dev_open_exports: bool,
    /// TLS certificate (PEM chain) of a TCP `--listen`.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of a TCP `--listen`.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that signs the client certificates a TCP `--listen` accepts.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Connections `--listen` serves at once (more are closed at once).
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// vhost-user-blk: serve `TENANT/NAME[@OVERLAY]` on the unix socket
    /// `SOCKET` (created mode 0600; QEMU connects with `-chardev socket,path=SOCKET
    /// -device vhost-user-blk`, guest RAM shared, e.g. `-object
    /// memory-backend-memfd,share=on`). One VM at a time per socket, each with a
    /// private copy-on-write overlay (kept across VMs when `@OVERLAY` is
    /// given). `,ro` makes the disk read-only. Repeatable.
    #[arg(long = "vhost-user", value_name = "SOCKET=TENANT/NAME[,ro]", value_parser = parse_vhost)]
    vhost_user: Vec<VhostSpec>,
    #[command(flatten)]
    cache: CacheArgs,
    /// Serve Prometheus metrics on `PORT` (loopback) or `HOST:PORT`.
    #[arg(long)]
    metrics: Option<String>,
    /// Directory of named and per-connection overlays (default `$LODE_HOME/overlays`).
    #[arg(long)]
    overlay_dir: Option<PathBuf>,
    /// Record the order in which each image's chunks are first read by its
    /// clients (not by prefetch) and store it, sealed, beside the manifest
    /// (written when a client disconnects).
    #[arg(long)]
    record: bool,
    /// Background fetch when an image is first opened: `none`, `recorded`
    /// (the stored working set), or `all` (working set, then the rest).
    /// Clients' reads always go first.
    #[arg(long, default_value = "recorded", value_parser = ["none", "recorded", "all"])]
    prefetch: String,
}

/// A listener the agent runs, and what to remove when it stops.
struct Running {
    task: JoinHandle<()>,
    socket: Option<PathBuf>,
}

fn spawn_unix<H, F>(
    path: &Path,
    bound: usize,
    overflow: Overflow,
    stop: &watch::Receiver<bool>,
    exports: &Arc<Exports>,
    handle: H,
) -> Result<Running>
where
    H: Fn(tokio::net::UnixStream, watch::Receiver<bool>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let l = sockets::bind_private(path).with_context(|| format!("binding {}", path.display()))?;
    let task = tokio::spawn(lode_agent::serve::run_with(
        l,
        bound,
        overflow,
        stop.clone(),
        exports.stats.accept.clone(),
        handle,
    ));
    Ok(Running {
        task,
        socket: Some(path.to_path_buf()),
    })
}

/// On every SIGHUP, re-reads the fleet spec from `file` and changes the
/// fleet's membership (a bad file is reported and the old list kept).
async fn reload_on_sighup(fleet: Arc<lode_fleet::FleetTier>, file: std::path::PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        eprintln!("lode agent: cannot install the SIGHUP handler; fleet reload disabled");
        return;
    };
    while hup.recv().await.is_some() {
        let r = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))
            .and_then(|spec| Ok(fleet.set_spec(&spec)?));
        match r {
            Ok(c) => eprintln!(
                "lode agent: SIGHUP: fleet now {} node(s); added {:?}, removed {:?}",
                fleet.members().backend.nodes().len(),
                c.added,
                c.removed
            ),
            Err(e) => eprintln!("lode agent: SIGHUP: fleet unchanged: {e:#}"),
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub(crate) async fn terminated() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Runs `lode agent` until SIGTERM or SIGINT; then every client's requests
/// complete, every socket the agent made is removed, overlays are flushed,
/// and the volume table stays for the next agent.
pub fn run(args: Args) -> Result<()> {
    runtime()?.block_on(serve(args, terminated()))
}

/// The agent, until `until` says why to stop (`lode agent` waits for
/// SIGTERM or SIGINT; `lode serve` runs it beside the function services).
pub async fn serve(
    args: Args,
    until: impl std::future::Future<Output = Result<&'static str>>,
) -> Result<()> {
    if args.listen.is_some() && !args.dev_open_exports {
        bail!(
            "--listen serves every tenant's images to whoever reaches it: add --dev-open-exports to confirm (development only); \
             VMs get per-volume sockets with `lode attach`"
        );
    }
    let tcp_listen = args.listen.as_deref().filter(|l| !l.starts_with("unix:"));
    let tls = match (
        tcp_listen,
        &args.tls_cert,
        &args.tls_key,
        &args.tls_client_ca,
    ) {
        (None, None, None, None) => None,
        (Some(_), Some(c), Some(k), Some(ca)) => Some(lode_agent::tls::mutual_tls(c, k, ca)?),
        (Some(l), ..) => {
            bail!("--listen {l} (TCP) needs mutual TLS: --tls-cert, --tls-key and --tls-client-ca")
        }
        (None, ..) => {
            bail!("--tls-cert, --tls-key and --tls-client-ca apply to a TCP --listen only")
        }
    };
    {
        let (store, reader, fleet) = args.cache.reader_with_fleet()?;
        let prefetch = match args.prefetch.as_str() {
            "none" => Prefetch::None,
            "all" => Prefetch::All,
            _ => Prefetch::Recorded,
        };
        let overlay_dir = args
            .overlay_dir
            .clone()
            .unwrap_or_else(|| lode_home().join("overlays"));
        let exports = Arc::new(
            Exports::new(store, key_provider(), reader)
                .with_policy(prefetch, args.record)
                .with_overlay_dir(overlay_dir),
        );
        let state_dir = args
            .state_dir
            .clone()
            .unwrap_or_else(|| lode_home().join("agent"));
        let state = StateDir::open(
            &state_dir,
            args.socket_dir.as_deref(),
            Duration::from_secs_f64(args.takeover_wait.max(0.0)),
        )
        .await
        .with_context(|| format!("opening the state directory {}", state_dir.display()))?;
        let registry = Arc::new(Registry::new(exports.clone(), state));
        if let Some(f) = &fleet {
            let f = f.clone();
            registry.set_fleet_hook(Arc::new(move |spec: Option<&str>| {
                let change = match spec {
                    Some(s) => Some(f.set_spec(s)?),
                    None => None,
                };
                let (added, removed) = change.map(|c| (c.added, c.removed)).unwrap_or_default();
                Ok(lode_agent::control::api::FleetInfo {
                    nodes: f.members().backend.nodes().to_vec(),
                    added,
                    removed,
                })
            }));
        }
        // Every volume is back at its socket before anything else serves.
        let restored = registry.restore().await?;
        tokio::spawn(registry.clone().retry_failed());
        let (stop_tx, stop) = watch::channel(false);
        let mut running: Vec<Running> = Vec::new();
        let control = control_path(args.control.as_deref());
        if let Some(d) = control.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let l = sockets::bind_private(&control)
            .with_context(|| format!("binding the control socket {}", control.display()))?;
        running.push(Running {
            task: tokio::spawn(api::serve(l, registry.clone(), stop.clone())),
            socket: Some(control.clone()),
        });
        if let Some(m) = &args.metrics {
            let addr = metrics_addr(m)?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics {addr}"))?;
            // The fleet's metrics, if any, and the store's alarm counters.
            let fleet = fleet.clone();
            let extra: lode_agent::metrics::Extra = Arc::new(move |out: &mut String| {
                if let Some(f) = &fleet {
                    f.render(out);
                }
                lode_store::alarm::render_metrics(out);
            });
            running.push(Running {
                task: tokio::spawn(lode_agent::metrics::serve(
                    l,
                    exports.clone(),
                    Some(registry.clone()),
                    Some(extra),
                    stop.clone(),
                )),
                socket: None,
            });
        }
        for v in &args.vhost_user {
            exports.open(&v.export).await.with_context(|| {
                format!("--vhost-user {}: opening {}", v.socket.display(), v.export)
            })?;
            let (e, export, ro) = (exports.clone(), v.export.clone(), v.read_only);
            running.push(spawn_unix(
                &v.socket,
                1,
                Overflow::Wait,
                &stop,
                &exports,
                move |c, s| lode_agent::vhost::serve_client(e.clone(), export.clone(), ro, c, s),
            )?);
            eprintln!(
                "lode agent serving {} over vhost-user-blk on {}{}",
                v.export,
                v.socket.display(),
                if v.read_only { " (read-only)" } else { "" }
            );
        }
        if let Some(listen) = &args.listen {
            let svc = Arc::new(NbdService {
                catalog: Catalog::Open(exports.clone()),
                tls,
            });
            if let Some(path) = listen.strip_prefix("unix:") {
                running.push(spawn_unix(
                    Path::new(path),
                    args.max_connections,
                    Overflow::Shed,
                    &stop,
                    &exports,
                    move |c, s| svc.clone().serve(c, s),
                )?);
                eprintln!("lode agent listening on unix:{path} (development: any export)");
            } else {
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                eprintln!(
                    "lode agent listening on {} (development: any export, mutual TLS)",
                    l.local_addr()?
                );
                running.push(Running {
                    task: tokio::spawn(lode_agent::serve::run(
                        l,
                        args.max_connections,
                        stop.clone(),
                        exports.stats.accept.clone(),
                        move |c, s| svc.clone().serve(c, s),
                    )),
                    socket: None,
                });
            }
        }
        eprintln!(
            "lode agent ready: control unix:{}, state {}, {restored} volume(s) restored",
            control.display(),
            state_dir.display()
        );
        let reload = match (&fleet, &args.cache.cache_nodes_file) {
            (Some(f), Some(file)) => Some(tokio::spawn(reload_on_sighup(f.clone(), file.clone()))),
            _ => None,
        };
        let why = until.await?;
        if let Some(r) = reload {
            r.abort();
        }
        tracing::info!("{why}: stopping");
        eprintln!("lode agent: {why}: stopping (clients' requests complete, sockets removed)");
        stop_tx.send_replace(true);
        registry.shutdown().await;
        for r in running {
            let _ = r.task.await;
            if let Some(p) = r.socket {
                let _ = std::fs::remove_file(p);
            }
        }
        exports.reader().settle().await;
        Ok(())
    }
}
