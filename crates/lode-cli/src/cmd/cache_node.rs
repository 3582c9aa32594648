//! `lode cache-node --listen HOST:PORT --memory BYTES [--disk DIR --disk-size BYTES]`

use super::common::runtime;
use crate::units::parse_size;
use anyhow::{Context, Result};
use lode_fleet::NodeStore;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `lode cache-node`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to serve stripes on (HTTP/2).
    #[arg(long)]
    listen: String,
    /// Memory tier bound in bytes.
    #[arg(long, value_parser = parse_size)]
    memory: u64,
    /// Disk ("flash") tier directory.
    #[arg(long, requires = "disk_size")]
    disk: Option<PathBuf>,
    /// Disk tier bound in bytes.
    #[arg(long, value_parser = parse_size, requires = "disk")]
    disk_size: Option<u64>,
    /// Also serve Prometheus metrics on this address (they are on `/metrics` of `--listen` too).
    #[arg(long)]
    metrics: Option<String>,
}

/// Runs a cache node until interrupted.
pub fn run(args: Args) -> Result<()> {
    let store = Arc::new(
        NodeStore::new(args.memory, args.disk.clone().zip(args.disk_size))
            .context("opening the disk tier")?,
    );
    runtime()?.block_on(async {
        let l = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!("lode cache-node listening on {}", l.local_addr()?);
        if let Some(m) = &args.metrics {
            let ml = tokio::net::TcpListener::bind(m)
                .await
                .with_context(|| format!("binding {m}"))?;
            tokio::spawn(lode_fleet::node::serve(ml, store.clone()));
        }
        tokio::select! {
            _ = lode_fleet::node::serve(l, store) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
