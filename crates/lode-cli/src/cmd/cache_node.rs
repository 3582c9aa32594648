//! `lode cache-node --listen HOST:PORT --memory BYTES [--disk DIR --disk-size BYTES] [--write-key FILE]`

use super::common::runtime;
use crate::shutdown::Shutdown;
use crate::units::parse_size;
use anyhow::{Context, Result};
use lode_fleet::node::{Limits, Node};
use lode_fleet::NodeStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `lode cache-node`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to serve stripes on (HTTP/2).
    #[arg(long)]
    listen: String,
    /// Memory tier bound in bytes.
    #[arg(long, value_parser = parse_size)]
    memory: u64,
    /// Disk ("flash") tier directory: new, empty, or one a cache node created
    /// (it holds a `.lode-cache-node` marker); any other directory is refused.
    #[arg(long, requires = "disk_size")]
    disk: Option<PathBuf>,
    /// Disk tier bound in bytes.
    #[arg(long, value_parser = parse_size, requires = "disk")]
    disk_size: Option<u64>,
    /// Also serve Prometheus metrics on this address (they are on `/metrics` of `--listen` too).
    #[arg(long)]
    metrics: Option<String>,
    /// Connections served at once; at the cap the longest-idle one is closed for a new one.
    #[arg(long, default_value_t = lode_fleet::node::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Milliseconds a new connection may stay silent before it is closed.
    #[arg(long, default_value_t = 10_000)]
    first_byte_timeout_ms: u64,
    /// Milliseconds a connection may go without a request in flight before it is closed.
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Milliseconds a request body may take to arrive.
    #[arg(long, default_value_t = 10_000)]
    body_timeout_ms: u64,
    /// Accept writes (stripe PUTs, fill leases) only with a MAC made with the key
    /// in this file (at least 32 bytes; agents use the same file as `--fleet-key`).
    /// Without it any client that reaches the node may write.
    #[arg(long)]
    write_key: Option<PathBuf>,
    /// Bytes of unfinished request bodies held at most, all connections together.
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    body_memory: u64,
}

/// Runs a cache node until SIGTERM or SIGINT; then it stops accepting,
/// drops its connections, removes its disk tier's temp files and exits 0.
pub fn run(args: Args) -> Result<()> {
    let shutdown = Shutdown::install()?;
    let store = Arc::new(
        NodeStore::new(args.memory, args.disk.clone().zip(args.disk_size))
            .context("opening the disk tier")?,
    );
    let limits = Limits {
        max_connections: args.max_connections.max(1),
        first_byte_timeout: Duration::from_millis(args.first_byte_timeout_ms),
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        body_timeout: Duration::from_millis(args.body_timeout_ms),
        body_memory: usize::try_from(args.body_memory).unwrap_or(usize::MAX),
    };
    let key = args
        .write_key
        .as_deref()
        .map(lode_fleet::auth::WriteKey::load)
        .transpose()?;
    if key.is_none() {
        eprintln!("lode cache-node: warning: no --write-key: any client that reaches the node can write stripes");
    }
    let node = Node::with_write_key(store.clone(), limits, key);
    let rt = runtime()?;
    let result: Result<()> = rt.block_on(async {
        let l = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!("lode cache-node listening on {}", l.local_addr()?);
        if let Some(m) = &args.metrics {
            let ml = tokio::net::TcpListener::bind(m)
                .await
                .with_context(|| format!("binding {m}"))?;
            tokio::spawn(node.clone().serve(ml));
        }
        // Stopping is a cache node's normal end: exit 0.
        tokio::select! {
            _ = node.clone().serve(l) => {}
            i = shutdown.wait() => eprintln!("lode cache-node: {i}"),
        }
        Ok(())
    });
    // Every connection task ends with the runtime; no disk write is in
    // flight after this, so what is left of a temp file is garbage.
    drop(rt);
    store.remove_temp_files();
    result
}
