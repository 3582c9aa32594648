//! The processes the benchmark starts (lode agents, cache nodes, qemu-nbd,
//! QEMU micro-VMs) and their clean-up.
//!
//! Every child is registered while it runs: dropping its [`Proc`] kills and
//! reaps it, and on SIGINT/SIGTERM [`install_signal_handler`] kills all that
//! are still registered and removes the work directory.

use anyhow::{anyhow, bail, Context, Result};
use lode_vm::{Disk, Event, RunSpec};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static WORKDIR: OnceLock<PathBuf> = OnceLock::new();

fn running() -> std::sync::MutexGuard<'static, Vec<u32>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// On SIGINT or SIGTERM: kill every registered child, delete `workdir`
/// (unless `None`), exit 130.
pub fn install_signal_handler(workdir: Option<PathBuf>) -> Result<()> {
    if let Some(w) = workdir {
        let _ = WORKDIR.set(w);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("coldstart: interrupted; stopping children");
        kill_all();
        if let Some(w) = WORKDIR.get() {
            let _ = std::fs::remove_dir_all(w);
        }
        std::process::exit(130);
    });
    Ok(())
}

/// Kills every registered child (SIGKILL through kill(1): no unsafe code).
pub fn kill_all() {
    let pids: Vec<u32> = running().clone();
    for p in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// A running child process; dropping it kills and reaps it.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd` and registers it.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        running().push(child.id());
        Ok(Proc { child })
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits up to `limit` for it to exit by itself; kills it after that.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let id = self.child.id();
        running().retain(|&p| p != id);
    }
}

/// Waits until `ok()` holds, up to `limit`.
pub fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        if ok() {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race is accepted).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The Prometheus text of `127.0.0.1:port`, as `series{labels}` → value.
pub fn metrics(port: u16) -> Result<HashMap<String, f64>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let mut m = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                m.insert(k.to_string(), v);
            }
        }
    }
    Ok(m)
}

/// A metric value, 0 when absent.
pub fn metric(m: &HashMap<String, f64>, key: &str) -> u64 {
    m.get(key).copied().unwrap_or(0.0) as u64
}

/// A `lode agent` process on a unix socket, with a metrics port.
pub struct Agent {
    /// The process.
    pub proc: Proc,
    /// Its NBD socket.
    pub sock: PathBuf,
    /// Its metrics port.
    pub port: u16,
}

impl Agent {
    /// Starts `lode agent` and waits until its socket and metrics answer.
    pub fn start(lode: &Path, dir: &Path, name: &str, args: &[String]) -> Result<Agent> {
        let sock = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock);
        let port = free_port()?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let proc = Proc::spawn(
            &format!("agent {name}"),
            Command::new(lode)
                .arg("agent")
                .arg("--listen")
                .arg(format!("unix:{}", sock.display()))
                .arg("--dev-open-exports")
                .arg("--state-dir")
                .arg(dir.join(format!("{name}.state")))
                .arg("--control")
                .arg(format!(
                    "unix:{}",
                    dir.join(format!("{name}.ctl")).display()
                ))
                .arg("--metrics")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--overlay-dir")
                .arg(dir.join("overlays"))
                .args(if args.iter().any(|a| a == "--prefetch") {
                    &[][..]
                } else {
                    &["--prefetch", "none"][..]
                })
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let mut a = Agent { proc, sock, port };
        let s = a.sock.clone();
        let r = wait_until(Duration::from_secs(60), "the agent", || {
            s.exists() && metrics(port).is_ok()
        });
        if r.is_err() || a.proc.exited() {
            let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            bail!("agent {name} did not start:\n{log}");
        }
        Ok(a)
    }

    /// Its current metrics.
    pub fn metrics(&self) -> Result<HashMap<String, f64>> {
        metrics(self.port)
    }
}

/// `qemu-nbd` serving a raw file read-only on a unix socket under `export`.
pub fn qemu_nbd(dir: &Path, name: &str, raw: &Path, export: &str) -> Result<(Proc, PathBuf)> {
    let sock = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut p = Proc::spawn(
        "qemu-nbd",
        Command::new("qemu-nbd")
            // -e: up to 64 clients at once (the default is one).
            .args(["-f", "raw", "-r", "-t", "-e", "64", "-x", export, "-k"])
            .arg(&sock)
            .arg(raw)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    let s = sock.clone();
    wait_until(Duration::from_secs(30), "qemu-nbd", || {
        UnixStream::connect(&s).is_ok()
    })?;
    if p.exited() {
        bail!("qemu-nbd exited");
    }
    Ok((p, sock))
}

/// `n` `lode cache-node` processes on loopback; returns them and the `--cache-nodes` value.
pub fn fleet(lode: &Path, dir: &Path, n: usize, memory: &str) -> Result<(Vec<Proc>, String)> {
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let port = free_port()?;
        let log = std::fs::File::create(dir.join(format!("node-{i}.log")))?;
        procs.push(Proc::spawn(
            "cache-node",
            Command::new(lode)
                .args(["cache-node", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--memory", memory])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?);
        addrs.push(format!("127.0.0.1:{port}"));
    }
    for a in &addrs {
        wait_until(Duration::from_secs(30), "a cache node", || {
            TcpStream::connect(a.as_str()).is_ok()
        })?;
    }
    Ok((procs, addrs.join(",")))
}

/// What one VM run produced. Times are from the run's `t0`.
#[derive(Clone, Debug, Default)]
pub struct Boot {
    /// `LODE-CMD-START` seen on the console.
    pub cmd_start: Duration,
    /// `LODE-CMD-EXIT` seen on the console.
    pub cmd_exit: Duration,
    /// The command's exit status.
    pub status: i32,
    /// Bytes the guest read from its disk (QEMU's block statistics).
    pub rd_bytes: u64,
    /// Read requests the guest issued.
    pub rd_ops: u64,
    /// The command's output lines.
    pub output: Vec<String>,
}

/// A QEMU micro-VM that was started; [`Vm::finish`] waits for it.
pub struct Vm {
    proc: Proc,
    lines: Receiver<(Instant, String)>,
    qmp: PathBuf,
    err: PathBuf,
    t0: Instant,
    deadline: Instant,
}

/// Where the VM's disk comes from: an NBD server's socket and export name.
pub struct NbdDisk<'a> {
    /// Server socket.
    pub socket: &'a Path,
    /// Export name.
    pub export: &'a str,
}

/// The guest: kernel, initramfs (with the command), memory, time limit.
pub struct VmConf<'a> {
    /// Uncompressed kernel.
    pub kernel: &'a Path,
    /// Initramfs with the command's archive appended.
    pub initrd: &'a Path,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Time limit from `t0` to the command's end.
    pub timeout: Duration,
}

/// Boots a VM on `disk` (`t0` is the run's start); files go to `dir`.
pub fn start_vm(conf: &VmConf, disk: &NbdDisk, dir: &Path, name: &str, t0: Instant) -> Result<Vm> {
    let mut spec = RunSpec::new(
        conf.kernel.to_path_buf(),
        conf.initrd.to_path_buf(),
        Disk::Nbd {
            socket: disk.socket.to_path_buf(),
            export: disk.export.to_string(),
            read_only: true,
        },
    );
    spec.memory_mib = conf.memory_mib;
    let qmp = dir.join(format!("{name}.qmp"));
    let _ = std::fs::remove_file(&qmp);
    let err = dir.join(format!("{name}.qemu.err"));
    let mut cmd = spec.command()?;
    // Stop (not exit) when the guest ends the VM so the block statistics can be
    // read over QMP afterwards.
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-no-shutdown")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err)?);
    let mut proc = Proc::spawn("qemu-system-x86_64", &mut cmd)?;
    let out = proc
        .take_stdout()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    Ok(Vm {
        proc,
        lines: rx,
        qmp,
        err,
        t0,
        deadline: t0 + conf.timeout,
    })
}

fn qmp_call(
    r: &mut BufReader<UnixStream>,
    w: &mut UnixStream,
    cmd: &str,
) -> Result<serde_json::Value> {
    w.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("QMP closed during {cmd}");
        }
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if let Some(ret) = v.get("return") {
            return Ok(ret.clone());
        }
        if let Some(e) = v.get("error") {
            bail!("QMP {cmd}: {e}");
        }
    }
}

impl Vm {
    /// Waits for the command to end and the guest to power off, reads the
    /// disk statistics, and quits QEMU.
    pub fn finish(mut self) -> Result<Boot> {
        let mut b = Boot::default();
        let mut console = lode_vm::Console::default();
        let tail = |c: &lode_vm::Console| c.tail().collect::<Vec<_>>().join("\n");
        let mut exit = None;
        while exit.is_none() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok((at, line)) => match console.feed(&line) {
                    Event::Started => b.cmd_start = at.duration_since(self.t0),
                    Event::Exited(s) => {
                        b.cmd_exit = at.duration_since(self.t0);
                        exit = Some(s);
                    }
                    Event::Output(l) => b.output.push(l),
                    Event::Failed(f) => bail!("{f}; console:\n{}", tail(&console)),
                    Event::Boot | Event::Stage(_) => {}
                },
                Err(RecvTimeoutError::Timeout) => {
                    // QEMU marks the disk broken on a corrupt virtqueue (seen
                    // rarely under TCG); the guest then waits forever.
                    let e = std::fs::read_to_string(&self.err).unwrap_or_default();
                    if let Some(l) = e
                        .lines()
                        .find(|l| l.contains("virtio") || l.contains("Guest says"))
                    {
                        bail!("QEMU: {l}");
                    }
                    if Instant::now() < self.deadline {
                        continue;
                    }
                    bail!(
                        "the VM did not finish in time ({}); console:\n{}",
                        console.stage(),
                        tail(&console)
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let e = std::fs::read_to_string(&self.err).unwrap_or_default();
                    bail!(
                        "QEMU ended before the command did; console:\n{}\n{}",
                        tail(&console),
                        e.trim()
                    )
                }
            }
        }
        b.status = exit.unwrap_or(-1);
        let mut w = UnixStream::connect(&self.qmp)
            .with_context(|| format!("connecting to QMP {}", self.qmp.display()))?;
        w.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut r = BufReader::new(w.try_clone()?);
        let mut greeting = String::new();
        r.read_line(&mut greeting)?;
        qmp_call(&mut r, &mut w, "qmp_capabilities")?;
        // The guest unmounts, syncs and reboots (QEMU stops) after the command.
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            let st = qmp_call(&mut r, &mut w, "query-status")?;
            if st.get("running").and_then(|v| v.as_bool()) == Some(false) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stats = qmp_call(&mut r, &mut w, "query-blockstats")?;
        for d in stats.as_array().into_iter().flatten() {
            let st = &d["stats"];
            b.rd_bytes += st["rd_bytes"].as_u64().unwrap_or(0);
            b.rd_ops += st["rd_operations"].as_u64().unwrap_or(0);
        }
        let _ = qmp_call(&mut r, &mut w, "quit");
        self.proc.wait_for_exit(Duration::from_secs(10));
        Ok(b)
    }
}
