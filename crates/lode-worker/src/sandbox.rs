//! One sandbox: the function's pinned image attached through the agent
//! (read-only image, private overlay), a micro-VM booted on it running the
//! entry point, and the Runtime API socket its relay reaches.

use crate::env::{lambda_env, now_ms, rfc3339_ms};
use crate::runtime_api::{self, Answer, Invocation, Ready, RuntimeApi};
use bytes::Bytes;
use lode_agent::control::{AttachRequest, Client, ClientError};
use lode_lambda::{FunctionSpec, InvokeOutcome};
use lode_vm::{Disk, Event, Limits, Network, Reconnect, RunSpec, SandboxLaunch};
use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Bytes of console output kept per sandbox (an invocation's `log_tail`).
pub const LOG_TAIL: usize = 4096;
/// Longest wait for QEMU to go once stopped.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What every sandbox of a worker shares.
#[derive(Debug, Clone)]
pub struct Host {
    /// The agent's control API.
    pub agent: Client,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Base initramfs (`lode vm prepare`).
    pub base_initrd: Arc<Vec<u8>>,
    /// Relay program and leading arguments; the sandbox's socket is appended.
    /// With [`Host::vmm_ids`] it runs as the sandbox's user: it must be
    /// executable by any user ([`crate::jail::check_reachable`]).
    pub relay: Vec<String>,
    /// Directory for the sandboxes' sockets and initramfs files: 0700, or
    /// 0711 with [`Host::vmm_ids`] (each sandbox's own directory inside is
    /// `root:GID` 0710, its Runtime API socket `UID:GID` 0600).
    pub dir: PathBuf,
    /// The user ids the sandboxes' VMMs run under, one per live VMM
    /// (`None`: they run as the worker's user).
    pub vmm_ids: Option<Arc<crate::jail::VmmIds>>,
    /// Longest time from a cold start to the runtime's first `next`.
    pub init_timeout: Duration,
    /// The volumes attached (for a successor after a crash).
    pub ledger: Arc<crate::ledger::Ledger>,
}

/// Why a sandbox could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The agent refused or failed the attach.
    #[error("attaching image {image} through the agent: {source}")]
    Attach {
        /// The image.
        image: String,
        /// What failed.
        #[source]
        source: ClientError,
    },
    /// No user id for the VMM, or it cannot reach its disk socket.
    #[error("confining the sandbox's VMM: {0}")]
    Jail(#[source] crate::jail::JailError),
    /// The Runtime API socket.
    #[error("the sandbox's Runtime API socket: {0}")]
    Socket(#[source] lode_agent::control::sockets::SocketError),
    /// Local files (socket, initramfs).
    #[error("sandbox {path}: {source}")]
    Io {
        /// What was accessed.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The VM did not get to run the entry point.
    #[error("the sandbox's VM did not start: {0}")]
    Boot(String),
    /// The runtime did not ask for an event in time.
    #[error("the runtime did not ask for an event within {} s of the cold start", .0.as_secs())]
    InitTimeout(Duration),
}

/// How a sandbox's VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// The entry point exited with this status (the guest then powered off).
    Exited(i32),
    /// The entry point exited with this status after the guest kernel's
    /// out-of-memory killer killed a process (the function's memory size
    /// was too small).
    OutOfMemory(i32),
    /// The VM failed (`started`: after the entry point started).
    Failed {
        /// Whether the entry point had started.
        started: bool,
        /// What happened.
        message: String,
    },
}

/// The last bytes of a console.
#[derive(Debug, Default)]
struct LogRing(VecDeque<u8>);

impl LogRing {
    fn push(&mut self, line: &[u8]) {
        for part in [line, b"\n"] {
            if part.len() >= LOG_TAIL {
                self.0.clear();
                self.0.extend(&part[part.len() - LOG_TAIL..]);
                continue;
            }
            let over = (self.0.len() + part.len()).saturating_sub(LOG_TAIL);
            self.0.drain(..over);
            self.0.extend(part);
        }
    }
}

/// What a cold start cost, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimings {
    /// Agent attach.
    pub attach_us: u64,
    /// QEMU start to the entry point's start.
    pub boot_us: u64,
    /// Entry point start to its first `next`.
    pub init_us: u64,
}

/// How an invocation in a sandbox ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Success or the function's error.
    pub outcome: InvokeOutcome,
    /// Response or error document.
    pub payload: Vec<u8>,
    /// Whether the sandbox can take another invocation.
    pub reusable: bool,
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    /// Sandbox id.
    pub id: String,
    /// The function's id.
    pub key: String,
    /// Agent volume.
    volume: String,
    api: Arc<RuntimeApi>,
    vm_stop: Arc<AtomicBool>,
    vm_end: watch::Receiver<Option<VmEnd>>,
    started: watch::Receiver<Option<Instant>>,
    vm_started: Instant,
    log: Arc<Mutex<LogRing>>,
    server_stop: watch::Sender<bool>,
    dir: PathBuf,
    agent: Client,
    ledger: Arc<crate::ledger::Ledger>,
}

fn exit_error(request_id: &str, what: &str) -> (InvokeOutcome, Vec<u8>) {
    runtime_error("Runtime.ExitError", request_id, what)
}

fn runtime_error(error_type: &str, request_id: &str, what: &str) -> (InvokeOutcome, Vec<u8>) {
    let doc = serde_json::json!({
        "errorType": error_type,
        "errorMessage": format!("RequestId: {request_id} Error: {what}"),
    });
    (
        InvokeOutcome::FunctionError {
            error_type: error_type.into(),
        },
        doc.to_string().into_bytes(),
    )
}

/// Lambda's words for an exit status: `signal: killed` for 128 + 9.
fn exit_words(status: i32) -> String {
    match status {
        137 => "signal: killed".into(),
        s if s > 128 && s < 160 => format!("signal {}", s - 128),
        s => format!("exit status {s}"),
    }
}

/// Whether a guest console line is the kernel's out-of-memory kill
/// (`Out of memory: Killed process N (name)`, also for a memory cgroup).
pub fn is_oom_kill(line: &str) -> bool {
    line.contains("out of memory: Killed process") || line.contains("Out of memory: Killed process")
}

/// The function error of a VM that ended while running `request_id`.
pub fn vm_end_error(request_id: &str, end: &VmEnd) -> (InvokeOutcome, Vec<u8>) {
    match end {
        VmEnd::Exited(s) => exit_error(
            request_id,
            &format!("Runtime exited with error: {}", exit_words(*s)),
        ),
        VmEnd::OutOfMemory(s) => runtime_error(
            "Runtime.OutOfMemory",
            request_id,
            &format!("Runtime exited with error: {}", exit_words(*s)),
        ),
        VmEnd::Failed { message, .. } => exit_error(
            request_id,
            &format!("Runtime exited: the sandbox's VM failed: {message}"),
        ),
    }
}

impl Sandbox {
    /// Attaches `spec`'s image and boots a sandbox for it (returns once QEMU
    /// runs; see [`Sandbox::wait_ready`]).
    pub async fn start(
        host: &Host,
        id: String,
        spec: &FunctionSpec,
    ) -> Result<(Sandbox, StartTimings), StartError> {
        let t0 = Instant::now();
        let image = spec.image.to_string();
        // The VMM's own user, held until its QEMU is gone (the VM thread
        // drops it); the volume socket is given to it.
        let lease = match &host.vmm_ids {
            Some(ids) => Some(ids.lease().map_err(StartError::Jail)?),
            None => None,
        };
        let attached = host
            .agent
            .attach(&AttachRequest {
                tenant: spec.image.tenant.clone(),
                image: spec.image.name.clone(),
                digest: spec.image.digest.clone(),
                overlay: None,
                rw: true,
                via: Some("nbd".into()),
                owner: lease.as_ref().map(|l| format!("{}:{}", l.uid(), l.gid())),
            })
            .await
            .map_err(|source| StartError::Attach { image, source })?;
        host.ledger.add(&attached.id);
        let timings = StartTimings {
            attach_us: t0.elapsed().as_micros() as u64,
            ..StartTimings::default()
        };
        match Self::boot(host, id, spec, &attached, lease).await {
            Ok(sb) => Ok((sb, timings)),
            Err(e) => {
                match host.agent.detach(&attached.id).await {
                    Ok(_) => host.ledger.remove(&attached.id),
                    Err(d) => {
                        tracing::warn!(volume = %attached.id, error = %d, "cannot detach the volume of a sandbox that did not start")
                    }
                }
                Err(e)
            }
        }
    }

    async fn boot(
        host: &Host,
        id: String,
        spec: &FunctionSpec,
        attached: &lode_agent::control::Attached,
        lease: Option<crate::jail::Lease>,
    ) -> Result<Sandbox, StartError> {
        let dir = host.dir.join(&id);
        let io = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| StartError::Io { path, source }
        };
        let run_as = lease.as_ref().map(crate::jail::Lease::run_as);
        if let Some(r) = &run_as {
            // QEMU reconnects to its disk by path after an agent restart,
            // as its own user.
            crate::jail::check_reachable(&attached.socket, r.uid, r.gid, false)
                .map_err(StartError::Jail)?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        // The relay QEMU spawns connects as the VMM's user: the socket is
        // that user's alone (0600), bound in the still private directory.
        let sock = dir.join("runtime.sock");
        let listener = match &run_as {
            Some(r) => lode_agent::control::sockets::bind_owned(&sock, r.uid, r.gid),
            None => lode_agent::control::sockets::bind_private(&sock),
        }
        .map_err(StartError::Socket)?;
        if let Some(r) = &run_as {
            // Only the sandbox's group may pass; no one but root lists it.
            std::os::unix::fs::chown(&dir, None, Some(r.gid)).map_err(io(&dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o710))
                .map_err(io(&dir))?;
        }
        let api = Arc::new(RuntimeApi::new());
        let (server_stop, rx) = watch::channel(false);
        tokio::spawn(runtime_api::serve(listener, api.clone(), rx));
        let launch = spec.launch();
        let command = match (&spec.command, &spec.entry_point) {
            (Some(c), _) => c.clone(),
            (None, Some(_)) => Vec::new(),
            (None, None) => spec.image_config.cmd.clone().unwrap_or_default(),
        };
        let env = lambda_env(
            spec,
            &launch.env,
            &command,
            lode_vm::sandbox::RUNTIME_API,
            &id,
        );
        let guest = SandboxLaunch {
            argv: launch.argv,
            env,
            working_dir: launch.working_dir,
        };
        let initrd = dir.join("initrd");
        std::fs::write(&initrd, guest.initrd(&host.base_initrd)).map_err(io(&initrd))?;
        let mut relay = host.relay.clone();
        relay.push(sock.display().to_string());
        let run = RunSpec {
            kernel: host.kernel.clone(),
            initrd,
            disk: Disk::Nbd {
                socket: attached.socket.clone(),
                export: attached.export.clone(),
                read_only: false,
            },
            memory_mib: spec.memory_mib,
            quiet: true,
            reset_log: None,
            reconnect: Some(Reconnect::default()),
            network: Some(Network { relay }),
            run_as,
        };
        let limits = Limits {
            silence: host.init_timeout,
            boot: host.init_timeout,
            total: Duration::from_secs(365 * 86_400),
            shutdown: Duration::from_secs(5),
        };
        let vm_stop = Arc::new(AtomicBool::new(false));
        let (end_tx, vm_end) = watch::channel(None);
        let (started_tx, started) = watch::channel(None);
        let log = Arc::new(Mutex::new(LogRing::default()));
        let (stop, ring, sid) = (vm_stop.clone(), log.clone(), id.clone());
        let vm_started = Instant::now();
        std::thread::Builder::new()
            .name(format!("vm-{id}"))
            .spawn(move || {
                // The VMM's user is free again once its QEMU is reaped.
                let _lease = lease;
                let mut oom = false;
                let r = lode_vm::run_stoppable(&run, &limits, &stop, &mut |line, ev| {
                    oom |= is_oom_kill(line);
                    match ev {
                        Event::Output(l) => ring
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(l.as_bytes()),
                        Event::Started => {
                            started_tx.send_replace(Some(Instant::now()));
                        }
                        _ => tracing::trace!(sandbox = %sid, "console: {line}"),
                    }
                });
                let end = match r {
                    Ok(o) if oom => VmEnd::OutOfMemory(o.status),
                    Ok(o) => VmEnd::Exited(o.status),
                    Err(e) => {
                        let details = e.details();
                        if !details.is_empty() && !matches!(e.kind, lode_vm::BootErrorKind::Stopped)
                        {
                            tracing::warn!(sandbox = %sid, "{details}");
                        }
                        VmEnd::Failed {
                            started: started_tx.borrow().is_some(),
                            message: e.to_string(),
                        }
                    }
                };
                end_tx.send_replace(Some(end));
            })
            .map_err(io(&dir))?;
        Ok(Sandbox {
            id,
            key: spec.sandbox_key(),
            volume: attached.id.clone(),
            api,
            vm_stop,
            vm_end,
            started,
            vm_started,
            log,
            server_stop,
            dir,
            agent: host.agent.clone(),
            ledger: host.ledger.clone(),
        })
    }

    /// How the VM ended, if it has.
    pub fn ended(&self) -> Option<VmEnd> {
        self.vm_end.borrow().clone()
    }

    /// Waits (up to `limit`) for the runtime's first `next`: `Ok(timings)`
    /// when it is ready, `Err(Ok((outcome, payload)))` when the function
    /// failed its init (an init error, an entry point that exited),
    /// `Err(Err(e))` when the sandbox did not start.
    pub async fn wait_ready(
        &self,
        limit: Duration,
        request_id: &str,
    ) -> Result<StartTimings, Result<(InvokeOutcome, Vec<u8>), StartError>> {
        let mut ready = self.api.ready();
        let mut end = self.vm_end.clone();
        let r = tokio::select! {
            r = ready.wait_for(|r| r.is_some()) => r.ok().and_then(|r| r.clone()),
            _ = end.wait_for(|e| e.is_some()) => None,
            _ = tokio::time::sleep(limit) => return Err(Err(StartError::InitTimeout(limit))),
        };
        let cmd_started = *self.started.borrow();
        match r {
            Some(Ready::Next(at)) => Ok(StartTimings {
                attach_us: 0,
                boot_us: cmd_started
                    .map(|c| c.duration_since(self.vm_started).as_micros() as u64)
                    .unwrap_or(0),
                init_us: cmd_started
                    .map(|c| at.saturating_duration_since(c).as_micros() as u64)
                    .unwrap_or(0),
            }),
            Some(Ready::InitError { error_type, body }) => Err(Ok((
                InvokeOutcome::FunctionError { error_type },
                body.to_vec(),
            ))),
            None => match self.ended() {
                Some(VmEnd::Failed {
                    started: false,
                    message,
                }) => Err(Err(StartError::Boot(message))),
                Some(e) => Err(Ok(vm_end_error(request_id, &e))),
                None => Err(Err(StartError::Boot("the VM thread ended".into()))),
            },
        }
    }

    /// Runs one invocation: hands the event to the runtime and waits for its
    /// answer, the VM's end, or the timeout.
    pub async fn invoke(
        &self,
        request_id: &str,
        arn: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Ended {
        let deadline_ms = now_ms() + timeout.as_millis() as u64;
        let answer = self.api.submit(Invocation {
            request_id: request_id.to_string(),
            payload,
            deadline_ms,
            arn: arn.to_string(),
            trace_id: crate::env::trace_id(),
        });
        let mut end = self.vm_end.clone();
        tokio::select! {
            a = answer => match a {
                Ok(Answer::Response(b)) => Ended { outcome: InvokeOutcome::Success, payload: b.to_vec(), reusable: true },
                Ok(Answer::Error { error_type, body }) => Ended {
                    outcome: InvokeOutcome::FunctionError { error_type },
                    payload: body.to_vec(),
                    reusable: true,
                },
                Ok(Answer::Abandoned) => {
                    let (outcome, payload) = exit_error(request_id, "the runtime asked for the next event without answering this one");
                    Ended { outcome, payload, reusable: true }
                }
                Err(_) => {
                    let (outcome, payload) = exit_error(request_id, "the sandbox went away");
                    Ended { outcome, payload, reusable: false }
                }
            },
            _ = end.wait_for(|e| e.is_some()) => {
                let e = self.ended().unwrap_or(VmEnd::Exited(-1));
                let (outcome, payload) = vm_end_error(request_id, &e);
                Ended { outcome, payload, reusable: false }
            }
            _ = tokio::time::sleep(timeout) => {
                self.api.cancel();
                let doc = serde_json::json!({
                    "errorMessage": format!(
                        "{} {request_id} Task timed out after {:.2} seconds",
                        rfc3339_ms(now_ms()),
                        timeout.as_secs_f64()
                    ),
                    "errorType": "Sandbox.Timedout",
                });
                Ended {
                    outcome: InvokeOutcome::FunctionError { error_type: "Sandbox.Timedout".into() },
                    payload: doc.to_string().into_bytes(),
                    reusable: false,
                }
            }
        }
    }

    /// Adds a line of the worker's own to the sandbox's log (Lambda's
    /// `START`/`END`/`REPORT` lines).
    pub fn log_line(&self, line: &str) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.as_bytes());
    }

    /// The log's last [`LOG_TAIL`] bytes; `clear` empties it after.
    pub fn log_tail(&self, clear: bool) -> Vec<u8> {
        let mut l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let v: Vec<u8> = l.0.iter().copied().collect();
        if clear {
            l.0.clear();
        }
        v
    }

    /// Stops the VM, the Runtime API, and detaches the volume (its overlay
    /// is dropped).
    pub async fn stop(&self) {
        self.vm_stop.store(true, Ordering::Relaxed);
        self.api.cancel();
        let mut end = self.vm_end.clone();
        if tokio::time::timeout(STOP_WAIT, end.wait_for(|e| e.is_some()))
            .await
            .is_err()
        {
            tracing::warn!(sandbox = %self.id, "the VM did not stop in {STOP_WAIT:?}");
        }
        self.server_stop.send_replace(true);
        match self.agent.detach(&self.volume).await {
            Ok(_) => self.ledger.remove(&self.volume),
            Err(e) => {
                tracing::warn!(sandbox = %self.id, volume = %self.volume, error = %e, "cannot detach the sandbox's volume")
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        tracing::info!(sandbox = %self.id, "sandbox stopped");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_only_its_tail() {
        let mut r = LogRing::default();
        for i in 0..10_000 {
            r.push(format!("line {i}").as_bytes());
        }
        assert_eq!(r.0.len(), LOG_TAIL);
        let s: Vec<u8> = r.0.iter().copied().collect();
        assert!(String::from_utf8_lossy(&s).ends_with("line 9999\n"));
        r.push(&vec![b'x'; 3 * LOG_TAIL]);
        assert_eq!(r.0.len(), LOG_TAIL);
        assert_eq!(r.0.back(), Some(&b'\n'));
        let (o, p) = vm_end_error("r1", &VmEnd::Exited(3));
        assert_eq!(
            o,
            InvokeOutcome::FunctionError {
                error_type: "Runtime.ExitError".into()
            }
        );
        assert!(String::from_utf8_lossy(&p)
            .contains("RequestId: r1 Error: Runtime exited with error: exit status 3"));
        let (o, p) = vm_end_error("r2", &VmEnd::OutOfMemory(137));
        assert_eq!(
            o,
            InvokeOutcome::FunctionError {
                error_type: "Runtime.OutOfMemory".into()
            }
        );
        assert!(String::from_utf8_lossy(&p)
            .contains("RequestId: r2 Error: Runtime exited with error: signal: killed"));
        assert!(is_oom_kill(
            "[   12.345678] Out of memory: Killed process 87 (sort) total-vm:262144kB"
        ));
        assert!(!is_oom_kill("handling r3: out of memory"));
    }
}
