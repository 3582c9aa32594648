//! `lode flatten SOURCE -o OUT`

use super::common::{flatten_error, layer_progress, show_layer_progress, LimitArgs, SourceArgs};
use crate::shutdown::Shutdown;
use crate::units::{human, parse_size};
use anyhow::Result;
use lode_flatten::{flatten, FlattenOptions, Progress};
use lode_oci::Source;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `lode flatten`.
#[derive(clap::Args)]
pub struct Args {
    /// Image to flatten: `oci:DIR[:REF]`, `docker-archive:FILE[:REF]` or
    /// `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`.
    source: String,
    /// Output ext4 image (written atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Image size (e.g. `2G`); default: computed from the content with headroom.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    from: SourceArgs,
}

/// Runs `lode flatten`.
pub fn run(args: Args) -> Result<()> {
    let shutdown = Shutdown::install()?;
    let source: Source = args.source.parse()?;
    let open = args.from.open_options()?;
    let bar = layer_progress()?;
    let on_progress = |p: Progress| show_layer_progress(&bar, p);
    let start = Instant::now();
    let report = flatten(
        &source,
        &args.output,
        &FlattenOptions {
            size: args.size,
            progress: Some(&on_progress),
            limits: args.limits.limits(),
            cancel: Some(shutdown.flag()),
            open,
            settle: None,
        },
    )
    .map_err(|e| flatten_error(e, &shutdown))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "flattened {} layers ({} entries, {} of layer data) into {} ({} image, {} of file data) in {:.2} s ({:.0} MB/s)",
        report.layers,
        report.entries,
        human(report.layer_bytes),
        args.output.display(),
        human(report.summary.image_bytes),
        human(report.summary.data_bytes),
        secs,
        report.layer_bytes as f64 / 1e6 / secs.max(1e-9),
    );
    Ok(())
}
