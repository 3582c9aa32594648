//! `lode push SOURCE --tenant T --name NAME [--store URL]`

use super::common::{key_provider, lode_home, open_store, runtime, StoreArgs};
use crate::units::human;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lode_flatten::{flatten, FlattenOptions};
use lode_oci::Source;
use lode_store::{push_file, PushOptions};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Arguments of `lode push`.
#[derive(clap::Args)]
pub struct Args {
    /// `oci:DIR[:REF]`, `docker-archive:FILE[:REF]`, or `ext4:FILE` (already flattened).
    source: String,
    /// Tenant that owns the image.
    #[arg(long)]
    tenant: String,
    /// Image name within the tenant.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Chunks in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// Runs `lode push`.
pub fn run(args: Args) -> Result<()> {
    let store = open_store(args.store.store.as_deref())?;
    let keys = key_provider();
    // An OCI source is flattened first, into a temp file under $LODE_HOME/tmp.
    let mut _tmp = None;
    let image: PathBuf = if let Some(f) = args.source.strip_prefix("ext4:") {
        PathBuf::from(f)
    } else {
        let source: Source = args.source.parse()?;
        let dir = lode_home().join("tmp");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let t = tempfile::Builder::new()
            .prefix("push-")
            .suffix(".ext4")
            .tempfile_in(&dir)?;
        let path = t.path().to_path_buf();
        let r = flatten(&source, &path, &FlattenOptions::default())?;
        eprintln!(
            "flattened {} layers into {} image",
            r.layers,
            human(r.summary.image_bytes)
        );
        _tmp = Some(t);
        path
    };
    let opts = PushOptions {
        concurrency: args.concurrency,
        ..PushOptions::default()
    };
    let size = std::fs::metadata(&image)
        .with_context(|| format!("reading {}", image.display()))?
        .len();
    let total = size.div_ceil(u64::from(lode_chunk::CHUNK_SIZE));
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} chunks {msg}")
            .context("progress style")?,
    );
    let rt = runtime()?;
    let report = rt.block_on(async {
        let progress = opts.progress.clone();
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                b.set_position(progress.done.load(Ordering::Relaxed));
                b.set_message(format!(
                    "{} uploaded",
                    human(progress.uploaded_bytes.load(Ordering::Relaxed))
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let r = push_file(&store, keys, &image, &args.tenant, &args.name, &opts).await;
        ticker.abort();
        r
    })?;
    bar.finish_and_clear();
    let data = (report.chunks - report.holes) * u64::from(lode_chunk::CHUNK_SIZE);
    println!(
        "pushed {}/{}: chunks total {} / holes {} / already stored {} / uploaded {}, bytes uploaded {}, {:.2} s, {:.0} MB/s (manifest {})",
        args.tenant,
        args.name,
        report.chunks,
        report.holes,
        report.already,
        report.uploaded,
        report.bytes_uploaded,
        report.seconds,
        data as f64 / 1e6 / report.seconds.max(1e-9),
        report.manifest,
    );
    Ok(())
}
