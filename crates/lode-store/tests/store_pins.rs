//! Pins as GC roots: a version pinned by a function outlives its pointer,
//! rotation and every GC pass until the pin goes; then GC collects it. A pin
//! of a version GC may already be collecting is refused and leaves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use lode_testkit::noise;

use lode_chunk::{open_chunk, KeyProvider, Keyring};
use lode_store::{gc_pass, open_image_at, push_file, GcOptions, PushOptions, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

const CS: usize = 4096;

fn gc(rotate: bool) -> GcOptions {
    GcOptions {
        rotate_after: rotate.then_some(Duration::ZERO),
        retire_after: Duration::ZERO,
        expire_after: Duration::ZERO,
        lease: Duration::from_secs(30),
        ..GcOptions::default()
    }
}

/// The bytes of `tenant/name` at `digest`, every chunk checked.
async fn read_at(store: &Store, keys: &dyn KeyProvider, name: &str, digest: &str) -> Vec<u8> {
    let img = open_image_at(store, keys, "alice", name, digest)
        .await
        .unwrap();
    let mut out = Vec::new();
    for (i, n) in img.manifest.names.iter().enumerate() {
        let secret = img.keys.0[i].unwrap();
        let n = n.expect("no holes in noise");
        let ct = store.get_chunk(&img.manifest.root, &n).await.unwrap();
        out.extend(open_chunk(i as u64, &n, &secret, ct.to_vec()).unwrap());
    }
    out.truncate(img.manifest.image_size as usize);
    out
}

async fn pins_outlive_their_pointer(store: Store) {
    let kd = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyProvider> = Arc::new(Keyring::new(kd.path()));
    let work = tempfile::tempdir().unwrap();
    let opts = PushOptions {
        chunk_size: CS as u32,
        ..PushOptions::default()
    };
    let push = |seed: u64| {
        let (store, keys, f) = (store.clone(), keys.clone(), work.path().join("img"));
        let opts = opts.clone();
        async move {
            let bytes = noise(seed, 5 * CS + 7);
            std::fs::write(&f, &bytes).unwrap();
            let r = push_file(&store, keys, &f, "alice", "app", &opts)
                .await
                .unwrap();
            (bytes, r.manifest)
        }
    };
    let (v1, d1) = push(1).await;
    let pin = store
        .pin("alice", "app", &d1, "function.f.1")
        .await
        .unwrap();
    assert_eq!(store.list_pins("alice").await.unwrap(), vec![pin.clone()]);
    let (v2, d2) = push(2).await;
    assert_ne!(d1, d2);

    // A rotation migrates the current version; the pinned one stays in the
    // retired root, which neither expires nor is deleted.
    let r = gc_pass(&store, keys.clone(), &gc(true)).await.unwrap();
    assert_eq!((r.pins, r.pinned_versions), (1, 1), "{r:?}");
    assert_eq!(r.migration.images, 1, "{r:?}");
    assert!(r.expired_roots.is_empty(), "{r:?}");
    for _ in 0..2 {
        let r = gc_pass(&store, keys.clone(), &gc(false)).await.unwrap();
        assert!(
            r.expired_roots.is_empty() && r.deleted_roots.is_empty(),
            "{r:?}"
        );
    }
    assert_eq!(read_at(&store, keys.as_ref(), "app", &d1).await, v1);

    // Pinning that old version again is refused: its root is being
    // collected. A missing manifest is refused too. Neither leaves a pin.
    let e = store.pin("alice", "app", &d1, "function.g.1").await;
    assert!(matches!(e, Err(StoreError::PinRefused { .. })), "{e:?}");
    let missing = format!("sha256:{}", "00".repeat(32));
    let e = store.pin("alice", "app", &missing, "function.g.1").await;
    assert!(matches!(e, Err(StoreError::PinRefused { .. })), "{e:?}");
    assert_eq!(store.list_pins("alice").await.unwrap(), vec![pin.clone()]);
    // The current version (migrated: a new digest) pins fine.
    let now = lode_store::open_image(&store, keys.as_ref(), "alice", "app")
        .await
        .unwrap();
    let pin2 = store
        .pin("alice", "app", &now.digest, "function.g.1")
        .await
        .unwrap();
    assert_eq!(read_at(&store, keys.as_ref(), "app", &now.digest).await, v2);

    // Unpinned, the old version goes: expired, then deleted with its root.
    store.unpin(&pin).await.unwrap();
    let r = gc_pass(&store, keys.clone(), &gc(false)).await.unwrap();
    assert_eq!((r.pins, r.pinned_versions), (1, 0), "{r:?}");
    assert_eq!(r.expired_roots.len(), 1, "{r:?}");
    let r = gc_pass(&store, keys.clone(), &gc(false)).await.unwrap();
    assert_eq!(r.deleted_roots.len(), 1, "{r:?}");
    assert!(open_image_at(&store, keys.as_ref(), "alice", "app", &d1)
        .await
        .is_err());
    // The pin of the current version holds it across the next rotation.
    let (_, d3) = push(3).await;
    let r = gc_pass(&store, keys.clone(), &gc(true)).await.unwrap();
    assert_eq!(r.pinned_versions, 1, "{r:?}");
    assert_ne!(d3, now.digest);
    assert_eq!(read_at(&store, keys.as_ref(), "app", &now.digest).await, v2);
    store.unpin(&pin2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_memory() {
    pins_outlive_their_pointer(Store::open("memory://").unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_local_dir() {
    let d = tempfile::tempdir().unwrap();
    pins_outlive_their_pointer(Store::open(d.path().to_str().unwrap()).unwrap()).await;
}
