//! The simulated world: an in-memory object store every request of which
//! waits at a turnstile for the scheduler, a virtual clock, and a
//! deterministic key provider.

use crate::env::Environment;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use lode_chunk::{ChunkError, DataKey, KeyProvider, Salt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

tokio::task_local! {
    /// The actor whose task makes a request.
    pub static ACTOR: usize;
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `p_per_mille / 1000`.
    pub fn chance(&mut self, p_per_mille: u64) -> bool {
        self.below(1000) < p_per_mille
    }
}

/// Virtual time and replayable ids.
#[derive(Debug)]
pub struct SimEnv {
    now: AtomicU64,
    ids: AtomicU64,
}

impl SimEnv {
    /// A clock starting at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        SimEnv {
            now: AtomicU64::new(start_ms),
            ids: AtomicU64::new(1),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Environment for SimEnv {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
    fn unique_id(&self) -> String {
        format!("{:016x}", self.ids.fetch_add(1, Ordering::SeqCst))
    }
}

/// A deterministic key provider: the simulated KMS. Tenant keys and salts
/// are derived from names; "wrapping" XORs with the tenant's key and tags
/// the result with the tenant (enough to tell tenants apart; not a cipher).
#[derive(Debug)]
pub struct SimKeys {
    rng: Mutex<Rng>,
    salts: AtomicU64,
}

impl SimKeys {
    /// Keys whose randomness comes from `seed`.
    pub fn new(seed: u64) -> Self {
        SimKeys {
            rng: Mutex::new(Rng(seed | 1)),
            salts: AtomicU64::new(1),
        }
    }

    fn kek(tenant: &str) -> [u8; 32] {
        Sha256::digest([b"sim-kek\0", tenant.as_bytes()].concat()).into()
    }
}

impl KeyProvider for SimKeys {
    fn wrap(&self, tenant: &str, key: &DataKey) -> std::result::Result<Vec<u8>, ChunkError> {
        let k = Self::kek(tenant);
        let mut out = k[..8].to_vec();
        out.extend(key.0.iter().zip(k.iter()).map(|(a, b)| a ^ b));
        Ok(out)
    }

    fn unwrap(&self, tenant: &str, wrapped: &[u8]) -> std::result::Result<DataKey, ChunkError> {
        let k = Self::kek(tenant);
        if wrapped.len() != 40 || wrapped[..8] != k[..8] {
            return Err(ChunkError::WrongKey {
                tenant: tenant.into(),
            });
        }
        let mut d = [0u8; 32];
        for (i, b) in wrapped[8..].iter().enumerate() {
            d[i] = b ^ k[i];
        }
        Ok(DataKey(d))
    }

    fn new_salt(&self) -> std::result::Result<String, ChunkError> {
        Ok(format!(
            "{:016x}",
            self.salts.fetch_add(1, Ordering::SeqCst)
        ))
    }

    fn salt(&self, salt_id: &str) -> std::result::Result<Salt, ChunkError> {
        Ok(Salt(
            Sha256::digest([b"sim-salt\0", salt_id.as_bytes()].concat()).into(),
        ))
    }

    fn random(&self) -> std::result::Result<[u8; 32], ChunkError> {
        let mut r = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = [0u8; 32];
        for c in out.chunks_mut(8) {
            c.copy_from_slice(&r.next().to_le_bytes());
        }
        Ok(out)
    }
}

/// A store request, as the scheduler sees it (all of it shows in traces).
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub enum Op {
    /// GET or HEAD.
    Get(Path),
    /// PUT (any mode) with its bytes.
    Put(Path, Bytes),
    /// DELETE of one object.
    Delete(Path),
    /// A listing.
    List(String),
    /// A copy.
    Copy(Path, Path),
}

/// What the scheduler lets a request do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Apply it.
    Go,
    /// Do not apply it; fail it (a transient error or a timeout).
    Fail,
    /// Apply it, then fail it (the answer was lost).
    LostReply,
}

/// A request waiting for the scheduler.
#[derive(Debug)]
pub struct Pending {
    /// Requesting actor.
    pub actor: usize,
    /// The request.
    pub op: Op,
    /// When it was issued (virtual ms).
    pub issued_ms: u64,
    /// Where the grant goes.
    pub tx: oneshot::Sender<Grant>,
}

/// Where requests wait for the scheduler.
#[derive(Clone, Debug)]
pub struct Turnstile {
    env: Arc<SimEnv>,
    /// Requests waiting.
    pub pending: Arc<Mutex<Vec<Pending>>>,
}

impl Turnstile {
    /// Waits for the scheduler (requests outside an actor pass at once).
    async fn pass(&self, op: Op) -> Grant {
        let Ok(actor) = ACTOR.try_with(|a| *a) else {
            return Grant::Go;
        };
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending {
                actor,
                op,
                issued_ms: self.env.now_ms(),
                tx,
            });
        rx.await.unwrap_or(Grant::Fail)
    }
}

type Times = Arc<Mutex<HashMap<Path, u64>>>;

/// The in-memory store behind a turnstile.
#[derive(Debug)]
pub struct SimStore {
    /// The objects (the checker reads them directly).
    pub inner: Arc<InMemory>,
    env: Arc<SimEnv>,
    /// The scheduler's gate.
    pub gate: Turnstile,
    /// Virtual time of each object's last write (listings report it).
    times: Times,
}

fn injected(path: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "sim",
        source: format!("injected failure at {path}").into(),
    }
}

fn stamp(times: &Times, meta: &mut ObjectMeta) {
    let t = times.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = t
        .get(&meta.location)
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(*ms as i64))
    {
        meta.last_modified = d;
    }
}

impl SimStore {
    /// An empty store on `env`'s clock.
    pub fn new(env: Arc<SimEnv>) -> Self {
        SimStore {
            inner: Arc::new(InMemory::new()),
            gate: Turnstile {
                env: env.clone(),
                pending: Arc::default(),
            },
            env,
            times: Arc::default(),
        }
    }

    fn wrote(&self, p: &Path) {
        self.times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(p.clone(), self.env.now_ms());
    }
}

impl fmt::Display for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimStore")
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let bytes: Bytes = payload.clone().into();
        let g = self.gate.pass(Op::Put(location.clone(), bytes)).await;
        if g == Grant::Fail {
            return Err(injected(location.as_ref()));
        }
        let r = self.inner.put_opts(location, payload, opts).await;
        if r.is_ok() {
            self.wrote(location);
        }
        if g == Grant::LostReply {
            return Err(injected(location.as_ref()));
        }
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Err(injected(location.as_ref()))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if self.gate.pass(Op::Get(location.clone())).await == Grant::Fail {
            return Err(injected(location.as_ref()));
        }
        let mut r = self.inner.get_opts(location, options).await?;
        stamp(&self.times, &mut r.meta);
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // One request per object, in order, each through the turnstile.
        let (inner, gate, times) = (self.inner.clone(), self.gate.clone(), self.times.clone());
        locations
            .then(move |p| {
                let (inner, gate, times) = (inner.clone(), gate.clone(), times.clone());
                async move {
                    let p = p?;
                    let g = gate.pass(Op::Delete(p.clone())).await;
                    if g == Grant::Fail {
                        return Err(injected(p.as_ref()));
                    }
                    let r = inner
                        .delete_stream(futures::stream::iter([Ok(p.clone())]).boxed())
                        .next()
                        .await
                        .unwrap_or(Ok(p.clone()));
                    times.lock().unwrap_or_else(|p| p.into_inner()).remove(&p);
                    if g == Grant::LostReply {
                        return Err(injected(p.as_ref()));
                    }
                    r
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let label = prefix.map_or(String::new(), |p| p.to_string());
        let (inner, gate, times) = (self.inner.clone(), self.gate.clone(), self.times.clone());
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            if gate.pass(Op::List(label.clone())).await == Grant::Fail {
                return futures::stream::iter(vec![Err(injected(&label))]).boxed();
            }
            let items: Vec<Result<ObjectMeta>> = inner.list(prefix.as_ref()).collect().await;
            let items: Vec<Result<ObjectMeta>> = items
                .into_iter()
                .map(|r| {
                    r.map(|mut m| {
                        stamp(&times, &mut m);
                        m
                    })
                })
                .collect();
            futures::stream::iter(items).boxed()
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let label = prefix.map_or(String::new(), |p| p.to_string());
        if self.gate.pass(Op::List(label.clone())).await == Grant::Fail {
            return Err(injected(&label));
        }
        let mut r = self.inner.list_with_delimiter(prefix).await?;
        for m in &mut r.objects {
            stamp(&self.times, m);
        }
        Ok(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let g = self.gate.pass(Op::Copy(from.clone(), to.clone())).await;
        if g == Grant::Fail {
            return Err(injected(from.as_ref()));
        }
        let r = self.inner.copy_opts(from, to, options).await;
        if r.is_ok() {
            self.wrote(to);
        }
        if g == Grant::LostReply {
            return Err(injected(from.as_ref()));
        }
        r
    }
}
