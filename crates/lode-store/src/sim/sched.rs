//! One schedule: actors (the real push, rm, rotate, GC and read code) run
//! as tasks whose store requests wait at the turnstile; the scheduler grants
//! one request at a time, chosen by a seeded generator, moves the virtual
//! clock, injects crashes and failures, and checks the invariants after
//! every step. Then the store goes quiet, GC runs a bounded number of
//! passes, and the store must hold exactly the live set.

use super::check::Checker;
use super::world::{Grant, Op, Rng, SimEnv, SimKeys, SimStore, ACTOR};
use crate::env::Environment;
use crate::gc::{gc_pass, GcOptions};
use crate::store::Store;
use crate::{PushOptions, StoreError};
use lode_chunk::KeyProvider;
use object_store::ObjectStoreExt;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Requests that wait longer than this fail (a client's request timeout).
const OP_TIMEOUT_MS: u64 = 10_000;
/// GC lease length in the simulation.
const LEASE_MS: u64 = 60_000;
/// Chunk size of simulated images (the smallest a manifest allows).
const CS: usize = 4096;
/// Steps after which a schedule is cut short (no livelock goes unnoticed).
const MAX_STEPS: usize = 4000;
/// GC passes allowed for the quiet store to converge.
pub const CONVERGE_PASSES: usize = 4;

const TENANTS: [&str; 2] = ["t1", "t2"];
const NAMES: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug)]
enum Action {
    Push {
        tenant: usize,
        name: usize,
        content: usize,
    },
    Rm {
        tenant: usize,
        name: usize,
    },
    Rotate,
    Gc {
        passes: usize,
        rotate_after: Option<u64>,
    },
    Read {
        tenant: usize,
        name: usize,
        reads: usize,
    },
    /// A function: pins the image's current version, reads it, and (if
    /// `unpin`) lets it go.
    Pin {
        tenant: usize,
        name: usize,
        reads: usize,
        unpin: bool,
    },
}

/// What the actors report.
#[derive(Debug, Default)]
struct Log {
    /// Contents ever pushed per image.
    pushed: BTreeMap<(usize, usize), BTreeSet<usize>>,
    /// Agent reads that failed: (opened at, read at, error).
    read_failures: Vec<(u64, u64, String)>,
    /// Errors no fault explains.
    unexpected: Vec<String>,
    /// Pins that `Store::pin` accepted (their object paths).
    pinned: BTreeSet<String>,
    /// Pins accepted and refused.
    pin_outcomes: (usize, usize),
    /// Manifests pushes published, per image.
    published: BTreeMap<(usize, usize), Vec<String>>,
    /// Reads of a pinned version that failed (no fault explains them).
    pin_read_failures: Vec<String>,
}

/// What a schedule did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Steps (requests granted or failed).
    pub steps: usize,
    /// Actors crashed.
    pub crashes: usize,
    /// Images live at the end.
    pub live: usize,
    /// Roots deleted during the schedule.
    pub roots_deleted: usize,
    /// Alarms recorded during the schedule.
    pub alarms: usize,
    /// Pins accepted, and refused as unsafe.
    pub pins: (usize, usize),
    /// Hash of every object's path and bytes at the end (replay check).
    pub fingerprint: u64,
}

/// Deterministic block `k` of the content pool (0: zeros, a hole).
fn block(k: usize) -> Vec<u8> {
    if k == 0 {
        return vec![0; CS];
    }
    let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ k as u64);
    (0..CS).map(|_| r.next() as u8).collect()
}

/// Image content `id`: 1–3 chunks from a pool of 5 blocks, so images share
/// chunks within and across tenants; some end with a partial chunk.
pub fn content(id: usize) -> Vec<u8> {
    let mut r = Rng(id as u64 * 7919 + 13);
    let n = 1 + r.below(3) as usize;
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend(block(r.below(5) as usize));
    }
    if r.chance(300) {
        out.truncate(out.len() - 1000);
    }
    out
}

fn trace() -> bool {
    std::env::var_os("LODE_SIM_TRACE").is_some()
}

fn tolerable(e: &StoreError) -> bool {
    // Injected failures, lost or held leases, missing images, roots retired
    // under a push: all expected under faults and races.
    let s = e.to_string();
    s.contains("injected failure")
        || matches!(
            e,
            StoreError::LeaseHeld { .. }
                | StoreError::LeaseLost { .. }
                | StoreError::ImageNotFound { .. }
                | StoreError::ImageRemoved { .. }
                | StoreError::Contended { .. }
                | StoreError::Roots(_)
                | StoreError::ChunkMissing { .. }
                | StoreError::PinRefused { .. }
        )
}

struct World {
    env: Arc<SimEnv>,
    sim: Arc<SimStore>,
    keys: Arc<dyn KeyProvider>,
    retire_ms: u64,
    expire_ms: u64,
}

impl World {
    fn store(&self, reader: &str) -> Store {
        Store::from_object_store(self.sim.clone(), "sim://")
            .with_env(self.env.clone())
            .with_reader(reader)
    }
}

async fn act(w: Arc<World>, id: usize, a: Action, log: Arc<Mutex<Log>>, file: PathBuf) {
    let note = |e: StoreError, what: &str| {
        if !tolerable(&e) {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .unexpected
                .push(format!("actor {id} {what}: {e}"));
        }
    };
    match a {
        Action::Push {
            tenant,
            name,
            content: c,
        } => {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .pushed
                .entry((tenant, name))
                .or_default()
                .insert(c);
            let opts = PushOptions {
                concurrency: 1,
                chunk_size: CS as u32,
                ..PushOptions::default()
            };
            let s = w.store("push");
            match crate::push_file(
                &s,
                w.keys.clone(),
                &file,
                TENANTS[tenant],
                NAMES[name],
                &opts,
            )
            .await
            {
                Ok(r) => log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .published
                    .entry((tenant, name))
                    .or_default()
                    .push(r.manifest),
                Err(e) => note(e, "push"),
            }
        }
        Action::Rm { tenant, name } => {
            let s = w.store("rm");
            if let Err(e) =
                crate::remove_image(&s, w.keys.as_ref(), TENANTS[tenant], NAMES[name]).await
            {
                note(e, "rm");
            }
        }
        Action::Rotate => {
            if let Err(e) = w.store("root").rotate_root(w.keys.as_ref()).await {
                note(e, "rotate");
            }
        }
        Action::Gc {
            passes,
            rotate_after,
        } => {
            let s = w.store("gc");
            let opts = GcOptions {
                rotate_after: rotate_after.map(Duration::from_millis),
                retire_after: Duration::from_millis(w.retire_ms),
                expire_after: Duration::from_millis(w.expire_ms),
                lease: Duration::from_millis(LEASE_MS),
                concurrency: 1,
                holder: Some(format!("gc-{id}")),
                ..GcOptions::default()
            };
            let (mut done, mut waits) = (0, 0);
            while done < passes {
                let r = gc_pass(&s, w.keys.clone(), &opts).await;
                // Another collector holds the lease: come back later (each
                // attempt is a request, so the clock moves meanwhile).
                if matches!(r, Err(StoreError::LeaseHeld { .. })) && waits < 40 {
                    waits += 1;
                    continue;
                }
                done += 1;
                match r {
                    Err(e) => {
                        if trace() {
                            eprintln!("actor {id} gc: {e}");
                        }
                        note(e, "gc")
                    }
                    Ok(r) => {
                        if trace() {
                            eprintln!(
                                "actor {id} gc at {}: created {:?} retired {:?} migrated {} expired {:?} deleted {} halted {} live {} notmig {:?}",
                                w.env.now_ms() / 1000 % 100000,
                                r.created_root, r.retired_roots, r.migration.images, r.expired_roots,
                                r.deleted_roots.len(), r.deletion_halted, r.live_images, r.not_migrated
                            );
                        }
                    }
                }
            }
        }
        Action::Pin {
            tenant,
            name,
            reads,
            unpin,
        } => {
            let s = w.store("function");
            let (t, n) = (TENANTS[tenant], NAMES[name]);
            // The current version, or (as `T/NAME@DIGEST` names it) an
            // older one that a push published.
            let mut r = Rng(id as u64 + 91);
            let older = log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .published
                .get(&(tenant, name))
                .filter(|v| !v.is_empty() && r.chance(500))
                .map(|v| v[r.below(v.len() as u64) as usize].clone());
            let digest = match older {
                Some(d) => d,
                None => match crate::open_image(&s, w.keys.as_ref(), t, n).await {
                    Ok(i) => i.digest,
                    Err(e) => return note(e, "open to pin"),
                },
            };
            let pin = match s.pin(t, n, &digest, &format!("sim.{id}")).await {
                Ok(p) => p,
                Err(e) => {
                    if matches!(e, StoreError::PinRefused { .. }) {
                        log.lock().unwrap_or_else(|p| p.into_inner()).pin_outcomes.1 += 1;
                    }
                    return note(e, "pin");
                }
            };
            log.lock().unwrap_or_else(|p| p.into_inner()).pin_outcomes.0 += 1;
            if let Ok(path) = pin.path() {
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pinned
                    .insert(path.to_string());
            }
            // While pinned, the version opens and every chunk reads.
            for _ in 0..reads {
                let got = async {
                    let img = crate::open_image_at(&s, w.keys.as_ref(), t, n, &pin.digest).await?;
                    let m = &img.manifest;
                    let i = r.below(m.names.len() as u64) as usize;
                    if let (Some(c), Some(secret)) = (m.names[i], img.keys.0[i]) {
                        let ct = s.get_chunk(&m.root, &c).await?;
                        lode_chunk::open_chunk(i as u64, &c, &secret, ct.to_vec())?;
                    }
                    Ok::<(), StoreError>(())
                }
                .await;
                if let Err(e) = got {
                    if !e.to_string().contains("injected failure") {
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .pin_read_failures
                            .push(format!(
                                "actor {id} read of pinned {t}/{n}@{}: {e}",
                                pin.digest
                            ));
                    }
                }
            }
            if unpin {
                if let Err(e) = s.unpin(&pin).await {
                    note(e, "unpin");
                }
            }
        }
        Action::Read {
            tenant,
            name,
            reads,
        } => {
            // An agent: opens the image once and keeps reading its chunks.
            let s = w.store("agent");
            let opened_at = w.env.now_ms();
            let img =
                match crate::open_image(&s, w.keys.as_ref(), TENANTS[tenant], NAMES[name]).await {
                    Ok(i) => i,
                    Err(e) => return note(e, "open"),
                };
            let mut r = Rng(id as u64 + 77);
            let m = &img.manifest;
            for _ in 0..reads {
                let i = r.below(m.names.len() as u64) as usize;
                let (Some(n), Some(secret)) = (m.names[i], img.keys.0[i]) else {
                    continue;
                };
                let at = w.env.now_ms();
                let got = s.get_chunk(&m.root, &n).await.and_then(|ct| {
                    lode_chunk::open_chunk(i as u64, &n, &secret, ct.to_vec())
                        .map_err(StoreError::from)
                });
                if let Err(e) = got {
                    if !e.to_string().contains("injected failure") {
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .read_failures
                            .push((opened_at, at, e.to_string()));
                    }
                }
            }
        }
    }
}

fn plan(r: &mut Rng) -> Vec<(usize, Action)> {
    let n = 5 + r.below(8) as usize;
    let mut out = Vec::new();
    for i in 0..n {
        let start = if i == 0 { 0 } else { r.below(80) as usize };
        let tenant = r.below(2) as usize;
        let name = r.below(2) as usize;
        let a = match r.below(100) {
            0..=34 => Action::Push {
                tenant,
                name,
                content: r.below(12) as usize,
            },
            35..=44 => Action::Rm { tenant, name },
            45..=52 => Action::Rotate,
            53..=79 => Action::Gc {
                passes: 2 + r.below(5) as usize,
                rotate_after: match r.below(4) {
                    0 => None,
                    1 => Some(0),
                    2 => Some(10_000),
                    _ => Some(60_000),
                },
            },
            80..=89 => Action::Pin {
                tenant,
                name,
                reads: 2 + r.below(8) as usize,
                unpin: r.chance(500),
            },
            _ => Action::Read {
                tenant,
                name,
                reads: 5 + r.below(36) as usize,
            },
        };
        out.push((start, a));
    }
    out.sort_by_key(|(s, _)| *s);
    out
}

/// Waits until actor `a` waits at the turnstile again or has finished.
async fn settle(sim: &SimStore, handle: &tokio::task::JoinHandle<()>, a: usize) {
    let mut spins = 0u32;
    loop {
        let waiting = sim
            .gate
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|p| p.actor == a);
        if waiting || handle.is_finished() {
            return;
        }
        spins += 1;
        if spins < 64 {
            tokio::task::yield_now().await;
        } else {
            // Work on a blocking thread (sealing a chunk): wait for it.
            tokio::time::sleep(Duration::from_micros(20)).await;
        }
    }
}

/// Runs schedule `seed`; `Err` describes the first invariant violated.
pub fn run(seed: u64, dir: &FsPath) -> Result<Stats, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(schedule(seed, dir))
}

async fn schedule(seed: u64, dir: &FsPath) -> Result<Stats, String> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let graces = [0, 3_000, 10_000, 30_000];
    let env = Arc::new(SimEnv::new(1_800_000_000_000));
    let w = Arc::new(World {
        sim: Arc::new(SimStore::new(env.clone())),
        env,
        keys: Arc::new(SimKeys::new(seed)),
        retire_ms: graces[r.below(4) as usize],
        expire_ms: graces[r.below(4) as usize],
    });
    let plan = plan(&mut r);
    let kinds: Vec<Action> = plan.iter().map(|(_, a)| a.clone()).collect();
    let log = Arc::new(Mutex::new(Log::default()));
    let mut checker = Checker::default();
    let mut handles: Vec<Option<tokio::task::JoinHandle<()>>> =
        (0..plan.len()).map(|_| None).collect();
    let mut stats = Stats::default();
    let mut next = 0;
    let mut step = 0;
    // (actor, root) whose last alarm write failed: its reads are excused.
    let mut alarm_failed: BTreeSet<(usize, String)> = BTreeSet::new();
    let err = |step: usize, e: String| Err(format!("seed {seed} step {step}: {e}"));
    loop {
        while next < plan.len() && plan[next].0 <= step {
            let (_, a) = plan[next].clone();
            let file = dir.join(format!("img-{next}"));
            if let Action::Push { content: c, .. } = &a {
                std::fs::write(&file, content(*c)).map_err(|e| e.to_string())?;
            }
            if trace() {
                eprintln!("spawn actor {next}: {a:?}");
            }
            let h = tokio::spawn(ACTOR.scope(next, act(w.clone(), next, a, log.clone(), file)));
            settle(&w.sim, &h, next).await;
            handles[next] = Some(h);
            next += 1;
        }
        let mut pending =
            std::mem::take(&mut *w.sim.gate.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            if next >= plan.len() {
                break;
            }
            step += 1;
            continue;
        }
        if step >= MAX_STEPS {
            return err(step, "livelock: too many steps".into());
        }
        let p = pending.swap_remove(r.below(pending.len() as u64) as usize);
        w.sim
            .gate
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(pending);
        w.env
            .advance(if r.chance(30) { 15_000 } else { r.below(1500) });
        let now = w.env.now_ms();
        let a = p.actor;
        let is_gc = matches!(kinds[a], Action::Gc { .. });
        if r.chance(6) {
            // Crash: the process dies before this request leaves it.
            if trace() {
                eprintln!("step {step} actor {a} CRASH before {:?}", p.op);
            }
            drop(p.tx);
            if let Some(h) = handles[a].as_ref() {
                h.abort();
            }
            stats.crashes += 1;
            step += 1;
            continue;
        }
        // A collector's write that took too long fails at the client: the
        // lease argument assumes one request finishes within half a lease.
        let late = is_gc
            && matches!(p.op, Op::Put(..) | Op::Delete(_))
            && now.saturating_sub(p.issued_ms) > OP_TIMEOUT_MS;
        let grant = if late || r.chance(2) {
            Grant::Fail
        } else if r.chance(2) {
            Grant::LostReply
        } else {
            Grant::Go
        };
        let applies = grant != Grant::Fail;
        if applies {
            if let Op::Delete(path) = &p.op {
                let holder = is_gc.then(|| format!("gc-{a}"));
                if let Err(e) = checker
                    .check_delete(&w.sim.inner, path, holder.as_deref(), now)
                    .await
                {
                    return err(step, e);
                }
                if path.as_ref().ends_with("/root.json") {
                    stats.roots_deleted += 1;
                }
            }
            if let (Op::Get(path), Action::Read { .. }) = (&p.op, &kinds[a]) {
                let parts: Vec<&str> = path.as_ref().split('/').collect();
                // The reader checked the root's state when it sent the
                // request: judge it at that time (unless its alarm write failed).
                if let ["roots", root, "chunks", ..] = parts.as_slice() {
                    if !alarm_failed.contains(&(a, root.to_string())) {
                        if let Err(e) = checker
                            .check_agent_read(&w.sim.inner, root, p.issued_ms)
                            .await
                        {
                            return err(step, e);
                        }
                    }
                }
            }
        }
        if trace() {
            eprintln!(
                "step {step} t={} actor {a} {:?}: {:?} {grant:?}",
                now % 1_000_000,
                kinds[a],
                p.op
            );
        }
        if let Op::Put(path, _) = &p.op {
            let parts: Vec<&str> = path.as_ref().split('/').collect();
            if let ["alarms", root, _] = parts.as_slice() {
                if grant == Grant::Fail {
                    alarm_failed.insert((a, root.to_string()));
                } else {
                    alarm_failed.remove(&(a, root.to_string()));
                }
            }
        }
        let _ = p.tx.send(grant);
        if let Some(h) = handles[a].as_ref() {
            settle(&w.sim, h, a).await;
        }
        step += 1;
        if !applies {
            continue;
        }
        match &p.op {
            Op::Put(path, bytes) => {
                if path.as_ref().starts_with("alarms/") {
                    stats.alarms += 1;
                }
                let landed = match w.sim.inner.get(path).await {
                    Ok(g) => g.bytes().await.ok().as_ref() == Some(bytes),
                    Err(_) => false,
                };
                if landed && path.as_ref().contains("/images/") {
                    if let Err(e) = checker.check_publish(&w.sim.inner, path).await {
                        return err(step, e);
                    }
                }
                let pins = log.lock().unwrap_or_else(|p| p.into_inner()).pinned.clone();
                if let Err(e) = checker.check_state(&w.sim.inner, now, &pins).await {
                    return err(step, e);
                }
            }
            Op::Delete(_) | Op::Copy(..) => {
                let pins = log.lock().unwrap_or_else(|p| p.into_inner()).pinned.clone();
                if let Err(e) = checker.check_state(&w.sim.inner, now, &pins).await {
                    return err(step, e);
                }
            }
            Op::Get(_) | Op::List(_) => {}
        }
    }
    stats.steps = step;
    for h in handles.into_iter().flatten() {
        let _ = h.await;
    }
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    let log_pins = log.pin_outcomes;
    if let Some(u) = log.unexpected.first() {
        return err(step, format!("unexpected error: {u}"));
    }
    if let Some(u) = log.pin_read_failures.first() {
        return err(step, u.clone());
    }
    for (opened, at, e) in &log.read_failures {
        if at.saturating_sub(*opened) <= w.expire_ms {
            return err(
                step,
                format!(
                "an agent read failed {} ms after it opened the image (expire grace {} ms): {e}",
                at - opened,
                w.expire_ms
            ),
            );
        }
    }
    converge(&w, &mut checker, &log)
        .await
        .map_err(|e| format!("seed {seed} after the schedule: {e}"))?;
    stats.live = Checker::live_pointers(&w.sim.inner).await.len();
    stats.pins = log_pins;
    stats.fingerprint = fingerprint(&w.sim.inner).await;
    Ok(stats)
}

async fn fingerprint(inner: &object_store::memory::InMemory) -> u64 {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    use sha2::{Digest, Sha256};
    let mut metas: Vec<_> = inner.list(None).try_collect().await.unwrap_or_default();
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    let mut h = Sha256::new();
    for m in metas {
        h.update(m.location.as_ref());
        if let Ok(g) = inner.get(&m.location).await {
            if let Ok(b) = g.bytes().await {
                h.update(&b);
            }
        }
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().unwrap_or_default())
}

/// The quiet store: alarms acknowledged, then GC with grace times elapsing
/// between passes (a rotation in the first) must reach exactly the live
/// set, and every live image must read back as one of its pushed contents.
async fn converge(w: &World, checker: &mut Checker, log: &Log) -> Result<(), String> {
    let s = w.store("gc");
    let open = s.open_alarms().await.map_err(|e| e.to_string())?;
    for root in open.keys() {
        s.ack_alarms(root).await.map_err(|e| e.to_string())?;
    }
    let grace = w.retire_ms.max(w.expire_ms) + LEASE_MS + 1;
    for pass in 0..CONVERGE_PASSES {
        w.env.advance(grace);
        let opts = GcOptions {
            rotate_after: (pass == 0).then_some(Duration::ZERO),
            retire_after: Duration::from_millis(w.retire_ms),
            expire_after: Duration::from_millis(w.expire_ms),
            lease: Duration::from_millis(LEASE_MS),
            concurrency: 1,
            ..GcOptions::default()
        };
        gc_pass(&s, w.keys.clone(), &opts)
            .await
            .map_err(|e| format!("quiet GC pass {pass}: {e}"))?;
        checker
            .check_state(&w.sim.inner, w.env.now_ms(), &log.pinned)
            .await?;
    }
    checker.check_converged(&w.sim.inner).await?;
    for (t, n) in s.list_images().await.map_err(|e| e.to_string())? {
        let (ti, ni) = (
            TENANTS.iter().position(|x| *x == t).unwrap_or(0),
            NAMES.iter().position(|x| *x == n).unwrap_or(0),
        );
        let img = crate::open_image(&s, w.keys.as_ref(), &t, &n)
            .await
            .map_err(|e| format!("live image {t}/{n} does not open: {e}"))?;
        let m = &img.manifest;
        let mut bytes = vec![0u8; m.image_size as usize];
        for (i, name) in m.names.iter().enumerate() {
            if let (Some(name), Some(sec)) = (name, img.keys.0[i]) {
                let ct = s
                    .get_chunk(&m.root, name)
                    .await
                    .map_err(|e| e.to_string())?;
                let pt = lode_chunk::open_chunk(i as u64, name, &sec, ct.to_vec())
                    .map_err(|e| e.to_string())?;
                bytes[i * CS..i * CS + pt.len()].copy_from_slice(&pt);
            }
        }
        let pushed = log.pushed.get(&(ti, ni)).cloned().unwrap_or_default();
        if !pushed.iter().any(|c| content(*c) == bytes) {
            return Err(format!(
                "live image {t}/{n} reads back as none of the contents pushed to it"
            ));
        }
    }
    Ok(())
}
