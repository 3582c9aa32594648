//! `lode images --tenant T [--store URL] [--json]`

use super::common::{key_provider, open_store, runtime, StoreArgs};
use crate::units::human;
use anyhow::Result;
use lode_store::list_tenant_images;

/// Arguments of `lode images`.
#[derive(clap::Args)]
pub struct Args {
    /// Tenant whose images to list.
    #[arg(long)]
    tenant: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `lode images`: every live image of the tenant, each opened (pointer
/// seal, manifest binding, key table) so the listing is authenticated; an
/// image that does not open is listed with its error.
pub fn run(args: Args) -> Result<()> {
    let store = open_store(args.store.store.as_deref())?;
    let list = runtime()?.block_on(list_tenant_images(
        &store,
        key_provider().as_ref(),
        &args.tenant,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("tenant '{}' has no images in {}", args.tenant, store.url());
        return Ok(());
    }
    println!(
        "{:<32} {:>7} {:>11} {:>11} {:>7}  {:<30} manifest",
        "NAME", "VERSION", "SIZE", "STORED", "CHUNKS", "ROOT (STATE)"
    );
    for e in &list {
        if let Some(err) = &e.error {
            println!("{:<32} error: {err}", e.name);
            continue;
        }
        let state = e
            .root_state
            .map_or("deleted".to_string(), |s| format!("{s:?}").to_lowercase());
        println!(
            "{:<32} {:>7} {:>11} {:>11} {:>7}  {:<30} {}",
            e.name,
            e.version,
            human(e.size),
            human(e.stored_bytes),
            e.chunks,
            format!("{} ({state})", e.root),
            e.manifest
        );
    }
    Ok(())
}
