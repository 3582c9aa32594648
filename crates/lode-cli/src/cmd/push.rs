//! `lode push SOURCE --tenant T --name NAME [--store URL]`

use super::common::{
    flatten_error, key_provider, layer_progress, lode_home, open_store, runtime,
    show_layer_progress, LimitArgs, SourceArgs, StoreArgs,
};
use crate::shutdown::Shutdown;
use crate::units::human;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lode_common::LockedTemp;
use lode_flatten::{flatten_image, FlattenOptions};
use lode_oci::{Image, Source};
use lode_store::{push_file, PushOptions};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Arguments of `lode push`.
#[derive(clap::Args)]
pub struct Args {
    /// `oci:DIR[:REF]`, `docker-archive:FILE[:REF]`,
    /// `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`, or `ext4:FILE` (already flattened).
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
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    from: SourceArgs,
}

/// Prefix of the images `push` flattens into `$LODE_HOME/tmp`.
const TEMP_PREFIX: &str = "push-";

/// Runs `lode push`. On SIGTERM or SIGINT it stops (no new upload starts,
/// the ones running finish or are dropped whole) and removes the image it
/// flattened; a killed run's is removed by the next push.
pub fn run(args: Args) -> Result<()> {
    let shutdown = Shutdown::install()?;
    let store = open_store(args.store.store.as_deref())?;
    let keys = key_provider();
    // An OCI source is flattened first, into a locked temp file under
    // $LODE_HOME/tmp (removed when dropped; swept by the next push if killed).
    let mut _tmp = None;
    let image: PathBuf = if let Some(f) = args.source.strip_prefix("ext4:") {
        PathBuf::from(f)
    } else {
        let source: Source = args.source.parse()?;
        let dir = lode_home().join("tmp");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        lode_common::temp::sweep(&dir, TEMP_PREFIX, lode_common::temp::TEMP_SUFFIX);
        let t = LockedTemp::create_in(&dir, TEMP_PREFIX)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        let image = Image::open_with(&source, &args.from.open_options()?)?;
        let file = t.file().try_clone().context("opening the temp file")?;
        let bar = layer_progress()?;
        let on_progress = |p| show_layer_progress(&bar, p);
        let opts = FlattenOptions {
            limits: args.limits.limits(),
            cancel: Some(shutdown.flag()),
            progress: Some(&on_progress),
            ..FlattenOptions::default()
        };
        let r = flatten_image(&image, file, &opts).map_err(|e| flatten_error(e, &shutdown))?;
        bar.finish_and_clear();
        eprintln!(
            "flattened {} layers into {} image",
            r.layers,
            human(r.summary.image_bytes)
        );
        let path = t.path().to_path_buf();
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
        let r = shutdown
            .run(async {
                Ok(push_file(&store, keys, &image, &args.tenant, &args.name, &opts).await?)
            })
            .await;
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
