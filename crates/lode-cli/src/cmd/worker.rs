//! `lode worker --manager URL --agent PATH --slots N --memory MiB`: run
//! function invocations in micro-VM sandboxes on this host (see
//! `lode_worker`), and the hidden `lode runtime-relay SOCKET` QEMU starts for
//! each connection a guest makes to its Runtime API.

use super::agent::control_path;
use super::common::runtime;
use anyhow::{bail, Context, Result};
use lode_worker::sandbox::Host;
use lode_worker::{Config, Worker};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `lode worker`.
#[derive(clap::Args)]
pub struct Args {
    /// The worker manager's base URL (`http://HOST:PORT`); the worker posts
    /// its report to `URL/v1/workers` about once a second.
    #[arg(long, value_name = "URL")]
    manager: String,
    /// The host agent's control socket (`lode agent --control PATH`).
    #[arg(long, value_name = "PATH")]
    agent: String,
    /// Sandboxes (micro-VMs) at once.
    #[arg(long, value_name = "N")]
    slots: u32,
    /// Guest memory the sandboxes may use together, MiB.
    #[arg(long, value_name = "MiB")]
    memory: u64,
    /// Where to serve the worker's API (`HOST:PORT`; port 0 picks one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// URL the manager reaches this worker at (default `http://` + the
    /// listening address).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Worker id (default: the host name). The volumes it attaches are
    /// listed in `$LODE_HOME/worker/ID.volumes`: a worker started after one
    /// of the same id was killed detaches what that one left.
    #[arg(long)]
    id: Option<String>,
    /// Seconds an idle sandbox stays warm for its function's next
    /// invocation (idle sandboxes are also stopped, least recently used
    /// first, when a cold start needs their slot or memory).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    keep_alive: u64,
    /// Longest time, in seconds, from a cold start to the runtime asking for
    /// its first event (attach, boot and runtime init).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    init_timeout: u64,
    /// Guest kernel and initramfs directory (default `$LODE_HOME/vm`, made by `lode vm prepare`).
    #[arg(long, value_name = "DIR")]
    vm_dir: Option<PathBuf>,
    /// First user id of the range the sandboxes' VMMs run under: each QEMU
    /// switches to an id of its own (its group id is the same number) once
    /// it has opened its disk, and only that id reaches the sandbox's disk
    /// and Runtime API sockets. Ids are leased through lock files in
    /// /run/lode/vmm-ids, so workers sharing a host never share an id. No
    /// user of the host may have an id in the range (the worker refuses a
    /// range that /etc/passwd or /etc/group reaches into).
    #[arg(long, value_name = "UID", default_value_t = lode_worker::jail::DEFAULT_BASE)]
    vmm_uid_base: u32,
    /// How many user ids the range holds (at least --slots).
    #[arg(long, value_name = "N", default_value_t = lode_worker::jail::DEFAULT_COUNT)]
    vmm_uid_count: u32,
    /// Run every VMM as the worker's own user (hosts where the worker is
    /// not root): nothing but QEMU's seccomp filter then keeps a VMM taken
    /// over by its guest from the other sandboxes' disks and Runtime APIs.
    #[arg(long, conflicts_with_all = ["vmm_uid_base", "vmm_uid_count"])]
    vmm_as_root: bool,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// Runs `lode worker` until SIGTERM or SIGINT; then every sandbox is
/// stopped and its volume detached.
pub fn run(args: Args) -> Result<()> {
    runtime()?.block_on(serve(args, super::agent::terminated(), true))
}

/// The worker until `until` says why to stop (`lode serve` runs it beside
/// the agent, manager and frontend); `announce` prints its JSON line.
pub async fn serve(
    args: Args,
    until: impl std::future::Future<Output = Result<&'static str>>,
    announce: bool,
) -> Result<()> {
    if args.slots == 0 || args.memory < 128 {
        bail!("--slots must be at least 1 and --memory at least 128 (MiB)");
    }
    let dir = args.vm_dir.clone().unwrap_or_else(super::vm::vm_dir);
    let assets = super::vm::guest_assets(&dir)?;
    let base = std::fs::read(&assets.initrd)
        .with_context(|| format!("reading {}", assets.initrd.display()))?;
    let exe = std::env::current_exe().context("finding the lode binary (for the runtime relay)")?;
    // Short: sockets live here and their paths must fit 108 bytes.
    let work = tempfile::Builder::new()
        .prefix("lode-worker-")
        .tempdir()
        .context("creating the sandboxes' directory")?;
    let vmm_ids = vmm_ids(&args, &exe, work.path())?;
    let id = args.id.clone().unwrap_or_else(host_name);
    if id.is_empty()
        || id.len() > 128
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        bail!("--id {id:?}: 1-128 of [A-Za-z0-9._-], not starting with '.'");
    }
    let state = super::common::lode_home().join("worker");
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let ledger = Arc::new(lode_worker::ledger::Ledger::new(Some(
        state.join(format!("{id}.volumes")),
    )));
    {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr().context("listening address")?;
        let config = Config {
            id: id.clone(),
            url: args.url.clone().unwrap_or_else(|| format!("http://{addr}")),
            slots: args.slots,
            memory_mib: args.memory,
            keep_alive: Duration::from_secs(args.keep_alive),
        };
        lode_worker::server::split_url(&args.manager)
            .with_context(|| "--manager takes http://HOST:PORT".to_string())?;
        let host = Host {
            agent: lode_agent::control::Client::new(control_path(Some(&args.agent))),
            kernel: assets.kernel.clone(),
            base_initrd: Arc::new(base),
            relay: vec![exe.display().to_string(), "runtime-relay".into()],
            dir: work.path().to_path_buf(),
            init_timeout: Duration::from_secs(args.init_timeout),
            ledger: ledger.clone(),
            vmm_ids,
        };
        host.agent
            .health()
            .await
            .with_context(|| format!("reaching the agent at {}", args.agent))?;
        // Volumes a killed predecessor left attached.
        for id in ledger.leftovers() {
            match host.agent.detach(&id).await {
                Ok(_) => tracing::info!(volume = %id, "detached a volume a previous worker left"),
                Err(lode_agent::control::ClientError::Refused { status: 404, .. }) => {}
                Err(e) => {
                    tracing::warn!(volume = %id, error = %e, "cannot detach a volume a previous worker left")
                }
            }
        }
        ledger.reset();
        let worker = Arc::new(Worker::new(config.clone(), host));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(lode_worker::server::serve(
            listener,
            worker.clone(),
            stop_rx,
        ));
        let reaper = tokio::spawn(worker.clone().reaper());
        let reporter = tokio::spawn(lode_worker::server::report_loop(
            worker.clone(),
            args.manager.clone(),
        ));
        if announce {
            println!(
                "{}",
                serde_json::json!({"worker": config.id, "url": config.url, "listen": addr.to_string()})
            );
            let _ = std::io::stdout().flush();
        }
        let signal = until.await?;
        tracing::info!(
            signal,
            "stopping: sandboxes are stopped and their volumes detached"
        );
        stop.send_replace(true);
        reaper.abort();
        let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        reporter.abort();
        worker.shutdown().await;
        Ok(())
    }
}

/// This process's effective user id (the owner of `/proc/self`).
pub(super) fn euid() -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self")
        .context("reading this process's user (/proc/self)")?
        .uid())
}

/// The range of user ids for the VMMs (`None` with `--vmm-as-root`); the
/// sandboxes' directory `work` is opened to them (0711: they pass, they do
/// not list), and the relay program must be theirs to run.
fn vmm_ids(
    args: &Args,
    relay: &std::path::Path,
    work: &std::path::Path,
) -> Result<Option<Arc<lode_worker::jail::VmmIds>>> {
    use std::os::unix::fs::PermissionsExt;
    if args.vmm_as_root {
        return Ok(None);
    }
    let me = euid()?;
    if me != 0 {
        bail!("running each VMM under a user id of its own needs root (the worker runs as uid {me}); pass --vmm-as-root to run them as the worker's user");
    }
    if args.vmm_uid_count < args.slots {
        bail!(
            "--vmm-uid-count {} is smaller than --slots {}: every live sandbox needs a user id",
            args.vmm_uid_count,
            args.slots
        );
    }
    lode_worker::jail::check_unused(
        args.vmm_uid_base,
        args.vmm_uid_count,
        std::path::Path::new("/etc/passwd"),
        std::path::Path::new("/etc/group"),
    )
    .context("the VMMs' user ids")?;
    let ids = lode_worker::jail::VmmIds::new(
        args.vmm_uid_base,
        args.vmm_uid_count,
        std::path::Path::new(lode_worker::jail::DEFAULT_LOCKS),
    )
    .context("the VMMs' user ids")?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("opening {} to the VMMs' users", work.display()))?;
    let (uid, gid) = (args.vmm_uid_base, args.vmm_uid_base);
    lode_worker::jail::check_reachable(relay, uid, gid, true)
        .context("the runtime relay QEMU starts")?;
    lode_worker::jail::check_reachable(&work.join("sandbox"), uid, gid, false)
        .context("the sandboxes' directory")?;
    Ok(Some(ids))
}

/// Arguments of `lode runtime-relay`.
#[derive(clap::Args)]
pub struct RelayArgs {
    /// The sandbox's Runtime API socket.
    socket: PathBuf,
}

/// Copies stdin to `socket` and `socket` to stdout until both ends close.
/// QEMU starts one for each TCP connection the guest makes to the Runtime
/// API address; its stdin, stdout and stderr are that connection, so it
/// never writes anything of its own.
pub fn relay(args: RelayArgs) -> Result<()> {
    // Nothing may be printed: stderr is the guest's connection too.
    let Ok(sock) = std::os::unix::net::UnixStream::connect(&args.socket) else {
        std::process::exit(1);
    };
    let mut up = sock.try_clone().context("cloning the socket")?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let _ = std::io::copy(&mut stdin, &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = sock;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 64 << 10];
    loop {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    // The sandbox's server closed the connection: it is over, whatever the
    // guest still sends (the copying thread ends with the process).
    Ok(())
}
