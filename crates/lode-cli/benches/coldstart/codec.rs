//! Section **codec**: cold start of one image stored with each codec of
//! chunk format v2, side by side. Each image of `CODEC_IMAGES` is pushed
//! twice, into two fresh stores: `lode push --compress never` (every chunk
//! raw: the bytes of chunk format v1) and `--compress auto` (zstd where it
//! saves an eighth). Then, in `REPS` rounds with the order rotated, a new
//! agent with an empty cache boots the image from each store, lazily from
//! the slowed store (`LATENCY_MS`, `BANDWIDTH`) and through a warm cache
//! fleet (5 nodes, filled beforehand by one start per codec). Measured: time
//! to the command's exit and the bytes each tier served (ciphertext, as
//! stored: what crossed the link).

use super::procs::{self, metric, Agent, NbdDisk};
use super::{
    agent_counts, export, finish_vm, fresh, inspect_in, median, mib, push_to, Ctx, Push, Run,
    TENANT,
};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// The codecs compared: (label, `lode push --compress` value).
const CODECS: [(&str, &str); 2] = [("raw", "never"), ("zstd", "auto")];

/// The read paths compared: (key, label).
const PATHS: [(&str, &str); 2] = [
    ("store", "lazy, from the store"),
    ("fleet", "lazy, through the warm cache fleet"),
];

/// One image pushed with one codec.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CodecStore {
    image: String,
    codec: String,
    push: Push,
    /// Bytes of the image's distinct chunks as stored (`lode inspect`).
    stored_bytes: u64,
    /// The same chunks' plaintext bytes.
    logical_bytes: u64,
    compressed_chunks: u64,
    raw_chunks: u64,
}

/// One cold start in this section.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CodecRun {
    codec: String,
    path: String,
    run: Run,
    /// Ciphertext bytes the store tier served.
    store_bytes: u64,
    /// Ciphertext bytes the fleet served.
    fleet_bytes: u64,
}

fn store_dir(ctx: &Ctx, image: &str, codec: &str) -> PathBuf {
    ctx.work.join(format!("store-{codec}-{image}"))
}

/// Agent arguments for `image` pushed with `codec`, with an empty cache.
fn agent_args(ctx: &Ctx, image: &str, codec: &str, cache: &std::path::Path) -> Vec<String> {
    vec![
        "--store".into(),
        store_dir(ctx, image, codec).display().to_string(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ]
}

/// Runs the section: pushes, fleet warm-up, interleaved rounds.
pub(crate) fn section_codec(
    ctx: &Ctx,
    stores: &mut Vec<CodecStore>,
    all: &mut Vec<CodecRun>,
) -> Result<()> {
    for image in &ctx.codec_images {
        let src = format!("oci:{}:latest", ctx.corpus.join(image).display());
        for (codec, flag) in CODECS {
            eprintln!("coldstart: codec: push {image} --compress {flag}");
            let dir = fresh(store_dir(ctx, image, codec))?;
            let push = push_to(
                ctx,
                &dir,
                &["--compress", flag],
                &format!("{image}, {codec}"),
                &src,
                (TENANT, image),
            )?;
            let info = inspect_in(ctx, &dir, image)?;
            let n = |k: &str| info[k].as_u64().unwrap_or(0);
            stores.push(CodecStore {
                image: image.clone(),
                codec: codec.into(),
                push,
                stored_bytes: n("stored_bytes"),
                logical_bytes: n("logical_bytes"),
                compressed_chunks: n("compressed_chunks"),
                raw_chunks: n("raw_chunks"),
            });
        }
        let (nodes, fleet) = procs::fleet(&ctx.lode, &ctx.work, 5, "512M")?;
        for (codec, _) in CODECS {
            ctx.retry(&format!("{image} {codec} fleet fill"), || {
                fill_fleet(ctx, image, codec, &fleet)
            })?;
        }
        let plan: Vec<(&str, &str)> = PATHS
            .iter()
            .flat_map(|(p, _)| CODECS.iter().map(move |(c, _)| (*c, *p)))
            .collect();
        for rep in 0..ctx.reps {
            for k in 0..plan.len() {
                let (codec, path) = plan[(k + rep) % plan.len()];
                eprintln!("coldstart: codec: {image} round {} {codec} {path}", rep + 1);
                let r = ctx.retry(&format!("{image} {codec} {path} round {}", rep + 1), || {
                    cold_start(ctx, image, codec, path, &fleet, rep + 1)
                })?;
                eprintln!(
                    "coldstart:   CMD exited at {:.0} ms, {:.1} MiB from the store, {:.1} MiB from the fleet",
                    r.run.cmd_exit_ms,
                    mib(r.store_bytes),
                    mib(r.fleet_bytes)
                );
                all.push(r);
            }
        }
        drop(nodes);
    }
    Ok(())
}

/// One start of `image` (pushed with `codec`) through the fleet, unslowed,
/// then waits until its fills reached the nodes.
fn fill_fleet(ctx: &Ctx, image: &str, codec: &str, fleet: &str) -> Result<()> {
    let name = ctx.next(&format!("codec-fill-{codec}"));
    let cache = fresh(ctx.work.join(format!("cache-{name}")))?;
    let mut args = agent_args(ctx, image, codec, &cache);
    args.extend(["--cache-nodes".to_string(), fleet.to_string()]);
    super::boot_and_fill(ctx, image, &name, &args)?;
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}

/// One cold start: a new agent with an empty cache on the codec's store
/// (slowed), through the fleet if `path` is "fleet".
fn cold_start(
    ctx: &Ctx,
    image: &str,
    codec: &str,
    path: &str,
    fleet: &str,
    rep: usize,
) -> Result<CodecRun> {
    let name = ctx.next(&format!("codec-{codec}-{path}"));
    let cache = fresh(ctx.work.join(format!("cache-{name}")))?;
    let mut args = agent_args(ctx, image, codec, &cache);
    args.extend(ctx.inject());
    if path == "fleet" {
        args.extend(["--cache-nodes".to_string(), fleet.to_string()]);
    }
    let mut run = Run {
        image: image.into(),
        variant: format!("{codec}-{path}"),
        rep,
        load1: super::load1(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let agent = Agent::start(&ctx.lode, &ctx.work, &name, &args)?;
    run.ready_ms = super::ms(t0.elapsed());
    let exp = export(image);
    let disk = NbdDisk {
        socket: &agent.sock,
        export: &exp,
    };
    let vm = ctx.vm(image, &disk, ctx.vm_mem, &name, t0)?;
    finish_vm(vm, &mut run)?;
    let m = agent.metrics()?;
    agent_counts(&m, &mut run);
    drop(agent);
    let _ = std::fs::remove_dir_all(&cache);
    Ok(CodecRun {
        codec: codec.into(),
        path: path.into(),
        run,
        store_bytes: metric(&m, "lode_tier_bytes_total{tier=\"store\"}"),
        fleet_bytes: metric(&m, "lode_tier_bytes_total{tier=\"fleet\"}"),
    })
}

/// The section's tables: store bytes per codec, then per image and path the
/// median time to CMD exit and bytes fetched, raw beside zstd.
pub(crate) fn report_codec(
    p: &super::Params,
    md: &mut String,
    stores: &[CodecStore],
    runs: &[CodecRun],
) {
    let _ = writeln!(
        md,
        "## Cold start by codec: raw chunks (`--compress never`, v1's bytes) vs zstd (`--compress auto`)\n\n\
         Each image pushed into two fresh stores; every run a new agent with an empty cache and a new VM \
         (QEMU microvm, TCG, {} MiB). Store: {} ms per GET, one {} MB/s link; the fleet (5 nodes on this host) \
         warmed by one start per codec. {} rounds, the order rotated per round. Bytes fetched: ciphertext \
         served by the store or the fleet to the agent.\n",
        p.vm_mem,
        p.latency_ms,
        p.bandwidth / 1_000_000,
        p.reps
    );
    let _ = writeln!(
        md,
        "| image | codec | chunks raw / zstd | distinct chunks MiB: logical → stored | push s |"
    );
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: |");
    for s in stores {
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {:.1} → {:.1} | {:.1} |",
            s.image,
            s.codec,
            s.raw_chunks,
            s.compressed_chunks,
            mib(s.logical_bytes),
            mib(s.stored_bytes),
            s.push.secs
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "| image | path | codec | median CMD exited ms | min – max ms | ÷ raw | MiB fetched (median) | ÷ raw | chunks fetched | load (1 min) |");
    let _ = writeln!(
        md,
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let images: Vec<&str> = {
        let mut v: Vec<&str> = Vec::new();
        for r in runs {
            if !v.contains(&r.run.image.as_str()) {
                v.push(&r.run.image);
            }
        }
        v
    };
    for image in images {
        for (path, label) in PATHS {
            let stat = |codec: &str| {
                let rs: Vec<&CodecRun> = runs
                    .iter()
                    .filter(|r| r.run.image == image && r.path == path && r.codec == codec)
                    .collect();
                let t: Vec<f64> = rs.iter().map(|r| r.run.cmd_exit_ms).collect();
                let b: Vec<f64> = rs
                    .iter()
                    .map(|r| (r.store_bytes + r.fleet_bytes) as f64)
                    .collect();
                let c: Vec<f64> = rs
                    .iter()
                    .map(|r| (r.run.store_chunks + r.run.fleet_chunks) as f64)
                    .collect();
                let l: Vec<f64> = rs.iter().map(|r| r.run.load1).collect();
                (t, median(&b), median(&c), median(&l))
            };
            let (raw_t, raw_b, _, _) = stat("raw");
            let raw_med = median(&raw_t);
            for (codec, _) in CODECS {
                let (t, b, c, l) = stat(codec);
                if t.is_empty() {
                    continue;
                }
                let med = median(&t);
                let (lo, hi) = (
                    t.iter().copied().fold(f64::INFINITY, f64::min),
                    t.iter().copied().fold(0.0, f64::max),
                );
                let _ = writeln!(
                    md,
                    "| {image} | {label} | {codec} | **{med:.0}** | {lo:.0} – {hi:.0} | **{:.2}** | {:.1} | **{:.2}** | {c:.0} | {l:.1} |",
                    med / raw_med,
                    b / (1u64 << 20) as f64,
                    b / raw_b
                );
            }
        }
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| image | round | path | codec | CMD exited ms | MiB from store / fleet | load |"
    );
    let _ = writeln!(md, "| --- | ---: | --- | --- | ---: | ---: | ---: |");
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {:.1} / {:.1} | {:.1} |",
            r.run.image,
            r.run.rep,
            r.path,
            r.codec,
            r.run.cmd_exit_ms,
            mib(r.store_bytes),
            mib(r.fleet_bytes),
            r.run.load1
        );
    }
    let _ = writeln!(md);
}
