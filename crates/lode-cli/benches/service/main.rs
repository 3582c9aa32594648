//! The agent as a host service (issue 11), measured side by side:
//!
//! 1. attach and detach latency through the control API (p50, p99);
//! 2. the longest I/O stall a client sees across agent restarts: qemu-io
//!    over NBD with `reconnect-delay` (SIGKILL and SIGTERM restarts), and a
//!    QEMU guest over vhost-user (SIGKILL restarts);
//! 3. requests per second and latency of the NBD path (fio's `nbd` engine:
//!    4 KiB random reads, memory-warm) and the vhost-user path (a rust-vmm
//!    frontend: 4 KiB random reads) for this agent, the agent before the
//!    session rework (`LODE_BASELINE`, a `lode` built from the commit before
//!    issue 11), and QEMU's own servers (`qemu-nbd`, `qemu-storage-daemon`)
//!    on the same raw image.
//!
//! ```sh
//! LODE_BASELINE=/path/to/old/lode cargo bench -p lode-cli --bench service
//! ```
//! `SECS` (default 10) per throughput run, `ROUNDS` (default 3) interleaved
//! rounds (medians reported). Needs fio, qemu-io, qemu-nbd,
//! qemu-storage-daemon, and for the guest stall QEMU and a prepared VM
//! (`lode vm prepare`; skipped with `SKIP_VM=1`).
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

#[path = "../../tests/common_vm/mod.rs"]
mod common_vm;
#[path = "../coldstart/procs.rs"]
mod procs;
#[path = "../../tests/common_agent/vhost_client.rs"]
mod vhost_client;

use anyhow::{bail, Context, Result};
use procs::{wait_until, Proc};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// The benchmark image: random bytes (every chunk stored).
const IMAGE: u64 = 128 * MIB;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 0.5)
}

struct Ctx {
    dir: PathBuf,
    lode: PathBuf,
    baseline: Option<PathBuf>,
    store: PathBuf,
    home: PathBuf,
    raw: PathBuf,
    secs: u64,
}

impl Ctx {
    /// The store the baseline agent serves (pushed by the baseline itself).
    fn old_store(&self) -> PathBuf {
        self.dir.join("store-old")
    }

    fn lode(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.env("LODE_HOME", &self.home).env("LODE_LOG", "warn");
        c
    }
}

/// An agent of this build serving a state directory.
struct Service {
    proc: Option<Proc>,
    control: PathBuf,
    state: PathBuf,
    cache: PathBuf,
    log: PathBuf,
}

impl Service {
    fn new(ctx: &Ctx, tag: &str) -> Service {
        Service {
            proc: None,
            control: ctx.dir.join(format!("{tag}.ctl")),
            state: ctx.dir.join(format!("{tag}.state")),
            cache: ctx.dir.join(format!("{tag}.cache")),
            log: ctx.dir.join(format!("{tag}.log")),
        }
    }

    fn start(&mut self, ctx: &Ctx) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let p = Proc::spawn(
            "lode agent",
            ctx.lode(&ctx.lode)
                .arg("agent")
                .arg("--control")
                .arg(format!("unix:{}", self.control.display()))
                .arg("--state-dir")
                .arg(&self.state)
                .arg("--store")
                .arg(&ctx.store)
                .arg("--cache-dir")
                .arg(&self.cache)
                .args(["--prefetch", "none"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        self.proc = Some(p);
        let c = self.control.clone();
        wait_until(Duration::from_secs(60), "the agent", || health(&c))
    }

    fn kill(&mut self) {
        self.proc = None;
    }

    fn term(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            let pid = pid_of(&self.control)?;
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            p.wait_for_exit(Duration::from_secs(60));
        }
        Ok(())
    }
}

/// The pid of the agent answering on `ctl` (from its health answer).
fn pid_of(ctl: &Path) -> Result<u32> {
    let (_, body) = http(ctl, "GET", "/v1/health", "")?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["pid"].as_u64().map(|p| p as u32).context("pid in health")
}

fn http(ctl: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    use std::io::Read;
    let mut s = UnixStream::connect(ctl)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut b = String::new();
    s.read_to_string(&mut b)?;
    let status = b
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        b.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    ))
}

fn health(ctl: &Path) -> bool {
    http(ctl, "GET", "/v1/health", "").is_ok_and(|(s, _)| s == 200)
}

fn attach(ctl: &Path, via: &str, rw: bool) -> Result<serde_json::Value> {
    attach_image(ctl, "img", via, rw)
}

fn attach_image(ctl: &Path, image: &str, via: &str, rw: bool) -> Result<serde_json::Value> {
    let (s, b) = http(
        ctl,
        "POST",
        "/v1/volumes",
        &format!(r#"{{"tenant":"bench","image":"{image}","via":"{via}","rw":{rw}}}"#),
    )?;
    if s != 201 {
        bail!("attach: {s} {b}");
    }
    Ok(serde_json::from_str(&b)?)
}

fn detach(ctl: &Path, id: &str) -> Result<()> {
    let (s, b) = http(ctl, "DELETE", &format!("/v1/volumes/{id}"), "")?;
    if s != 200 {
        bail!("detach: {s} {b}");
    }
    Ok(())
}

/// 1. Attach and detach latency.
fn attach_latency(ctx: &Ctx) -> Result<Vec<String>> {
    let mut svc = Service::new(ctx, "attach");
    svc.start(ctx)?;
    let n = env_u64("ATTACHES", 200);
    let mut rows = Vec::new();
    for via in ["nbd", "vhost-user"] {
        let (mut a, mut d) = (Vec::new(), Vec::new());
        for i in 0..n {
            let t = Instant::now();
            let v = attach(&svc.control, via, i % 2 == 0)?;
            a.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            detach(&svc.control, v["id"].as_str().unwrap())?;
            d.push(t.elapsed().as_secs_f64() * 1e3);
        }
        rows.push(format!(
            "| {via} | {n} | {:.2} | {:.2} | {:.2} | {:.2} |",
            pct(&mut a, 0.5),
            pct(&mut a, 0.99),
            pct(&mut d, 0.5),
            pct(&mut d, 0.99)
        ));
    }
    Ok(rows)
}

/// 2a. qemu-io over NBD reading 4 KiB continuously while the agent is
/// restarted `n` times (`how`: SIGKILL or SIGTERM); (longest op ms, errors, ops).
fn nbd_stall(ctx: &Ctx, how: &str, n: usize) -> Result<(f64, usize, usize)> {
    let mut svc = Service::new(ctx, &format!("stall-{how}"));
    svc.start(ctx)?;
    let v = attach(&svc.control, "nbd", true)?;
    let sock = v["socket"].as_str().unwrap().to_string();
    let mut q = Command::new("qemu-io")
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,server.type=unix,server.path={sock},reconnect-delay=60"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = q.stdin.take().unwrap();
    let out = q.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(|l| l.ok())
            .collect::<Vec<String>>()
    });
    let total = 400 * (n + 1);
    let feeder = std::thread::spawn(move || {
        for i in 0..total {
            let off = (i as u64 * 7919 % (IMAGE / 4096)) * 4096;
            let _ = writeln!(stdin, "read {off} 4096");
            if i % 40 == 0 {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        let _ = writeln!(stdin, "quit");
    });
    for _ in 0..n {
        std::thread::sleep(Duration::from_millis(700));
        if how == "SIGKILL" {
            svc.kill();
        } else {
            svc.term()?;
        }
        svc.start(ctx)?;
    }
    feeder.join().ok();
    let _ = q.wait();
    let lines = reader.join().unwrap_or_default();
    // Lines may carry qemu-io's prompt in front.
    let ops = lines
        .iter()
        .filter(|l| l.contains("read 4096/4096"))
        .count();
    let errors = lines
        .iter()
        .filter(|l| l.contains("error") || l.contains("failed"))
        .count();
    let longest = lines
        .iter()
        .filter_map(|l| l.split("ops; ").nth(1)?.split(" sec").next())
        .filter_map(|t| {
            t.split(':').try_fold(0.0, |a, p| {
                p.trim().parse::<f64>().ok().map(|v| a * 60.0 + v)
            })
        })
        .fold(0.0, f64::max);
    let _ = detach(&svc.control, v["id"].as_str().unwrap());
    Ok((longest * 1e3, errors + (total - ops), ops))
}

/// 2b. A QEMU guest reading its vhost-user disk (O_DIRECT, 4 KiB) and
/// printing a tick per read while the agent is SIGKILLed `n` times;
/// (longest gap ms, median gap ms, guest errors).
fn vhost_stall(ctx: &Ctx, n: usize) -> Result<(f64, f64, usize)> {
    let vm_dir = common_vm::vm_dir();
    let assets =
        lode_vm::Assets::find(&vm_dir).context("a prepared VM (lode vm prepare --dir ...)")?;
    // A bootable image: busybox.
    let oci = ctx.dir.join("vm-oci");
    common_vm::write_image(&oci);
    let o = ctx
        .lode(&ctx.lode)
        .args([
            "push",
            &format!("oci:{}:latest", oci.display()),
            "--tenant",
            "bench",
            "--name",
            "vm",
            "--store",
        ])
        .arg(&ctx.store)
        .output()?;
    if !o.status.success() {
        bail!("push vm image: {}", String::from_utf8_lossy(&o.stderr));
    }
    let mut svc = Service::new(ctx, "vstall");
    svc.start(ctx)?;
    let v = attach_image(&svc.control, "vm", "vhost-user", false)?;
    let script = "i=0; while [ $i -lt 1500 ]; do busybox dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=$((i * 37 % 256)) iflag=direct 2>/dev/null || echo READ-ERROR; echo T$i; i=$((i+1)); done; echo ioerrors=$(busybox dmesg | busybox grep -ciE 'i/o error|blk_update')";
    let cmd = ["/bin/sh".to_string(), "-c".into(), script.into()];
    let initrd = ctx.dir.join("stall-initrd");
    std::fs::write(
        &initrd,
        lode_vm::run_initrd(&std::fs::read(&assets.initrd)?, &cmd, false),
    )?;
    let mut spec = lode_vm::RunSpec::new(
        assets.kernel.clone(),
        initrd,
        lode_vm::Disk::VhostUser {
            socket: PathBuf::from(v["socket"].as_str().unwrap()),
        },
    );
    spec.reconnect = Some(lode_vm::Reconnect::default());
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let vm = std::thread::spawn(move || {
        lode_vm::boot::run(&spec, &lode_vm::Limits::default(), &mut |_, ev| {
            if let lode_vm::Event::Output(l) = ev {
                let _ = tx.send((l.clone(), Instant::now()));
            }
        })
        .map(|o| o.status)
        .map_err(|e| e.to_string())
    });
    let mut ticks: Vec<Instant> = Vec::new();
    let mut kills: Vec<Instant> = Vec::new();
    let mut errors = 0;
    let mut ioerrors = usize::MAX;
    while let Ok((l, t)) = rx.recv_timeout(Duration::from_secs(300)) {
        if l.starts_with('T') {
            ticks.push(t);
            if kills.len() < n && ticks.len() == 200 * (kills.len() + 1) {
                kills.push(Instant::now());
                svc.kill();
                svc.start(ctx)?;
            }
        } else if l.contains("READ-ERROR") {
            errors += 1;
        } else if let Some(e) = l.strip_prefix("ioerrors=") {
            ioerrors = e.trim().parse().unwrap_or(usize::MAX);
        }
    }
    let status = vm.join().map_err(|_| anyhow::anyhow!("vm thread"))?;
    if status != Ok(0) {
        bail!("guest: {status:?}");
    }
    let gaps: Vec<f64> = ticks
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .collect();
    let longest = kills
        .iter()
        .filter_map(|k| {
            ticks
                .windows(2)
                .find(|w| w[1] >= *k)
                .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        })
        .fold(0.0, f64::max);
    Ok((longest, median(gaps), errors + ioerrors))
}

/// fio's nbd engine on `uri`: (IOPS, p50 µs, p99 µs) of 4 KiB random reads at `depth`.
fn fio(ctx: &Ctx, uri: &str, depth: u32) -> Result<(f64, f64, f64)> {
    let o = Command::new("fio")
        .args([
            "--name=r",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randread",
            "--bs=4k",
            &format!("--iodepth={depth}"),
            &format!("--size={IMAGE}"),
            "--time_based",
            &format!("--runtime={}", ctx.secs),
            "--output-format=json",
        ])
        .output()?;
    if !o.status.success() {
        bail!("fio {uri}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let json = &text[text.find('{').context("fio JSON")?..];
    let v: serde_json::Value = serde_json::from_str(json)?;
    let r = &v["jobs"][0]["read"];
    let p = |k: &str| r["clat_ns"]["percentile"][k].as_f64().unwrap_or(f64::NAN) / 1e3;
    Ok((
        r["iops"].as_f64().unwrap_or(0.0),
        p("50.000000"),
        p("99.000000"),
    ))
}

/// 4 KiB random reads over vhost-user at `depth` for `secs`: (req/s, p50 µs, p99 µs)
/// of batches of `depth` requests (the latency of the slowest in a batch).
fn vhost(sock: &Path, depth: usize, secs: u64) -> (f64, f64, f64) {
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
    let mut d = vhost_client::VhostBlk::connect(sock);
    d.poll = Duration::from_micros(20);
    let t0 = Instant::now();
    let mut lat = Vec::new();
    let mut n = 0u64;
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        let chains: Vec<vhost_client::Chain> = (0..depth)
            .map(|_| {
                i += 1;
                let sector = (i * 7919 % (IMAGE / 4096)) * 8;
                d.chain(VIRTIO_BLK_T_IN, sector, &[], 4096, 1)
            })
            .collect();
        let t = Instant::now();
        let done = d.run(&chains);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(done.iter().all(|r| r.status == Some(vhost_client::S_OK)));
        n += depth as u64;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    (rate, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

/// The servers compared: (label, NBD URI, vhost-user socket, its processes).
type Server = (String, String, PathBuf, Vec<Proc>);

fn servers(ctx: &Ctx) -> Result<Vec<Server>> {
    let mut out = Vec::new();
    // This agent: a read-only volume of each kind.
    let mut svc = Service::new(ctx, "tp");
    svc.start(ctx)?;
    let n = attach(&svc.control, "nbd", false)?;
    let v = attach(&svc.control, "vhost-user", false)?;
    out.push((
        "lode agent (this branch)".to_string(),
        format!("nbd+unix:///?socket={}", n["socket"].as_str().unwrap()),
        PathBuf::from(v["socket"].as_str().unwrap()),
        vec![svc.proc.take().unwrap()],
    ));
    if let Some(old) = &ctx.baseline {
        let nsock = ctx.dir.join("old-nbd.sock");
        let vsock = ctx.dir.join("old-vu.sock");
        let log = std::fs::File::create(ctx.dir.join("old.log"))?;
        let p = Proc::spawn(
            "lode agent (baseline)",
            ctx.lode(old)
                .arg("agent")
                .arg("--listen")
                .arg(format!("unix:{}", nsock.display()))
                .arg("--vhost-user")
                .arg(format!("{}=bench/img,ro", vsock.display()))
                .arg("--store")
                .arg(ctx.old_store())
                .arg("--cache-dir")
                .arg(ctx.dir.join("old.cache"))
                .args(["--prefetch", "none"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let (a, b) = (nsock.clone(), vsock.clone());
        wait_until(Duration::from_secs(60), "the baseline agent", || {
            a.exists() && b.exists()
        })?;
        out.push((
            "lode agent (before, 3d7ddd6)".into(),
            format!("nbd+unix:///bench/img?socket={}", nsock.display()),
            vsock,
            vec![p],
        ));
    }
    let (qn, qsock) = procs::qemu_nbd(&ctx.dir, "qemu-nbd", &ctx.raw, "")?;
    let qsd_sock = ctx.dir.join("qsd.sock");
    let qsd = Proc::spawn(
        "qemu-storage-daemon",
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={},read-only=on,aio=threads",
                ctx.raw.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=off",
                qsd_sock.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let q = qsd_sock.clone();
    wait_until(Duration::from_secs(30), "qemu-storage-daemon", || {
        q.exists()
    })?;
    out.push((
        "qemu-nbd / qemu-storage-daemon (raw file)".into(),
        format!("nbd+unix:///?socket={}", qsock.display()),
        qsd_sock,
        vec![qn, qsd],
    ));
    Ok(out)
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("lode-bench-service-")
        .tempdir()?;
    procs::install_signal_handler(Some(dir.path().to_path_buf()))?;
    let ctx = Ctx {
        dir: dir.path().to_path_buf(),
        lode: PathBuf::from(env!("CARGO_BIN_EXE_lode")),
        baseline: std::env::var_os("LODE_BASELINE").map(PathBuf::from),
        store: dir.path().join("store"),
        home: dir.path().join("home"),
        raw: dir.path().join("img.raw"),
        secs: env_u64("SECS", 10),
    };
    // The image: random bytes.
    let mut f = std::fs::File::create(&ctx.raw)?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..IMAGE / MIB {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    drop(f);
    let o = ctx
        .lode(&ctx.lode)
        .args([
            "push",
            &format!("ext4:{}", ctx.raw.display()),
            "--tenant",
            "bench",
            "--name",
            "img",
            "--store",
        ])
        .arg(&ctx.store)
        .output()?;
    if !o.status.success() {
        bail!("push: {}", String::from_utf8_lossy(&o.stderr));
    }
    if let Some(old) = &ctx.baseline {
        // The baseline reads only the formats of its time (manifest and
        // pointer v1): it serves the same image pushed by itself.
        let o = ctx
            .lode(old)
            .args([
                "push",
                &format!("ext4:{}", ctx.raw.display()),
                "--tenant",
                "bench",
                "--name",
                "img",
                "--store",
            ])
            .arg(ctx.old_store())
            .output()?;
        if !o.status.success() {
            bail!("baseline push: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    println!("# lode agent as a host service (issue 11)\n");
    println!("Image: {} MiB of random bytes (every chunk stored); local file store; memory-warm caches for throughput.\n", IMAGE / MIB);

    let only = std::env::var("ONLY").unwrap_or_default();
    let part = |p: &str| only.is_empty() || only.split(',').any(|o| o == p);
    if part("attach") {
        println!("## Attach and detach latency (control API, HTTP over unix socket), ms\n");
        println!("| via | attaches | attach p50 | attach p99 | detach p50 | detach p99 |\n|---|---:|---:|---:|---:|---:|");
        for r in attach_latency(&ctx)? {
            println!("{r}");
        }
    }
    if part("stall") {
        stalls(&ctx)?;
    }
    if part("throughput") {
        throughput(&ctx)?;
    }
    Ok(())
}

fn stalls(ctx: &Ctx) -> Result<()> {
    println!("\n## Longest I/O stall across agent restarts\n");
    println!("| client | restarts | ops | errors | longest op / gap (ms) | usual (ms) |\n|---|---:|---:|---:|---:|---:|");
    for how in ["SIGKILL", "SIGTERM"] {
        let (l, e, ops) = nbd_stall(ctx, how, 5)?;
        println!(
            "| qemu-io over NBD, reconnect-delay, {how} + restart | 5 | {ops} | {e} | {l:.0} | - |"
        );
    }
    if std::env::var("SKIP_VM").is_err() {
        match vhost_stall(ctx, 3) {
            Ok((l, m, e)) => println!("| QEMU guest over vhost-user (reconnect-ms=100), SIGKILL + restart | 3 | 1500 | {e} | {l:.0} | {m:.0} |"),
            Err(e) => println!("| QEMU guest over vhost-user | - | - | - | skipped: {e} | - |"),
        }
    }
    Ok(())
}

fn throughput(ctx: &Ctx) -> Result<()> {
    println!("\n## Requests/s and latency, 4 KiB random reads, memory-warm ({} s per run, median of {} interleaved rounds)\n", ctx.secs, env_u64("ROUNDS", 3));
    let srv = servers(ctx)?;
    // Warm every cache: one sequential pass.
    for (_, uri, _, _) in &srv {
        let _ = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", uri, "/dev/null"])
            .output();
    }
    let rounds = env_u64("ROUNDS", 3);
    let mut res: Vec<Vec<[f64; 9]>> = vec![Vec::new(); srv.len()];
    for _ in 0..rounds {
        for (k, (_, uri, vsock, _)) in srv.iter().enumerate() {
            let (i1, _, p1) = fio(ctx, uri, 1)?;
            let (i16, p50, p99) = fio(ctx, uri, 16)?;
            let (v1, _, vp1) = vhost(vsock, 1, ctx.secs);
            let (v16, _, vp16) = vhost(vsock, 16, ctx.secs);
            res[k].push([i1, p1, i16, p50, p99, v1, vp1, v16, vp16]);
        }
    }
    println!("| server | NBD QD1 req/s | NBD QD1 p99 µs | NBD QD16 req/s | NBD QD16 p50 µs | NBD QD16 p99 µs | vhost-user QD1 req/s | vhost-user QD1 p99 µs | vhost-user QD16 req/s | vhost-user QD16 batch p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (k, (label, ..)) in srv.iter().enumerate() {
        let m: Vec<f64> = (0..9)
            .map(|j| median(res[k].iter().map(|r| r[j]).collect()))
            .collect();
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8]
        );
    }
    drop(srv);
    Ok(())
}
