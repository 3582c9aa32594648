//! The manager's state and its placement decision (pure: the server feeds
//! it reports and requests; tests and the routing benchmark drive it
//! directly).

use lode_lambda::{ErrorKind, FunctionSpec, LambdaError, Placement, WorkerReport};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// The manager's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Invocations of one tenant in flight at once (Lambda's account
    /// concurrency; 1,000 by default).
    pub tenant_concurrency: usize,
    /// How long a request waits for capacity before it is shed.
    pub queue_wait: Duration,
    /// Requests waiting for capacity at once; more are shed at once.
    pub waiters: usize,
    /// A worker not heard from for this long gets no new work.
    pub stale_after: Duration,
    /// A worker not heard from for this long is forgotten.
    pub forget_after: Duration,
    /// Extra life of a lease past its function's timeout (a cold start).
    pub lease_slack: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tenant_concurrency: 1000,
            queue_wait: Duration::from_secs(2),
            waiters: 1024,
            stale_after: Duration::from_secs(5),
            forget_after: Duration::from_secs(60),
            lease_slack: Duration::from_secs(600),
        }
    }
}

/// Capacity held for one invocation.
#[derive(Debug, Clone)]
struct Lease {
    worker: String,
    tenant: String,
    memory_mib: u64,
    sandbox: Option<String>,
    expires: Instant,
}

#[derive(Debug)]
struct Worker {
    report: WorkerReport,
    seen: Instant,
    /// Sandboxes held by leases.
    held: HashSet<String>,
    /// Leases on this worker (cold starts and warm ones).
    leases: usize,
    /// Memory held by leases for cold starts.
    cold_memory: u64,
    /// Busy or held slots (kept current: see [`Worker::restat`]).
    load: usize,
    /// Memory of busy or held sandboxes plus cold starts leased since.
    memory_used: u64,
}

impl Worker {
    /// Recomputes `load` and `memory_used`. Idle sandboxes do not count: a
    /// worker stops an idle sandbox to make room for a new one.
    fn restat(&mut self) {
        let (mut busy_unheld, mut mem) = (0, 0);
        for s in &self.report.sandboxes {
            let held = self.held.contains(&s.id);
            if s.running.is_some() && !held {
                busy_unheld += 1;
            }
            if s.running.is_some() || held {
                mem += u64::from(s.memory_mib);
            }
        }
        self.load = busy_unheld + self.leases;
        self.memory_used = mem + self.cold_memory;
    }

    /// Load in millionths of its slots (the order of the least loaded).
    fn load_key(&self) -> u64 {
        self.load as u64 * 1_000_000 / u64::from(self.report.slots.max(1))
    }

    fn fits(&self, memory_mib: u64) -> bool {
        self.load < self.report.slots as usize
            && self.memory_used + memory_mib <= self.report.memory_mib
    }
}

/// Counters of the manager's decisions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Placed on an idle warm sandbox.
    pub warm: u64,
    /// Placed cold on a worker whose cache holds the image.
    pub cold_cached: u64,
    /// Placed cold elsewhere.
    pub cold: u64,
    /// Shed: no capacity in time.
    pub shed_capacity: u64,
    /// Shed: tenant over its concurrency limit.
    pub shed_tenant: u64,
}

/// An idle sandbox in the warm index: (idle ms, worker, sandbox).
type Idle = (u64, String, String);

/// The manager's soft state, with the indexes that keep a decision
/// independent of the fleet's size: idle sandboxes by function revision,
/// workers by cached image, workers by load.
#[derive(Debug)]
pub struct Placer {
    limits: Limits,
    workers: HashMap<String, Worker>,
    leases: HashMap<String, Lease>,
    tenants: HashMap<String, usize>,
    /// Idle sandboxes by [`FunctionSpec::sandbox_key`], as last reported.
    idle: HashMap<String, Vec<Idle>>,
    /// Workers by manifest digest their cache holds.
    cached: HashMap<String, HashSet<String>>,
    /// Workers by (load key, id).
    by_load: BTreeSet<(u64, String)>,
    next_lease: u64,
    nonce: u64,
    /// Decisions so far.
    pub counts: Counts,
}

impl Placer {
    /// An empty manager; `nonce` makes its lease ids differ from a
    /// previous run's.
    pub fn new(limits: Limits, nonce: u64) -> Placer {
        Placer {
            limits,
            workers: HashMap::new(),
            leases: HashMap::new(),
            tenants: HashMap::new(),
            idle: HashMap::new(),
            cached: HashMap::new(),
            by_load: BTreeSet::new(),
            next_lease: 0,
            nonce,
            counts: Counts::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes a worker out of the indexes (before its report changes).
    fn unindex(&mut self, id: &str) {
        let Some(w) = self.workers.get(id) else {
            return;
        };
        for s in &w.report.sandboxes {
            if let Some(v) = self.idle.get_mut(&s.key) {
                v.retain(|(_, wid, _)| wid != id);
                if v.is_empty() {
                    self.idle.remove(&s.key);
                }
            }
        }
        for d in &w.report.images {
            if let Some(set) = self.cached.get_mut(d) {
                set.remove(id);
                if set.is_empty() {
                    self.cached.remove(d);
                }
            }
        }
        self.by_load.remove(&(w.load_key(), id.to_string()));
    }

    /// Puts a worker into the indexes (after its report changed).
    fn index(&mut self, id: &str) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        w.restat();
        for s in &w.report.sandboxes {
            if s.running.is_none() {
                let v = self.idle.entry(s.key.clone()).or_default();
                v.push((s.idle_ms, id.to_string(), s.id.clone()));
                v.sort();
            }
        }
        for d in &w.report.images {
            self.cached
                .entry(d.clone())
                .or_default()
                .insert(id.to_string());
        }
        self.by_load.insert((w.load_key(), id.to_string()));
    }

    /// Re-files a worker by load after a lease or a release.
    fn relevel(&mut self, id: &str, change: impl FnOnce(&mut Worker)) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        self.by_load.remove(&(w.load_key(), id.to_string()));
        change(w);
        w.restat();
        self.by_load.insert((w.load_key(), id.to_string()));
    }

    /// Takes a worker's report. A worker that restarted (new epoch) loses
    /// the sandboxes held for it: they are gone.
    pub fn report(&mut self, report: WorkerReport, now: Instant) {
        let id = report.worker.clone();
        self.unindex(&id);
        match self.workers.get_mut(&id) {
            Some(w) => {
                if w.report.epoch != report.epoch {
                    w.held.clear();
                }
                w.report = report;
                w.seen = now;
            }
            None => {
                tracing::info!(
                    worker = id,
                    url = report.url,
                    slots = report.slots,
                    "worker joined"
                );
                self.workers.insert(
                    id.clone(),
                    Worker {
                        report,
                        seen: now,
                        held: HashSet::new(),
                        leases: 0,
                        cold_memory: 0,
                        load: 0,
                        memory_used: 0,
                    },
                );
            }
        }
        self.index(&id);
    }

    /// Stops placing on `worker` until it reports again.
    pub fn unreachable(&mut self, worker: &str) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.seen = Instant::now() - self.limits.stale_after - Duration::from_secs(1);
        }
    }

    /// Forgets silent workers and expired leases.
    pub fn expire(&mut self, now: Instant) {
        let forget = self.limits.forget_after;
        let silent: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.seen) >= forget)
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            tracing::warn!(worker = id, "worker silent; forgotten");
            self.unindex(&id);
            self.workers.remove(&id);
        }
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.release(&k);
        }
    }

    /// Places one invocation now, or says why not: `Ok(None)` means no
    /// capacity at the moment (wait and retry), an error means shed.
    pub fn place(
        &mut self,
        f: &FunctionSpec,
        now: Instant,
    ) -> Result<Option<Placement>, LambdaError> {
        let in_flight = self.tenants.get(&f.tenant).copied().unwrap_or(0);
        if in_flight >= self.limits.tenant_concurrency {
            self.counts.shed_tenant += 1;
            return Err(LambdaError::new(
                ErrorKind::TooManyRequestsException,
                format!(
                    "Rate Exceeded: tenant {} has {in_flight} invocations in flight, its limit",
                    f.tenant
                ),
            ));
        }
        let stale = self.limits.stale_after;
        let live = |w: &Worker| now.duration_since(w.seen) < stale;
        // 1. The most recently used idle warm sandbox of this revision.
        let warm = self.idle.get(&f.sandbox_key()).and_then(|v| {
            v.iter().find(|(_, wid, sid)| {
                self.workers
                    .get(wid)
                    .is_some_and(|w| live(w) && !w.held.contains(sid))
            })
        });
        if let Some((_, wid, sid)) = warm.cloned() {
            self.counts.warm += 1;
            return Ok(Some(self.lease(&wid, f, Some(sid), true, now)));
        }
        // 2. The least loaded worker with room that caches the image.
        let need = u64::from(f.memory_mib);
        let digest = f.image.digest.as_deref().unwrap_or_default();
        let cached = self.cached.get(digest).and_then(|set| {
            set.iter()
                .filter_map(|id| self.workers.get(id).map(|w| (w, id)))
                .filter(|(w, _)| live(w) && w.fits(need))
                .map(|(w, id)| (w.load_key(), id))
                .min()
                .map(|(_, id)| id.clone())
        });
        if let Some(wid) = cached {
            self.counts.cold_cached += 1;
            return Ok(Some(self.lease(&wid, f, None, true, now)));
        }
        // 3. The least loaded worker with room.
        let any = self
            .by_load
            .iter()
            .take_while(|(load, _)| *load < 1_000_000)
            .find(|(_, id)| {
                self.workers
                    .get(id)
                    .is_some_and(|w| live(w) && w.fits(need))
            })
            .map(|(_, id)| id.clone());
        let Some(wid) = any else {
            return Ok(None);
        };
        self.counts.cold += 1;
        Ok(Some(self.lease(&wid, f, None, false, now)))
    }

    fn lease(
        &mut self,
        wid: &str,
        f: &FunctionSpec,
        sandbox: Option<String>,
        cached: bool,
        now: Instant,
    ) -> Placement {
        self.next_lease += 1;
        let id = format!("{:016x}-{}", self.nonce, self.next_lease);
        let memory_mib = if sandbox.is_none() {
            u64::from(f.memory_mib)
        } else {
            0
        };
        self.relevel(wid, |w| {
            w.leases += 1;
            w.cold_memory += memory_mib;
            if let Some(s) = &sandbox {
                w.held.insert(s.clone());
            }
        });
        let url = self
            .workers
            .get(wid)
            .map(|w| w.report.url.clone())
            .unwrap_or_default();
        *self.tenants.entry(f.tenant.clone()).or_default() += 1;
        let life = Duration::from_secs(u64::from(f.timeout_s)) + self.limits.lease_slack;
        self.leases.insert(
            id.clone(),
            Lease {
                worker: wid.to_string(),
                tenant: f.tenant.clone(),
                memory_mib,
                sandbox: sandbox.clone(),
                expires: now + life,
            },
        );
        Placement {
            lease: id,
            worker: wid.to_string(),
            url,
            sandbox,
            cached,
            placement_us: 0,
        }
    }

    /// The worker a lease is on.
    pub fn lease_worker(&self, lease: &str) -> Option<String> {
        self.leases.get(lease).map(|l| l.worker.clone())
    }

    /// Gives a lease's capacity back; `false` for an unknown lease (a
    /// previous run's, or released already).
    pub fn release(&mut self, lease: &str) -> bool {
        let Some(l) = self.leases.remove(lease) else {
            return false;
        };
        self.relevel(&l.worker, |w| {
            w.leases = w.leases.saturating_sub(1);
            w.cold_memory = w.cold_memory.saturating_sub(l.memory_mib);
            if let Some(s) = &l.sandbox {
                w.held.remove(s);
            }
        });
        if let Some(n) = self.tenants.get_mut(&l.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.tenants.remove(&l.tenant);
            }
        }
        true
    }

    /// Workers known, and those heard from recently.
    pub fn workers(&self, now: Instant) -> (usize, usize) {
        let live = self
            .workers
            .values()
            .filter(|w| now.duration_since(w.seen) < self.limits.stale_after)
            .count();
        (self.workers.len(), live)
    }

    /// Leases held.
    pub fn leases(&self) -> usize {
        self.leases.len()
    }

    /// The reports held, for `/v1/state`.
    pub fn reports(&self) -> Vec<&WorkerReport> {
        let mut v: Vec<&WorkerReport> = self.workers.values().map(|w| &w.report).collect();
        v.sort_by(|a, b| a.worker.cmp(&b.worker));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_lambda::{ImageRef, SandboxReport};

    fn spec(name: &str, tenant: &str) -> FunctionSpec {
        FunctionSpec {
            tenant: tenant.into(),
            name: name.into(),
            arn: format!("arn:aws:lambda:r:1:function:{name}"),
            revision: 1,
            image: format!("{tenant}/img@sha256:{}", "a".repeat(64))
                .parse::<ImageRef>()
                .unwrap(),
            memory_mib: 256,
            timeout_s: 3,
            environment: Default::default(),
            entry_point: None,
            command: None,
            working_directory: None,
            image_config: Default::default(),
        }
    }

    fn worker(
        id: &str,
        slots: u32,
        images: &[&str],
        sandboxes: Vec<SandboxReport>,
    ) -> WorkerReport {
        WorkerReport {
            worker: id.into(),
            epoch: 1,
            url: format!("http://127.0.0.1/{id}"),
            slots,
            memory_mib: 4096,
            used_memory_mib: sandboxes.iter().map(|s| u64::from(s.memory_mib)).sum(),
            sandboxes,
            images: images.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sandbox(id: &str, key: &str, busy: bool, idle_ms: u64) -> SandboxReport {
        SandboxReport {
            id: id.into(),
            key: key.into(),
            tenant: "t".into(),
            memory_mib: 256,
            running: busy.then(|| "r".to_string()),
            idle_ms,
        }
    }

    #[test]
    fn warm_then_cached_then_least_loaded() {
        let now = Instant::now();
        let f = spec("f", "t");
        let digest = f.image.digest.clone().unwrap();
        let mut p = Placer::new(Limits::default(), 7);
        p.report(
            worker(
                "a",
                4,
                &[],
                vec![
                    sandbox("s1", &f.sandbox_key(), false, 500),
                    sandbox("s2", &f.sandbox_key(), false, 10),
                ],
            ),
            now,
        );
        p.report(worker("b", 4, &[&digest], vec![]), now);
        p.report(worker("c", 4, &[], vec![]), now);
        // The most recently used warm sandbox, then the other, then cold on
        // the worker that caches the image.
        let first = p.place(&f, now).unwrap().unwrap();
        assert_eq!(
            (first.worker.as_str(), first.sandbox.as_deref()),
            ("a", Some("s2"))
        );
        let second = p.place(&f, now).unwrap().unwrap();
        assert_eq!(second.sandbox.as_deref(), Some("s1"));
        let third = p.place(&f, now).unwrap().unwrap();
        assert_eq!(
            (
                third.worker.as_str(),
                third.sandbox.as_deref(),
                third.cached
            ),
            ("b", None, true)
        );
        // Another function's image is cached nowhere: the least loaded wins.
        let g = spec("g", "t");
        let mut g2 = g.clone();
        g2.image.digest = Some(format!("sha256:{}", "b".repeat(64)));
        let fourth = p.place(&g2, now).unwrap().unwrap();
        assert_eq!(fourth.worker, "c");
        assert!(p.release(&first.lease));
        assert!(!p.release(&first.lease));
        assert_eq!(
            p.place(&f, now).unwrap().unwrap().sandbox.as_deref(),
            Some("s2")
        );
        assert_eq!(p.counts.warm, 3);
    }

    #[test]
    fn capacity_and_tenant_limits_hold() {
        let now = Instant::now();
        let mut p = Placer::new(
            Limits {
                tenant_concurrency: 3,
                ..Limits::default()
            },
            1,
        );
        p.report(worker("a", 2, &[], vec![]), now);
        let f = spec("f", "t");
        let l1 = p.place(&f, now).unwrap().unwrap();
        let _l2 = p.place(&f, now).unwrap().unwrap();
        assert!(p.place(&f, now).unwrap().is_none(), "2 slots, 2 leases");
        p.report(worker("b", 8, &[], vec![]), now);
        let _l3 = p.place(&f, now).unwrap().unwrap();
        let shed = p.place(&f, now).unwrap_err();
        assert_eq!(shed.kind, ErrorKind::TooManyRequestsException);
        assert!(
            p.place(&spec("x", "other"), now).unwrap().is_some(),
            "another tenant is not limited"
        );
        p.release(&l1.lease);
        assert!(p.place(&f, now).unwrap().is_some());
        // A silent worker gets no work; leases expire.
        let later = now + Duration::from_secs(6);
        p.report(worker("b", 8, &[], vec![]), later);
        p.unreachable("b");
        assert!(p.place(&spec("y", "u"), later).unwrap().is_none());
        p.expire(later + Duration::from_secs(3 + 601));
        assert_eq!(p.leases(), 0);
    }

    #[test]
    fn memory_is_held_for_cold_starts() {
        let now = Instant::now();
        let mut p = Placer::new(Limits::default(), 1);
        let mut w = worker("a", 100, &[], vec![]);
        w.memory_mib = 600;
        p.report(w, now);
        let f = spec("f", "t");
        assert!(p.place(&f, now).unwrap().is_some());
        assert!(p.place(&f, now).unwrap().is_some());
        assert!(
            p.place(&f, now).unwrap().is_none(),
            "600 MiB hold two 256 MiB guests"
        );
    }
}
