//! Asynchronous invocations (`InvocationType: Event`): a durable queue in
//! the store, drained by every frontend.
//!
//! ```text
//! events/<TENANT>/<enqueued ms, 16 digits>-<request id>
//!   {"v":1,"claim":null | {"holder","until_ms","starts","errors"},
//!    "sealed":"<crate::seal document, kind \"event\", name = the object's name>"}
//!   sealed body: {"function":NAME,"request_id":ID,"enqueued_ms":N,"payload":B64}
//! ```
//!
//! Invoke answers 202 only once the event is stored, so an accepted event
//! survives the frontend that took it. Each frontend lists the queue (at
//! most [`SCAN_LIMIT`], each tenant's oldest, tenants in turns), claims an event with a conditional write
//! (a claim lasts [`CLAIM`] and is renewed every [`RENEW`] while the
//! invocation runs, so a dead frontend's events are taken over within
//! [`CLAIM`]), invokes the function's current definition, and deletes the
//! event when it is done. Delivery is at least once, as Lambda's: an event
//! whose frontend died mid-invocation runs again.
//!
//! Retries follow Lambda's defaults: a function error is retried twice,
//! after [`RETRY_DELAYS`]; a system error (no capacity, no manager) is
//! retried with backoff until the event is [`MAX_AGE`] old. Events of a
//! deleted function, too old, or unreadable are dropped and counted.

use crate::error::{FrontendError, Result};
use crate::functions;
use crate::managers::Managers;
use crate::seal;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use lode_chunk::KeyProvider;
use lode_lambda::{InvokeOutcome, InvokeRequest};
use lode_store::{Expect, ObjectKind, Store};
use object_store::path::Path;
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

/// Largest payload of an asynchronous invocation (Lambda's: 1 MB).
pub const MAX_EVENT_PAYLOAD: usize = 1 << 20;
/// How long a claim holds an event without renewal.
pub const CLAIM: Duration = Duration::from_secs(20);
/// How often a running invocation renews its claim.
pub const RENEW: Duration = Duration::from_secs(5);
/// Age after which an event is dropped (Lambda's default maximum).
pub const MAX_AGE: Duration = Duration::from_secs(6 * 3600);
/// Waits before the second and third attempt after a function error.
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(120)];
/// Queued invocations a frontend runs at once.
pub const IN_FLIGHT: usize = 256;
/// Events one scan of the queue considers.
pub const SCAN_LIMIT: usize = 1000;
/// Longest wait between scans when nothing wakes the dispatcher.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// A claim on a queued event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    holder: String,
    until_ms: u64,
    /// Times an invocation was started.
    starts: u32,
    /// Of those, how many ended in the function's error.
    errors: u32,
}

/// A queued event as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Doc {
    v: u32,
    claim: Option<Claim>,
    sealed: String,
}

/// What the sealed part holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Event {
    function: String,
    request_id: String,
    enqueued_ms: u64,
    payload: String,
}

/// Counters of the queue (exported with the frontend's metrics).
#[derive(Debug, Default)]
pub struct EventCounters {
    /// Events that ran to success.
    pub done: AtomicU64,
    /// Events whose every attempt ended in the function's error.
    pub failed: AtomicU64,
    /// Events dropped: function deleted, too old, unreadable.
    pub dropped: AtomicU64,
    /// Attempts scheduled again after an error.
    pub retried: AtomicU64,
}

/// The queue as one frontend sees it.
pub struct Queue {
    store: Store,
    keys: Arc<dyn KeyProvider>,
    holder: String,
    wake: Notify,
    /// Invocations this frontend runs at once ([`IN_FLIGHT`]).
    slots: Arc<Semaphore>,
    /// Events seen claimed or waiting, and when to look at them again
    /// (bounded by [`SCAN_LIMIT`]: cleared when it grows past it).
    later: Mutex<HashMap<String, u64>>,
    /// Which tenant the next scan starts with.
    turn: AtomicUsize,
    /// Counters.
    pub counters: EventCounters,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("holder", &self.holder)
            .finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn doc_error(path: &Path, source: serde_json::Error) -> FrontendError {
    FrontendError::Document {
        what: "queued invocation",
        path: path.to_string(),
        source,
    }
}

/// Tenant and object name of an event path (`events/T/NAME`).
fn parts(path: &Path) -> Option<(String, String)> {
    let mut it = path.parts();
    (it.next()?.as_ref() == "events").then_some(())?;
    let tenant = it.next()?.as_ref().to_string();
    let name = it.next()?.as_ref().to_string();
    it.next().is_none().then_some((tenant, name))
}

/// An event this frontend holds the claim of.
struct Claimed {
    path: Path,
    doc: Doc,
    version: UpdateVersion,
}

impl Queue {
    /// The queue of `store`; `holder` names this frontend in claims.
    pub fn new(store: Store, keys: Arc<dyn KeyProvider>) -> Result<Queue> {
        let r = keys.random()?;
        let holder = format!(
            "{}:{}:{}",
            lode_store::alarm::host_name(),
            std::process::id(),
            hex::encode(&r[..4])
        );
        Ok(Queue {
            store,
            keys,
            holder,
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            later: Mutex::new(HashMap::new()),
            turn: AtomicUsize::new(0),
            counters: EventCounters::default(),
        })
    }

    /// Stores an event for `tenant`'s `function`; once this returns, the
    /// event will run even if this frontend dies.
    pub async fn enqueue(
        &self,
        tenant: &str,
        function: &str,
        request_id: &str,
        payload: &[u8],
    ) -> Result<()> {
        let enqueued_ms = now_ms();
        let name = format!("{enqueued_ms:016}-{request_id}");
        let body = serde_json::to_vec(&Event {
            function: function.to_string(),
            request_id: request_id.to_string(),
            enqueued_ms,
            payload: B64.encode(payload),
        })
        .expect("an event serializes");
        let sealed = seal::seal(self.keys.as_ref(), "event", tenant, &name, &body)?;
        let doc = Doc {
            v: 1,
            claim: None,
            sealed: String::from_utf8(sealed).expect("a sealed document is JSON text"),
        };
        let path = Path::from(format!("events/{tenant}/{name}"));
        let bytes = Bytes::from(serde_json::to_vec(&doc).expect("a document serializes"));
        if !self.store.put_if(&path, bytes, &Expect::Absent).await? {
            return Err(crate::error::refuse(
                lode_lambda::ErrorKind::ServiceException,
                format!("request id {request_id} is already queued"),
            ));
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Queued events to look at, at most [`SCAN_LIMIT`], fair across
    /// tenants: each tenant's oldest events (a listing per tenant, bounded
    /// by an equal share of the limit), taken in turns, one tenant's first, then
    /// every other tenant's first, then their seconds... The tenant that
    /// starts rotates from scan to scan, so with more tenants than the limit
    /// every tenant still gets its turn.
    pub async fn pending(&self) -> Result<Vec<Path>> {
        self.pending_up_to(SCAN_LIMIT).await
    }

    async fn pending_up_to(&self, limit: usize) -> Result<Vec<Path>> {
        let mut tenants = self.store.list_dir("events").await?.common_prefixes;
        if tenants.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        tenants.sort();
        let first = self.turn.fetch_add(1, Ordering::Relaxed) % tenants.len();
        tenants.rotate_left(first);
        tenants.truncate(limit);
        let share = limit.div_ceil(tenants.len());
        let mut queues = Vec::with_capacity(tenants.len());
        for t in &tenants {
            let mut q: Vec<Path> = (self.store.list_first(t.as_ref(), share).await?)
                .into_iter()
                .map(|m| m.location)
                .filter(|p| parts(p).is_some())
                .collect();
            // Oldest first: names start with the time they were queued.
            q.sort_by(|a, b| a.filename().cmp(&b.filename()));
            queues.push(q.into_iter());
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let before = out.len();
            out.extend(queues.iter_mut().filter_map(Iterator::next));
            if out.len() == before {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Drains the queue until `stop`: claims events while fewer than
    /// [`IN_FLIGHT`] run and runs each through `managers`.
    pub async fn run(self: Arc<Self>, managers: Managers, mut stop: watch::Receiver<bool>) {
        loop {
            match self.scan(&managers).await {
                Ok(n) if n > 0 => tracing::debug!(started = n, "queued invocations started"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scanning the invocation queue"),
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    async fn scan(self: &Arc<Self>, managers: &Managers) -> Result<usize> {
        let now = now_ms();
        let mut started = 0;
        for path in self.pending().await? {
            let key = path.to_string();
            if self.lock_later().get(&key).is_some_and(|&t| t > now) {
                continue;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            match self.claim(&path, now).await {
                Ok(Some(c)) => {
                    started += 1;
                    let (q, m) = (self.clone(), managers.clone());
                    tokio::spawn(async move {
                        q.run_one(c, &m).await;
                        drop(permit);
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(event = %path, error = %e, "cannot claim a queued invocation")
                }
            }
        }
        Ok(started)
    }

    fn lock_later(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.later.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn look_later(&self, path: &Path, at_ms: u64) {
        let mut l = self.lock_later();
        if l.len() >= SCAN_LIMIT {
            l.clear();
        }
        l.insert(path.to_string(), at_ms);
    }

    /// Claims the event at `path` unless another frontend holds it or it
    /// waits for a retry.
    async fn claim(&self, path: &Path, now: u64) -> Result<Option<Claimed>> {
        let Some((bytes, v)) = self.store.get_versioned(path, ObjectKind::Event).await? else {
            return Ok(None);
        };
        let mut doc: Doc = match serde_json::from_slice(&bytes) {
            Ok(d) => d,
            Err(e) => {
                self.drop_event(path, &doc_error(path, e).to_string()).await;
                return Ok(None);
            }
        };
        let (starts, errors) = match &doc.claim {
            Some(c) if c.until_ms > now => {
                self.look_later(path, c.until_ms);
                return Ok(None);
            }
            Some(c) => (c.starts, c.errors),
            None => (0, 0),
        };
        doc.claim = Some(Claim {
            holder: self.holder.clone(),
            until_ms: now + ms(CLAIM),
            starts: starts + 1,
            errors,
        });
        let bytes = Bytes::from(serde_json::to_vec(&doc).expect("a document serializes"));
        Ok(self
            .store
            .put_cond(path, bytes, &Expect::Version(v))
            .await?
            .map(|version| Claimed {
                path: path.clone(),
                doc,
                version,
            }))
    }

    /// Rewrites the claim (`until_ms`, `errors`) over the version held;
    /// `false` when the claim was lost.
    async fn reclaim(&self, c: &mut Claimed, until_ms: u64, errors: u32) -> Result<bool> {
        if let Some(cl) = c.doc.claim.as_mut() {
            cl.until_ms = until_ms;
            cl.errors = errors;
        }
        let bytes = Bytes::from(serde_json::to_vec(&c.doc).expect("a document serializes"));
        match self
            .store
            .put_cond(&c.path, bytes, &Expect::Version(c.version.clone()))
            .await?
        {
            Some(v) => {
                c.version = v;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn drop_event(&self, path: &Path, why: &str) {
        tracing::warn!(event = %path, why, "queued invocation dropped");
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.store.delete(path).await {
            tracing::warn!(event = %path, error = %e, "cannot delete a queued invocation");
        }
    }

    async fn finish(&self, path: &Path) {
        if let Err(e) = self.store.delete(path).await {
            // Its claim lapses and it runs again: at least once.
            tracing::warn!(event = %path, error = %e, "cannot delete a finished invocation");
        }
    }

    async fn run_one(&self, mut c: Claimed, managers: &Managers) {
        let Some((tenant, name)) = parts(&c.path) else {
            return;
        };
        let event = match seal::open(
            self.keys.as_ref(),
            "event",
            &tenant,
            &name,
            c.doc.sealed.as_bytes(),
        )
        .map_err(FrontendError::from)
        .and_then(|b| serde_json::from_slice::<Event>(&b).map_err(|e| doc_error(&c.path, e)))
        {
            Ok(e) => e,
            Err(e) => return self.drop_event(&c.path, &e.to_string()).await,
        };
        if now_ms().saturating_sub(event.enqueued_ms) > ms(MAX_AGE) {
            return self
                .drop_event(&c.path, "older than the maximum event age")
                .await;
        }
        let payload = match B64.decode(&event.payload) {
            Ok(p) => p,
            Err(e) => return self.drop_event(&c.path, &format!("payload: {e}")).await,
        };
        let rec = match functions::get(&self.store, self.keys.as_ref(), &tenant, &event.function)
            .await
        {
            Ok(Some((rec, _))) => rec,
            Ok(None) => return self.drop_event(&c.path, "the function was deleted").await,
            Err(e) => {
                tracing::warn!(event = %c.path, error = %e, "reading the function of a queued invocation");
                let _ = self.release(&mut c, false).await;
                return;
            }
        };
        let wait = Duration::from_secs(u64::from(rec.spec.timeout_s) + 600);
        let req = InvokeRequest {
            request_id: event.request_id.clone(),
            function: rec.spec,
            payload,
            sandbox: None,
        };
        let invoke = managers.invoke(req, wait);
        tokio::pin!(invoke);
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + RENEW, RENEW);
        let errors = c.doc.claim.as_ref().map_or(0, |cl| cl.errors);
        let result = loop {
            tokio::select! {
                r = &mut invoke => break r,
                _ = renew.tick() => {
                    match self.reclaim(&mut c, now_ms() + ms(CLAIM), errors).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(event = %c.path, "the claim of a running invocation was taken over"),
                        Err(e) => tracing::warn!(event = %c.path, error = %e, "renewing a claim"),
                    }
                }
            }
        };
        match result {
            Ok(r) if r.outcome == InvokeOutcome::Success => {
                tracing::info!(request = r.request_id, "asynchronous invocation done");
                self.counters.done.fetch_add(1, Ordering::Relaxed);
                self.finish(&c.path).await;
            }
            Ok(r) => {
                tracing::info!(request = r.request_id, outcome = ?r.outcome, attempt = errors + 1, "asynchronous invocation ended in the function's error");
                if errors as usize >= RETRY_DELAYS.len() {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    self.finish(&c.path).await;
                } else {
                    let _ = self.release(&mut c, true).await;
                }
            }
            Err(e) => {
                tracing::warn!(request = event.request_id, error = %e, "asynchronous invocation not run; retried later");
                let _ = self.release(&mut c, false).await;
            }
        }
    }

    /// Gives the event back for a later attempt: after a function error
    /// (`function_error`) Lambda's retry delay, else a backoff on the
    /// attempts so far (1 s doubling, at most 5 minutes).
    async fn release(&self, c: &mut Claimed, function_error: bool) -> Result<bool> {
        let (starts, errors) = c
            .doc
            .claim
            .as_ref()
            .map_or((1, 0), |cl| (cl.starts, cl.errors));
        let (delay, errors) = if function_error {
            (
                RETRY_DELAYS
                    .get(errors as usize)
                    .copied()
                    .unwrap_or(RETRY_DELAYS[RETRY_DELAYS.len() - 1]),
                errors + 1,
            )
        } else {
            let exp = starts.saturating_sub(errors).min(9);
            (
                Duration::from_secs(1 << exp).min(Duration::from_secs(300)),
                errors,
            )
        };
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        let until = now_ms() + ms(delay);
        self.look_later(&c.path, until);
        let kept = self.reclaim(c, until, errors).await;
        if let Err(e) = &kept {
            tracing::warn!(event = %c.path, error = %e, "cannot schedule a retry; the claim lapses instead");
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parts(&Path::from("events/acme/0000001700000000-abc")),
            Some(("acme".into(), "0000001700000000-abc".into()))
        );
        assert_eq!(parts(&Path::from("events/acme")), None);
        assert_eq!(parts(&Path::from("events/acme/x/y")), None);
        assert_eq!(parts(&Path::from("other/acme/x")), None);
    }

    #[tokio::test]
    async fn a_tenant_with_a_long_queue_does_not_hold_back_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open("memory://").unwrap();
        let keys: Arc<dyn KeyProvider> = Arc::new(lode_chunk::Keyring::new(dir.path()));
        let q = Queue::new(store.clone(), keys).unwrap();
        assert!(q.pending_up_to(8).await.unwrap().is_empty());
        // "aaa" is listed first and has far more queued than the limit.
        for (tenant, n) in [("aaa", 40u64), ("bbb", 2), ("ccc", 1)] {
            for i in 0..n {
                let name = format!("events/{tenant}/{:016}-r{i}", 1_700_000_000_000 + i);
                store.put(&Path::from(name), Bytes::new()).await.unwrap();
            }
        }
        store
            .put(&Path::from("events/bbb/not-an-event/x"), Bytes::new())
            .await
            .unwrap();
        let tenant = |p: &Path| parts(p).unwrap().0;
        for scan in 0..3 {
            let got = q.pending_up_to(8).await.unwrap();
            assert_eq!(got.len(), 6, "scan {scan}: {got:?}");
            let of = |t: &str| got.iter().filter(|p| tenant(p) == t).count();
            assert_eq!((of("aaa"), of("bbb"), of("ccc")), (3, 2, 1), "scan {scan}");
            // In turns: the first three are three different tenants.
            let mut firsts: Vec<String> = got[..3].iter().map(tenant).collect();
            firsts.sort();
            assert_eq!(firsts, ["aaa", "bbb", "ccc"], "scan {scan}");
            // Each tenant's events oldest first.
            for t in ["aaa", "bbb"] {
                let own: Vec<_> = got.iter().filter(|p| tenant(p) == t).collect();
                assert!(
                    own[0].filename() < own[1].filename(),
                    "scan {scan}: {own:?}"
                );
            }
            // The tenant that starts rotates.
            assert_eq!(tenant(&got[0]), ["aaa", "bbb", "ccc"][scan]);
        }
        // With the limit below the number of tenants, turns still rotate.
        let one: Vec<String> = futures::future::join_all((0..3).map(|_| q.pending_up_to(1)))
            .await
            .into_iter()
            .map(|r| tenant(&r.unwrap()[0]))
            .collect();
        let mut sorted = one.clone();
        sorted.sort();
        assert_eq!(sorted, ["aaa", "bbb", "ccc"], "{one:?}");
    }
}
