//! `lode run NAME --tenant T [--via nbd|vhost-user] -- CMD [ARGS...]`: boot a
//! micro-VM from an image served lazily by an in-process agent and run CMD in it.

use super::agent::CacheArgs;
use super::common::{key_provider, runtime};
use anyhow::{bail, Context, Result};
use lode_agent::{Exports, Prefetch, Server, ServerConfig, VhostUserExport};
use lode_vm::{Disk, Event, Limits, RunSpec};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let assets = lode_vm::prepare::Assets::find(&dir).with_context(|| {
        format!(
            "no guest kernel in {} (or one prepared by an older lode): run `lode vm prepare` first",
            dir.display()
        )
    })?;
    assets
        .verify()
        .with_context(|| format!("checking the guest files in {}", dir.display()))?;
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("qemu-system-x86_64 is not installed (Debian: apt-get install -t bookworm-backports qemu-system-x86; see scripts/vm-deps.sh)");
    }
    let work = tempfile::Builder::new()
        .prefix("lode-run-")
        .tempdir()
        .context("temp dir")?;
    let sock = work.path().join("agent.sock");
    let rt = runtime()?;
    let vhost = args.via == "vhost-user";
    let (server, export, vhost_export) = rt.block_on(async {
        let (store, reader) = args.cache.reader()?;
        let exports = Arc::new(
            Exports::new(store, key_provider(), reader).with_policy(Prefetch::Recorded, false),
        );
        let export = format!("{}/{}", args.tenant, args.name);
        let server = Arc::new(Server::new(
            exports.clone(),
            ServerConfig {
                overlay_dir: work.path().join("overlays"),
            },
        ));
        if vhost {
            let v = VhostUserExport::bind(server.clone(), &export, &sock, !args.rw)
                .await
                .with_context(|| format!("opening {export}"))?;
            return Ok::<_, anyhow::Error>((server, export, Some(v)));
        }
        exports
            .open(&export)
            .await
            .with_context(|| format!("opening {export}"))?;
        let l = tokio::net::UnixListener::bind(&sock)
            .with_context(|| format!("binding {}", sock.display()))?;
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                tokio::spawn(s.clone().serve(c));
            }
        });
        Ok((server, export, None))
    })?;
    // vhost-user: one session (this VM) on a thread of its own; it ends when
    // QEMU disconnects, or when stopped if QEMU never connected.
    let vhost_session = match vhost_export {
        Some(mut v) => {
            let stop = v.stop_handle();
            let thread = std::thread::Builder::new()
                .name("vhost-user".into())
                .spawn(move || v.serve_one())
                .context("starting the vhost-user thread")?;
            Some((stop, thread))
        }
        None => None,
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
                socket: sock.clone(),
            }
        } else {
            Disk::Nbd {
                socket: sock.clone(),
                export,
                read_only: !args.rw,
            }
        },
        memory_mib: args.memory,
        quiet: !verbose,
        reset_log: Some(work.path().join("qemu-resets.log")),
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
    if let Some((stop, thread)) = vhost_session {
        stop.stop();
        match thread.join() {
            Ok(Err(e)) => eprintln!("lode run: vhost-user: {e}"),
            Ok(Ok(_)) => {}
            Err(_) => bail!("the vhost-user thread panicked"),
        }
    }
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
    let first_read = server.first_read.get().map(|t| t.duration_since(t0));
    let reader = server.exports().reader();
    let mut tiers: Vec<String> = reader
        .tier_labels()
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{l} {}", reader.fetched_from(i).0))
        .collect();
    tiers.insert(
        0,
        format!(
            "local disk {}",
            reader.disk_metrics.hits.load(Ordering::Relaxed)
        ),
    );
    tiers.insert(
        0,
        format!(
            "memory {}",
            reader.memory_metrics.hits.load(Ordering::Relaxed)
        ),
    );
    eprintln!(
        "lode run: agent ready {}, VM started {}, first byte read {}, CMD started {}, CMD exited {} (status {status}), VM off {}; chunks by tier: {}",
        ms(agent_ready),
        ms(vm_started),
        first_read.map(ms).unwrap_or_else(|| "-".into()),
        ms(cmd_start),
        ms(cmd_exit),
        ms(total),
        tiers.join(", "),
    );
    drop(rt);
    Ok(status)
}
