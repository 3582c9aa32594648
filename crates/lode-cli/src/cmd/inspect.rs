//! `lode inspect NAME --tenant T [--store URL] [--json]`

use super::common::{key_provider, open_store, runtime, StoreArgs};
use crate::units::human;
use anyhow::Result;
use lode_store::open_image;
use std::collections::HashSet;

/// Arguments of `lode inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Image name.
    name: String,
    /// Tenant that owns it.
    #[arg(long)]
    tenant: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `lode inspect`: opens (and so authenticates) the manifest and summarizes it.
pub fn run(args: Args) -> Result<()> {
    let store = open_store(args.store.store.as_deref())?;
    let keys = key_provider();
    let (img, root, manifest_bytes) = runtime()?.block_on(async {
        let img = open_image(&store, keys.as_ref(), &args.tenant, &args.name).await?;
        let root = store.root(&img.manifest.root).await?;
        let bytes = store.get_manifest(&args.tenant, &img.digest).await?.len();
        Ok::<_, anyhow::Error>((img, root, bytes))
    })?;
    let m = &img.manifest;
    let stored = m.stored_chunks();
    let unique: HashSet<_> = m.names.iter().flatten().collect();
    let sizes = lode_chunk::ChunkSizes::of(&m.names, &img.keys);
    let v = serde_json::json!({
        "tenant": m.tenant,
        "name": args.name,
        "manifest": img.digest,
        "manifest_bytes": manifest_bytes,
        "format_version": m.format,
        "version": m.binding.as_ref().map_or(0, |b| b.version),
        "image_size": m.image_size,
        "chunk_size": m.chunk_size,
        "chunks": m.names.len(),
        "holes": m.names.len() - stored,
        "stored_chunks": stored,
        "unique_chunks": unique.len(),
        "logical_bytes": sizes.logical_bytes,
        "stored_bytes": sizes.stored_bytes,
        "compressed_chunks": sizes.compressed_chunks,
        "raw_chunks": sizes.raw_chunks,
        "compressed_logical_bytes": sizes.compressed_logical_bytes,
        "compressed_stored_bytes": sizes.compressed_stored_bytes,
        "root": m.root,
        "root_state": root.state,
        "authenticated": true,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("image      {}/{}", m.tenant, args.name);
        println!(
            "manifest   {} ({} bytes, format v{})",
            img.digest, manifest_bytes, m.format
        );
        if let Some(b) = &m.binding {
            println!(
                "version    {} (bound to {}/{})",
                b.version, m.tenant, b.name
            );
        }
        println!(
            "size       {} ({} bytes)",
            human(m.image_size),
            m.image_size
        );
        println!(
            "chunks     {} of {} : {} stored ({} unique), {} holes",
            m.names.len(),
            human(u64::from(m.chunk_size)),
            stored,
            unique.len(),
            m.names.len() - stored
        );
        println!(
            "bytes      {} logical in the {} unique chunks, {} stored ({:.2}x)",
            human(sizes.logical_bytes),
            sizes.chunks,
            human(sizes.stored_bytes),
            sizes.logical_bytes as f64 / sizes.stored_bytes.max(1) as f64
        );
        println!(
            "codecs     {} zstd ({} logical in {} stored), {} raw",
            sizes.compressed_chunks,
            human(sizes.compressed_logical_bytes),
            human(sizes.compressed_stored_bytes),
            sizes.raw_chunks
        );
        println!("root       {} ({:?})", m.root, root.state);
        println!("sealed     key table opened with the tenant's key: manifest authentic");
    }
    Ok(())
}
