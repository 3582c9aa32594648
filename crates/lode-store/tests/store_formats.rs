//! Chunk format v2 in a real store, beside what older lode wrote: one image
//! written as lode wrote it before (chunk format v1, manifest version 2)
//! and the same bytes pushed now (zstd chunks, manifest version 3) live in
//! one store; both pull back byte for byte; a compressed chunk whose stored
//! object is tampered with or truncated is refused; a GC pass that rotates
//! the root migrates both into the current format and collects the old
//! objects.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use lode_chunk::manifest::{VERSION, VERSION_V2};
use lode_chunk::{seal_chunk_v1, Codec, ImageBinding, KeyProvider, Keyring, Manifest, SealSpec};
use lode_store::{
    gc_pass, open_image, pull_to_file, push_file, Expect, GcOptions, ImagePointer, PushOptions,
    Store, StoreError,
};
use lode_testkit::noise;
use std::sync::Arc;
use std::time::Duration;

const CS: usize = lode_chunk::CHUNK_SIZE as usize;

/// Text (compressible), noise (raw), zeros (a hole), text and noise in
/// halves (compressible, barely), and a short text tail.
fn image() -> Vec<u8> {
    let text: Vec<u8> = b"#!/usr/bin/env python3\nimport os, sys\nprint(sys.argv)\n"
        .iter()
        .copied()
        .cycle()
        .take(CS)
        .collect();
    let mut img = text.clone();
    img.extend(noise(1, CS));
    img.extend(vec![0u8; CS]);
    img.extend(&text[..CS / 2]);
    img.extend(noise(2, CS / 2));
    img.extend(&text[..777]);
    img
}

/// Writes `bytes` as `tenant/name` the way lode wrote images before chunk
/// format v2: v1 chunks, a version-2 manifest, a sealed pointer.
async fn put_legacy(store: &Store, keys: &dyn KeyProvider, name: &str, bytes: &[u8]) {
    let root = store.active_root(keys).await.unwrap();
    let salt = keys.salt(&root.salt_id).unwrap();
    let mut names = Vec::new();
    let mut secrets = Vec::new();
    for c in bytes.chunks(CS) {
        if c.iter().all(|&b| b == 0) {
            names.push(None);
            secrets.push(None);
            continue;
        }
        let s = seal_chunk_v1(&salt, c);
        store
            .put_chunk(&root.id, &s.name, s.ciphertext.into())
            .await
            .unwrap();
        names.push(Some(s.name));
        secrets.push(Some(s.secret));
    }
    let binding = ImageBinding {
        name: name.into(),
        version: 1,
    };
    let spec = SealSpec {
        format: VERSION_V2,
        tenant: "t",
        binding: Some(&binding),
        image_size: bytes.len() as u64,
        chunk_size: CS as u32,
        root: &root.id,
    };
    let m = Manifest::seal(&spec, names, &secrets, keys).unwrap();
    let digest = store.put_manifest("t", m.encode().into()).await.unwrap();
    let p = ImagePointer::live("t", name, &digest, 1, keys).unwrap();
    assert!(store
        .write_pointer("t", name, &p, &Expect::Absent)
        .await
        .unwrap());
}

async fn pulled(store: &Store, keys: &Arc<dyn KeyProvider>, name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    pull_to_file(store, keys.clone(), "t", name, &out, 4)
        .await
        .unwrap();
    std::fs::read(out).unwrap()
}

#[tokio::test]
async fn v1_and_v2_chunks_in_one_store() {
    let store = Store::open("memory://").unwrap();
    let kdir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyProvider> = Arc::new(Keyring::new(kdir.path()));
    let img = image();
    put_legacy(&store, keys.as_ref(), "old", &img).await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("img");
    std::fs::write(&src, &img).unwrap();
    let r = push_file(
        &store,
        keys.clone(),
        &src,
        "t",
        "new",
        &PushOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((r.chunks, r.holes, r.uploaded), (5, 1, 4), "{r:?}");
    assert!(
        r.bytes_uploaded < (CS + CS + 777) as u64,
        "text compressed: {r:?}"
    );

    let old = open_image(&store, keys.as_ref(), "t", "old").await.unwrap();
    let new = open_image(&store, keys.as_ref(), "t", "new").await.unwrap();
    assert_eq!(
        (old.manifest.format, new.manifest.format),
        (VERSION_V2, VERSION)
    );
    let codecs = |t: &lode_chunk::KeyTable| -> Vec<Option<Codec>> {
        t.0.iter().map(|s| s.map(|s| s.codec)).collect()
    };
    assert_eq!(
        codecs(&old.keys),
        vec![
            Some(Codec::Raw),
            Some(Codec::Raw),
            None,
            Some(Codec::Raw),
            Some(Codec::Raw)
        ]
    );
    assert_eq!(
        codecs(&new.keys),
        vec![
            Some(Codec::Zstd),
            Some(Codec::Raw),
            None,
            Some(Codec::Zstd),
            Some(Codec::Zstd)
        ]
    );
    for (i, s) in new.keys.0.iter().enumerate() {
        let (Some(s), Some(n)) = (s, new.manifest.names[i]) else {
            continue;
        };
        let stored = store.get_chunk(&new.manifest.root, &n).await.unwrap();
        assert_eq!(stored.len(), s.stored_len as usize, "chunk {i}");
        assert_ne!(Some(n), old.manifest.names[i], "v1 and v2 names differ");
    }
    assert!(pulled(&store, &keys, "old").await == img);
    assert!(pulled(&store, &keys, "new").await == img);

    // A compressed chunk's object tampered with, then truncated: refused.
    let n0 = new.manifest.names[0].unwrap();
    let good = store.get_chunk(&new.manifest.root, &n0).await.unwrap();
    let out = work.path().join("bad");
    let mut flipped = good.to_vec();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 4;
    let truncated = good[..good.len() - 1].to_vec();
    for bad in [flipped, truncated] {
        store
            .put_chunk(&new.manifest.root, &n0, bad.into())
            .await
            .unwrap();
        let e = pull_to_file(&store, keys.clone(), "t", "new", &out, 2)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                StoreError::Chunk(lode_chunk::ChunkError::NameMismatch { index: 0, .. })
            ),
            "{e:?}"
        );
    }
    store
        .put_chunk(&new.manifest.root, &n0, good)
        .await
        .unwrap();

    // Rotation: both images are re-sealed into the new root in the current
    // format; the old root, with its v1 objects, goes.
    let gc = |rotate: bool| GcOptions {
        rotate_after: rotate.then_some(Duration::ZERO),
        retire_after: Duration::ZERO,
        expire_after: Duration::ZERO,
        lease: Duration::from_secs(30),
        ..GcOptions::default()
    };
    let r1 = gc_pass(&store, keys.clone(), &gc(true)).await.unwrap();
    assert_eq!(r1.migration.images, 2, "{r1:?}");
    gc_pass(&store, keys.clone(), &gc(false)).await.unwrap();
    assert_eq!(store.roots().await.unwrap().len(), 1);
    let old2 = open_image(&store, keys.as_ref(), "t", "old").await.unwrap();
    let new2 = open_image(&store, keys.as_ref(), "t", "new").await.unwrap();
    assert_eq!(
        (old2.manifest.format, new2.manifest.format),
        (VERSION, VERSION)
    );
    assert_eq!(
        old2.manifest.names, new2.manifest.names,
        "one plaintext, one name"
    );
    assert_eq!(codecs(&old2.keys), codecs(&new.keys));
    assert!(pulled(&store, &keys, "old").await == img);
    assert!(pulled(&store, &keys, "new").await == img);
}
