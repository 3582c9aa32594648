//! The host's caches pass the tier conformance suite. They hold verified
//! plaintext keyed by chunk name and plaintext hash (not ciphertext by
//! chunk id), so each is a `Subject` serving plaintext, asked the way the
//! reader asks it: by the chunk's name and the plaintext hash from the
//! tenant's sealed manifest. A miss is `NotFound` naming the tier and chunk
//! (the reader's metrics call these tiers `memory` and `disk`). Neither
//! can be made to fail rather than miss: a refused disk page file is
//! discarded and missed (denial of service at most), which
//! `lode-agent/tests/disk_pages.rs` checks.

#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use futures::future::BoxFuture;
use lode_cache::{DiskCache, HostKey, MemoryCache};
use lode_tier::conformance::{self, Sample, Serves, Subject};
use lode_tier::TierError;

fn not_found(tier: &'static str, s: &Sample) -> TierError {
    TierError::NotFound {
        tier,
        name: s.id.name,
    }
}

struct Memory(MemoryCache);

impl Subject for Memory {
    fn label(&self) -> &'static str {
        "memory"
    }
    fn serves(&self) -> Serves {
        Serves::Plaintext
    }
    fn seed<'a>(&'a self, s: &'a Sample) -> BoxFuture<'a, ()> {
        self.0
            .insert(s.id.name, s.secret.plain_sha, s.plaintext.clone());
        Box::pin(async {})
    }
    fn fetch<'a>(&'a self, s: &'a Sample) -> BoxFuture<'a, Result<Bytes, TierError>> {
        let got = self.0.get(&s.id.name, &s.secret.plain_sha);
        Box::pin(async move { got.ok_or_else(|| not_found("memory", s)) })
    }
}

struct Disk(DiskCache);

impl Subject for Disk {
    fn label(&self) -> &'static str {
        "disk"
    }
    fn serves(&self) -> Serves {
        Serves::Plaintext
    }
    fn seed<'a>(&'a self, s: &'a Sample) -> BoxFuture<'a, ()> {
        Box::pin(
            self.0
                .put(s.id.name, s.secret.plain_sha, s.plaintext.clone()),
        )
    }
    fn fetch<'a>(&'a self, s: &'a Sample) -> BoxFuture<'a, Result<Bytes, TierError>> {
        Box::pin(async move {
            let len = s.secret.plain_len as usize;
            self.0
                .read(&s.id.name, &s.secret.plain_sha, len, None)
                .await
                .ok_or_else(|| not_found("disk", s))
        })
    }
}

#[tokio::test]
async fn memory_cache_is_a_conforming_tier() {
    let t = Memory(MemoryCache::new(64 << 20));
    let report = conformance::run(&t, "conformance").await.unwrap();
    assert_eq!(report.passed.len(), 5, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_cache_is_a_conforming_tier() {
    let dir = tempfile::tempdir().unwrap();
    let key = HostKey::from_secret(&[9; 32]);
    let t = Disk(DiskCache::open(dir.path().join("cache"), 64 << 20, key).unwrap());
    let report = conformance::run(&t, "conformance").await.unwrap();
    assert_eq!(report.passed.len(), 5, "{report:?}");
}
