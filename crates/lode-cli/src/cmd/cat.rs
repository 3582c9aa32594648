//! `lode cat NAME PATH --tenant T`: one file out of an image, loaded on demand.

use super::cache::CacheArgs;
use super::common::{key_provider, runtime, warn_unreadable_reads};
use crate::units::human;
use anyhow::{anyhow, Context, Result};
use lode_agent::ImageHandle;
use lode_store::open_image;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Most chunks read ahead of the file's current position.
const READAHEAD_CHUNKS: u64 = 16;

/// Lazy random access to the image for the ext4 reader, with readahead while
/// the file's data is read.
struct Lazy {
    image: Arc<ImageHandle>,
    rt: tokio::runtime::Handle,
    /// Bytes of the file still to be read (0 while ext4 metadata is read):
    /// bounds the readahead so it fetches little beyond the file.
    ahead: Arc<AtomicU64>,
    /// Chunks below this index were already read or requested.
    requested_to: u64,
    /// The readahead fetches started, awaited before exit so that every
    /// chunk fetched lands in the disk cache (the next run finds it there).
    fetches: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Lazy {
    /// Starts background fetches of the chunks after `last` that the rest of
    /// the file may need (a file's data is contiguous in lode's layout), at
    /// most [`READAHEAD_CHUNKS`] ahead. Single-flight joins a later read of
    /// the same chunk to its fetch.
    fn read_ahead(&mut self, last: u64) {
        let cs = self.image.chunk_size();
        let want = self
            .ahead
            .load(Ordering::Relaxed)
            .div_ceil(cs)
            .min(READAHEAD_CHUNKS);
        let end = (last + 1 + want).min(self.image.chunks());
        let from = self.requested_to.max(last + 1);
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        fetches.retain(|h| !h.is_finished());
        for j in from..end {
            let image = self.image.clone();
            fetches.push(self.rt.spawn(async move {
                // Errors surface when the chunk is read for real.
                let _ = image.chunk(j).await;
            }));
        }
        self.requested_to = self.requested_to.max(end);
    }
}

impl ext4_view::Ext4Read for Lazy {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        if !dst.is_empty() && self.ahead.load(Ordering::Relaxed) > 0 {
            let last = (start + dst.len() as u64 - 1) / self.image.chunk_size();
            self.read_ahead(last);
        }
        // One checked range per at most 32 MiB (the largest request).
        let piece = lode_agent::range::MAX_REQUEST as usize;
        for (k, part) in dst.chunks_mut(piece).enumerate() {
            let range = self
                .image
                .range(start + (k * piece) as u64, part.len() as u64)?;
            let b = self.rt.block_on(self.image.read(range))?;
            part.copy_from_slice(&b);
        }
        Ok(())
    }
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
    let ahead = Arc::new(AtomicU64::new(0));
    let fetches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fs = ext4_view::Ext4::load(Box::new(Lazy {
        image: image.clone(),
        rt: rt.handle().clone(),
        ahead: ahead.clone(),
        requested_to: 0,
        fetches: fetches.clone(),
    }))
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
        ahead.store(size.saturating_sub(total), Ordering::Relaxed);
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
    let pending = std::mem::take(&mut *fetches.lock().unwrap_or_else(|p| p.into_inner()));
    rt.block_on(async {
        for h in pending {
            let _ = h.await;
        }
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
