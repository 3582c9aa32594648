//! The worker: slots and memory, warm sandboxes and their keep-alive, and
//! what it reports to the manager.
//!
//! An invocation goes to the sandbox the manager named if it is idle and
//! runs this function (`FunctionSpec::sandbox_key`), else to another idle
//! sandbox of the function (most recently used), else to a new one (a cold
//! start). A cold start needs a free slot and the function's memory; when
//! there are none, idle sandboxes of other functions are stopped, least
//! recently used first; when that cannot make room either, the invocation
//! is refused with `TooManyRequestsException`. A sandbox that timed out,
//! whose runtime exited or whose VM failed is stopped and its overlay
//! dropped; an idle one is stopped after the keep-alive. The images the
//! report lists as warm come from the agent's caches ([`crate::warm`]).

use crate::env::random_hex;
use crate::sandbox::{Ended, Host, Sandbox, StartError, StartTimings};
use crate::warm::WarmImages;
use bytes::Bytes;
use lode_common::prom;
use lode_lambda::{
    ErrorKind, InvokeOutcome, InvokeRequest, InvokeResult, LambdaError, SandboxReport, Timings,
    WorkerReport, MAX_PAYLOAD,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::Instrument;

/// A worker's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker id.
    pub id: String,
    /// Base URL the manager reaches it at.
    pub url: String,
    /// Sandboxes at once.
    pub slots: u32,
    /// Guest memory to hand out, MiB.
    pub memory_mib: u64,
    /// How long an idle sandbox stays warm.
    pub keep_alive: Duration,
}

/// Why an invocation was refused (a [`LambdaError`] on the wire).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No slot or memory, even after stopping idle sandboxes.
    #[error("worker {worker} has no capacity for {memory} MiB ({used} of {total} MiB, {live} of {slots} slots in use)")]
    NoCapacity {
        /// Worker id.
        worker: String,
        /// Memory asked for.
        memory: u32,
        /// Memory in use.
        used: u64,
        /// Memory in all.
        total: u64,
        /// Sandboxes live.
        live: u32,
        /// Slots in all.
        slots: u32,
    },
    /// The payload is over 6 MB.
    #[error("the payload is {0} bytes; at most {MAX_PAYLOAD} are accepted")]
    TooLarge(usize),
    /// The function has nothing to run.
    #[error("function {0} has no entry point or command (neither its ImageConfig nor its image sets one)")]
    NoEntryPoint(String),
    /// The sandbox could not start.
    #[error("function {function}: {source}")]
    Start {
        /// Function ARN.
        function: String,
        /// What failed.
        #[source]
        source: StartError,
    },
}

impl WorkerError {
    /// The Lambda error this is on the wire.
    pub fn to_lambda(&self) -> LambdaError {
        let kind = match self {
            WorkerError::NoCapacity { .. } => ErrorKind::TooManyRequestsException,
            WorkerError::TooLarge(_) => ErrorKind::RequestEntityTooLargeException,
            WorkerError::NoEntryPoint(_) => ErrorKind::InvalidParameterValueException,
            WorkerError::Start {
                source: StartError::Attach { source, .. },
                ..
            } => match source {
                lode_agent::control::ClientError::Refused { status, .. }
                    if (400..500).contains(status) =>
                {
                    ErrorKind::InvalidImageException
                }
                _ => ErrorKind::ResourceNotReadyException,
            },
            WorkerError::Start { .. } => ErrorKind::ResourceNotReadyException,
        };
        LambdaError::new(kind, self.to_string())
    }
}

struct Entry {
    sandbox: Arc<Sandbox>,
    tenant: String,
    memory_mib: u32,
    running: Option<String>,
    idle_since: Instant,
}

#[derive(Default)]
struct State {
    sandboxes: BTreeMap<String, Entry>,
    /// Cold starts under way: (slots, MiB) reserved.
    starting: (u32, u64),
}

impl State {
    fn used(&self) -> (u32, u64) {
        let mem: u64 = self
            .sandboxes
            .values()
            .map(|e| u64::from(e.memory_mib))
            .sum();
        (
            self.sandboxes.len() as u32 + self.starting.0,
            mem + self.starting.1,
        )
    }
}

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Invocations answered (any outcome).
    pub invocations: AtomicU64,
    /// Invocations that started a sandbox.
    pub cold_starts: AtomicU64,
    /// Invocations served by a warm sandbox.
    pub warm_starts: AtomicU64,
    /// Invocations that timed out.
    pub timeouts: AtomicU64,
    /// Invocations that ended with a function error.
    pub function_errors: AtomicU64,
    /// Invocations refused for want of capacity.
    pub throttles: AtomicU64,
    /// Sandboxes that could not start.
    pub start_failures: AtomicU64,
    /// Sandboxes stopped (keep-alive, eviction, failure).
    pub stopped: AtomicU64,
}

/// A worker.
pub struct Worker {
    config: Config,
    host: Host,
    epoch: u64,
    state: Mutex<State>,
    warm: WarmImages,
    /// Told when a sandbox changes state (the reporter sends at once).
    pub changed: Notify,
    /// Counters.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.config.id)
            .finish_non_exhaustive()
    }
}

/// What [`Worker::place`] chose.
enum Placed {
    Warm(Arc<Sandbox>),
    Cold { evicted: Vec<Arc<Sandbox>> },
}

impl Worker {
    /// A worker with `config`, running sandboxes on `host`.
    pub fn new(config: Config, host: Host) -> Worker {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Worker {
            config,
            warm: WarmImages::new(host.agent.clone()),
            host,
            epoch,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            metrics: Metrics::default(),
        }
    }

    /// The worker's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Picks a warm sandbox (marking it busy) or reserves a cold start.
    fn place(&self, req: &InvokeRequest) -> Result<Placed, WorkerError> {
        let key = req.function.sandbox_key();
        let mut st = self.lock();
        let memory = req.function.memory_mib;
        // Same function and revision, and the memory it asks for now.
        let idle_of_key = |e: &Entry| {
            e.running.is_none()
                && e.sandbox.key == key
                && e.memory_mib == memory
                && e.sandbox.ended().is_none()
        };
        let named = req
            .sandbox
            .as_ref()
            .filter(|id| st.sandboxes.get(*id).is_some_and(idle_of_key))
            .cloned();
        let chosen = named.or_else(|| {
            st.sandboxes
                .iter()
                .filter(|(_, e)| idle_of_key(e))
                .max_by_key(|(_, e)| e.idle_since)
                .map(|(id, _)| id.clone())
        });
        if let Some(id) = chosen {
            if let Some(e) = st.sandboxes.get_mut(&id) {
                e.running = Some(req.request_id.clone());
                return Ok(Placed::Warm(e.sandbox.clone()));
            }
        }
        let mem = u64::from(req.function.memory_mib);
        let fits = |st: &State| {
            let (slots, used) = st.used();
            slots < self.config.slots && used + mem <= self.config.memory_mib
        };
        let mut evicted = Vec::new();
        if !fits(&st) {
            // Idle sandboxes of other functions, least recently used first.
            let mut idle: Vec<(Instant, String, u64)> = st
                .sandboxes
                .iter()
                .filter(|(_, e)| e.running.is_none())
                .map(|(id, e)| (e.idle_since, id.clone(), u64::from(e.memory_mib)))
                .collect();
            idle.sort();
            let (slots, used) = st.used();
            let free_slots = self.config.slots.saturating_sub(slots) + idle.len() as u32;
            let free_mem =
                self.config.memory_mib.saturating_sub(used) + idle.iter().map(|i| i.2).sum::<u64>();
            if free_slots == 0 || free_mem < mem {
                let (live, used) = st.used();
                self.metrics.throttles.fetch_add(1, Ordering::Relaxed);
                return Err(WorkerError::NoCapacity {
                    worker: self.config.id.clone(),
                    memory: req.function.memory_mib,
                    used,
                    total: self.config.memory_mib,
                    live,
                    slots: self.config.slots,
                });
            }
            for (_, id, _) in idle {
                if fits(&st) {
                    break;
                }
                if let Some(e) = st.sandboxes.remove(&id) {
                    evicted.push(e.sandbox);
                }
            }
        }
        st.starting.0 += 1;
        st.starting.1 += mem;
        Ok(Placed::Cold { evicted })
    }

    fn unreserve(&self, mem: u32) {
        let mut st = self.lock();
        st.starting.0 = st.starting.0.saturating_sub(1);
        st.starting.1 = st.starting.1.saturating_sub(u64::from(mem));
    }

    /// Stops `sandboxes` in the background.
    fn stop_all(self: &Arc<Self>, sandboxes: Vec<Arc<Sandbox>>) {
        for sb in sandboxes {
            self.metrics.stopped.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move { sb.stop().await });
        }
    }

    /// Runs one invocation.
    pub async fn invoke(self: &Arc<Self>, req: InvokeRequest) -> Result<InvokeResult, WorkerError> {
        let span =
            tracing::info_span!("invoke", request = %req.request_id, function = %req.function.arn);
        self.invoke_inner(req).instrument(span).await
    }

    async fn invoke_inner(
        self: &Arc<Self>,
        req: InvokeRequest,
    ) -> Result<InvokeResult, WorkerError> {
        if req.payload.len() > MAX_PAYLOAD {
            return Err(WorkerError::TooLarge(req.payload.len()));
        }
        if req.function.launch().argv.is_empty() {
            return Err(WorkerError::NoEntryPoint(req.function.arn.clone()));
        }
        let mut timings = Timings::default();
        let (sandbox, warm) = match self.place(&req)? {
            Placed::Warm(sb) => {
                self.metrics.warm_starts.fetch_add(1, Ordering::Relaxed);
                sb.log_tail(true);
                (sb, true)
            }
            Placed::Cold { evicted } => {
                self.stop_all(evicted);
                self.metrics.cold_starts.fetch_add(1, Ordering::Relaxed);
                match self.cold_start(&req, &mut timings).await? {
                    Ok(sb) => (sb, false),
                    Err(failed) => return Ok(failed),
                }
            }
        };
        self.changed.notify_one();
        sandbox.log_line(&format!(
            "START RequestId: {} Version: $LATEST",
            req.request_id
        ));
        let t = Instant::now();
        let timeout = Duration::from_secs(u64::from(req.function.timeout_s.max(1)));
        let ended = sandbox
            .invoke(
                &req.request_id,
                &req.function.arn,
                Bytes::from(req.payload),
                timeout,
            )
            .await;
        timings.invoke_us = t.elapsed().as_micros() as u64;
        sandbox.log_line(&format!("END RequestId: {}", req.request_id));
        sandbox.log_line(&format!(
            "REPORT RequestId: {}\tDuration: {:.2} ms\tMemory Size: {} MB{}",
            req.request_id,
            timings.invoke_us as f64 / 1e3,
            req.function.memory_mib,
            if warm {
                String::new()
            } else {
                format!(
                    "\tInit Duration: {:.2} ms",
                    (timings.boot_us + timings.init_us) as f64 / 1e3
                )
            }
        ));
        let Ended {
            outcome,
            payload,
            reusable,
        } = ended;
        {
            let mut st = self.lock();
            if reusable && sandbox.ended().is_none() {
                if let Some(e) = st.sandboxes.get_mut(&sandbox.id) {
                    e.running = None;
                    e.idle_since = Instant::now();
                }
            } else if st.sandboxes.remove(&sandbox.id).is_some() {
                drop(st);
                self.stop_all(vec![sandbox.clone()]);
            }
        }
        self.changed.notify_one();
        Ok(self.result(&req.request_id, outcome, payload, &sandbox, warm, timings))
    }

    fn result(
        &self,
        request_id: &str,
        outcome: InvokeOutcome,
        payload: Vec<u8>,
        sandbox: &Sandbox,
        warm: bool,
        timings: Timings,
    ) -> InvokeResult {
        self.metrics.invocations.fetch_add(1, Ordering::Relaxed);
        if let InvokeOutcome::FunctionError { error_type } = &outcome {
            self.metrics.function_errors.fetch_add(1, Ordering::Relaxed);
            if error_type == "Sandbox.Timedout" {
                self.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(error_type = %error_type, sandbox = %sandbox.id, "function error");
        }
        InvokeResult {
            request_id: request_id.to_string(),
            outcome,
            payload,
            log_tail: sandbox.log_tail(false),
            worker: self.config.id.clone(),
            sandbox: sandbox.id.clone(),
            warm,
            timings,
        }
    }

    /// Starts a sandbox for `req` (its capacity reserved): `Ok(Ok(sandbox))`
    /// once the runtime waits for the event, `Ok(Err(result))` when the
    /// function failed its init (the sandbox is stopped).
    async fn cold_start(
        self: &Arc<Self>,
        req: &InvokeRequest,
        timings: &mut Timings,
    ) -> Result<Result<Arc<Sandbox>, InvokeResult>, WorkerError> {
        let spec = &req.function;
        let id = format!("s{}", random_hex(8));
        let started = Sandbox::start(&self.host, id.clone(), spec).await;
        let (sandbox, t) = match started {
            Ok(s) => s,
            Err(source) => {
                self.unreserve(spec.memory_mib);
                self.metrics.start_failures.fetch_add(1, Ordering::Relaxed);
                return Err(WorkerError::Start {
                    function: spec.arn.clone(),
                    source,
                });
            }
        };
        let sandbox = Arc::new(sandbox);
        {
            let mut st = self.lock();
            st.starting.0 = st.starting.0.saturating_sub(1);
            st.starting.1 = st.starting.1.saturating_sub(u64::from(spec.memory_mib));
            st.sandboxes.insert(
                id.clone(),
                Entry {
                    sandbox: sandbox.clone(),
                    tenant: spec.tenant.clone(),
                    memory_mib: spec.memory_mib,
                    running: Some(req.request_id.clone()),
                    idle_since: Instant::now(),
                },
            );
        }
        self.changed.notify_one();
        timings.attach_us = t.attach_us;
        let ready = sandbox
            .wait_ready(self.host.init_timeout, &req.request_id)
            .await;
        let fail = |w: &Arc<Self>| {
            w.lock().sandboxes.remove(&id);
            w.stop_all(vec![sandbox.clone()]);
            w.changed.notify_one();
        };
        match ready {
            Ok(StartTimings {
                boot_us, init_us, ..
            }) => {
                timings.boot_us = boot_us;
                timings.init_us = init_us;
                tracing::info!(sandbox = %id, attach_us = timings.attach_us, boot_us, init_us, "sandbox ready");
                Ok(Ok(sandbox))
            }
            Err(Ok((outcome, payload))) => {
                fail(self);
                Ok(Err(self.result(
                    &req.request_id,
                    outcome,
                    payload,
                    &sandbox,
                    false,
                    timings.clone(),
                )))
            }
            Err(Err(source)) => {
                fail(self);
                self.metrics.start_failures.fetch_add(1, Ordering::Relaxed);
                Err(WorkerError::Start {
                    function: spec.arn.clone(),
                    source,
                })
            }
        }
    }

    /// Stops idle sandboxes past the keep-alive and those whose VM ended;
    /// returns how many.
    pub fn reap(self: &Arc<Self>) -> usize {
        let keep = self.config.keep_alive;
        let gone: Vec<Arc<Sandbox>> = {
            let mut st = self.lock();
            let ids: Vec<String> = st
                .sandboxes
                .iter()
                .filter(|(_, e)| {
                    e.running.is_none()
                        && (e.idle_since.elapsed() >= keep || e.sandbox.ended().is_some())
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| st.sandboxes.remove(id).map(|e| e.sandbox))
                .collect()
        };
        let n = gone.len();
        if n > 0 {
            tracing::info!(sandboxes = n, "stopping idle sandboxes");
            self.stop_all(gone);
            self.changed.notify_one();
        }
        n
    }

    /// Runs [`Worker::reap`] every second until the task is dropped.
    pub async fn reaper(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.reap();
        }
    }

    /// Stops every sandbox (worker shutdown) and waits for them.
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Sandbox>> = std::mem::take(&mut self.lock().sandboxes)
            .into_values()
            .map(|e| e.sandbox)
            .collect();
        let stops = all.iter().map(|s| s.stop());
        for s in stops {
            s.await;
        }
    }

    /// What the worker tells the manager: its capacity, its sandboxes, and
    /// the images the agent's caches still hold most of what VMs read of
    /// ([`WarmImages`]; none when the agent cannot be asked).
    pub async fn report(&self) -> WorkerReport {
        let images = self.warm.digests().await;
        self.snapshot(images)
    }

    /// The report with `images` as the warm images.
    fn snapshot(&self, images: Vec<String>) -> WorkerReport {
        let st = self.lock();
        let (_, used) = st.used();
        WorkerReport {
            worker: self.config.id.clone(),
            epoch: self.epoch,
            url: self.config.url.clone(),
            slots: self.config.slots,
            memory_mib: self.config.memory_mib,
            used_memory_mib: used,
            sandboxes: st
                .sandboxes
                .iter()
                .map(|(id, e)| SandboxReport {
                    id: id.clone(),
                    key: e.sandbox.key.clone(),
                    tenant: e.tenant.clone(),
                    memory_mib: e.memory_mib,
                    running: e.running.clone(),
                    idle_ms: if e.running.is_some() {
                        0
                    } else {
                        e.idle_since.elapsed().as_millis() as u64
                    },
                })
                .collect(),
            images,
        }
    }

    /// Prometheus text of the worker's counters and gauges.
    pub fn render_metrics(&self, out: &mut String) {
        let m = &self.metrics;
        for (name, help, v) in [
            (
                "lode_worker_invocations_total",
                "Invocations answered.",
                &m.invocations,
            ),
            (
                "lode_worker_cold_starts_total",
                "Invocations that started a sandbox.",
                &m.cold_starts,
            ),
            (
                "lode_worker_warm_starts_total",
                "Invocations served by a warm sandbox.",
                &m.warm_starts,
            ),
            (
                "lode_worker_timeouts_total",
                "Invocations that timed out.",
                &m.timeouts,
            ),
            (
                "lode_worker_function_errors_total",
                "Invocations that ended with a function error.",
                &m.function_errors,
            ),
            (
                "lode_worker_throttles_total",
                "Invocations refused for want of capacity.",
                &m.throttles,
            ),
            (
                "lode_worker_start_failures_total",
                "Sandboxes that could not start.",
                &m.start_failures,
            ),
            (
                "lode_worker_sandboxes_stopped_total",
                "Sandboxes stopped.",
                &m.stopped,
            ),
        ] {
            prom::single(out, name, prom::Kind::Counter, help, prom::load(v));
        }
        let r = self.snapshot(Vec::new());
        for (name, v) in [
            ("lode_worker_sandboxes", r.sandboxes.len() as u64),
            ("lode_worker_sandboxes_busy", r.busy() as u64),
            ("lode_worker_slots", u64::from(r.slots)),
            ("lode_worker_memory_mib", r.memory_mib),
            ("lode_worker_used_memory_mib", r.used_memory_mib),
        ] {
            prom::describe(
                out,
                name,
                prom::Kind::Gauge,
                "Sandboxes, slots and memory now.",
            );
            prom::sample(out, name, "", v);
        }
    }
}
