//! `lode cat NAME PATH --tenant T`: one file out of an image, loaded on demand.

use super::cache::CacheArgs;
use super::common::{key_provider, runtime, warn_unreadable_reads};
use crate::units::human;
use anyhow::{anyhow, Context, Result};
use lode_agent::files::LazyImage;
use lode_agent::ImageHandle;
use lode_store::open_image;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `lode cat`.
#[derive(clap::Args)]
pub struct Args {
    /// Image name.
    name: String,
    /// Absolute path of the file inside the image.
    path: String,
    /// Tenant that owns the image.
    #[arg(long)]
    tenant: String,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Runs `lode cat`.
pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let rt = runtime()?;
    let (store, reader) = args.cache.reader()?;
    let opened = rt.block_on(open_image(
        &store,
        key_provider().as_ref(),
        &args.tenant,
        &args.name,
    ))?;
    let image = Arc::new(ImageHandle::new(
        format!("{}/{}", args.tenant, args.name),
        opened,
        reader.clone(),
    ));
    let (lazy, control) = LazyImage::new(image.clone(), rt.handle().clone());
    let fs = ext4_view::Ext4::load(Box::new(lazy))
        .map_err(|e| anyhow!("reading the image's ext4 filesystem: {e}"))?;
    let mut file = fs
        .open(args.path.as_str())
        .map_err(|e| anyhow!("{}: {e}", args.path))?;
    let size = file.metadata().len();
    let mut first_byte = None;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        control.set_ahead(size.saturating_sub(total));
        let n = std::io::Read::read(&mut file, &mut buf)
            .with_context(|| format!("reading {}", args.path))?;
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| start.elapsed());
        out.write_all(&buf[..n]).context("writing to stdout")?;
        total += n as u64;
    }
    out.flush().context("writing to stdout")?;
    // Let readahead still in flight finish and the disk-cache writes land,
    // so the next command finds every chunk this one fetched.
    rt.block_on(async {
        control.settle().await;
        reader.settle().await;
    });
    warn_unreadable_reads(&store);
    let labels = reader.tier_labels();
    let (mut fetched, mut bytes) = (0, 0);
    let mut per_tier = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        let (n, b) = reader.fetched_from(i);
        fetched += n;
        bytes += b;
        per_tier.push(format!("{l} {n}"));
    }
    let disk_hits = reader.disk_metrics.hits.load(Ordering::Relaxed);
    per_tier.push(format!("local disk {disk_hits}"));
    eprintln!(
        "lode cat: {} bytes; chunks fetched {} / {} total ({}), bytes fetched {}, first byte {:.1} ms, total {:.1} ms",
        total,
        fetched,
        image.chunks(),
        per_tier.join(", "),
        human(bytes),
        first_byte.unwrap_or_default().as_secs_f64() * 1e3,
        start.elapsed().as_secs_f64() * 1e3,
    );
    Ok(())
}
