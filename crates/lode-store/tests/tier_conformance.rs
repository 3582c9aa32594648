//! The store as a tier (`lode_tier::ChunkTier for Store`) passes the tier
//! conformance suite over each backend: memory, a local directory and S3 (a
//! private moto server), each with a chunk's object broken on purpose, to
//! check that a failure is not a miss and keeps its source.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "store_support/store_s3.rs"]
mod store_s3;

use bytes::Bytes;
use futures::future::BoxFuture;
use lode_store::Store;
use lode_tier::conformance::{self, Hook, Remote, Sample};

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

/// Breaks a chunk the way a store can break under the reader: its object
/// grew past what the chunk format allows (the store refuses it before
/// reading it), a failure and not a missing chunk. (An object turned into a
/// directory would not do: object_store's local backend reports it as
/// missing.)
fn oversize(store: &Store) -> Hook {
    let store = store.clone();
    Box::new(move |s: &Sample| -> BoxFuture<'static, ()> {
        let (store, path) = (store.clone(), Store::chunk_path(&s.id.root, &s.id.name));
        Box::pin(async move {
            let big = Bytes::from(vec![0u8; lode_chunk::MAX_CHUNK_SIZE as usize + 1]);
            store.put(&path, big).await.unwrap();
        })
    })
}

/// Every check, the fault included.
async fn passes(store: Store) {
    let t = Remote::new(store.clone(), put_with(&store)).with_fault(oversize(&store));
    let report = conformance::run(&t, "conformance").await.unwrap();
    assert_eq!(report.tier, "store");
    assert_eq!(report.passed.len(), 6, "{report:?}");
}

#[tokio::test]
async fn memory_store_is_a_conforming_tier() {
    passes(Store::open("memory://").unwrap()).await;
}

#[tokio::test]
async fn local_store_is_a_conforming_tier() {
    let dir = tempfile::tempdir().unwrap();
    passes(Store::open(dir.path().to_str().unwrap()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_is_a_conforming_tier() {
    let moto = store_s3::MotoServer::start();
    moto.create_bucket("lode-tier");
    // Store::open reads the standard AWS environment. Only this test in this
    // binary touches it, before any S3 client exists.
    moto.point_process_env();
    passes(Store::open("s3://lode-tier/p").unwrap()).await;
    // The chunks went where the store's layout puts them.
    let keys = moto.list_keys("lode-tier", "p/roots/conformance/chunks/");
    assert!(keys.len() >= 6, "{keys:?}");
}
