//! `lode frontend --listen ADDR --manager URL [--manager URL...] [--region R]`:
//! the Lambda-compatible API (boto3 and the AWS CLI with `endpoint_url`
//! pointed at it). Stateless: functions and access keys are in the store.

use super::cache::CacheArgs;
use super::common::{key_provider, runtime};
use crate::shutdown::Shutdown;
use anyhow::{Context, Result};
use lode_frontend::Frontend;
use std::sync::Arc;

/// Arguments of `lode frontend`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to serve the Lambda API on.
    #[arg(long)]
    listen: String,
    /// A worker manager's base URL (`http://HOST:PORT`); repeat for several:
    /// functions are split between them by rendezvous hashing.
    #[arg(long = "manager", required = true)]
    managers: Vec<String>,
    /// Region named in ARNs (clients sign for it too).
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Serve Prometheus metrics on this address (requests per operation and outcome, latencies).
    #[arg(long)]
    metrics: Option<String>,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Runs the frontend until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<()> {
    let shutdown = Shutdown::install()?;
    let rt = runtime()?;
    let (store, reader) = args.cache.reader()?;
    let frontend = Arc::new(Frontend::new(
        store,
        key_provider(),
        reader,
        args.managers,
        args.region,
    )?);
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!("lode frontend listening on {}", l.local_addr()?);
        let (tx, rx) = tokio::sync::watch::channel(false);
        if let Some(m) = &args.metrics {
            let ml = tokio::net::TcpListener::bind(m)
                .await
                .with_context(|| format!("binding metrics {m}"))?;
            eprintln!("lode frontend metrics on {}", ml.local_addr()?);
            tokio::spawn(lode_frontend::serve_metrics(
                ml,
                frontend.clone(),
                rx.clone(),
            ));
        }
        let server = tokio::spawn(lode_frontend::serve(l, frontend, rx));
        let i = shutdown.wait().await;
        eprintln!("lode frontend: {i}");
        let _ = tx.send(true);
        let _ = server.await;
        Ok(())
    })
}
