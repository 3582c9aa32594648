//! `lode manager --listen ADDR`: the worker manager, which places each
//! invocation on a warm sandbox or a worker with capacity (soft state,
//! rebuilt from the workers' reports after a restart).

use super::common::runtime;
use crate::shutdown::Shutdown;
use anyhow::{Context, Result};
use lode_manager::{Limits, Manager};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `lode manager`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to serve on (workers report here, frontends place here).
    #[arg(long)]
    listen: String,
    /// Invocations of one tenant in flight at once; more get 429.
    #[arg(long, default_value_t = 1000)]
    tenant_concurrency: usize,
    /// Seconds a request waits for capacity before it gets 429.
    #[arg(long, default_value_t = 2.0)]
    queue_wait: f64,
    /// Requests waiting for capacity at once; more get 429 at once.
    #[arg(long, default_value_t = 1024)]
    max_waiting: usize,
}

/// Runs the manager until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<()> {
    let shutdown = Shutdown::install()?;
    let rt = runtime()?;
    let limits = Limits {
        tenant_concurrency: args.tenant_concurrency.max(1),
        queue_wait: Duration::from_secs_f64(args.queue_wait.max(0.0)),
        waiters: args.max_waiting,
        ..Limits::default()
    };
    let manager = Arc::new(Manager::new(limits));
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!("lode manager listening on {}", l.local_addr()?);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(lode_manager::serve(l, manager, rx));
        let i = shutdown.wait().await;
        eprintln!("lode manager: {i}");
        let _ = tx.send(true);
        let _ = server.await;
        Ok(())
    })
}
