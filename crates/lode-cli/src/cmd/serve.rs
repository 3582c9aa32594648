//! `lode serve [--store URL] [--listen ADDR]`: the whole function service in
//! one process on the embedded defaults: the host agent, a worker manager,
//! one worker running micro-VMs, and the Lambda API frontend (boto3 and the
//! AWS CLI with `endpoint_url` pointed at `--listen`).

use super::common::{key_provider, lode_home, runtime};
use anyhow::{Context, Result};
use clap::Parser;
use std::sync::Arc;
use tokio::sync::watch;

/// Arguments of `lode serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Address of the Lambda API.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: String,
    /// Chunk store (default `$LODE_HOME/store`).
    #[arg(long)]
    store: Option<String>,
    /// Sandboxes run at once.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Guest memory the worker hands out, MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u64,
    /// Seconds an idle sandbox stays warm.
    #[arg(long, default_value_t = 300)]
    keep_alive: u64,
    /// Region named in ARNs.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Run the VMMs as this process's user instead of a user id of their
    /// own each (`lode worker --vmm-as-root`; what a `lode serve` that is
    /// not root does anyway).
    #[arg(long)]
    vmm_as_root: bool,
}

/// Where the agent of `lode serve` as root puts its volume sockets: a
/// directory every VMM user can pass through (`$LODE_HOME` is often under
/// a private home), one per `$LODE_HOME` (FNV-1a of its path), stable
/// across restarts.
fn serve_socket_dir(home: &std::path::Path) -> std::path::PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in home.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    std::path::PathBuf::from(format!("/run/lode/serve-{h:016x}/sockets"))
}

/// `lode agent`'s arguments, parsed from a command line `lode serve` makes.
#[derive(Parser)]
struct AgentLine {
    #[command(flatten)]
    args: super::agent::Args,
}

/// A reader's cache arguments, likewise (the frontend's).
#[derive(Parser)]
struct CacheLine {
    #[command(flatten)]
    args: super::cache::CacheArgs,
}

/// `lode worker`'s arguments, likewise.
#[derive(Parser)]
struct WorkerLine {
    #[command(flatten)]
    args: super::worker::Args,
}

/// Runs the four parts until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<()> {
    let home = lode_home().join("serve");
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let control = home.join("agent.sock");
    let mut agent_line = vec![
        "agent".to_string(),
        "--control".into(),
        format!("unix:{}", control.display()),
        "--state-dir".into(),
        home.join("agent").display().to_string(),
        "--prefetch".into(),
        "none".into(),
    ];
    if let Some(s) = &args.store {
        agent_line.extend(["--store".into(), s.clone()]);
    }
    let vmm_as_root = args.vmm_as_root || super::worker::euid()? != 0;
    if !vmm_as_root {
        // The parents are created 0755 and the agent makes the last 0711.
        let sockets = serve_socket_dir(&home);
        agent_line.extend(["--socket-dir".into(), sockets.display().to_string()]);
    }
    let agent = AgentLine::try_parse_from(&agent_line)
        .context("the agent's arguments")?
        .args;
    let rt = runtime()?;
    rt.block_on(async {
        let (stop_tx, stop) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
            Ok::<_, anyhow::Error>("stopping")
        };
        // The agent first: the worker attaches its volumes through it.
        let agent_task = tokio::spawn(super::agent::serve(agent, until(stop.clone())));
        let client = lode_agent::control::Client::new(control.clone());
        let mut up = false;
        for _ in 0..600 {
            if client.health().await.is_ok() {
                up = true;
                break;
            }
            if agent_task.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !up {
            return match agent_task.await {
                Ok(Err(e)) => Err(e.context("the agent did not start")),
                _ => anyhow::bail!("the agent did not answer on {} in 30 s", control.display()),
            };
        }
        let ml = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the manager")?;
        let manager_url = format!("http://{}", ml.local_addr()?);
        let manager = Arc::new(lode_manager::Manager::new(lode_manager::Limits::default()));
        let manager_task = tokio::spawn(lode_manager::serve(ml, manager, stop.clone()));
        let worker = WorkerLine::try_parse_from([
            "worker".to_string(),
            "--manager".into(),
            manager_url.clone(),
            "--agent".into(),
            control.display().to_string(),
            "--slots".into(),
            args.slots.to_string(),
            "--memory".into(),
            args.memory.to_string(),
            "--keep-alive".into(),
            args.keep_alive.to_string(),
            "--id".into(),
            "serve".into(),
        ]
        .into_iter()
        .chain(vmm_as_root.then(|| "--vmm-as-root".to_string())))
        .context("the worker's arguments")?
        .args;
        let mut worker_task = tokio::spawn(super::worker::serve(worker, until(stop.clone()), false));
        let mut cache_line = vec![
            "cache".to_string(),
            "--cache-dir".into(),
            home.join("frontend-cache").display().to_string(),
        ];
        if let Some(s) = &args.store {
            cache_line.extend(["--store".into(), s.clone()]);
        }
        let (store, reader) = CacheLine::try_parse_from(&cache_line)
            .context("the frontend's cache arguments")?
            .args
            .reader()?;
        let frontend = Arc::new(lode_frontend::Frontend::new(
            store,
            key_provider(),
            reader,
            vec![manager_url.clone()],
            args.region.clone(),
        )?);
        let fl = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!(
            "lode serve: Lambda API in region {}; manager {manager_url}; agent unix:{}; worker: {} slots, {} MiB, sandboxes warm {} s",
            args.region,
            control.display(),
            args.slots,
            args.memory,
            args.keep_alive
        );
        eprintln!("lode serve listening on {}", fl.local_addr()?);
        let frontend_task = tokio::spawn(lode_frontend::serve(fl, frontend, stop.clone()));
        let why = tokio::select! {
            w = super::agent::terminated() => w?,
            r = &mut worker_task => {
                let _ = stop_tx.send(true);
                let _ = tokio::join!(agent_task, manager_task, frontend_task);
                return match r {
                    Ok(Err(e)) => Err(e.context("the worker stopped")),
                    _ => anyhow::bail!("the worker stopped"),
                };
            }
        };
        eprintln!("lode serve: {why}: stopping (sandboxes stopped, volumes detached)");
        let _ = stop_tx.send(true);
        let _ = frontend_task.await;
        let _ = manager_task.await;
        worker_task.await.context("the worker task")??;
        agent_task.await.context("the agent task")??;
        Ok(())
    })
}
