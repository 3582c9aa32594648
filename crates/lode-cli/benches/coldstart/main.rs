//! End-to-end benchmark of lode: micro-VM cold starts from the corpus images.
//!
//! ```sh
//! sudo scripts/corpus.sh                       # once: the corpus (target/corpus)
//! cargo bench -p lode-cli --bench coldstart    # root, QEMU (scripts/vm-deps.sh)
//! ```
//!
//! Drives the release `lode` binary, `qemu-nbd` and `qemu-system-x86_64` as
//! real processes and prints markdown tables; the report, the raw runs
//! (`runs.json`) and SVG plots go to `target/bench-coldstart/`. Sections:
//!
//! 1. **dedup**: every corpus image pushed, in order, to one fresh store;
//!    chunks new per upload (this store then serves the other sections);
//! 2. **coldstart**: time to CMD exit of a VM booting on one image, variants
//!    interleaved `REPS` times: lazy from the store behind injected latency,
//!    lazy through a warm cache fleet, warm host disk cache, hot agent,
//!    download everything first, a local raw file behind `qemu-nbd` (the
//!    floor), and `lode run` itself;
//! 3. **bytes**: bytes fetched and bytes read by the guest at start-up, per
//!    image, against the image's size;
//! 4. **concurrent**: N VMs (1, 4, 16) booting one image at once against one
//!    agent: per-VM times and store fetches per distinct chunk;
//! 5. **codec** (not in the default set): each of `CODEC_IMAGES` pushed raw
//!    (`--compress never`) and zstd (`--compress auto`) into two stores, then
//!    cold starts from each, lazily from the slowed store and through a warm
//!    fleet, interleaved: time to CMD exit and bytes fetched (see `codec.rs`).
//!
//! Only the images a selected section uses must be in the corpus; sections
//! 1–4 use the store section 1 fills (without it, the five images are pushed
//! there first). `SECTIONS=codec CODEC_IMAGES=python,app-c` runs section 5 alone.
//!
//! Environment: `REPS` (3), `LATENCY_MS` (20), `BANDWIDTH` (bytes/s of the
//! store link, 100000000), `VM_MEMORY` (MiB, 256), `CONC_MEMORY` (MiB per VM
//! in section 4, 128), `CONCURRENCY` ("1,4,16"), `CONC_REPS` (2),
//! `COLDSTART_IMAGES` ("python,big"), `SECTIONS` ("dedup,coldstart,bytes,concurrent"),
//! `CODEC_IMAGES` ("python,app-c"),
//! `VM_TIMEOUT` (s, 600), `LODE_CORPUS`, `LODE_VM_DIR`, `BENCH_OUT`,
//! `BENCH_WORKDIR` (kept when given; default a temp dir, deleted).
//! `REPLOT=runs.json` only rebuilds the report and the plots from saved results.

mod codec;
mod procs;
mod svg;

use anyhow::{anyhow, bail, Context, Result};
use lode_agent::{ChunkReader, ImageHandle};
use lode_chunk::Keyring;
use lode_store::{open_image, Store};
use lode_tier::{ChunkTier, Delayed};
use procs::{metric, Agent, NbdDisk, Proc};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: u64 = 512 * 1024;
const TENANT: &str = "bench";

/// The images sections 1-4 push into their shared store.
const BASE_IMAGES: [&str; 5] = ["debian", "python", "app-a", "app-b", "big"];

/// The settings the report needs (saved with the results).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Params {
    reps: usize,
    latency_ms: f64,
    bandwidth: u64,
    vm_mem: u32,
    conc_mem: u32,
    conc: Vec<usize>,
    conc_reps: usize,
    cold_images: Vec<String>,
    #[serde(default)]
    codec_images: Vec<String>,
}

/// Everything measured in one run: written to `runs.json`, from which
/// `REPLOT=runs.json` rebuilds the report and the plots.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Results {
    /// Date, command, machine, load: the report's head.
    header: String,
    params: Option<Params>,
    sections: Vec<String>,
    pushes: Vec<Push>,
    coldstart: Vec<Run>,
    startup: Vec<Startup>,
    concurrent: Vec<Conc>,
    #[serde(default)]
    codec_stores: Vec<codec::CodecStore>,
    #[serde(default)]
    codec: Vec<codec::CodecRun>,
    failures: Vec<(String, String)>,
}

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(d)
}

fn env_str(k: &str, d: &str) -> String {
    std::env::var(k)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| d.to_string())
}

/// Settings and shared paths.
struct Ctx {
    lode: PathBuf,
    repo: PathBuf,
    corpus: PathBuf,
    work: PathBuf,
    out: PathBuf,
    store: PathBuf,
    home: PathBuf,
    kernel: PathBuf,
    base_initrd: Vec<u8>,
    reps: usize,
    latency_ms: f64,
    bandwidth: u64,
    vm_mem: u32,
    conc_mem: u32,
    conc: Vec<usize>,
    conc_reps: usize,
    timeout: Duration,
    sections: Vec<String>,
    cold_images: Vec<String>,
    bytes_images: Vec<String>,
    codec_images: Vec<String>,
    seq: std::cell::Cell<u64>,
    initrds: std::cell::RefCell<std::collections::HashSet<String>>,
    pulled: std::cell::RefCell<std::collections::HashSet<String>>,
    /// Runs that failed and were repeated: (what, why).
    failures: std::cell::RefCell<Vec<(String, String)>>,
}

impl Ctx {
    fn params(&self) -> Params {
        Params {
            reps: self.reps,
            latency_ms: self.latency_ms,
            bandwidth: self.bandwidth,
            vm_mem: self.vm_mem,
            conc_mem: self.conc_mem,
            conc: self.conc.clone(),
            conc_reps: self.conc_reps,
            cold_images: self.cold_images.clone(),
            codec_images: self.codec_images.clone(),
        }
    }

    fn next(&self, what: &str) -> String {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        format!("{what}-{n}")
    }

    /// Runs `f`, repeating it up to twice when it fails (a VM that hangs or
    /// a QEMU virtio error); every failure is listed in the report.
    fn retry<T>(&self, what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 1;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if attempt < 3 => {
                    let why = format!("{e:#}").lines().next().unwrap_or("").to_string();
                    eprintln!("coldstart: {what} failed ({why}); repeating it");
                    self.failures.borrow_mut().push((what.to_string(), why));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn inject(&self) -> Vec<String> {
        vec![
            "--inject-store-latency-ms".into(),
            format!("{}", self.latency_ms),
            "--inject-store-bandwidth".into(),
            self.bandwidth.to_string(),
        ]
    }

    fn store_args(&self, cache: &Path) -> Vec<String> {
        vec![
            "--store".into(),
            self.store.display().to_string(),
            "--cache-dir".into(),
            cache.display().to_string(),
        ]
    }

    fn section(&self, s: &str) -> bool {
        self.sections.iter().any(|x| x == s)
    }

    /// The base initramfs with `cmd`'s archive appended, written once per command.
    fn initrd(&self, image: &str) -> Result<PathBuf> {
        let p = self.work.join(format!("initrd-{image}"));
        if self.initrds.borrow_mut().insert(image.to_string()) {
            std::fs::write(
                &p,
                lode_vm::run_initrd(&self.base_initrd, &image_cmd(image), false),
            )?;
        }
        Ok(p)
    }

    fn vm(
        &self,
        image: &str,
        disk: &NbdDisk,
        mem: u32,
        name: &str,
        t0: Instant,
    ) -> Result<procs::Vm> {
        procs::start_vm(
            &procs::VmConf {
                kernel: &self.kernel,
                initrd: &self.initrd(image)?,
                memory_mib: mem,
                timeout: self.timeout,
            },
            disk,
            &self.work,
            name,
            t0,
        )
    }
}

/// The command each image runs (its own entry point where it has one).
fn image_cmd(image: &str) -> Vec<String> {
    let v: &[&str] = match image {
        "debian" => &["/bin/bash", "-c", "cat /etc/debian_version"],
        "python" => &[
            "env",
            "PYTHONDONTWRITEBYTECODE=1",
            "python3",
            "-c",
            "import json; print(1)",
        ],
        // The image's own CMD; the root is read-only, so /tmp gets a tmpfs
        // (scipy needs a temporary directory).
        _ => &[
            "/bin/sh",
            "-c",
            "mount -t tmpfs tmpfs /tmp && PYTHONDONTWRITEBYTECODE=1 exec python3 /app/app.py",
        ],
    };
    v.iter().map(|s| s.to_string()).collect()
}

/// The command as a shell would show it.
fn cmd_text(image: &str) -> String {
    image_cmd(image)
        .iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/=._-".contains(c))
            {
                a.clone()
            } else {
                lode_vm::qemu::shell_quote(a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn export(image: &str) -> String {
    format!("{TENANT}/{image}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn load1() -> f64 {
    loadavg()
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `p`, deleted if it exists (a kept work directory may hold an old one).
fn fresh(p: PathBuf) -> Result<PathBuf> {
    if p.exists() {
        std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(p)
}

/// Runs `lode ARGS`, returns stdout; fails with stderr.
fn lode(ctx: &Ctx, args: &[&str]) -> Result<String> {
    let o = Command::new(&ctx.lode)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running lode {args:?}"))?;
    if !o.status.success() {
        bail!(
            "lode {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

// ------------------------------------------------------------------ dedup

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Push {
    label: String,
    tenant: String,
    name: String,
    chunks: u64,
    holes: u64,
    already: u64,
    uploaded: u64,
    bytes_uploaded: u64,
    secs: f64,
}

impl Push {
    fn data_chunks(&self) -> u64 {
        self.chunks - self.holes
    }
    fn new_pct(&self) -> f64 {
        self.uploaded as f64 * 100.0 / self.data_chunks().max(1) as f64
    }
}

fn num_after(s: &str, key: &str) -> Option<u64> {
    let rest = &s[s.find(key)? + key.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn push(ctx: &Ctx, label: &str, source: &str, tenant: &str, name: &str) -> Result<Push> {
    push_to(ctx, &ctx.store, &[], label, source, (tenant, name))
}

/// `lode push SOURCE` into `store` with the extra arguments `extra`.
fn push_to(
    ctx: &Ctx,
    store: &Path,
    extra: &[&str],
    label: &str,
    source: &str,
    (tenant, name): (&str, &str),
) -> Result<Push> {
    let t = Instant::now();
    let store = store.display().to_string();
    let mut args = vec![
        "push", source, "--tenant", tenant, "--name", name, "--store", &store,
    ];
    args.extend_from_slice(extra);
    let out = lode(ctx, &args)?;
    let secs = t.elapsed().as_secs_f64();
    let get = |k: &str| num_after(&out, k).ok_or_else(|| anyhow!("no '{k}' in push output: {out}"));
    Ok(Push {
        label: label.into(),
        tenant: tenant.into(),
        name: name.into(),
        chunks: get("chunks total")?,
        holes: get("holes")?,
        already: get("already stored")?,
        uploaded: get("/ uploaded")?,
        bytes_uploaded: get("bytes uploaded")?,
        secs,
    })
}

fn section_dedup(ctx: &Ctx, pushes: &mut Vec<Push>) -> Result<()> {
    let c = |i: &str| format!("oci:{}:latest", ctx.corpus.join(i).display());
    let mut plan: Vec<(String, String, String, String)> = Vec::new();
    for i in BASE_IMAGES {
        plan.push((i.into(), c(i), TENANT.into(), i.into()));
    }
    let docker = ctx.corpus.join("app-a.docker.tar");
    if docker.exists() {
        plan.push((
            "app-a again, as a docker-archive (a re-deploy)".into(),
            format!("docker-archive:{}", docker.display()),
            TENANT.into(),
            "app-a-docker".into(),
        ));
    }
    plan.push((
        "app-a by another tenant".into(),
        c("app-a"),
        "other".into(),
        "app-a".into(),
    ));
    // An empty store (a kept work directory may hold one from an earlier run).
    fresh(ctx.store.clone())?;
    for (label, src, tenant, name) in &plan {
        eprintln!("coldstart: push {label}");
        pushes.push(push(ctx, label, src, tenant, name)?);
    }
    Ok(())
}

fn report_dedup(out: &Path, md: &mut String, pushes: &[Push]) -> Result<()> {
    let _ = writeln!(md, "## 1. Dedup across the corpus\n");
    let _ = writeln!(
        md,
        "Every image pushed with `lode push` (flatten + chunk + encrypt + upload), in this order, into one empty `file://` store. \
         \"data chunks\" are the image's non-hole 512 KiB chunks; \"new\" are those the store did not hold yet (uploaded).\n"
    );
    let _ = writeln!(md, "| # | upload | tenant/name | chunks (image) | data chunks | already stored | new | % new | MiB uploaded | push s |");
    let _ = writeln!(
        md,
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (i, p) in pushes.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {}/{} | {} | {} | {} | {} | {:.1} % | {:.1} | {:.1} |",
            i + 1,
            p.label,
            p.tenant,
            p.name,
            p.chunks,
            p.data_chunks(),
            p.already,
            p.uploaded,
            p.new_pct(),
            mib(p.bytes_uploaded),
            p.secs
        );
    }
    let pct: Vec<f64> = pushes.iter().map(Push::new_pct).collect();
    let after: Vec<f64> = pct[1..].to_vec();
    let zero = pushes.iter().filter(|p| p.uploaded == 0).count();
    let nonzero_after: Vec<f64> = after.iter().copied().filter(|&p| p > 0.0).collect();
    let logical: u64 = pushes.iter().map(Push::data_chunks).sum();
    let physical: u64 = pushes.iter().map(|p| p.uploaded).sum();
    let _ = writeln!(md);
    let _ = writeln!(md, "| summary | value |\n| --- | ---: |");
    let _ = writeln!(
        md,
        "| uploads with zero new chunks | {zero} of {} ({:.0} %) |",
        pushes.len(),
        zero as f64 * 100.0 / pushes.len() as f64
    );
    let _ = writeln!(
        md,
        "| % new per upload, all uploads: mean / median | {:.1} % / {:.1} % |",
        mean(&pct),
        median(&pct)
    );
    let _ = writeln!(
        md,
        "| % new per upload after the first (the base): mean / median | {:.1} % / {:.1} % |",
        mean(&after),
        median(&after)
    );
    let _ = writeln!(
        md,
        "| % new, uploads after the first that had new chunks: mean / median | {:.1} % / {:.1} % |",
        mean(&nonzero_after),
        median(&nonzero_after)
    );
    let _ = writeln!(
        md,
        "| data chunks pushed (logical) / chunks stored (physical) | {logical} / {physical} = **{:.2}×** |",
        logical as f64 / physical.max(1) as f64
    );
    let _ = writeln!(md);
    let rows = pushes
        .iter()
        .enumerate()
        .map(|(i, p)| svg::Row {
            label: format!("{}. {}", i + 1, short(&p.label)),
            values: vec![Some(p.new_pct())],
            note: format!(
                "{} of {} new, {:.1} MiB",
                p.uploaded,
                p.data_chunks(),
                mib(p.bytes_uploaded)
            ),
            ..Default::default()
        })
        .collect();
    plot(
        out,
        md,
        "dedup",
        svg::Chart {
            title: "Share of each upload's chunks that are new to the store".into(),
            subtitle: format!(
                "corpus pushed in order into one store; logical/physical {:.2}×; {} of {} uploads add nothing",
                logical as f64 / physical.max(1) as f64,
                zero,
                pushes.len()
            ),
            axis: "% of the image's data chunks uploaded".into(),
            series: vec![svg::Series {
                name: "new chunks".into(),
                color: "#4c78a8",
            }],
            points_name: String::new(),
            tick_name: String::new(),
            rows,
            reference: None,
        },
    )
}

fn short(label: &str) -> String {
    label.split(" (").next().unwrap_or(label).to_string()
}

// ------------------------------------------------------------------ coldstart

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Run {
    image: String,
    variant: String,
    rep: usize,
    load1: f64,
    /// Server (agent / qemu-nbd / download) ready, ms after t0.
    ready_ms: f64,
    cmd_start_ms: f64,
    cmd_exit_ms: f64,
    store_chunks: u64,
    fleet_chunks: u64,
    disk_hits: u64,
    memory_hits: u64,
    rd_bytes: u64,
    rd_ops: u64,
}

const VARIANTS: [(&str, &str); 8] = [
    ("lazy-store", "lazy, from the store"),
    (
        "lazy-prefetch",
        "lazy, from the store, recorded working set prefetched",
    ),
    ("lazy-fleet", "lazy, through the warm cache fleet"),
    ("warm-disk", "warm host disk cache (new agent)"),
    ("hot-agent", "hot agent (working set in its memory cache)"),
    ("download-first", "download everything first, then boot"),
    ("qemu-nbd", "local raw file, qemu-nbd (floor)"),
    ("lode-run", "`lode run`, lazy from the store"),
];

fn variant_name(k: &str) -> &'static str {
    VARIANTS
        .iter()
        .find(|(a, _)| *a == k)
        .map(|(_, b)| *b)
        .unwrap_or("?")
}

/// Everything a cold-start variant needs that outlives one run.
struct Setup {
    image: String,
    raw: PathBuf,
    fleet: String,
    warm_cache: PathBuf,
    rec_store: PathBuf,
    hot: Agent,
    _nodes: Vec<Proc>,
}

fn finish_vm(vm: procs::Vm, run: &mut Run) -> Result<()> {
    let b = vm.finish()?;
    if b.status != 0 {
        bail!(
            "{} {}: the command exited with {}: {}",
            run.image,
            run.variant,
            b.status,
            b.output.join(" | ")
        );
    }
    run.cmd_start_ms = ms(b.cmd_start);
    run.cmd_exit_ms = ms(b.cmd_exit);
    run.rd_bytes = b.rd_bytes;
    run.rd_ops = b.rd_ops;
    Ok(())
}

fn agent_counts(m: &HashMap<String, f64>, run: &mut Run) {
    run.store_chunks = metric(m, "lode_tier_hits_total{tier=\"store\"}");
    run.fleet_chunks = metric(m, "lode_tier_hits_total{tier=\"fleet\"}");
    run.disk_hits = metric(m, "lode_tier_hits_total{tier=\"disk\"}");
    run.memory_hits = metric(m, "lode_tier_hits_total{tier=\"memory\"}");
}

/// One cold start of `variant`.
fn run_variant(ctx: &Ctx, s: &Setup, variant: &str, rep: usize) -> Result<Run> {
    let image = s.image.as_str();
    let exp = export(image);
    let mut run = Run {
        image: image.into(),
        variant: variant.into(),
        rep,
        load1: load1(),
        ..Default::default()
    };
    let name = ctx.next(variant);
    match variant {
        "lazy-store" | "lazy-prefetch" | "lazy-fleet" | "warm-disk" => {
            let cache = if variant == "warm-disk" {
                s.warm_cache.clone()
            } else {
                fresh(ctx.work.join(format!("cache-{name}")))?
            };
            let mut args = if variant == "lazy-prefetch" {
                vec![
                    "--store".to_string(),
                    s.rec_store.display().to_string(),
                    "--cache-dir".to_string(),
                    cache.display().to_string(),
                    "--prefetch".to_string(),
                    "recorded".to_string(),
                ]
            } else {
                ctx.store_args(&cache)
            };
            args.extend(ctx.inject());
            if variant == "lazy-fleet" {
                args.extend(["--cache-nodes".to_string(), s.fleet.clone()]);
            }
            let t0 = Instant::now();
            let agent = Agent::start(&ctx.lode, &ctx.work, &name, &args)?;
            run.ready_ms = ms(t0.elapsed());
            let disk = NbdDisk {
                socket: &agent.sock,
                export: &exp,
            };
            let vm = ctx.vm(image, &disk, ctx.vm_mem, &name, t0)?;
            finish_vm(vm, &mut run)?;
            agent_counts(&agent.metrics()?, &mut run);
            drop(agent);
            if variant != "warm-disk" {
                let _ = std::fs::remove_dir_all(&cache);
            }
        }
        "hot-agent" => {
            let before = s.hot.metrics()?;
            let t0 = Instant::now();
            let disk = NbdDisk {
                socket: &s.hot.sock,
                export: &exp,
            };
            let vm = ctx.vm(image, &disk, ctx.vm_mem, &name, t0)?;
            finish_vm(vm, &mut run)?;
            let after = s.hot.metrics()?;
            let mut b = Run::default();
            agent_counts(&before, &mut b);
            agent_counts(&after, &mut run);
            run.store_chunks -= b.store_chunks;
            run.fleet_chunks -= b.fleet_chunks;
            run.disk_hits -= b.disk_hits;
            run.memory_hits -= b.memory_hits;
        }
        "download-first" | "qemu-nbd" => {
            let t0 = Instant::now();
            let raw = if variant == "download-first" {
                let p = ctx.work.join(format!("{name}.raw"));
                let (chunks, _) = download(ctx, image, &p)?;
                run.store_chunks = chunks;
                p
            } else {
                s.raw.clone()
            };
            let (nbd, sock) = procs::qemu_nbd(&ctx.work, &name, &raw, &exp)?;
            run.ready_ms = ms(t0.elapsed());
            let disk = NbdDisk {
                socket: &sock,
                export: &exp,
            };
            let vm = ctx.vm(image, &disk, ctx.vm_mem, &name, t0)?;
            finish_vm(vm, &mut run)?;
            drop(nbd);
            if variant == "download-first" {
                let _ = std::fs::remove_file(&raw);
            }
        }
        "lode-run" => lode_run(ctx, image, &name, &mut run)?,
        _ => bail!("unknown variant {variant}"),
    }
    Ok(run)
}

/// "Download everything first": every stored chunk of the image through the
/// same slowed store tier the agents use (`Delayed`: latency per GET, one
/// shared link), 16 in flight, checked, decrypted and verified (lode's
/// `ChunkReader`), written into a local raw file. Returns (chunks, bytes).
fn download(ctx: &Ctx, image: &str, out: &Path) -> Result<(u64, u64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Store::open(&ctx.store.display().to_string())?;
        let keys = Keyring::new(ctx.home.join("keys"));
        let opened = open_image(&store, &keys, TENANT, image).await?;
        let tier: Arc<dyn ChunkTier> = Arc::new(Delayed::new(
            store.clone(),
            Duration::from_secs_f64(ctx.latency_ms / 1e3),
            Some(ctx.bandwidth),
        ));
        let reader = Arc::new(ChunkReader::new(0, None, vec![tier]));
        let handle = Arc::new(ImageHandle::new(export(image), opened, reader.clone()));
        let file = Arc::new(std::fs::File::create(out)?);
        file.set_len(handle.size())?;
        // Indices by chunk name: a chunk that repeats is fetched once.
        let mut by_name: BTreeMap<[u8; 32], Vec<u64>> = BTreeMap::new();
        for (i, n) in handle.image.manifest.names.iter().enumerate() {
            if let Some(n) = n {
                by_name.entry(n.0).or_default().push(i as u64);
            }
        }
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut set = tokio::task::JoinSet::new();
        for idx in by_name.into_values() {
            let (h, f, sem) = (handle.clone(), file.clone(), sem.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let pt = h.chunk(idx[0]).await?;
                for i in idx {
                    f.write_all_at(&pt, i * h.chunk_size())?;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok(reader.fetched_from(0))
    })
}

fn after_ms(line: &str, key: &str) -> f64 {
    line.split(key)
        .nth(1)
        .and_then(|r| r.trim_start().split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn lode_run(ctx: &Ctx, image: &str, name: &str, run: &mut Run) -> Result<()> {
    let cache = fresh(ctx.work.join(format!("cache-{name}")))?;
    let mut args: Vec<String> = vec!["run".into(), image.into(), "--tenant".into(), TENANT.into()];
    args.extend(ctx.store_args(&cache));
    args.extend(ctx.inject());
    args.extend([
        "--memory".into(),
        ctx.vm_mem.to_string(),
        "--vm-dir".into(),
        ctx.kernel
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        "--timeout".into(),
        ctx.timeout.as_secs().to_string(),
        "--".into(),
    ]);
    args.extend(image_cmd(image));
    let o = Command::new(&ctx.lode)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .context("running lode run")?;
    let _ = std::fs::remove_dir_all(&cache);
    let err = String::from_utf8_lossy(&o.stderr);
    let Some(line) = err.lines().find(|l| l.starts_with("lode run: agent ready")) else {
        bail!("lode run failed: {}", err.trim());
    };
    if !o.status.success() {
        bail!("lode run: command failed: {line}");
    }
    run.ready_ms = after_ms(line, "agent ready");
    run.cmd_start_ms = after_ms(line, "CMD started");
    run.cmd_exit_ms = after_ms(line, "CMD exited");
    let tiers = line.split("chunks by tier:").nth(1).unwrap_or("");
    for part in tiers.split(',') {
        let mut w = part.split_whitespace();
        let v: Vec<&str> = w.by_ref().collect();
        let n = v.last().and_then(|x| x.parse().ok()).unwrap_or(0);
        match v.first().copied() {
            Some("store") => run.store_chunks = n,
            Some("memory") => run.memory_hits = n,
            Some("local") => run.disk_hits = n,
            _ => {}
        }
    }
    Ok(())
}

fn setup_coldstart(ctx: &Ctx, image: &str) -> Result<Setup> {
    eprintln!("coldstart: setting up {image} (raw copy, cache fleet, warm-ups)");
    let raw = raw_image(ctx, image)?;
    let exp = export(image);
    // Warm the page cache for the kernel, initramfs and raw file.
    {
        let t0 = Instant::now();
        let (nbd, sock) = procs::qemu_nbd(&ctx.work, &ctx.next("warmup-nbd"), &raw, &exp)?;
        let d = NbdDisk {
            socket: &sock,
            export: &exp,
        };
        ctx.vm(image, &d, ctx.vm_mem, &ctx.next("warmup-nbd"), t0)?
            .finish()?;
        drop(nbd);
    }
    let (nodes, fleet) = procs::fleet(&ctx.lode, &ctx.work, 5, "512M")?;
    // Fill the fleet with one lazy start through it; its cache dir becomes
    // the warm host disk cache.
    let warm_cache = fresh(ctx.work.join(format!("warm-cache-{image}")))?;
    {
        let mut args = ctx.store_args(&warm_cache);
        args.extend(["--cache-nodes".to_string(), fleet.clone()]);
        boot_and_fill(ctx, image, &ctx.next("warmup-fleet"), &args)?;
    }
    // A hard-linked copy of the store that also holds the image's recorded
    // start-up working set (recorded by one start with `--record`), so that
    // only the prefetch variant sees it (`lode run` prefetches any recorded set).
    let rec_store = fresh(ctx.work.join(format!("store-rec-{image}")))?;
    let st = Command::new("cp")
        .arg("-al")
        .arg(&ctx.store)
        .arg(&rec_store)
        .status()?;
    if !st.success() {
        bail!("cp -al of the store failed");
    }
    {
        let name = ctx.next("record");
        let cache = fresh(ctx.work.join(format!("cache-{name}")))?;
        let mut args = vec![
            "--store".to_string(),
            rec_store.display().to_string(),
            "--cache-dir".to_string(),
            cache.display().to_string(),
            "--record".to_string(),
        ];
        args.extend(["--prefetch".to_string(), "none".to_string()]);
        let a = Agent::start(&ctx.lode, &ctx.work, &name, &args)?;
        let d = NbdDisk {
            socket: &a.sock,
            export: &exp,
        };
        ctx.vm(image, &d, ctx.vm_mem, &name, Instant::now())?
            .finish()?;
        // Written when the VM's connection ends.
        let ws = rec_store.join(format!("tenants/{TENANT}/workingsets"));
        procs::wait_until(Duration::from_secs(60), "the recorded working set", || {
            std::fs::read_dir(&ws).is_ok_and(|mut d| d.next().is_some())
        })?;
        drop(a);
        let _ = std::fs::remove_dir_all(&cache);
    }
    let hot_cache = fresh(ctx.work.join(format!("hot-cache-{image}")))?;
    let name = ctx.next("hot");
    // A memory cache that holds the whole working set.
    let mut args = ctx.store_args(&hot_cache);
    args.extend(["--memory-cache".to_string(), "2G".to_string()]);
    let hot = Agent::start(&ctx.lode, &ctx.work, &name, &args)?;
    {
        let d = NbdDisk {
            socket: &hot.sock,
            export: &exp,
        };
        ctx.vm(image, &d, ctx.vm_mem, &name, Instant::now())?
            .finish()?;
    }
    Ok(Setup {
        image: image.into(),
        raw,
        fleet,
        warm_cache,
        rec_store,
        hot,
        _nodes: nodes,
    })
}

fn section_coldstart(ctx: &Ctx, all: &mut Vec<Run>) -> Result<()> {
    for image in &ctx.cold_images {
        let s = ctx.retry(&format!("{image} set-up"), || setup_coldstart(ctx, image))?;
        let mut runs: Vec<Run> = Vec::new();
        for rep in 0..ctx.reps {
            // Rotate the order every round so no variant always goes first.
            let n = VARIANTS.len();
            for k in 0..n {
                let v = VARIANTS[(k + rep * 3) % n].0;
                eprintln!("coldstart: {image} round {} {v}", rep + 1);
                let r = ctx.retry(&format!("{image} {v} round {}", rep + 1), || {
                    run_variant(ctx, &s, v, rep + 1)
                })?;
                eprintln!(
                    "coldstart:   CMD exited at {:.0} ms, store chunks {}, fleet {}, guest read {:.1} MiB",
                    r.cmd_exit_ms,
                    r.store_chunks,
                    r.fleet_chunks,
                    mib(r.rd_bytes)
                );
                runs.push(r);
            }
        }
        all.extend(runs);
    }
    Ok(())
}

fn report_coldstart(
    p: &Params,
    out: &Path,
    md: &mut String,
    image: &str,
    runs: &[Run],
) -> Result<()> {
    let cmd = cmd_text(image);
    let _ = writeln!(
        md,
        "### Image `{image}`, command `{cmd}`\n\n\
         Every run is a new VM (QEMU microvm, TCG, 1 vCPU, {} MiB) booting the image and running the command. \
         Time is measured from the variant's first action (starting the agent, the download or qemu-nbd) to the guest printing \
         `LODE-CMD-EXIT`. Store tier: {} ms per GET and one {} MB/s link (lode's `Delayed` tier). {} rounds; in each round every \
         variant runs once, in an order rotated between rounds.\n",
        p.vm_mem,
        p.latency_ms,
        p.bandwidth / 1_000_000,
        p.reps
    );
    let _ = writeln!(md, "| round | variant | load (1 min) | server ready ms | CMD started ms | **CMD exited ms** | chunks: store / fleet / disk / memory | guest read MiB (requests) |");
    let _ = writeln!(
        md,
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |"
    );
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.0} | {:.0} | **{:.0}** | {} / {} / {} / {} | {} |",
            r.rep,
            variant_name(&r.variant),
            r.load1,
            r.ready_ms,
            r.cmd_start_ms,
            r.cmd_exit_ms,
            r.store_chunks,
            r.fleet_chunks,
            r.disk_hits,
            r.memory_hits,
            if r.variant == "lode-run" {
                "–".to_string()
            } else {
                format!("{:.1} ({})", mib(r.rd_bytes), r.rd_ops)
            }
        );
    }
    let by = |v: &str| -> Vec<&Run> { runs.iter().filter(|r| r.variant == v).collect() };
    let floor: Vec<&Run> = by("qemu-nbd");
    let floor_med = median(&floor.iter().map(|r| r.cmd_exit_ms).collect::<Vec<_>>());
    let _ = writeln!(md);
    let _ = writeln!(md, "| variant | median CMD exited ms | min – max ms | median CMD started ms | ÷ floor (ratio of medians) | ÷ floor, per round (min – max) |");
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut rows = Vec::new();
    for (k, label) in VARIANTS {
        let rs = by(k);
        if rs.is_empty() {
            continue;
        }
        let t: Vec<f64> = rs.iter().map(|r| r.cmd_exit_ms).collect();
        let st: Vec<f64> = rs.iter().map(|r| r.cmd_start_ms).collect();
        let med = median(&t);
        let per_round: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                floor
                    .iter()
                    .find(|f| f.rep == r.rep)
                    .map(|f| r.cmd_exit_ms / f.cmd_exit_ms)
            })
            .collect();
        let (lo, hi) = (
            t.iter().copied().fold(f64::INFINITY, f64::min),
            t.iter().copied().fold(0.0, f64::max),
        );
        let (plo, phi) = (
            per_round.iter().copied().fold(f64::INFINITY, f64::min),
            per_round.iter().copied().fold(0.0, f64::max),
        );
        let _ = writeln!(
            md,
            "| {label} | **{med:.0}** | {lo:.0} – {hi:.0} | {:.0} | **{:.2}×** | {plo:.2} – {phi:.2} |",
            median(&st),
            med / floor_med
        );
        rows.push(svg::Row {
            label: label.replace('`', ""),
            values: vec![Some(median(&st) / 1e3), Some(med / 1e3)],
            points: t.iter().map(|x| x / 1e3).collect(),
            note: format!("{:.2} s, {:.2}× floor", med / 1e3, med / floor_med),
            overlay: true,
            ..Default::default()
        });
    }
    let _ = writeln!(md);
    plot(
        out,
        md,
        &format!("coldstart-{image}"),
        svg::Chart {
            title: format!("Micro-VM cold start to CMD exit, image {image}"),
            subtitle: format!(
                "{cmd}; QEMU TCG, store {} ms/GET + {} MB/s; {} rounds interleaved; shared 2-vCPU host",
                p.latency_ms,
                p.bandwidth / 1_000_000,
                p.reps
            ),
            axis: "seconds from start to CMD exit".into(),
            series: vec![
                svg::Series {
                    name: "median to CMD start (boot + mount)".into(),
                    color: "#9ecae9",
                },
                svg::Series {
                    name: "median to CMD exit".into(),
                    color: "#4c78a8",
                },
            ],
            points_name: "each run (CMD exit)".into(),
            tick_name: String::new(),
            rows,
            reference: None,
        },
    )
}

// ------------------------------------------------------------------ bytes

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Startup {
    image: String,
    image_size: u64,
    data_chunks: u64,
    fetched_chunks: u64,
    fetched_bytes: u64,
    rd_bytes: u64,
    rd_ops: u64,
    cmd_exit_ms: f64,
}

fn inspect(ctx: &Ctx, image: &str) -> Result<serde_json::Value> {
    inspect_in(ctx, &ctx.store, image)
}

/// `lode inspect --json` of `image` in `store`.
fn inspect_in(ctx: &Ctx, store: &Path, image: &str) -> Result<serde_json::Value> {
    let store = store.display().to_string();
    let out = lode(
        ctx,
        &[
            "inspect", image, "--tenant", TENANT, "--store", &store, "--json",
        ],
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// One start of `image` on a new agent with an empty cache.
fn startup_bytes(ctx: &Ctx, image: &str, info: &serde_json::Value) -> Result<Startup> {
    let name = ctx.next(&format!("bytes-{image}"));
    let cache = fresh(ctx.work.join(format!("cache-{name}")))?;
    let t0 = Instant::now();
    let agent = Agent::start(&ctx.lode, &ctx.work, &name, &ctx.store_args(&cache))?;
    let exp = export(image);
    let d = NbdDisk {
        socket: &agent.sock,
        export: &exp,
    };
    let b = ctx.vm(image, &d, ctx.vm_mem, &name, t0)?.finish()?;
    if b.status != 0 {
        bail!(
            "{image}: command exited {}: {}",
            b.status,
            b.output.join(" | ")
        );
    }
    let m = agent.metrics()?;
    drop(agent);
    let _ = std::fs::remove_dir_all(&cache);
    let g = |k: &str| info[k].as_u64().unwrap_or(0);
    Ok(Startup {
        image: image.into(),
        image_size: g("image_size"),
        data_chunks: g("chunks") - g("holes"),
        fetched_chunks: metric(&m, "lode_tier_hits_total{tier=\"store\"}"),
        fetched_bytes: metric(&m, "lode_tier_bytes_total{tier=\"store\"}"),
        rd_bytes: b.rd_bytes,
        rd_ops: b.rd_ops,
        cmd_exit_ms: ms(b.cmd_exit),
    })
}

fn section_bytes(ctx: &Ctx, all: &mut Vec<Startup>) -> Result<()> {
    for image in &ctx.bytes_images {
        let image = image.as_str();
        eprintln!("coldstart: start-up bytes of {image}");
        let info = inspect(ctx, image)?;
        let st = ctx.retry(&format!("start-up bytes of {image}"), || {
            startup_bytes(ctx, image, &info)
        })?;
        all.push(st);
    }
    Ok(())
}

fn report_bytes(p: &Params, out: &Path, md: &mut String, all: &[Startup]) -> Result<()> {
    let _ = writeln!(md, "## 3. Bytes read at start-up\n");
    let _ = writeln!(
        md,
        "One start per image: a new agent with an empty cache (no injected latency), one VM ({} MiB), the image's command. \
         *Fetched* = chunks the agent fetched from the store × 512 KiB (the agent's `lode_tier_hits_total{{tier=\"store\"}}`); \
         *guest read* = bytes the guest's virtio-blk disk read (QEMU's `query-blockstats`). *Data* = the image's non-hole chunks \
         × 512 KiB (what is stored; the ext4 image itself is larger, its free space is holes). Slacker measured 6.4 %.\n",
        p.vm_mem
    );
    let _ = writeln!(md, "| image | command | image size MiB | data MiB | chunks fetched | fetched MiB | fetched / image | fetched / data | guest read MiB (requests) | guest read / data | CMD exited ms |");
    let _ = writeln!(
        md,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut rows = Vec::new();
    for s in all.iter() {
        let data = s.data_chunks * CHUNK;
        let fetched = s.fetched_chunks * CHUNK;
        let _ = writeln!(
            md,
            "| {} | `{}` | {:.0} | {:.1} | {} | {:.1} | {:.2} % | **{:.1} %** | {:.1} ({}) | {:.1} % | {:.0} |",
            s.image,
            cmd_text(&s.image),
            mib(s.image_size),
            mib(data),
            s.fetched_chunks,
            mib(fetched),
            fetched as f64 * 100.0 / s.image_size as f64,
            fetched as f64 * 100.0 / data as f64,
            mib(s.rd_bytes),
            s.rd_ops,
            s.rd_bytes as f64 * 100.0 / data as f64,
            s.cmd_exit_ms
        );
        rows.push(svg::Row {
            label: format!("{} ({:.0} MiB data)", s.image, mib(data)),
            values: vec![
                Some(fetched as f64 * 100.0 / data as f64),
                Some(s.rd_bytes as f64 * 100.0 / data as f64),
            ],
            note: format!("{:.1} of {:.0} MiB fetched", mib(fetched), mib(data)),
            ..Default::default()
        });
    }
    let _ = writeln!(md);
    plot(
        out,
        md,
        "startup-bytes",
        svg::Chart {
            title: "Bytes needed to start, as a share of the image's data".into(),
            subtitle: "one VM start per image, empty cache; Slacker measured 6.4 %".into(),
            axis: "% of the image's data (non-hole chunks)".into(),
            series: vec![
                svg::Series {
                    name: "fetched (whole 512 KiB chunks)".into(),
                    color: "#4c78a8",
                },
                svg::Series {
                    name: "read by the guest".into(),
                    color: "#f58518",
                },
            ],
            points_name: String::new(),
            tick_name: String::new(),
            rows,
            reference: Some((6.4, "Slacker 6.4 %".into())),
        },
    )
}

// ------------------------------------------------------------------ concurrent

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Conc {
    n: usize,
    rep: usize,
    /// "lode" (one agent, cold) or "qemu-nbd" (local raw file, the floor).
    server: String,
    load1: f64,
    exits_ms: Vec<f64>,
    starts_ms: Vec<f64>,
    store_fetches: u64,
    distinct_chunks: u64,
    memory_misses: u64,
    memory_hits: u64,
    rd_bytes: u64,
}

/// The `lode pull` copy of `image` (pulled once per benchmark run).
fn raw_image(ctx: &Ctx, image: &str) -> Result<PathBuf> {
    let raw = ctx.work.join(format!("{image}.raw"));
    if ctx.pulled.borrow_mut().insert(image.to_string()) {
        let store = ctx.store.display().to_string();
        let rawp = raw.display().to_string();
        lode(
            ctx,
            &[
                "pull", image, "--tenant", TENANT, "--store", &store, "-o", &rawp,
            ],
        )?;
    }
    Ok(raw)
}

/// N VMs at once on one server; `lode`: a new agent with an empty cache.
fn concurrent_run(ctx: &Ctx, image: &str, n: usize, rep: usize, server: &str) -> Result<Conc> {
    let exp = export(image);
    let name = ctx.next(&format!("conc{n}-{server}"));
    let cache = fresh(ctx.work.join(format!("cache-{name}")))?;
    let (agent, nbd) = if server == "lode" {
        let mut args = ctx.store_args(&cache);
        args.extend(ctx.inject());
        (
            Some(Agent::start(&ctx.lode, &ctx.work, &name, &args)?),
            None,
        )
    } else {
        let raw = raw_image(ctx, image)?;
        (None, Some(procs::qemu_nbd(&ctx.work, &name, &raw, &exp)?))
    };
    let sock = match (&agent, &nbd) {
        (Some(a), _) => a.sock.clone(),
        (_, Some((_, s))) => s.clone(),
        _ => bail!("no server"),
    };
    let mut c = Conc {
        n,
        rep,
        server: server.into(),
        load1: load1(),
        exits_ms: Vec::new(),
        starts_ms: Vec::new(),
        store_fetches: 0,
        distinct_chunks: 0,
        memory_misses: 0,
        memory_hits: 0,
        rd_bytes: 0,
    };
    let d = NbdDisk {
        socket: &sock,
        export: &exp,
    };
    let t0 = Instant::now();
    let mut vms = Vec::new();
    for i in 0..n {
        vms.push(ctx.vm(image, &d, ctx.conc_mem, &format!("{name}-vm{i}"), t0)?);
    }
    for vm in vms {
        let b = vm.finish()?;
        if b.status != 0 {
            bail!("{n} VMs on {server}: a command exited {}", b.status);
        }
        c.exits_ms.push(ms(b.cmd_exit));
        c.starts_ms.push(ms(b.cmd_start));
        c.rd_bytes += b.rd_bytes;
    }
    if let Some(agent) = &agent {
        let m = agent.metrics()?;
        c.store_fetches = metric(&m, "lode_tier_hits_total{tier=\"store\"}");
        c.distinct_chunks = metric(&m, "lode_cache_chunks{tier=\"disk\"}");
        c.memory_misses = metric(&m, "lode_tier_misses_total{tier=\"memory\"}");
        c.memory_hits = metric(&m, "lode_tier_hits_total{tier=\"memory\"}");
    }
    drop(agent);
    drop(nbd);
    let _ = std::fs::remove_dir_all(&cache);
    eprintln!(
        "coldstart:   p50 {:.0} ms, max {:.0} ms, {} store fetches for {} chunks",
        median(&c.exits_ms),
        max_of(&c.exits_ms),
        c.store_fetches,
        c.distinct_chunks
    );
    Ok(c)
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn min_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn section_concurrent(ctx: &Ctx, all: &mut Vec<Conc>) -> Result<()> {
    let image = "python";
    for rep in 1..=ctx.conc_reps {
        for &n in &ctx.conc {
            // Alternate which server goes first.
            let order = if rep % 2 == 1 {
                ["lode", "qemu-nbd"]
            } else {
                ["qemu-nbd", "lode"]
            };
            for server in order {
                eprintln!("coldstart: {n} VMs at once on {server} (round {rep})");
                all.push(ctx.retry(&format!("{n} VMs on {server} round {rep}"), || {
                    concurrent_run(ctx, image, n, rep, server)
                })?);
            }
        }
    }
    Ok(())
}

fn report_concurrent(p: &Params, out: &Path, md: &mut String, all: &[Conc]) -> Result<()> {
    let image = "python";
    let _ = writeln!(
        md,
        "## 4. Concurrent cold starts of one image on one host\n"
    );
    let _ = writeln!(
        md,
        "N VMs ({} MiB, 1 vCPU each, TCG) started at once (spawned back to back) on image `{image}` (`{}`), all attached to ONE new \
         `lode agent` with an empty host cache, store behind {} ms per GET and one {} MB/s link; for comparison the same N VMs on \
         the local raw file behind one `qemu-nbd` (no fetching at all). Times from the moment the first VM is spawned to each \
         guest's `LODE-CMD-EXIT`. *Store fetches* is the agent's store-tier counter (`lode_tier_hits_total{{tier=\"store\"}}`), \
         *distinct chunks* the chunks in its disk cache afterwards (`lode_cache_chunks{{tier=\"disk\"}}`: every fetched chunk is \
         written there once), *memory-cache misses* the chunk lookups that found no plaintext in memory, i.e. the demand that \
         single-flight coalesced into the store fetches. On this 2-vCPU host N TCG guests share 2 cores, so per-VM time grows \
         with N through CPU contention; the qemu-nbd rows show how much.\n",
        p.conc_mem,
        cmd_text(image),
        p.latency_ms,
        p.bandwidth / 1_000_000
    );
    let _ = writeln!(md, "| N VMs | round | server | load (1 min) | CMD exited p50 ms | max ms | min ms | CMD started p50 ms | store fetches | distinct chunks | **fetches per chunk** | memory-cache misses | guest read MiB (all VMs) |");
    let _ = writeln!(md, "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut rows = Vec::new();
    for c in all.iter() {
        let lode = c.server == "lode";
        let per = c.store_fetches as f64 / c.distinct_chunks.max(1) as f64;
        let _ =
            writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {:.1} |",
            c.n,
            c.rep,
            if lode { "lode agent, cold" } else { "qemu-nbd, raw file" },
            c.load1,
            median(&c.exits_ms),
            max_of(&c.exits_ms),
            min_of(&c.exits_ms),
            median(&c.starts_ms),
            if lode { c.store_fetches.to_string() } else { "–".into() },
            if lode { c.distinct_chunks.to_string() } else { "–".into() },
            if lode { format!("**{per:.2}**") } else { "–".into() },
            if lode { c.memory_misses.to_string() } else { "–".into() },
            mib(c.rd_bytes)
        );
        rows.push(svg::Row {
            label: format!(
                "{} VM{}, {}{}",
                c.n,
                if c.n == 1 { "" } else { "s" },
                if lode { "lode" } else { "qemu-nbd" },
                if p.conc_reps > 1 {
                    format!(" (round {})", c.rep)
                } else {
                    String::new()
                }
            ),
            values: vec![
                lode.then(|| median(&c.exits_ms) / 1e3),
                (!lode).then(|| median(&c.exits_ms) / 1e3),
            ],
            points: c.exits_ms.iter().map(|x| x / 1e3).collect(),
            tick: Some(max_of(&c.exits_ms) / 1e3),
            note: if lode {
                format!(
                    "{} fetches / {} chunks = {:.2}",
                    c.store_fetches, c.distinct_chunks, per
                )
            } else {
                "no fetches (local file)".into()
            },
            overlay: true,
        });
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "| N VMs | lode: p50 / max ms (median over rounds) | qemu-nbd: p50 / max ms | lode ÷ qemu-nbd (p50) | store fetches per chunk (all rounds) |");
    let _ = writeln!(md, "| ---: | ---: | ---: | ---: | ---: |");
    for &n in &p.conc {
        let pick = |srv: &str| -> (Vec<f64>, Vec<f64>, Vec<f64>) {
            let rs: Vec<&Conc> = all.iter().filter(|c| c.n == n && c.server == srv).collect();
            (
                rs.iter().map(|c| median(&c.exits_ms)).collect(),
                rs.iter().map(|c| max_of(&c.exits_ms)).collect(),
                rs.iter()
                    .map(|c| c.store_fetches as f64 / c.distinct_chunks.max(1) as f64)
                    .collect(),
            )
        };
        let (lp, lm, lf) = pick("lode");
        let (qp, qm, _) = pick("qemu-nbd");
        let _ = writeln!(
            md,
            "| {n} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2}× | {} |",
            median(&lp),
            median(&lm),
            median(&qp),
            median(&qm),
            median(&lp) / median(&qp),
            lf.iter()
                .map(|f| format!("{f:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(md);
    plot(
        out,
        md,
        "concurrent",
        svg::Chart {
            title: format!("N micro-VMs cold-starting {image} at once on one host"),
            subtitle: format!(
                "2 shared vCPUs, TCG, {} MiB per VM; lode: one cold agent, store {} ms/GET; right: store fetches per distinct chunk",
                p.conc_mem, p.latency_ms
            ),
            axis: "seconds from spawn to CMD exit".into(),
            series: vec![
                svg::Series {
                    name: "p50, lode agent (cold)".into(),
                    color: "#54a24b",
                },
                svg::Series {
                    name: "p50, qemu-nbd on a local file".into(),
                    color: "#bab0ac",
                },
            ],
            points_name: "each VM".into(),
            tick_name: "max".into(),
            rows,
            reference: None,
        },
    )
}

// ------------------------------------------------------------------ output

fn plot(out: &Path, md: &mut String, name: &str, chart: svg::Chart) -> Result<()> {
    let dir = out.join("img");
    std::fs::create_dir_all(&dir)?;
    let file = format!("coldstart-{}.svg", name.trim_start_matches("coldstart-"));
    std::fs::write(dir.join(&file), svg::render(&chart))?;
    let _ = writeln!(md, "![{}](img/{file})\n", chart.title);
    Ok(())
}

fn machine(ctx: &Ctx) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| num_after(l, "MemTotal:")))
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    let rev = sh(
        "git",
        &[
            "-C",
            &ctx.repo.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !sh(
        "git",
        &[
            "-C",
            &ctx.repo.display().to_string(),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty();
    format!(
        "- {} × {cpu}, {:.0} GiB RAM, Linux {}, {os}; no usable KVM (guests run under TCG)\n\
         - {}\n\
         - lode {rev}{}; REPS={}, store tier {} ms per GET + {} B/s shared link\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem as f64 / 1048576.0,
        sh("uname", &["-r"]),
        sh("qemu-system-x86_64", &["--version"])
            .lines()
            .next()
            .unwrap_or(""),
        if dirty {
            " (+ uncommitted changes)"
        } else {
            ""
        },
        ctx.reps,
        ctx.latency_ms,
        ctx.bandwidth
    )
}

fn find_vm_assets(lode: &Path) -> Result<PathBuf> {
    let dir = match std::env::var_os("LODE_VM_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("LODE_HOME")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/lode"))
                })
                .ok_or_else(|| anyhow!("set LODE_VM_DIR or HOME"))?;
            home.join("vm")
        }
    };
    if lode_vm::Assets::find(&dir).is_none() {
        eprintln!("coldstart: preparing the guest kernel in {}", dir.display());
        let s = Command::new(lode)
            .args(["vm", "prepare", "--dir"])
            .arg(&dir)
            .status()?;
        if !s.success() {
            bail!("lode vm prepare failed");
        }
    }
    Ok(dir)
}

fn main() -> Result<()> {
    // `cargo test --benches` runs this without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("coldstart: run with `cargo bench -p lode-cli --bench coldstart`");
        return Ok(());
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()?;
    if let Some(saved) = std::env::var_os("REPLOT") {
        // `cargo bench` runs this in crates/lode-cli: a relative path is the
        // workspace's.
        let saved = repo.join(saved);
        // Only the report and the plots, from a saved runs.json.
        let res: Results = serde_json::from_slice(
            &std::fs::read(&saved).with_context(|| format!("reading {saved:?}"))?,
        )?;
        let out = std::env::var_os("BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target/bench-coldstart"));
        std::fs::create_dir_all(&out)?;
        println!("{}", render(&res, &out)?);
        return Ok(());
    }
    let lode = PathBuf::from(env!("CARGO_BIN_EXE_lode"));
    let corpus = std::env::var_os("LODE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/corpus"));
    let list = |k: &str, d: &str| -> Vec<String> {
        env_str(k, d)
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let sections = list("SECTIONS", "dedup,coldstart,bytes,concurrent");
    let codec_images = list("CODEC_IMAGES", "python,app-c");
    // Sections 1-4 share the store of the five base images.
    let uses_store = sections.iter().any(|s| s != "codec");
    let mut needed: Vec<&str> = Vec::new();
    if uses_store {
        needed.extend(BASE_IMAGES);
    }
    if sections.iter().any(|s| s == "codec") {
        needed.extend(codec_images.iter().map(String::as_str));
    }
    for i in needed {
        if !corpus.join(i).join("index.json").exists() {
            bail!(
                "corpus image {i} missing in {}: run `sudo scripts/corpus.sh` first",
                corpus.display()
            );
        }
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
        || Command::new("qemu-nbd").arg("--version").output().is_err()
    {
        bail!("needs qemu-system-x86_64 and qemu-nbd: run `sudo scripts/vm-deps.sh`");
    }
    let vm_dir = find_vm_assets(&lode)?;
    let assets = lode_vm::Assets::find(&vm_dir).ok_or_else(|| anyhow!("no VM assets"))?;
    let (work, _tmp) = match std::env::var_os("BENCH_WORKDIR") {
        Some(w) => {
            std::fs::create_dir_all(&w)?;
            (PathBuf::from(w).canonicalize()?, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("lode-coldstart-")
                .tempdir_in("/var/tmp")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    procs::install_signal_handler(_tmp.as_ref().map(|t| t.path().to_path_buf()))?;
    let home = work.join("home");
    std::fs::create_dir_all(&home)?;
    // Every lode process (and the in-process download) uses this LODE_HOME.
    std::env::set_var("LODE_HOME", &home);
    std::env::set_var("NO_COLOR", "1");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/bench-coldstart"));
    std::fs::create_dir_all(&out)?;
    let ctx = Ctx {
        lode,
        repo,
        corpus,
        store: work.join("store"),
        out,
        home,
        kernel: assets.kernel.clone(),
        base_initrd: std::fs::read(&assets.initrd)?,
        reps: env_or("REPS", 3usize).max(1),
        latency_ms: env_or("LATENCY_MS", 20.0),
        bandwidth: env_or("BANDWIDTH", 100_000_000u64),
        vm_mem: env_or("VM_MEMORY", 256u32),
        conc_mem: env_or("CONC_MEMORY", 128u32),
        conc: list("CONCURRENCY", "1,4,16")
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
        conc_reps: env_or("CONC_REPS", 2usize).max(1),
        timeout: Duration::from_secs(env_or("VM_TIMEOUT", 600u64)),
        sections,
        cold_images: list("COLDSTART_IMAGES", "python,big"),
        bytes_images: list("BYTES_IMAGES", "debian,python,app-a,app-b,big"),
        codec_images,
        work,
        seq: Default::default(),
        initrds: Default::default(),
        pulled: Default::default(),
        failures: Default::default(),
    };
    let started = Instant::now();
    let load_start = loadavg();
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let mut res = Results {
        params: Some(ctx.params()),
        sections: ctx.sections.clone(),
        ..Default::default()
    };
    let result = (|| -> Result<()> {
        if ctx.section("dedup") {
            section_dedup(&ctx, &mut res.pushes)?;
        } else if uses_store {
            for i in BASE_IMAGES {
                let src = format!("oci:{}:latest", ctx.corpus.join(i).display());
                push(&ctx, i, &src, TENANT, i)?;
            }
        }
        if ctx.section("coldstart") {
            section_coldstart(&ctx, &mut res.coldstart)?;
        }
        if ctx.section("bytes") {
            section_bytes(&ctx, &mut res.startup)?;
        }
        if ctx.section("concurrent") {
            section_concurrent(&ctx, &mut res.concurrent)?;
        }
        if ctx.section("codec") {
            codec::section_codec(&ctx, &mut res.codec_stores, &mut res.codec)?;
        }
        Ok(())
    })();
    procs::kill_all();
    let mut head = String::new();
    let _ = writeln!(head, "# lode cold-start benchmark ({date})\n");
    let _ = writeln!(
        head,
        "```sh\ncargo bench -p lode-cli --bench coldstart\n```\n"
    );
    head.push_str(&machine(&ctx));
    let _ = writeln!(
        head,
        "- load average at start {load_start}, at end {}; total time {:.0} s\n",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    res.header = head;
    res.failures = ctx.failures.borrow().clone();
    std::fs::write(
        ctx.out.join("runs.json"),
        serde_json::to_string_pretty(&res)?,
    )?;
    let report = render(&res, &ctx.out)?;
    println!("{report}");
    eprintln!(
        "coldstart: report in {}",
        ctx.out.join("report.md").display()
    );
    result
}

/// Writes `report.md` and the plots of `res` into `out`; returns the report.
fn render(res: &Results, out: &Path) -> Result<String> {
    let p = res
        .params
        .clone()
        .ok_or_else(|| anyhow!("no parameters in the results"))?;
    let has = |x: &str| res.sections.iter().any(|s| s == x);
    let mut md = res.header.clone();
    if has("dedup") && !res.pushes.is_empty() {
        report_dedup(out, &mut md, &res.pushes)?;
    }
    if !res.coldstart.is_empty() {
        let _ = writeln!(md, "## 2. Cold start to CMD exit\n");
        for image in &p.cold_images {
            let runs: Vec<Run> = res
                .coldstart
                .iter()
                .filter(|r| &r.image == image)
                .cloned()
                .collect();
            if !runs.is_empty() {
                report_coldstart(&p, out, &mut md, image, &runs)?;
            }
        }
    }
    if !res.startup.is_empty() {
        report_bytes(&p, out, &mut md, &res.startup)?;
    }
    if !res.concurrent.is_empty() {
        report_concurrent(&p, out, &mut md, &res.concurrent)?;
    }
    if !res.codec.is_empty() {
        codec::report_codec(&p, &mut md, &res.codec_stores, &res.codec);
    }
    let _ = writeln!(md, "## Failed runs\n");
    if res.failures.is_empty() {
        let _ = writeln!(md, "None: every run succeeded at the first attempt.\n");
    } else {
        let _ = writeln!(
            md,
            "These runs failed and were repeated (the tables above hold the repeat):\n"
        );
        for (what, why) in &res.failures {
            let _ = writeln!(md, "- {what}: {why}");
        }
        let _ = writeln!(md);
    }
    std::fs::write(out.join("report.md"), &md)?;
    Ok(md)
}

/// Boots `image` once through an agent started with `args` (a fleet among
/// them) and waits until the chunks it fetched from the store have been
/// filled into the fleet (fills run in the background), then stops it.
fn boot_and_fill(ctx: &Ctx, image: &str, name: &str, args: &[String]) -> Result<()> {
    let a = Agent::start(&ctx.lode, &ctx.work, name, args)?;
    let exp = export(image);
    let d = NbdDisk {
        socket: &a.sock,
        export: &exp,
    };
    ctx.vm(image, &d, ctx.vm_mem, name, Instant::now())?
        .finish()?;
    let mut last = (u64::MAX, Instant::now());
    procs::wait_until(Duration::from_secs(120), "fleet fills", || {
        let Ok(m) = a.metrics() else { return false };
        let want = metric(&m, "lode_tier_hits_total{tier=\"store\"}");
        let done =
            metric(&m, "lode_fleet_fills_total") + metric(&m, "lode_fleet_fills_dropped_total");
        if done != last.0 {
            last = (done, Instant::now());
        }
        done >= want || last.1.elapsed() > Duration::from_secs(5)
    })
}
