//! The image life cycle on every backend lode supports (`memory://`, a local
//! directory, S3 on a private moto server): conditional writes, removal,
//! a GC pass that rotates, migrates, expires and deletes until the store
//! holds exactly the live set, listings and deletes beyond one page (1,000
//! objects), alarms that halt deletion until acknowledged, and the lease.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use lode_testkit::noise;

#[path = "store_support/store_s3.rs"]
mod store_s3;

use bytes::Bytes;
use lode_chunk::{KeyProvider, Keyring};
use lode_store::{
    gc_pass, pull_to_file, push_file, remove_image, Expect, GcOptions, PushOptions, RootState,
    Store, StoreError,
};
use object_store::path::Path as OPath;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const CS: usize = 4096;

fn opts() -> PushOptions {
    PushOptions {
        chunk_size: CS as u32,
        ..PushOptions::default()
    }
}

fn gc(rotate: bool) -> GcOptions {
    GcOptions {
        rotate_after: rotate.then_some(Duration::ZERO),
        retire_after: Duration::ZERO,
        expire_after: Duration::ZERO,
        lease: Duration::from_secs(30),
        ..GcOptions::default()
    }
}

async fn keys_under(store: &Store, prefix: &str) -> BTreeSet<String> {
    store
        .list_all(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect()
}

/// The chunk objects the live images need.
async fn live_chunks(store: &Store, keys: &dyn KeyProvider) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    for (t, n) in store.list_images().await.unwrap() {
        let img = lode_store::open_image(store, keys, &t, &n).await.unwrap();
        for name in img.manifest.names.iter().flatten() {
            want.insert(Store::chunk_path(&img.manifest.root, name).to_string());
        }
    }
    want
}

async fn lifecycle(label: &str, store: &Store, keys_dir: &std::path::Path) {
    let keys: Arc<dyn KeyProvider> = Arc::new(Keyring::new(keys_dir));
    let work = tempfile::tempdir().unwrap();

    // --- Conditional writes: of two writers of one version, one wins.
    let p = OPath::from("misc/cas");
    assert!(
        store
            .put_if(&p, Bytes::from("a"), &Expect::Absent)
            .await
            .unwrap(),
        "{label}"
    );
    assert!(
        !store
            .put_if(&p, Bytes::from("b"), &Expect::Absent)
            .await
            .unwrap(),
        "{label}"
    );
    let (_, v) = store
        .get_versioned(&p, lode_store::ObjectKind::Pointer)
        .await
        .unwrap()
        .unwrap();
    let e = Expect::Version(v);
    assert!(
        store.put_if(&p, Bytes::from("c"), &e).await.unwrap(),
        "{label}"
    );
    assert!(
        !store.put_if(&p, Bytes::from("d"), &e).await.unwrap(),
        "{label}: stale version"
    );
    assert!(
        store.put_if(&p, Bytes::from("c"), &e).await.unwrap(),
        "{label}: a retried write that landed"
    );
    store.delete(&p).await.unwrap();

    // --- Three images sharing chunks; one removed.
    let shared = noise(1, 3 * CS);
    let mut a = shared.clone();
    a.extend(noise(2, 2 * CS + 100));
    let mut b = shared.clone();
    b.extend(noise(3, 5 * CS));
    let c = noise(4, 4 * CS);
    for (name, bytes) in [("a", &a), ("b", &b), ("c", &c)] {
        let f = work.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        let tenant = if name == "c" { "bob" } else { "alice" };
        push_file(store, keys.clone(), &f, tenant, name, &opts())
            .await
            .unwrap();
    }
    let r = remove_image(store, keys.as_ref(), "alice", "b")
        .await
        .unwrap();
    assert_eq!(r.version, 2, "{label}");
    assert!(matches!(
        remove_image(store, keys.as_ref(), "alice", "b").await,
        Err(StoreError::ImageRemoved { version: 2, .. })
    ));
    let before = keys_under(store, "roots").await.len();

    // --- A pass rotates, migrates a and c (shared chunks once), retires and
    // (grace 0) expires the old root; the next deletes it.
    let r1 = gc_pass(store, keys.clone(), &gc(true)).await.unwrap();
    assert!(r1.created_root.is_some(), "{label}: {r1:?}");
    assert_eq!(r1.migration.images, 2, "{label}: {r1:?}");
    assert_eq!(
        r1.migration.chunks_reencrypted,
        3 + 3 + 4,
        "{label}: {r1:?}"
    );
    assert_eq!(r1.expired_roots.len(), 1, "{label}: {r1:?}");
    let r2 = gc_pass(store, keys.clone(), &gc(false)).await.unwrap();
    assert_eq!(r2.deleted_roots.len(), 1, "{label}: {r2:?}");
    let roots = store.roots().await.unwrap();
    assert_eq!(roots.len(), 1, "{label}");
    assert_eq!(roots[0].state, RootState::Active);
    // Exactly the live set: a's and c's chunks, their two manifests.
    let chunks: BTreeSet<String> = keys_under(store, "roots")
        .await
        .into_iter()
        .filter(|k| k.contains("/chunks/"))
        .collect();
    assert_eq!(chunks, live_chunks(store, keys.as_ref()).await, "{label}");
    assert!(chunks.len() < before, "{label}: the store shrank");
    assert_eq!(
        keys_under(store, "tenants/alice/manifests").await.len(),
        1,
        "{label}"
    );
    assert_eq!(
        keys_under(store, "tenants/bob/manifests").await.len(),
        1,
        "{label}"
    );
    for (t, n, want) in [("alice", "a", &a), ("bob", "c", &c)] {
        let out = work.path().join(format!("{n}.out"));
        pull_to_file(store, keys.clone(), t, n, &out, 4)
            .await
            .unwrap();
        assert!(
            std::fs::read(&out).unwrap() == *want,
            "{label}: {t}/{n} after migration"
        );
    }
    let img = lode_store::open_image(store, keys.as_ref(), "alice", "a")
        .await
        .unwrap();
    let bound = img.manifest.binding.clone().unwrap();
    assert_eq!(
        (bound.name.as_str(), bound.version),
        ("a", 1),
        "{label}: binding kept"
    );

    // --- More than a page: 1,234 objects left under a root with no document.
    for i in 0..1234u32 {
        let h = format!("{:064x}", u64::from(i) * 7919);
        store
            .put(
                &OPath::from(format!("roots/r0-orphan/chunks/{}/{h}", &h[..2])),
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
    }
    let r3 = gc_pass(store, keys.clone(), &gc(false)).await.unwrap();
    let orphan = r3
        .deleted_roots
        .iter()
        .find(|d| d.root == "r0-orphan")
        .unwrap();
    assert_eq!((orphan.objects, orphan.orphan), (1234, true), "{label}");
    assert!(r3.requests.listed >= 1234, "{label}: {:?}", r3.requests);
    assert!(
        keys_under(store, "roots/r0-orphan").await.is_empty(),
        "{label}"
    );

    // --- A read from an expired root raises an alarm, which halts deletion.
    let r4 = gc_pass(store, keys.clone(), &gc(true)).await.unwrap();
    let old = r4.expired_roots[0].clone();
    let (_, chunk) = keys_under(store, &format!("roots/{old}/chunks"))
        .await
        .into_iter()
        .next()
        .unwrap()
        .rsplit_once('/')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    let reader =
        Store::from_object_store(store.object_store().clone(), store.url()).with_reader("agent");
    let name = lode_chunk::ChunkName::from_hex(&chunk).unwrap();
    assert!(
        reader.get_chunk(&old, &name).await.is_ok(),
        "{label}: data still returned"
    );
    let r5 = gc_pass(store, keys.clone(), &gc(false)).await.unwrap();
    assert!(
        r5.deletion_halted && r5.deleted_roots.is_empty(),
        "{label}: {r5:?}"
    );
    assert_eq!(r5.open_alarms.get(&old), Some(&1), "{label}");
    let alarm = &store.alarms_of(&old).await.unwrap()[0];
    assert_eq!(
        (alarm.reader.as_str(), alarm.state.as_str()),
        ("agent", "expired")
    );
    let r6 = gc_pass(
        store,
        keys.clone(),
        &GcOptions {
            ack_alarms: vec![old.clone()],
            ..gc(false)
        },
    )
    .await
    .unwrap();
    assert_eq!(r6.acknowledged_alarms, 1, "{label}");
    assert_eq!(r6.deleted_roots.len(), 1, "{label}: {r6:?}");
    assert!(
        keys_under(store, &format!("alarms-acked/{old}"))
            .await
            .is_empty(),
        "{label}"
    );

    // --- The lease: a second collector waits for the first.
    let held = store.acquire_lease("someone-else", 30_000).await.unwrap();
    match gc_pass(store, keys.clone(), &gc(false)).await {
        Err(StoreError::LeaseHeld { holder, .. }) => assert_eq!(holder, "someone-else"),
        other => panic!("{label}: {other:?}"),
    }
    held.release().await.unwrap();
    gc_pass(store, keys.clone(), &gc(false)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_memory() {
    let keys = tempfile::tempdir().unwrap();
    lifecycle("memory://", &Store::open("memory://").unwrap(), keys.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_local_dir() {
    let keys = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("store").display());
    lifecycle(&url, &Store::open(&url).unwrap(), keys.path()).await;
    // Deleted roots leave no empty directories behind.
    let roots: Vec<_> = std::fs::read_dir(dir.path().join("store/roots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(roots.len(), 2, "the active root and GENESIS: {roots:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_s3_moto() {
    let moto = store_s3::MotoServer::start();
    moto.create_bucket("lode-gc");
    moto.point_process_env();
    let keys = tempfile::tempdir().unwrap();
    let url = "s3://lode-gc/gc/prefix";
    lifecycle(url, &Store::open(url).unwrap(), keys.path()).await;
    let all = moto.list_keys("lode-gc", "");
    assert!(all.iter().all(|k| k.starts_with("gc/prefix/")), "{all:?}");
    assert!(!all.iter().any(|k| k.contains("r0-orphan")));
}
