//! The one conformance suite every tier passes (feature `conformance`).
//!
//! It checks what the agent's reader relies on, through the same calls the
//! reader makes:
//!
//! 1. `missing is NotFound`: a chunk the tier never held is
//!    [`TierError::NotFound`] (the reader asks the next tier), never a
//!    failure, and the error names the tier and the chunk;
//! 2. `seed then fetch`: a chunk put in the tier comes back byte for byte;
//! 3. `no crossed ids`: fetches of many chunks at once each return their own
//!    bytes, never another chunk's (a pooled connection out of step, a
//!    key collision), and a chunk next to them that was never put is still
//!    NotFound;
//! 4. `concurrent fetches of one id`: many readers of one chunk at once all
//!    get its bytes;
//! 5. `abandon and settle are safe`: abandoning chunks (held or not, twice)
//!    and settling, in any order, neither hangs nor breaks later fetches;
//! 6. `failures keep their source` (where the test can make a fetch fail,
//!    [`Subject::fault`]): the fetch is an error other than NotFound, names
//!    the tier and the chunk, and a [`TierError::Failed`] keeps its source.
//!
//! Two shapes of tier run it through [`Subject`]: a [`ChunkTier`] moving
//! ciphertext by [`ChunkId`] (the store, the fleet; adapter [`Remote`]), and
//! the host's caches of verified plaintext keyed by name and plaintext hash
//! (memory, disk; each crate's test implements [`Subject`] directly). The
//! [`Sample`]s are real sealed chunks, so both shapes see what they see in
//! production. [`run`] returns the first [`Violation`], so a broken
//! implementation fails it (see this module's tests: a tier that reports a
//! miss as a failure, one that returns another chunk's bytes, one that
//! hides a failure as a miss — each refused by the check it breaks).

use crate::{ChunkId, ChunkTier, TierError};
use bytes::Bytes;
use futures::future::{join_all, BoxFuture};
use lode_chunk::{seal_chunk, ChunkName, ChunkSecret, Salt, CHUNK_SIZE};
use std::error::Error as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A real sealed chunk: what a store holds (ciphertext) and what the host's
/// caches hold (plaintext), with the secret the reader opens it with.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Root and name (SHA-256 of the ciphertext).
    pub id: ChunkId,
    /// Key, plaintext hash, codec and lengths.
    pub secret: ChunkSecret,
    /// The plaintext.
    pub plaintext: Bytes,
    /// The stored object.
    pub ciphertext: Bytes,
}

/// Sizes of the samples, in turn: a whole chunk, odd sizes, a single byte.
const SIZES: [usize; 4] = [CHUNK_SIZE as usize, 100_003, 3 * 4096 + 17, 1];

/// `n` distinct sealed chunks under `root`, unlike any made before by this
/// or another process (so tiers backed by long-running services start
/// without them).
pub fn samples(root: &str, n: usize) -> Vec<Sample> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let seed = now ^ (u64::from(std::process::id()) << 32) ^ CALLS.fetch_add(1, Ordering::Relaxed);
    let mut salt = [0u8; 32];
    salt[..8].copy_from_slice(&seed.to_le_bytes());
    let salt = Salt(salt);
    (0..n)
        .map(|i| {
            // xorshift64*: incompressible bytes, except every 3rd sample,
            // which repeats a short run (stored compressed).
            let mut x = seed
                .wrapping_add(i as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                | 1;
            let len = SIZES[i % SIZES.len()];
            let mut pt = Vec::with_capacity(len);
            while pt.len() < len {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let w = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                if i % 3 == 2 && pt.len() >= 8 {
                    let again = pt[pt.len() - 8..].to_vec();
                    pt.extend_from_slice(&again);
                } else {
                    pt.extend_from_slice(&w);
                }
            }
            pt.truncate(len);
            let sealed = seal_chunk(&salt, &pt);
            Sample {
                id: ChunkId {
                    root: root.into(),
                    name: sealed.name,
                },
                secret: sealed.secret,
                plaintext: Bytes::from(pt),
                ciphertext: Bytes::from(sealed.ciphertext),
            }
        })
        .collect()
}

/// What a tier hands back for a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    /// The stored object (store, fleet): the reader checks its name and
    /// decrypts it.
    Ciphertext,
    /// Verified plaintext (the host's memory and disk caches).
    Plaintext,
}

/// A tier under test, in either shape (see the module doc).
pub trait Subject: Send + Sync {
    /// The tier's label, as its errors and metrics name it.
    fn label(&self) -> &'static str;
    /// What it hands back.
    fn serves(&self) -> Serves;
    /// Puts `s` in the tier the way production does (a store's PUT, a
    /// cache's fill or insert) and returns once it can be fetched.
    fn seed<'a>(&'a self, s: &'a Sample) -> BoxFuture<'a, ()>;
    /// Asks the tier for `s` the way the reader does.
    fn fetch<'a>(&'a self, s: &'a Sample) -> BoxFuture<'a, Result<Bytes, TierError>>;
    /// [`ChunkTier::abandon`] of `s` (nothing for a tier without it).
    fn abandon(&self, _s: &Sample) {}
    /// [`ChunkTier::settle`].
    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Makes fetches of the seeded `s` fail (an I/O or protocol failure, not
    /// a miss), where the test can do so from outside; `None` otherwise.
    fn fault<'a>(&'a self, _s: &'a Sample) -> Option<BoxFuture<'a, ()>> {
        None
    }
}

/// A test's hook: puts a sample somewhere, or breaks it.
pub type Hook = Box<dyn Fn(&Sample) -> BoxFuture<'static, ()> + Send + Sync>;

/// A [`ChunkTier`] as a [`Subject`]: seeded through a hook (a store's PUT)
/// or through its own [`ChunkTier::fill`] and [`ChunkTier::settle`] (a
/// cache tier such as the fleet).
pub struct Remote<T> {
    tier: T,
    seed: Option<Hook>,
    fault: Option<Hook>,
}

impl<T: ChunkTier> Remote<T> {
    /// A tier seeded by `seed`.
    pub fn new(tier: T, seed: Hook) -> Self {
        Remote {
            tier,
            seed: Some(seed),
            fault: None,
        }
    }

    /// A cache tier, seeded by filling it and settling.
    pub fn filled(tier: T) -> Self {
        Remote {
            tier,
            seed: None,
            fault: None,
        }
    }

    /// Makes fetches of a seeded sample fail with `fault` (see [`Subject::fault`]).
    pub fn with_fault(mut self, fault: Hook) -> Self {
        self.fault = Some(fault);
        self
    }
}

impl<T: ChunkTier> Subject for Remote<T> {
    fn label(&self) -> &'static str {
        self.tier.label()
    }
    fn serves(&self) -> Serves {
        Serves::Ciphertext
    }
    fn seed<'a>(&'a self, s: &'a Sample) -> BoxFuture<'a, ()> {
        match &self.seed {
            Some(hook) => hook(s),
            None => Box::pin(async move {
                self.tier.fill(&s.id, s.ciphertext.clone());
                self.tier.settle().await;
            }),
        }
    }
    fn fetch<'a>(&'a self, s: &'a Sample) -> BoxFuture<'a, Result<Bytes, TierError>> {
        self.tier.fetch(&s.id)
    }
    fn abandon(&self, s: &Sample) {
        self.tier.abandon(&s.id)
    }
    fn settle(&self) -> BoxFuture<'_, ()> {
        self.tier.settle()
    }
    fn fault<'a>(&'a self, s: &'a Sample) -> Option<BoxFuture<'a, ()>> {
        self.fault.as_ref().map(|f| f(s))
    }
}

/// A check the tier did not pass.
#[derive(Debug, thiserror::Error)]
#[error("tier {tier}: conformance check '{check}' failed: {detail}")]
pub struct Violation {
    /// The tier's label.
    pub tier: &'static str,
    /// Which check.
    pub check: &'static str,
    /// What was seen instead of what was expected.
    pub detail: String,
}

/// What a passing run covered.
#[derive(Debug)]
pub struct Report {
    /// The tier's label.
    pub tier: &'static str,
    /// The checks passed, in order.
    pub passed: Vec<&'static str>,
}

/// Longest any one step may take (settling a fleet's fills included).
const STEP: Duration = Duration::from_secs(60);
/// Readers of one chunk at once.
const READERS: usize = 16;
/// Chunks seeded.
const SEEDED: usize = 6;

/// Runs every check against `t`, chunks under `root`; the first failed check
/// is the error.
pub async fn run(t: &dyn Subject, root: &str) -> Result<Report, Violation> {
    let label = t.label();
    let fail = |check, detail: String| Violation {
        tier: label,
        check,
        detail,
    };
    let all = samples(root, SEEDED + 3);
    let (seeded, rest) = all.split_at(SEEDED);
    let (absent, abandoned, faulted) = (&rest[0], &rest[1], &rest[2]);
    let expect = |s: &Sample| match t.serves() {
        Serves::Ciphertext => s.ciphertext.clone(),
        Serves::Plaintext => s.plaintext.clone(),
    };
    let mut passed = Vec::new();

    let check = "missing is NotFound";
    let r = step(label, check, t.fetch(absent)).await?;
    expect_not_found(t, absent, r).map_err(|d| fail(check, d))?;
    // No tier had it: the reader abandons it (a fleet releases its lease).
    t.abandon(absent);
    passed.push(check);

    let check = "seed then fetch";
    for s in seeded {
        step(label, check, t.seed(s)).await?;
    }
    for s in seeded {
        let r = step(label, check, t.fetch(s)).await?;
        same(s, &expect(s), r).map_err(|d| fail(check, d))?;
    }
    passed.push(check);

    let check = "no crossed ids";
    let order = seeded.iter().chain(seeded.iter().rev()).chain([absent]);
    let answers = step(label, check, join_all(order.clone().map(|s| t.fetch(s)))).await?;
    for (s, r) in order.zip(answers) {
        if s.id == absent.id {
            expect_not_found(t, s, r).map_err(|d| fail(check, d))?;
            t.abandon(s);
        } else {
            same(s, &expect(s), r).map_err(|d| fail(check, d))?;
        }
    }
    passed.push(check);

    let check = "concurrent fetches of one id";
    let one = &seeded[0];
    let answers = step(label, check, join_all((0..READERS).map(|_| t.fetch(one)))).await?;
    for r in answers {
        same(one, &expect(one), r).map_err(|d| fail(check, d))?;
    }
    passed.push(check);

    let check = "abandon and settle are safe";
    // A miss, then abandoned (as the reader does when no tier had it), twice.
    let r = step(label, check, t.fetch(abandoned)).await?;
    expect_not_found(t, abandoned, r).map_err(|d| fail(check, d))?;
    t.abandon(abandoned);
    t.abandon(abandoned);
    step(label, check, t.settle()).await?;
    // A chunk held, abandoned: still served.
    t.abandon(&seeded[1]);
    step(label, check, t.settle()).await?;
    let r = step(label, check, t.fetch(&seeded[1])).await?;
    same(&seeded[1], &expect(&seeded[1]), r).map_err(|d| fail(check, d))?;
    // The abandoned chunk can be put and fetched after all.
    step(label, check, t.seed(abandoned)).await?;
    let r = step(label, check, t.fetch(abandoned)).await?;
    same(abandoned, &expect(abandoned), r).map_err(|d| fail(check, d))?;
    step(label, check, t.settle()).await?;
    passed.push(check);

    let check = "failures keep their source";
    step(label, check, t.seed(faulted)).await?;
    if let Some(f) = t.fault(faulted) {
        step(label, check, f).await?;
        match step(label, check, t.fetch(faulted)).await? {
            Ok(b) => {
                return Err(fail(
                    check,
                    format!("a broken chunk was served ({} bytes)", b.len()),
                ))
            }
            Err(e) if e.is_not_found() => {
                return Err(fail(check, format!("a failure reported as a miss: {e}")))
            }
            Err(e) => {
                names(t, faulted, &e).map_err(|d| fail(check, d))?;
                if let TierError::Failed { .. } = &e {
                    let chain = chain(&e);
                    if chain.len() < 2 {
                        return Err(fail(check, format!("'{e}' has no source")));
                    }
                }
            }
        }
        passed.push(check);
    }
    Ok(Report {
        tier: label,
        passed,
    })
}

/// `f`, bounded by [`STEP`].
async fn step<F: std::future::Future>(
    tier: &'static str,
    check: &'static str,
    f: F,
) -> Result<F::Output, Violation> {
    tokio::time::timeout(STEP, f).await.map_err(|_| Violation {
        tier,
        check,
        detail: format!("no answer within {STEP:?}"),
    })
}

/// The error and its sources, outermost first.
pub fn chain(e: &TierError) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

fn expect_not_found(
    t: &dyn Subject,
    s: &Sample,
    r: Result<Bytes, TierError>,
) -> Result<(), String> {
    match r {
        Err(e) if e.is_not_found() => names(t, s, &e),
        Err(e) => Err(format!(
            "a missing chunk gave '{}', not NotFound",
            chain(&e).join(": ")
        )),
        Ok(b) => Err(format!("a missing chunk returned {} bytes", b.len())),
    }
}

fn names(t: &dyn Subject, s: &Sample, e: &TierError) -> Result<(), String> {
    let shown = e.to_string();
    if e.tier() != t.label() || !shown.contains(t.label()) {
        return Err(format!("'{shown}' does not name tier {}", t.label()));
    }
    if *e.name() != s.id.name || !shown.contains(&s.id.name.to_hex()) {
        return Err(format!("'{shown}' does not name chunk {}", s.id.name));
    }
    Ok(())
}

fn same(s: &Sample, want: &Bytes, r: Result<Bytes, TierError>) -> Result<(), String> {
    match r {
        Ok(b) if b == *want => Ok(()),
        Ok(b) => Err(format!(
            "chunk {} came back as {} other bytes (name of what came: {})",
            s.id.name,
            b.len(),
            ChunkName::of(&b)
        )),
        Err(e) => Err(format!(
            "chunk {} put but not served: {}",
            s.id.name,
            chain(&e).join(": ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    /// A reference tier: ciphertext by chunk name; `broken` names fail.
    #[derive(Debug, Default)]
    struct MapTier {
        chunks: Mutex<HashMap<ChunkName, Bytes>>,
        broken: Mutex<HashSet<ChunkName>>,
        /// Broken on purpose: a miss is reported as a failure.
        miss_fails: bool,
        /// Broken on purpose: a broken chunk is reported as a miss.
        fault_misses: bool,
        /// Broken on purpose: every fetch of a held chunk returns the chunk
        /// filled last.
        last_filled: Mutex<Option<Bytes>>,
        crossed: bool,
    }

    impl ChunkTier for MapTier {
        fn label(&self) -> &'static str {
            "map"
        }
        fn fetch<'a>(&'a self, id: &'a ChunkId) -> BoxFuture<'a, Result<Bytes, TierError>> {
            Box::pin(async move {
                let not_found = TierError::NotFound {
                    tier: "map",
                    name: id.name,
                };
                if self.broken.lock().unwrap().contains(&id.name) {
                    if self.fault_misses {
                        return Err(not_found);
                    }
                    let e = std::io::Error::other("disk on fire");
                    return Err(TierError::failed("map", id.name, e));
                }
                let got = self.chunks.lock().unwrap().get(&id.name).cloned();
                match got {
                    Some(_) if self.crossed => {
                        Ok(self.last_filled.lock().unwrap().clone().unwrap())
                    }
                    Some(b) => Ok(b),
                    None if self.miss_fails => {
                        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
                        Err(TierError::failed("map", id.name, e))
                    }
                    None => Err(not_found),
                }
            })
        }
        fn fill(&self, id: &ChunkId, ciphertext: Bytes) {
            *self.last_filled.lock().unwrap() = Some(ciphertext.clone());
            self.chunks.lock().unwrap().insert(id.name, ciphertext);
        }
    }

    fn subject(t: MapTier) -> Remote<Arc<MapTier>> {
        let t = Arc::new(t);
        let hold = t.clone();
        Remote::filled(t).with_fault(Box::new(move |s| {
            hold.broken.lock().unwrap().insert(s.id.name);
            Box::pin(async {})
        }))
    }

    #[tokio::test]
    async fn a_correct_tier_passes_every_check() {
        let r = run(&subject(MapTier::default()), "r").await.unwrap();
        assert_eq!(r.passed.len(), 6, "{r:?}");
    }

    #[tokio::test]
    async fn a_tier_that_fails_on_a_miss_is_refused() {
        let t = MapTier {
            miss_fails: true,
            ..Default::default()
        };
        let v = run(&subject(t), "r").await.unwrap_err();
        assert_eq!(v.check, "missing is NotFound", "{v}");
    }

    #[tokio::test]
    async fn a_tier_that_crosses_chunks_is_refused() {
        let t = MapTier {
            crossed: true,
            ..Default::default()
        };
        let v = run(&subject(t), "r").await.unwrap_err();
        assert_eq!(v.check, "seed then fetch", "{v}");
    }

    #[tokio::test]
    async fn a_tier_that_hides_failures_as_misses_is_refused() {
        let t = MapTier {
            fault_misses: true,
            ..Default::default()
        };
        let v = run(&subject(t), "r").await.unwrap_err();
        assert_eq!(v.check, "failures keep their source", "{v}");
    }

    #[test]
    fn samples_are_distinct_real_chunks() {
        let a = samples("r", 4);
        let b = samples("r", 4);
        let names: HashSet<ChunkName> = a.iter().chain(&b).map(|s| s.id.name).collect();
        assert_eq!(names.len(), 8);
        for s in &a {
            assert_eq!(ChunkName::of(&s.ciphertext), s.id.name);
            let pt = lode_chunk::open_named_chunk(0, &s.secret, s.ciphertext.to_vec()).unwrap();
            assert_eq!(pt, s.plaintext);
        }
    }
}
