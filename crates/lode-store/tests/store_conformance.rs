//! One conformance suite for the [`Store`] API, run against the three
//! backends lode supports: `memory://`, a local directory, and S3 (a private
//! moto server, see `store_support/store_s3.rs`).
//!
//! It checks what lode relies on from a backend: whole-object put/get/head
//! with overwrite, `NotFound` mapping, listing (flat and with delimiter),
//! lode's layout (chunk, manifest, pointer and root paths), digest checks on
//! manifests, root life cycle, and a small push/pull through the library.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use lode_testkit::noise;

#[path = "store_support/store_s3.rs"]
mod store_s3;

use bytes::Bytes;
use futures::TryStreamExt;
use lode_chunk::{seal_chunk, KeyProvider, Keyring, Manifest, CHUNK_SIZE};
use lode_store::{pull_to_file, push_file, ObjectKind, PushOptions, RootState, Store, StoreError};
use object_store::path::Path as OPath;
use object_store::ObjectStoreExt;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

const CS: usize = CHUNK_SIZE as usize;

/// An image of 6 chunks + 1234 bytes: data, hole, data, repeat of chunk 0,
/// hole, data, partial tail.
fn sample_image() -> Vec<u8> {
    let mut img = Vec::new();
    img.extend(noise(1, CS));
    img.extend(vec![0u8; CS]);
    img.extend(noise(2, CS));
    img.extend(noise(1, CS));
    img.extend(vec![0u8; CS]);
    img.extend(noise(3, CS));
    img.extend(noise(4, 1234));
    img
}

async fn all_keys(store: &Store, prefix: &str) -> BTreeSet<String> {
    let p = OPath::from(prefix);
    store
        .object_store()
        .list(Some(&p))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// The suite. `label` names the backend in failure messages.
async fn conformance(label: &str, store: &Store, keys_dir: &Path) {
    let keys: Arc<dyn KeyProvider> = Arc::new(Keyring::new(keys_dir));

    // --- An empty store.
    assert!(
        store.roots().await.unwrap().is_empty(),
        "{label}: fresh store has roots"
    );
    let missing = OPath::from("misc/nothing");
    assert_eq!(
        store.get_opt(&missing, ObjectKind::Root).await.unwrap(),
        None,
        "{label}: get of a missing object"
    );
    assert!(
        !store.exists(&missing).await.unwrap(),
        "{label}: head of a missing object"
    );
    match store.get_image("alice", "nope").await {
        Err(StoreError::ImageNotFound { tenant, name, .. }) => {
            assert_eq!((tenant.as_str(), name.as_str()), ("alice", "nope"))
        }
        other => panic!("{label}: get_image of a missing image: {other:?}"),
    }

    // --- Whole objects: put, get, head, overwrite, empty and larger objects.
    let a = OPath::from("misc/a");
    store.put(&a, Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(
        store
            .get_opt(&a, ObjectKind::Root)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"first"[..]),
        "{label}: get after put"
    );
    assert!(store.exists(&a).await.unwrap(), "{label}: head after put");
    store
        .put(&a, Bytes::from_static(b"second, longer"))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_opt(&a, ObjectKind::Root)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"second, longer"[..]),
        "{label}: overwrite"
    );
    let empty = OPath::from("misc/empty");
    store.put(&empty, Bytes::new()).await.unwrap();
    assert_eq!(
        store
            .get_opt(&empty, ObjectKind::Root)
            .await
            .unwrap()
            .as_deref(),
        Some(&b""[..]),
        "{label}: empty object"
    );
    assert!(store.exists(&empty).await.unwrap());
    let big = Bytes::from(noise(9, 6 * 1024 * 1024 + 7));
    let bigp = OPath::from("misc/deep/er/big");
    store.put(&bigp, big.clone()).await.unwrap();
    assert!(
        store.get_opt(&bigp, ObjectKind::Chunk).await.unwrap() == Some(big.clone()),
        "{label}: 6 MiB object round trip"
    );
    assert_eq!(
        all_keys(store, "misc").await,
        ["misc/a", "misc/deep/er/big", "misc/empty"]
            .map(String::from)
            .into_iter()
            .collect(),
        "{label}: list misc/"
    );

    // --- Roots: the first active root is created once; rotation retires it.
    let r1 = store.active_root(keys.as_ref()).await.unwrap();
    assert_eq!(r1.state, RootState::Active);
    assert_eq!(
        store.active_root(keys.as_ref()).await.unwrap(),
        r1,
        "{label}: active_root is stable"
    );
    assert_eq!(store.roots().await.unwrap(), vec![r1.clone()]);
    assert!(store
        .exists(&OPath::from(format!("roots/{}/root.json", r1.id)))
        .await
        .unwrap());
    let salt1 = keys.salt(&r1.salt_id).unwrap();

    // --- Chunks: stored under roots/<root>/chunks/<2 hex>/<name>, name = SHA-256(ciphertext).
    let pt = noise(5, 128 << 10);
    let sealed = seal_chunk(&salt1, &pt);
    assert!(!store.has_chunk(&r1.id, &sealed.name).await.unwrap());
    match store.get_chunk(&r1.id, &sealed.name).await {
        Err(StoreError::Missing { what: "chunk", .. }) => {}
        other => panic!("{label}: get of a missing chunk: {other:?}"),
    }
    store
        .put_chunk(&r1.id, &sealed.name, sealed.ciphertext.clone().into())
        .await
        .unwrap();
    assert!(
        store.has_chunk(&r1.id, &sealed.name).await.unwrap(),
        "{label}: has_chunk after put"
    );
    assert_eq!(
        store
            .get_chunk(&r1.id, &sealed.name)
            .await
            .unwrap()
            .as_ref(),
        &sealed.ciphertext[..]
    );
    let hex = sealed.name.to_hex();
    assert_eq!(
        Store::chunk_path(&r1.id, &sealed.name).to_string(),
        format!("roots/{}/chunks/{}/{hex}", r1.id, &hex[..2])
    );
    assert_eq!(
        Manifest::digest_of(&sealed.ciphertext),
        format!("sha256:{hex}"),
        "chunk name is SHA-256 of the ciphertext"
    );
    assert!(store.has_chunk(&r1.id, &sealed.name).await.unwrap());
    assert!(
        !store.has_chunk("r-other", &sealed.name).await.unwrap(),
        "{label}: chunks are per root"
    );

    // --- Manifests: named by digest, checked on read.
    // One chunk of 128 KiB, then a hole.
    let names: Vec<Option<lode_chunk::ChunkName>> = vec![Some(sealed.name), None];
    let secrets = [Some(sealed.secret), None];
    let mbytes = Bytes::from(
        Manifest::seal(
            &lode_chunk::SealSpec {
                format: lode_chunk::manifest::VERSION,
                tenant: "alice",
                binding: Some(&lode_chunk::ImageBinding {
                    name: "app".into(),
                    version: 1,
                }),
                image_size: (128 << 10) + 4096,
                chunk_size: 128 << 10,
                root: &r1.id,
            },
            names,
            &secrets,
            keys.as_ref(),
        )
        .unwrap()
        .encode(),
    );
    let digest = store.put_manifest("alice", mbytes.clone()).await.unwrap();
    assert_eq!(digest, Manifest::digest_of(&mbytes));
    assert_eq!(store.get_manifest("alice", &digest).await.unwrap(), mbytes);
    assert!(store
        .exists(&OPath::from(format!(
            "tenants/alice/manifests/{}",
            &digest[7..]
        )))
        .await
        .unwrap());
    match store.get_manifest("bob", &digest).await {
        Err(StoreError::Missing {
            what: "manifest", ..
        }) => {}
        other => panic!("{label}: another tenant's manifest: {other:?}"),
    }
    let forged = Manifest::digest_of(b"something else");
    store
        .put(
            &OPath::from(format!("tenants/alice/manifests/{}", &forged[7..])),
            mbytes.clone(),
        )
        .await
        .unwrap();
    match store.get_manifest("alice", &forged).await {
        Err(StoreError::Corrupt {
            what: "manifest",
            expected,
            actual,
            ..
        }) => {
            assert_eq!((expected, actual), (forged.clone(), digest.clone()));
        }
        other => panic!("{label}: manifest under the wrong digest: {other:?}"),
    }
    assert!(matches!(
        store.get_manifest("alice", "md5:abc").await,
        Err(StoreError::BadDocument { .. })
    ));

    // --- Bounded reads: an object larger than its kind allows, or than its
    // header implies, is refused with both sizes, on every backend.
    let mut longer = mbytes.to_vec();
    longer.extend_from_slice(b"trailing");
    let longer_digest = store
        .put_manifest("alice", Bytes::from(longer.clone()))
        .await
        .unwrap();
    match store.get_manifest("alice", &longer_digest).await {
        Err(StoreError::WrongSize { size, expected, .. }) => {
            assert_eq!((size, expected), (longer.len() as u64, mbytes.len() as u64))
        }
        other => panic!("{label}: manifest longer than its header: {other:?}"),
    }
    store
        .put(
            &OPath::from("tenants/alice/images/huge"),
            Bytes::from(vec![b' '; 5000]),
        )
        .await
        .unwrap();
    match store.get_image("alice", "huge").await {
        Err(e @ StoreError::TooLarge { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("tenants/alice/images/huge") && m.contains("5000") && m.contains("4096"),
                "{label}: {m}"
            );
        }
        other => panic!("{label}: a 5000-byte pointer: {other:?}"),
    }
    store
        .put(
            &OPath::from("roots/rbig/root.json"),
            Bytes::from(vec![b' '; 5000]),
        )
        .await
        .unwrap();
    assert!(
        matches!(store.root("rbig").await, Err(StoreError::TooLarge { .. })),
        "{label}: a 5000-byte root document"
    );
    store
        .object_store()
        .delete(&OPath::from("roots/rbig/root.json"))
        .await
        .unwrap();

    // --- Image pointers.
    store.set_image("alice", "app:v1", &digest).await.unwrap();
    assert_eq!(store.get_image("alice", "app:v1").await.unwrap(), digest);
    store.set_image("alice", "app:v1", &forged).await.unwrap();
    assert_eq!(
        store.get_image("alice", "app:v1").await.unwrap(),
        forged,
        "{label}: pointer overwrite"
    );
    assert!(matches!(
        store.get_image("bob", "app:v1").await,
        Err(StoreError::ImageNotFound { .. })
    ));
    assert!(matches!(
        store.set_image("alice", "../x", &digest).await,
        Err(StoreError::BadName(_))
    ));
    assert!(matches!(
        store.set_image("al/ice", "x", &digest).await,
        Err(StoreError::Chunk(_))
    ));
    store
        .put(
            &OPath::from("tenants/alice/images/broken"),
            Bytes::from_static(b"{not json"),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.get_image("alice", "broken").await,
        Err(StoreError::BadDocument { .. })
    ));

    // --- Listing with a delimiter (how roots are enumerated).
    store.set_image("bob", "x", &digest).await.unwrap();
    let listed = store
        .object_store()
        .list_with_delimiter(Some(&OPath::from("tenants")))
        .await
        .unwrap();
    let tenants: BTreeSet<String> = listed
        .common_prefixes
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        tenants,
        ["tenants/alice", "tenants/bob"]
            .map(String::from)
            .into_iter()
            .collect(),
        "{label}"
    );
    assert!(listed.objects.is_empty());

    // --- Push and pull through the library: holes, a repeated chunk, a partial tail.
    let work = tempfile::tempdir().unwrap();
    let img = sample_image();
    let src = work.path().join("img");
    std::fs::write(&src, &img).unwrap();
    let opts = PushOptions {
        concurrency: 4,
        ..PushOptions::default()
    };
    let rep = push_file(store, keys.clone(), &src, "alice", "sample", &opts)
        .await
        .unwrap();
    assert_eq!(
        (rep.chunks, rep.holes, rep.image_bytes),
        (7, 2, img.len() as u64),
        "{label}: {rep:?}"
    );
    assert!(
        rep.uploaded >= 4 && rep.uploaded + rep.already == 5,
        "{label}: {rep:?}"
    );
    assert_eq!(rep.root, r1.id);
    let chunk_keys: BTreeSet<String> = all_keys(store, &format!("roots/{}/chunks", r1.id))
        .await
        .into_iter()
        .filter(|k| !k.ends_with(&hex))
        .collect();
    assert_eq!(
        chunk_keys.len(),
        4,
        "{label}: 4 distinct data chunks stored once each: {chunk_keys:?}"
    );
    // Each stored chunk is the convergent encryption of the image's chunk under the root's salt.
    let expected: BTreeSet<String> = [0usize, 2, 5, 6]
        .iter()
        .map(|&i| {
            let s = seal_chunk(&salt1, &img[i * CS..((i + 1) * CS).min(img.len())]);
            Store::chunk_path(&r1.id, &s.name).to_string()
        })
        .collect();
    assert_eq!(chunk_keys, expected, "{label}: stored chunk names");
    let out = work.path().join("out");
    let pr = pull_to_file(store, keys.clone(), "alice", "sample", &out, 3)
        .await
        .unwrap();
    assert_eq!((pr.chunks, pr.fetched), (7, 5));
    assert!(
        std::fs::read(&out).unwrap() == img,
        "{label}: pulled image differs"
    );
    let again = push_file(store, keys.clone(), &src, "alice", "sample", &opts)
        .await
        .unwrap();
    assert_eq!(
        (again.uploaded, again.already, again.bytes_uploaded),
        (0, 5, 0),
        "{label}: {again:?}"
    );

    // --- Rotation: new salt, new names; the retired root stays readable; an expired one is not.
    let (r2, retired) = store.rotate_root(keys.as_ref()).await.unwrap();
    assert_eq!(
        retired.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![r1.id.clone()]
    );
    assert_ne!(r2.salt_id, r1.salt_id);
    let states: Vec<(String, RootState)> = store
        .roots()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (r1.id.clone(), RootState::Retired),
            (r2.id.clone(), RootState::Active)
        ],
        "{label}"
    );
    let rep2 = push_file(store, keys.clone(), &src, "alice", "sample-2", &opts)
        .await
        .unwrap();
    // Only the in-image repeat of chunk 0 can be found already stored (when chunk 0 won the race).
    assert_eq!(rep2.root, r2.id, "{label}");
    assert!(
        rep2.uploaded >= 4 && rep2.uploaded + rep2.already == 5,
        "{label}: new root, new names: {rep2:?}"
    );
    let out1 = work.path().join("out1");
    pull_to_file(store, keys.clone(), "alice", "sample", &out1, 3)
        .await
        .unwrap();
    assert!(
        std::fs::read(&out1).unwrap() == img,
        "{label}: image in the retired root"
    );
    store
        .set_root_state(&r1.id, RootState::Expired)
        .await
        .unwrap();
    assert!(
        store
            .set_root_state(&r1.id, RootState::Active)
            .await
            .is_err(),
        "{label}: roots move one way"
    );
    // A read from an expired root still returns the data, and raises an alarm.
    let out2 = work.path().join("out2");
    assert!(store.open_alarms().await.unwrap().is_empty());
    pull_to_file(store, keys.clone(), "alice", "sample", &out2, 3)
        .await
        .unwrap();
    assert!(
        std::fs::read(&out2).unwrap() == img,
        "{label}: expired root"
    );
    let alarms = store.open_alarms().await.unwrap();
    assert_eq!(alarms.keys().collect::<Vec<_>>(), vec![&r1.id], "{label}");
    let a = &store.alarms_of(&r1.id).await.unwrap()[0];
    assert_eq!(
        (a.state.as_str(), a.root.as_str()),
        ("expired", r1.id.as_str())
    );
    assert!(
        lode_store::alarm::metrics()
            .unreadable_reads
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert_eq!(store.ack_alarms(&r1.id).await.unwrap(), alarms[&r1.id]);
    assert!(
        store.open_alarms().await.unwrap().is_empty(),
        "{label}: acknowledged"
    );
    pull_to_file(store, keys.clone(), "alice", "sample-2", &out2, 3)
        .await
        .unwrap();
    assert!(std::fs::read(&out2).unwrap() == img);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_memory() {
    let keys = tempfile::tempdir().unwrap();
    let store = Store::open("memory://").unwrap();
    conformance("memory://", &store, keys.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_local_dir() {
    let keys = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let url = format!("file://{}", root.display());
    let store = Store::open(&url).unwrap();
    conformance(&url, &store, keys.path()).await;
    // The layout on disk is the object layout.
    let roots = store.roots().await.unwrap();
    assert_eq!(roots.len(), 2);
    for r in &roots {
        assert!(root.join("roots").join(&r.id).join("root.json").is_file());
    }
    assert!(root.join("tenants/alice/images/sample").is_file());
    // A plain path opens the same store.
    let again = Store::open(root.to_str().unwrap()).unwrap();
    assert_eq!(again.roots().await.unwrap(), roots);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_s3_moto() {
    let moto = store_s3::MotoServer::start();
    moto.create_bucket("lode-conf");
    // Store::open reads the standard AWS environment. Only this test in this
    // binary touches it, before any S3 client exists.
    moto.point_process_env();
    let keys = tempfile::tempdir().unwrap();
    let url = "s3://lode-conf/some/prefix";
    let store = Store::open(url).unwrap();
    conformance(url, &store, keys.path()).await;
    // Everything went under the prefix, nothing outside it.
    let all = moto.list_keys("lode-conf", "");
    assert!(!all.is_empty());
    assert!(
        all.iter().all(|k| k.starts_with("some/prefix/")),
        "objects outside the prefix: {all:?}"
    );
    assert!(
        all.iter()
            .any(|k| k == "some/prefix/tenants/alice/images/sample"),
        "{all:?}"
    );
    // A missing bucket is an error, not an empty store.
    let nob = Store::open("s3://no-such-bucket").unwrap();
    assert!(
        matches!(nob.roots().await, Err(StoreError::Backend { .. })),
        "missing bucket"
    );
}
