//! The CLI against a real S3-compatible server (a private moto server per
//! test): round trip, inspect counts, cross-tenant dedup, layout under the
//! prefix, no plaintext in any object, and a tampered object.
//!
//! moto must be installed (`scripts/test.sh` does it); without it these tests
//! fail, they do not skip.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../lode-store/tests/store_support/store_s3.rs"]
mod store_s3;
#[path = "store_support/store_util.rs"]
mod util;

use store_s3::MotoServer;
use util::*;

#[test]
fn roundtrip_s3_dedup_and_layout() {
    let moto = MotoServer::start();
    moto.create_bucket("lode-it");
    let w = World::s3(moto.aws_env(), "lode-it", "team/store");
    let img = standard_image();
    let (chunks, holes, stored, unique) = expected_counts(&img);
    let src = w.work().join("image.ext4");
    write(&src, &img);

    let a = w.push(&src, "alice", "app");
    assert_eq!(
        (a.chunks, a.holes, a.uploaded + a.already),
        (chunks, holes, stored),
        "{a:?}"
    );
    assert!(a.uploaded >= unique, "{a:?}");

    let keys = moto.list_keys("lode-it", "");
    assert!(
        keys.iter().all(|k| k.starts_with("team/store/")),
        "objects outside the prefix: {keys:?}"
    );
    let chunk_keys: Vec<&String> = keys.iter().filter(|k| k.contains("/chunks/")).collect();
    assert_eq!(chunk_keys.len() as u64, unique, "{chunk_keys:?}");
    assert!(
        keys.contains(&"team/store/tenants/alice/images/app".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!(
            "team/store/tenants/alice/manifests/{}",
            &a.manifest[7..]
        )),
        "{keys:?}"
    );

    let out = w.work().join("pulled.ext4");
    w.pull("alice", "app", &out);
    assert_same(&src, &out);
    let j = w.inspect("alice", "app");
    assert_eq!(
        (
            j["chunks"].as_u64(),
            j["holes"].as_u64(),
            j["stored_chunks"].as_u64(),
            j["unique_chunks"].as_u64()
        ),
        (Some(chunks), Some(holes), Some(stored), Some(unique))
    );
    assert_eq!(j["manifest"], a.manifest.as_str());

    // Another tenant, same image: nothing uploaded, own manifest, own pull.
    let b = w.push(&src, "bob", "mirror");
    assert_eq!(
        (b.uploaded, b.already, b.bytes_uploaded),
        (0, stored, 0),
        "{b:?}"
    );
    assert_ne!(b.manifest, a.manifest);
    let out_b = w.work().join("pulled-b.ext4");
    w.pull("bob", "mirror", &out_b);
    assert_same(&src, &out_b);
    assert_eq!(
        moto.list_keys("lode-it", "team/store/roots/")
            .iter()
            .filter(|k| k.contains("/chunks/"))
            .count() as u64,
        unique
    );

    // No object holds image plaintext.
    let can = canary();
    let windows = Windows::new(&can);
    for k in moto.list_keys("lode-it", "") {
        let bytes = moto.get_object("lode-it", &k);
        assert_eq!(
            windows.find_in(&bytes),
            None,
            "plaintext of the image found in object {k}"
        );
    }

    // A flipped byte in one chunk object: pull fails naming the chunk, no output.
    let m = lode_chunk::Manifest::decode(&moto.get_object(
        "lode-it",
        &format!("team/store/tenants/alice/manifests/{}", &a.manifest[7..]),
    ))
    .unwrap();
    let idx = 20; // a chunk whose bytes appear once in the image
    let name = m.names[idx].expect("chunk 20 is data").to_hex();
    let key = format!("team/store/roots/{}/chunks/{}/{name}", m.root, &name[..2]);
    let mut bytes = moto.get_object("lode-it", &key);
    bytes[1000] ^= 0x80;
    moto.put_object("lode-it", &key, &bytes);
    let bad = w.work().join("bad.ext4");
    let e = w
        .run(&[
            "pull",
            "app",
            "--tenant",
            "alice",
            "-o",
            bad.to_str().unwrap(),
        ])
        .err();
    assert!(
        e.contains(&format!("chunk {idx}:")) && e.contains("mismatch"),
        "{e}"
    );
    assert!(!bad.exists());
}
