//! `lode push SOURCE --tenant T --name NAME [--store URL] [--compress auto|never]`

use super::common::{
    bars, flatten_error, key_provider, layer_progress, lode_home, open_store, runtime,
    show_layer_progress, LimitArgs, SourceArgs, StoreArgs,
};
use crate::shutdown::Shutdown;
use crate::units::human;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lode_chunk::{Compression, KeyProvider};
use lode_common::LockedTemp;
use lode_flatten::{flatten_image, FlattenOptions, Settle};
use lode_oci::{Image, Source};
use lode_store::push::MAX_RETARGETS;
use lode_store::{push_file, push_stream, PushOptions, PushReport, Ready, Store};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// `auto`: each chunk zstd-compressed when that saves an eighth, else
    /// raw; `never`: every chunk raw (chunk format v2, codec 0), with no
    /// compression attempt, e.g. for already-compressed data.
    #[arg(long, value_enum, default_value_t = CompressArg::Auto)]
    compress: CompressArg,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    from: SourceArgs,
}

/// Values of `lode push --compress`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CompressArg {
    /// zstd when it saves at least an eighth, else raw.
    Auto,
    /// Every chunk raw.
    Never,
}

impl From<CompressArg> for Compression {
    fn from(c: CompressArg) -> Compression {
        match c {
            CompressArg::Auto => Compression::Auto,
            CompressArg::Never => Compression::Never,
        }
    }
}

/// Prefix of the images `push` flattens into `$LODE_HOME/tmp`.
const TEMP_PREFIX: &str = "push-";

/// Chunks the flatten may settle ahead of the upload (on top of the chunks
/// in flight): what bounds the streamed image's bytes on disk.
const SETTLE_WINDOW: usize = 32;

/// Runs `lode push`. An OCI source is flattened and uploaded at once: each
/// chunk is sealed and uploaded as soon as the flatten settles it, and its
/// bytes are then freed from the temp file, so the image never sits whole
/// on disk and conversion hides behind the download. On SIGTERM or SIGINT
/// it stops (no new upload starts, the ones running finish or are dropped
/// whole) and removes its temp file; a killed run's is removed by the next
/// push.
pub fn run(args: Args) -> Result<()> {
    let shutdown = Shutdown::install()?;
    let store = open_store(args.store.store.as_deref())?;
    let keys = key_provider();
    let opts = PushOptions {
        concurrency: args.concurrency,
        compression: args.compress.into(),
        ..PushOptions::default()
    };
    let rt = runtime()?;
    let bar = bars().add(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} chunks {msg}")
            .context("progress style")?,
    );
    let ticker = {
        let (progress, b) = (opts.progress.clone(), bar.clone());
        rt.spawn(async move {
            loop {
                b.set_length(progress.total.load(Ordering::Relaxed));
                b.set_position(progress.done.load(Ordering::Relaxed));
                b.set_message(format!(
                    "{} uploaded",
                    human(progress.uploaded_bytes.load(Ordering::Relaxed))
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let report = if let Some(f) = args.source.strip_prefix("ext4:") {
        let image = PathBuf::from(f);
        rt.block_on(shutdown.run(async {
            Ok(push_file(&store, keys, &image, &args.tenant, &args.name, &opts).await?)
        }))
    } else {
        push_source(&args, &store, keys, &opts, &shutdown, &rt)
    };
    ticker.abort();
    bar.finish_and_clear();
    let report = report?;
    let data = (report.chunks - report.holes) * u64::from(lode_chunk::CHUNK_SIZE);
    println!(
        "pushed {}/{}: chunks total {} / holes {} / already stored {} / uploaded {}, bytes uploaded {}, {:.2} s, {:.0} MB/s, streamed {} (manifest {})",
        args.tenant,
        args.name,
        report.chunks,
        report.holes,
        report.already,
        report.uploaded,
        report.bytes_uploaded,
        report.seconds,
        data as f64 / 1e6 / report.seconds.max(1e-9),
        report.streamed,
        report.manifest,
    );
    Ok(())
}

/// Flattens an OCI source and pushes it as it is written (see [`run`]). A
/// root retired during the push is retried from the source, since the
/// chunks already freed cannot be re-encrypted for the new root.
fn push_source(
    args: &Args,
    store: &Store,
    keys: Arc<dyn KeyProvider>,
    opts: &PushOptions,
    shutdown: &Shutdown,
    rt: &tokio::runtime::Runtime,
) -> Result<PushReport> {
    let start = Instant::now();
    let source: Source = args.source.parse()?;
    let dir = lode_home().join("tmp");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    lode_common::temp::sweep(&dir, TEMP_PREFIX, lode_common::temp::TEMP_SUFFIX);
    for retargets in 0..MAX_RETARGETS {
        // A locked temp file under $LODE_HOME/tmp (removed when dropped;
        // swept by the next push if killed), sparse: settled chunks are
        // freed once sealed.
        let t = LockedTemp::create_in(&dir, TEMP_PREFIX)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        let image = Image::open_with(&source, &args.from.open_options()?)?;
        let file = t.file().try_clone().context("opening the temp file")?;
        let reader = Arc::new(t.file().try_clone().context("opening the temp file")?);
        let layers = layer_progress()?;
        let (tx, rx) = tokio::sync::mpsc::channel(SETTLE_WINDOW);
        let (flat, pushed) = std::thread::scope(|s| {
            let flat = s.spawn(|| {
                let tx = tx;
                let on_progress = |p| show_layer_progress(&layers, p);
                // A closed channel means the push failed: it stops the
                // flatten through the shutdown flag.
                let to = tx.clone();
                let tell = Arc::new(move |i| {
                    let _ = to.blocking_send(Ready::Chunk(i));
                });
                let fopts = FlattenOptions {
                    limits: args.limits.limits(),
                    cancel: Some(shutdown.flag()),
                    progress: Some(&on_progress),
                    settle: Some(Settle {
                        chunk_size: u64::from(opts.chunk_size),
                        chunk: tell,
                    }),
                    ..FlattenOptions::default()
                };
                let r = flatten_image(&image, file, &fopts);
                if let Ok(r) = &r {
                    let _ = tx.blocking_send(Ready::Complete(r.summary.image_bytes));
                }
                r
            });
            let pushed = rt.block_on(shutdown.run(async {
                Ok(push_stream(
                    store,
                    keys.clone(),
                    reader,
                    rx,
                    &args.tenant,
                    &args.name,
                    opts,
                )
                .await?)
            }));
            if pushed.is_err() {
                // The flatten has no one to take its chunks any more.
                shutdown.stop();
            }
            let flat = flat
                .join()
                .map_err(|_| anyhow::anyhow!("the flatten thread panicked"));
            (flat, pushed)
        });
        layers.finish_and_clear();
        let flat = flat?;
        match (flat, pushed) {
            (Ok(r), Ok(Some(mut report))) => {
                eprintln!(
                    "flattened {} layers into {} image",
                    r.layers,
                    human(r.summary.image_bytes)
                );
                report.retargets = retargets;
                report.seconds = start.elapsed().as_secs_f64();
                return Ok(report);
            }
            (Ok(_), Ok(None)) => continue,
            (Ok(_), Err(e)) => return Err(e),
            // A flatten that failed on its own explains the push's
            // "incomplete"; one stopped because the push failed does not.
            (Err(lode_flatten::FlattenError::Interrupted), Err(pe)) => return Err(pe),
            (Err(fe), _) => return Err(flatten_error(fe, shutdown)),
        }
    }
    Err(anyhow::anyhow!(
        "the active root was retired {MAX_RETARGETS} times while {}/{} was pushed",
        args.tenant,
        args.name
    ))
}
