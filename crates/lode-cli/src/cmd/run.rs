//! `lode run NAME --tenant T [--via nbd|vhost-user] [--agent PATH] -- CMD
//! [ARGS...]`: boot a micro-VM from an image served lazily (by an in-process
//! agent, or attached through a running one) and run CMD in it.

use super::agent::control_path;
use super::cache::CacheArgs;
use super::common::{key_provider, runtime};
use anyhow::{Context, Result};
use lode_agent::control::{sockets, AttachRequest, Client};
use lode_agent::overlay::Durability;
use lode_agent::serve::Overflow;
use lode_agent::volume::OverlaySpec;
use lode_agent::{Catalog, Exports, NbdService, Prefetch, Volume};
use lode_vm::{Disk, Event, Limits, Reconnect, RunSpec};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Arguments of `lode run`.
#[derive(clap::Args)]
pub struct Args {
    /// Image name.
    name: String,
    /// Tenant that owns it.
    #[arg(long)]
    tenant: String,
    #[command(flatten)]
    cache: CacheArgs,
    /// How the VM reaches its disk: `nbd` (QEMU's NBD client on the agent's
    /// socket) or `vhost-user` (the agent's vhost-user-blk backend reads and
    /// writes guest memory directly; guest RAM is a shared memfd).
    #[arg(long, default_value = "nbd", value_parser = ["nbd", "vhost-user"])]
    via: String,
    /// Mount the image read-write (writes go to a private copy-on-write overlay).
    #[arg(long)]
    rw: bool,
    /// Attach the image through the running agent at this control socket
    /// (`lode agent`) instead of serving it in process; the VM reconnects
    /// when that agent restarts, and the volume is detached at the end.
    #[arg(long, value_name = "PATH")]
    agent: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Kernel and initramfs directory (default `$LODE_HOME/vm`, made by `lode vm prepare`).
    #[arg(long)]
    vm_dir: Option<PathBuf>,
    /// Give up after this many seconds (the whole run).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Stop the VM when the command has not started this many seconds after
    /// QEMU did.
    #[arg(long, default_value_t = 180)]
    boot_timeout: u64,
    /// Stop the VM when its console stays silent this many seconds before the
    /// command starts.
    #[arg(long, default_value_t = 60)]
    stall_timeout: u64,
    /// Show the whole guest console on stderr (also `LODE_RUN_CONSOLE=1`).
    #[arg(long, short)]
    verbose: bool,
    /// Command to run inside the image.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Runs `lode run`; the process exits with the command's status.
pub fn run(args: Args) -> Result<i32> {
    let t0 = Instant::now();
    let dir = args.vm_dir.clone().unwrap_or_else(super::vm::vm_dir);
    let assets = super::vm::guest_assets(&dir)?;
    let work = tempfile::Builder::new()
        .prefix("lode-run-")
        .tempdir()
        .context("temp dir")?;
    let rt = runtime()?;
    let vhost = args.via == "vhost-user";
    let backend = match &args.agent {
        Some(path) => Backend::attach(&rt, &control_path(Some(path)), &args)?,
        None => Backend::in_process(&rt, work.path(), &args)?,
    };
    let agent_ready = t0.elapsed();
    let verbose = args.verbose || std::env::var("LODE_RUN_CONSOLE").is_ok_and(|v| v == "1");
    // Base initramfs + this run's command, padded to whole pages.
    let base = std::fs::read(&assets.initrd)
        .with_context(|| format!("reading {}", assets.initrd.display()))?;
    let initrd_path = work.path().join("initrd");
    std::fs::write(&initrd_path, lode_vm::run_initrd(&base, &args.cmd, args.rw))
        .context("writing the initramfs")?;
    let spec = RunSpec {
        kernel: assets.kernel.clone(),
        initrd: initrd_path,
        disk: if vhost {
            Disk::VhostUser {
                socket: backend.socket.clone(),
            }
        } else {
            Disk::Nbd {
                socket: backend.socket.clone(),
                export: backend.export.clone(),
                read_only: !args.rw,
            }
        },
        memory_mib: args.memory,
        quiet: !verbose,
        reset_log: Some(work.path().join("qemu-resets.log")),
        // Through a running agent the VM rides out the agent's restarts.
        reconnect: args.agent.is_some().then(Reconnect::default),
        network: None,
        run_as: None,
    };
    let limits = Limits {
        silence: Duration::from_secs(args.stall_timeout),
        boot: Duration::from_secs(args.boot_timeout),
        total: Duration::from_secs(args.timeout).saturating_sub(t0.elapsed()),
        ..Limits::default()
    };
    let mut out = std::io::stdout();
    let booted = lode_vm::boot::run(&spec, &limits, &mut |line, ev| {
        if verbose {
            eprintln!("console: {line}");
        }
        if let Event::Output(l) = ev {
            let _ = writeln!(out, "{l}");
        }
    });
    let total = t0.elapsed();
    let summary = backend.finish(&rt)?;
    let booted = booted.map_err(|e| {
        let details = e.details();
        if !details.is_empty() {
            eprintln!("lode run: {details}");
        }
        anyhow::anyhow!(
            "the command did not run in the VM: {e}; guest kernel {} {} (prepared in {}; --verbose shows the whole console)",
            assets.record.kernel.name,
            assets.record.kernel.version,
            dir.display()
        )
    })?;
    if !booted.clean_exit {
        eprintln!(
            "lode run: the guest did not end the VM after the command exited; QEMU was stopped"
        );
    }
    let status = booted.status;
    let vm_started = booted.vm_started.duration_since(t0);
    let cmd_start = booted.cmd_started.duration_since(t0);
    let cmd_exit = booted.cmd_exited.duration_since(t0);
    eprintln!(
        "lode run: agent ready {}, VM started {}, first byte read {}, CMD started {}, CMD exited {} (status {status}), VM off {}; {}",
        ms(agent_ready),
        ms(vm_started),
        summary.first_read.map(|t| ms(t.duration_since(t0))).unwrap_or_else(|| "-".into()),
        ms(cmd_start),
        ms(cmd_exit),
        ms(total),
        summary.counts,
    );
    drop(rt);
    Ok(status)
}

/// What a run's disk ended with.
struct Summary {
    first_read: Option<Instant>,
    /// `chunks by tier: ...` (in process) or the volume's counters (agent).
    counts: String,
}

/// Where the VM's disk is served from.
struct Backend {
    socket: PathBuf,
    export: String,
    kind: BackendKind,
}

enum BackendKind {
    /// An in-process agent serving one volume.
    InProcess {
        exports: Arc<Exports>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    },
    /// A volume of a running agent.
    Agent { client: Client, id: String },
}

impl Backend {
    /// Serves the image in process on a socket in `work`.
    fn in_process(rt: &tokio::runtime::Runtime, work: &Path, args: &Args) -> Result<Backend> {
        rt.block_on(async {
            let (store, reader) = args.cache.reader()?;
            let exports = Arc::new(
                Exports::new(store, key_provider(), reader)
                    .with_policy(Prefetch::Recorded, false)
                    .with_overlay_dir(work.join("overlays")),
            );
            let export = format!("{}/{}", args.tenant, args.name);
            let (name, image) = exports
                .open(&export)
                .await
                .with_context(|| format!("opening {export}"))?;
            let overlay = args.rw.then(|| OverlaySpec {
                path: work.join("overlays").join("run.overlay"),
                durability: Durability::Ephemeral,
            });
            let volume = Arc::new(
                Volume::open(
                    exports.clone(),
                    "run".into(),
                    name,
                    image,
                    overlay,
                    !args.rw,
                )
                .await
                .with_context(|| format!("opening {export}"))?,
            );
            let socket = work.join("agent.sock");
            let l = sockets::bind_private(&socket)?;
            let (stop, rx) = watch::channel(false);
            let stats = exports.stats.accept.clone();
            let task = if args.via == "vhost-user" {
                let v = volume.clone();
                tokio::spawn(lode_agent::serve::run_with(
                    l,
                    1,
                    Overflow::Wait,
                    rx,
                    stats,
                    move |c, s| lode_agent::vhost::serve_frontend(v.clone(), c, s),
                ))
            } else {
                let svc = Arc::new(NbdService {
                    catalog: Catalog::Volume(volume.clone()),
                    tls: None,
                });
                tokio::spawn(lode_agent::serve::run(l, 16, rx, stats, move |c, s| {
                    svc.clone().serve(c, s)
                }))
            };
            Ok(Backend {
                socket,
                export: String::new(),
                kind: BackendKind::InProcess {
                    exports,
                    stop,
                    task,
                },
            })
        })
    }

    /// Attaches the image as a volume of the agent at `control`.
    fn attach(rt: &tokio::runtime::Runtime, control: &Path, args: &Args) -> Result<Backend> {
        let client = Client::new(control);
        let req = AttachRequest {
            tenant: args.tenant.clone(),
            image: args.name.clone(),
            digest: None,
            overlay: None,
            rw: args.rw,
            via: Some(args.via.clone()),
            owner: None,
        };
        let a = rt.block_on(client.attach(&req)).with_context(|| {
            format!(
                "attaching {}/{} through {}",
                args.tenant,
                args.name,
                control.display()
            )
        })?;
        Ok(Backend {
            socket: a.socket,
            export: a.export,
            kind: BackendKind::Agent { client, id: a.id },
        })
    }

    /// Stops serving (in process) or detaches (agent).
    fn finish(self, rt: &tokio::runtime::Runtime) -> Result<Summary> {
        match self.kind {
            BackendKind::InProcess {
                exports,
                stop,
                task,
            } => {
                stop.send_replace(true);
                let _ = rt.block_on(task);
                rt.block_on(exports.reader().settle());
                let reader = exports.reader();
                let mut tiers: Vec<String> = vec![
                    format!(
                        "memory {}",
                        reader.memory_metrics.hits.load(Ordering::Relaxed)
                    ),
                    format!(
                        "local disk {}",
                        reader.disk_metrics.hits.load(Ordering::Relaxed)
                    ),
                ];
                tiers.extend(
                    reader
                        .tier_labels()
                        .iter()
                        .enumerate()
                        .map(|(i, l)| format!("{l} {}", reader.fetched_from(i).0)),
                );
                Ok(Summary {
                    first_read: exports.stats.first_read.get().copied(),
                    counts: format!("chunks by tier: {}", tiers.join(", ")),
                })
            }
            BackendKind::Agent { client, id } => {
                let v = rt
                    .block_on(client.detach(&id))
                    .with_context(|| format!("detaching volume {id}"))?;
                let c = v.counters.unwrap_or_default();
                Ok(Summary {
                    first_read: None,
                    counts: format!(
                        "volume {id}: {} reads ({} bytes), {} writes, {} flushes, {} errors",
                        c.reads, c.read_bytes, c.writes, c.flushes, c.errors
                    ),
                })
            }
        }
    }
}
