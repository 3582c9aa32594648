//! The store as a tier (`lode_tier::ChunkTier for Store`) passes the tier
//! conformance suite over each backend: memory, a local directory (where a
//! chunk's object is also broken on purpose, to check that a failure is
//! not a miss and keeps its source) and S3 (a private moto server).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "store_support/store_s3.rs"]
mod store_s3;

use futures::future::BoxFuture;
use lode_store::Store;
use lode_tier::conformance::{self, Hook, Remote, Sample};
use std::path::PathBuf;

/// Seeds a sample with the store's own PUT.
fn put_with(store: &Store) -> Hook {
    let store = store.clone();
    Box::new(move |s: &Sample| -> BoxFuture<'static, ()> {
        let (store, s) = (store.clone(), s.clone());
        Box::pin(async move {
            store
                .put_chunk(&s.id.root, &s.id.name, s.ciphertext.clone())
                .await
                .unwrap()
        })
    })
}

/// Every check but the fault (which needs a way to break an object).
async fn passes(store: Store) {
    let t = Remote::new(store.clone(), put_with(&store));
    let report = conformance::run(&t, "conformance").await.unwrap();
    assert_eq!(report.tier, "store");
    assert_eq!(report.passed.len(), 5, "{report:?}");
}

#[tokio::test]
async fn memory_store_is_a_conforming_tier() {
    passes(Store::open("memory://").unwrap()).await;
}

#[tokio::test]
async fn local_store_is_a_conforming_tier() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    // A chunk whose object grew past what the chunk format allows: the store
    // refuses it before reading it, a failure (not a missing chunk). (An
    // object turned into a directory is reported as missing by
    // object_store's local backend, so it is no fault to test with.)
    let root = dir.path().to_path_buf();
    let fault: Hook = Box::new(move |s: &Sample| -> BoxFuture<'static, ()> {
        let h = s.id.name.to_hex();
        let p: PathBuf = root
            .join("roots")
            .join(&*s.id.root)
            .join("chunks")
            .join(&h[..2])
            .join(&h);
        Box::pin(async move {
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(lode_chunk::MAX_CHUNK_SIZE as u64 * 4).unwrap();
        })
    });
    let t = Remote::new(store.clone(), put_with(&store)).with_fault(fault);
    let report = conformance::run(&t, "conformance").await.unwrap();
    assert_eq!(report.passed.len(), 6, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_is_a_conforming_tier() {
    let moto = store_s3::MotoServer::start();
    moto.create_bucket("lode-tier");
    // Store::open reads the standard AWS environment. Only this test in this
    // binary touches it, before any S3 client exists.
    for (k, v) in moto.aws_env() {
        std::env::set_var(k, v);
    }
    for k in [
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT",
        "AWS_DEFAULT_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ] {
        std::env::remove_var(k);
    }
    passes(Store::open("s3://lode-tier/p").unwrap()).await;
    // The chunks went where the store's layout puts them.
    let keys = moto.list_keys("lode-tier", "p/roots/conformance/chunks/");
    assert!(keys.len() >= 6, "{keys:?}");
}
