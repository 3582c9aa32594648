//! `lode run NAME --tenant T [--via nbd|vhost-user] -- CMD [ARGS...]`: boot a
//! micro-VM from an image served lazily by an in-process agent and run CMD in it.

use super::agent::CacheArgs;
use super::common::{key_provider, runtime};
use anyhow::{bail, Context, Result};
use lode_agent::{Exports, Prefetch, Server, ServerConfig, VhostUserExport};
use lode_vm::{command_cpio, Disk, RunSpec};
use std::io::{BufRead, Write};
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
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
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
            "no guest kernel in {}: run `lode vm prepare` first",
            dir.display()
        )
    })?;
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
    // Base initramfs + this run's command, concatenated (the kernel unpacks both).
    let mut initrd = std::fs::read(&assets.initrd)
        .with_context(|| format!("reading {}", assets.initrd.display()))?;
    // A following archive must start 4-byte aligned.
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend_from_slice(&command_cpio(&args.cmd, args.rw));
    let initrd_path = work.path().join("initrd");
    std::fs::write(&initrd_path, initrd).context("writing the initramfs")?;
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
    };
    let mut child = spec
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let vm_started = t0.elapsed();
    let stdout = child.stdout.take().expect("piped");
    let (mut cmd_start, mut cmd_exit, mut status) = (None, None, None);
    let mut in_cmd = false;
    let deadline = t0 + Duration::from_secs(args.timeout);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = std::io::stdout();
    let mut tail: Vec<String> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                if line.contains("LODE-CMD-START") {
                    cmd_start = Some(t0.elapsed());
                    in_cmd = true;
                } else if let Some(rest) = line.split("LODE-CMD-EXIT ").nth(1) {
                    cmd_exit = Some(t0.elapsed());
                    status = rest.trim().parse::<i32>().ok();
                    in_cmd = false;
                } else if in_cmd {
                    let _ = writeln!(out, "{line}");
                } else {
                    tail.push(line);
                    if tail.len() > 40 {
                        tail.remove(0);
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    bail!(
                        "the VM did not finish within {} s; last console lines:\n{}",
                        args.timeout,
                        tail.join("\n")
                    );
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let qemu = child.wait().context("waiting for qemu")?;
    let total = t0.elapsed();
    if let Some((stop, thread)) = vhost_session {
        stop.stop();
        match thread.join() {
            Ok(Err(e)) => eprintln!("lode run: vhost-user: {e}"),
            Ok(Ok(_)) => {}
            Err(_) => bail!("the vhost-user thread panicked"),
        }
    }
    let Some(status) = status else {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        if tail.is_empty() && err.trim().is_empty() {
            bail!(
                "the command did not run in the VM (qemu {qemu}): the guest stopped before its \
                 kernel printed a line; check the kernel {} (an unreadable or damaged kernel \
                 resets the guest at once)",
                assets.kernel.display()
            );
        }
        bail!(
            "the command did not run in the VM (qemu {qemu}); console:\n{}\n{}",
            tail.join("\n"),
            err.trim()
        );
    };
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
        cmd_start.map(ms).unwrap_or_else(|| "-".into()),
        cmd_exit.map(ms).unwrap_or_else(|| "-".into()),
        ms(total),
        tiers.join(", "),
    );
    drop(rt);
    Ok(status)
}
