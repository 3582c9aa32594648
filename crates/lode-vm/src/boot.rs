//! Running one micro-VM to the end and watching it: a guest that fails, hangs
//! or halts ends the run at once, with the stage it reached and the last
//! lines of its console, instead of waiting for a timeout in silence.

use crate::guest::{Console, Event, Failure, Stage};
use crate::prepare::VmError;
use crate::qemu::RunSpec;
use std::fmt;
use std::io::{BufRead, Read};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How often [`run_stoppable`] looks at its stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(50);
/// Longest console line passed on whole: a longer one (a program printing
/// megabytes without a newline) is cut into pieces of this size, so
/// following a console takes bounded memory.
pub const MAX_LINE: usize = 16 << 10;

/// Bounds on one run.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest silence on the console before the command starts.
    pub silence: Duration,
    /// Longest time from QEMU's start to the command's start.
    pub boot: Duration,
    /// Longest time from QEMU's start to its exit.
    pub total: Duration,
    /// Longest wait for QEMU to exit once the command has exited.
    pub shutdown: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            silence: Duration::from_secs(60),
            boot: Duration::from_secs(180),
            total: Duration::from_secs(300),
            shutdown: Duration::from_secs(30),
        }
    }
}

/// A finished run.
#[derive(Debug)]
pub struct Outcome {
    /// The command's exit status.
    pub status: i32,
    /// When QEMU was started.
    pub vm_started: Instant,
    /// When the command started.
    pub cmd_started: Instant,
    /// When the command exited.
    pub cmd_exited: Instant,
    /// When QEMU exited.
    pub vm_exited: Instant,
    /// False when QEMU had to be killed after the command exited (the guest
    /// did not end the VM).
    pub clean_exit: bool,
}

/// Why a run did not give the command's status.
#[derive(Debug)]
pub struct BootError {
    /// What went wrong.
    pub kind: BootErrorKind,
    /// The stage the boot had reached.
    pub stage: Stage,
    /// The last boot lines of the console.
    pub tail: Vec<String>,
    /// What QEMU wrote to stderr (its end).
    pub stderr: String,
    /// The CPU state at the guest's last reset, when QEMU logged it.
    pub last_reset: Option<String>,
}

/// What went wrong in a run.
#[derive(Debug)]
pub enum BootErrorKind {
    /// The QEMU command could not be built or started.
    Start(Box<VmError>),
    /// The guest reported a failure.
    Guest(Failure),
    /// The console was silent too long before the command started.
    Silent(Duration),
    /// The command did not start in time.
    BootTimeout(Duration),
    /// The run did not finish in time.
    Timeout(Duration),
    /// QEMU exited before the command did.
    Exited(Option<ExitStatus>),
    /// The caller stopped the VM ([`run_stoppable`]).
    Stopped,
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BootErrorKind::Start(e) => write!(f, "cannot start QEMU: {e}")?,
            BootErrorKind::Guest(g) => write!(f, "{g}")?,
            BootErrorKind::Silent(d) => write!(
                f,
                "the guest console was silent for {} s before the command started; VM stopped",
                d.as_secs()
            )?,
            BootErrorKind::BootTimeout(d) => write!(
                f,
                "the command did not start within {} s; VM stopped",
                d.as_secs()
            )?,
            BootErrorKind::Timeout(d) => {
                write!(f, "the VM did not finish within {} s; stopped", d.as_secs())?
            }
            BootErrorKind::Stopped => write!(f, "the VM was stopped")?,
            BootErrorKind::Exited(s) => {
                let s = s.map(|s| s.to_string()).unwrap_or_else(|| "?".into());
                if self.tail.is_empty() {
                    write!(f, "QEMU exited ({s}) before the guest printed a line (an unreadable or damaged kernel resets the guest at once)")?
                } else {
                    write!(f, "QEMU exited ({s}) before the command finished")?
                }
            }
        }
        write!(f, "; last stage reached: {}", self.stage)
    }
}

impl BootError {
    /// The console's last boot lines and QEMU's stderr, for a report below
    /// the one-line error.
    pub fn details(&self) -> String {
        let mut d = String::new();
        if !self.tail.is_empty() {
            d.push_str("last console lines:\n");
            d.push_str(&self.tail.join("\n"));
        }
        if !self.stderr.trim().is_empty() {
            d.push_str("\nqemu stderr:\n");
            d.push_str(self.stderr.trim());
        }
        if let Some(r) = &self.last_reset {
            d.push_str("\nCPU state at the guest's reset (QEMU -d cpu_reset):");
            d.push_str(r);
        }
        d
    }
}

impl std::error::Error for BootError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            BootErrorKind::Start(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// The last bytes a child wrote to a pipe, gathered by a thread of its own.
struct Tail {
    kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Tail {
    /// Keeps the last `cap` bytes `r` produces.
    fn new(mut r: impl Read + Send + 'static, cap: usize) -> Tail {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, done) = mpsc::sync_channel(1);
        let k = kept.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                // A std Mutex, never held across a blocking call.
                let mut kept = k.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > cap {
                    let cut = kept.len() - cap;
                    kept.drain(..cut);
                }
            }
            let _ = tx.send(());
        });
        Tail { kept, done }
    }

    /// What was written, once the pipe closed or after a short grace (a
    /// grandchild may hold the pipe open after the child is gone).
    fn take(self) -> String {
        let _ = self.done.recv_timeout(Duration::from_millis(500));
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Boots `spec` and follows its console until the command's status is known.
/// `on_line` sees every console line with what it means (print
/// [`Event::Output`] lines as the command's output; print all of them to
/// show the whole console).
pub fn run(
    spec: &RunSpec,
    limits: &Limits,
    on_line: &mut dyn FnMut(&str, &Event),
) -> Result<Outcome, BootError> {
    run_stoppable(spec, limits, &AtomicBool::new(false), on_line)
}

/// [`run`], and QEMU is killed (the run ends with
/// [`BootErrorKind::Stopped`]) within [`STOP_POLL`] of `stop` turning true.
pub fn run_stoppable(
    spec: &RunSpec,
    limits: &Limits,
    stop: &AtomicBool,
    on_line: &mut dyn FnMut(&str, &Event),
) -> Result<Outcome, BootError> {
    let not_started = |e: VmError| BootError {
        kind: BootErrorKind::Start(Box::new(e)),
        stage: Stage::Firmware,
        tail: Vec::new(),
        stderr: String::new(),
        last_reset: None,
    };
    let mut cmd = spec.command().map_err(not_started)?;
    // QEMU dies with the thread that watches it (a SIGKILLed `lode run` or
    // worker leaves no VM running); one that switches user loses its
    // parent-death signal and needs a keeper, kept until QEMU is reaped.
    let _tie = if let Some(run_as) = &spec.run_as {
        let t = crate::keeper::tie(&mut cmd, run_as.hold.as_deref()).map_err(|source| {
            not_started(VmError::Io {
                path: "the pipe of the VMM's keeper".into(),
                source,
            })
        })?;
        Some(t)
    } else {
        crate::prepare::tied_to_us(&mut cmd);
        None
    };
    watch(cmd, limits, stop, on_line).map_err(|mut e| {
        if matches!(e.kind, BootErrorKind::Exited(_)) {
            if let Some(log) = &spec.reset_log {
                e.last_reset = last_reset(log);
            }
        }
        e
    })
}

/// The CPU state QEMU logged at the guest's last reset (the first lines of
/// the last `CPU Reset` block after the power-on one), if the guest reset.
fn last_reset(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let blocks: Vec<&str> = text.split("CPU Reset").skip(1).collect();
    // The first block is the power-on reset; a later one is the guest's.
    let last = blocks.get(1..)?.last()?;
    Some(last.lines().take(8).collect::<Vec<_>>().join("\n"))
}

fn fail(kind: BootErrorKind, console: &Console, stderr: String) -> BootError {
    BootError {
        kind,
        stage: console.stage(),
        tail: console.tail().map(str::to_string).collect(),
        stderr,
        last_reset: None,
    }
}

/// [`run`] on any command whose stdout is a guest console.
fn watch(
    mut cmd: std::process::Command,
    limits: &Limits,
    stop_flag: &AtomicBool,
    on_line: &mut dyn FnMut(&str, &Event),
) -> Result<Outcome, BootError> {
    let mut console = Console::default();
    let vm_started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            let e = VmError::Io {
                path: "qemu-system-x86_64".into(),
                source,
            };
            fail(BootErrorKind::Start(Box::new(e)), &console, String::new())
        })?;
    let stderr = Tail::new(child.stderr.take().expect("piped"), 16 << 10);
    let stdout = child.stdout.take().expect("piped");
    // Bounded: the reader waits while this loop is behind.
    let (tx, rx) = mpsc::sync_channel::<String>(1024);
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        line.pop();
                    }
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let (mut cmd_started, mut exited) = (None, None);
    let mut last_line = Instant::now();
    let end_with = |child: &mut Child, kind, console: &Console, stderr: Tail| {
        stop(child);
        Err(fail(kind, console, stderr.take()))
    };
    loop {
        let now = Instant::now();
        // The nearest bound that applies now.
        let mut due = vm_started + limits.total;
        if let Some((_, at)) = exited {
            due = due.min(at + limits.shutdown);
        } else if cmd_started.is_none() {
            due = due
                .min(vm_started + limits.boot)
                .min(last_line + limits.silence);
        }
        if stop_flag.load(Ordering::Relaxed) {
            return end_with(&mut child, BootErrorKind::Stopped, &console, stderr);
        }
        match rx.recv_timeout(due.saturating_duration_since(now).min(STOP_POLL)) {
            Ok(line) => {
                last_line = Instant::now();
                let ev = console.feed(&line);
                on_line(&line, &ev);
                match ev {
                    Event::Started => cmd_started = Some(last_line),
                    Event::Exited(s) => exited = Some((s, last_line)),
                    Event::Failed(f) if exited.is_none() => {
                        return end_with(&mut child, BootErrorKind::Guest(f), &console, stderr)
                    }
                    _ => {}
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if let Some((status, at)) = exited {
                    if now >= at + limits.shutdown {
                        // The command is done; the guest did not end the VM.
                        stop(&mut child);
                        return Ok(Outcome {
                            status,
                            vm_started,
                            cmd_started: cmd_started.unwrap_or(at),
                            cmd_exited: at,
                            vm_exited: now,
                            clean_exit: false,
                        });
                    }
                }
                let kind = if now >= vm_started + limits.total {
                    BootErrorKind::Timeout(limits.total)
                } else if cmd_started.is_none() && now >= vm_started + limits.boot {
                    BootErrorKind::BootTimeout(limits.boot)
                } else if cmd_started.is_none() && now >= last_line + limits.silence {
                    BootErrorKind::Silent(limits.silence)
                } else {
                    continue;
                };
                return end_with(&mut child, kind, &console, stderr);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // The console closed: QEMU is exiting.
    let status = child.wait().ok();
    let vm_exited = Instant::now();
    let err = stderr.take();
    match exited {
        Some((s, at)) => Ok(Outcome {
            status: s,
            vm_started,
            cmd_started: cmd_started.unwrap_or(at),
            cmd_exited: at,
            vm_exited,
            clean_exit: true,
        }),
        None => Err(fail(BootErrorKind::Exited(status), &console, err)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn quick() -> Limits {
        Limits {
            silence: Duration::from_millis(800),
            boot: Duration::from_secs(3),
            total: Duration::from_secs(6),
            shutdown: Duration::from_millis(500),
        }
    }

    fn go(script: &str) -> (Result<Outcome, BootError>, Vec<String>, Duration) {
        let mut out = Vec::new();
        let t = Instant::now();
        let r = watch(
            sh(script),
            &quick(),
            &AtomicBool::new(false),
            &mut |l, e| {
                if let Event::Output(_) = e {
                    out.push(l.to_string());
                }
            },
        );
        (r, out, t.elapsed())
    }

    #[test]
    fn a_good_run_gives_the_status_and_output() {
        let (r, out, _) = go("echo boot; echo LODE-STAGE initramfs; echo LODE-CMD-START; echo hi; echo LODE-CMD-EXIT 7");
        let o = r.unwrap();
        assert_eq!(o.status, 7);
        assert!(o.clean_exit);
        assert_eq!(out, ["hi"]);
    }

    #[test]
    fn an_init_error_ends_the_run_at_once() {
        let (r, _, took) = go(
            "echo LODE-STAGE modules; echo 'LODE-ERROR no virtio block device appeared'; sleep 30",
        );
        let e = r.unwrap_err();
        assert!(
            matches!(e.kind, BootErrorKind::Guest(Failure::Init(_))),
            "{e}"
        );
        assert_eq!(e.stage, Stage::Modules);
        let msg = e.to_string();
        assert!(
            msg.contains("no virtio block device") && msg.contains("module load"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn a_halted_guest_ends_the_run() {
        let (r, _, took) = go("echo '[ 1.0] Linux'; echo '[ 9.0] reboot: System halted'; sleep 30");
        let e = r.unwrap_err();
        assert!(
            matches!(e.kind, BootErrorKind::Guest(Failure::Halted(_))),
            "{e}"
        );
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn silence_before_the_command_is_bounded() {
        let (r, _, _) = go("echo '[ 0.1] Linux'; echo LODE-STAGE initramfs; sleep 30");
        let e = r.unwrap_err();
        assert!(matches!(e.kind, BootErrorKind::Silent(_)), "{e}");
        assert_eq!(e.stage, Stage::Initramfs);
        assert!(e.details().contains("LODE-STAGE initramfs"), "{e}");
        // Nothing at all: the stage says so.
        let (r, _, _) = go("sleep 30");
        let e = r.unwrap_err();
        assert_eq!(e.stage, Stage::Firmware);
    }

    #[test]
    fn a_boot_that_keeps_printing_but_never_starts_is_bounded() {
        let (r, _, _) = go("while true; do echo '[ 1] retrying'; sleep 0.2; done");
        let e = r.unwrap_err();
        assert!(matches!(e.kind, BootErrorKind::BootTimeout(_)), "{e}");
    }

    #[test]
    fn a_quiet_command_is_not_a_stall_but_the_total_bound_holds() {
        let (r, _, took) = go("echo LODE-CMD-START; sleep 30");
        let e = r.unwrap_err();
        assert!(matches!(e.kind, BootErrorKind::Timeout(_)), "{e}");
        assert!(took >= Duration::from_secs(6), "took {took:?}");
    }

    #[test]
    fn a_guest_that_stays_up_after_the_command_is_stopped() {
        let (r, _, took) = go("echo LODE-CMD-START; echo LODE-CMD-EXIT 0; sleep 30");
        let o = r.unwrap();
        assert_eq!(o.status, 0);
        assert!(!o.clean_exit);
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn the_guest_reset_is_read_from_qemus_log() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("resets.log");
        let block = |eip: &str| format!("CPU Reset (CPU 0)\nEAX=0 EBX=0\nEIP={eip} EFL=2\n");
        std::fs::write(&log, block("00000000")).unwrap();
        assert_eq!(
            last_reset(&log),
            None,
            "the power-on reset is not the guest's"
        );
        std::fs::write(&log, block("00000000") + &block("ffffffff81000123")).unwrap();
        let r = last_reset(&log).unwrap();
        assert!(r.contains("EIP=ffffffff81000123"), "{r}");
        assert_eq!(last_reset(&t.path().join("none")), None);
    }

    #[test]
    fn a_stop_ends_the_run_and_long_lines_are_cut() {
        let stop = AtomicBool::new(false);
        let mut longest = 0;
        let t = Instant::now();
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(1500));
                stop.store(true, Ordering::Relaxed);
            });
            watch(
                sh("echo LODE-CMD-START; head -c 300000 /dev/zero | tr '\\0' x; echo; sleep 30"),
                &quick(),
                &stop,
                &mut |l, _| longest = longest.max(l.len()),
            )
        });
        let e = r.unwrap_err();
        assert!(matches!(e.kind, BootErrorKind::Stopped), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(longest, MAX_LINE);
    }

    #[test]
    fn qemu_exiting_early_says_so_with_its_stderr() {
        let (r, _, _) = go("echo 'qemu: could not load kernel' >&2; exit 1");
        let e = r.unwrap_err();
        assert!(matches!(e.kind, BootErrorKind::Exited(_)), "{e}");
        assert!(e.details().contains("could not load kernel"), "{e}");
    }
}
