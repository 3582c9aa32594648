//! `lode pull NAME --tenant T [--store URL] -o OUT`

use super::common::{key_provider, open_store, runtime, warn_unreadable_reads, StoreArgs};
use crate::shutdown::Shutdown;
use crate::units::human;
use anyhow::Result;
use lode_store::pull_to_file;
use std::path::PathBuf;

/// Arguments of `lode pull`.
#[derive(clap::Args)]
pub struct Args {
    /// Image name.
    name: String,
    /// Tenant that owns it.
    #[arg(long)]
    tenant: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Output file (written atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Chunks fetched at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// Runs `lode pull`. On SIGTERM or SIGINT the pull stops and its temp file
/// is removed.
pub fn run(args: Args) -> Result<()> {
    let shutdown = Shutdown::install()?;
    let store = open_store(args.store.store.as_deref())?;
    let r = runtime()?.block_on(shutdown.run(async {
        Ok(pull_to_file(
            &store,
            key_provider(),
            &args.tenant,
            &args.name,
            &args.output,
            args.concurrency,
        )
        .await?)
    }));
    warn_unreadable_reads(&store);
    let r = r?;
    eprintln!(
        "pulled {}/{} into {}: {} of {} chunks fetched and verified, {} in {:.2} s",
        args.tenant,
        args.name,
        args.output.display(),
        r.fetched,
        r.chunks,
        human(r.bytes),
        r.seconds
    );
    Ok(())
}
