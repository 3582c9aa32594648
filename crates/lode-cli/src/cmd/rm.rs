//! `lode rm NAME --tenant T [--store URL]`

use super::common::{key_provider, open_store, runtime, StoreArgs};
use anyhow::Result;
use lode_store::remove_image;

/// Arguments of `lode rm`.
#[derive(clap::Args)]
pub struct Args {
    /// Image name.
    name: String,
    /// Tenant that owns it.
    #[arg(long)]
    tenant: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// Runs `lode rm`: a sealed tombstone replaces the pointer, the working set
/// is deleted; the chunks are freed by later `lode gc` passes.
pub fn run(args: Args) -> Result<()> {
    let store = open_store(args.store.store.as_deref())?;
    let r = runtime()?.block_on(remove_image(
        &store,
        key_provider().as_ref(),
        &args.tenant,
        &args.name,
    ))?;
    println!(
        "removed {}/{} (was manifest {}; tombstone version {}); its chunks are freed by `lode gc` once their root is retired and expires",
        args.tenant, args.name, r.manifest, r.version
    );
    Ok(())
}
