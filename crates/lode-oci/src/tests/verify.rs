//! OCI layout verification tests: digest/size mismatches, corrupt streams, bad digests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use serde_json::json;

use super::{oci, read_err, unwrap_io};
use crate::digest::sha256_of;
use crate::testutil::*;
use crate::{Compression, Image, LayerReader, OciError};

#[test]
fn layer_blob_digest_mismatch() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer(Compression::None, &[("a", b"hello")]);
    let m = write_image(tmp.path(), std::slice::from_ref(&l), "amd64");
    write_layout(tmp.path(), vec![m]);
    // Same size, different content.
    let mut bad = l.stored.clone();
    bad[600] ^= 1;
    write_blob_at(tmp.path(), &l.digest(), &bad);
    let img = Image::open(&oci(tmp.path(), None))?;
    let mut r = img.open_layer(0)?;
    let e = read_err(&mut r);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<OciError>()),
        Some(OciError::DigestMismatch { what, .. }) if what == "layer 0 blob"
    ));
    match r.finish() {
        Err(OciError::DigestMismatch {
            what,
            expected,
            actual,
        }) => {
            assert_eq!(what, "layer 0 blob");
            assert_eq!(expected, l.digest());
            assert_eq!(actual, sha256_of(&bad));
        }
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[test]
fn diff_id_mismatch() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer(Compression::Gzip, &[("a", b"hello")]);
    let mut lied = l.clone();
    lied.tar = tar_bytes(&[("a", b"HELLO")]); // config gets a wrong diff_id
    let m = write_image(tmp.path(), &[lied.clone()], "amd64");
    write_layout(tmp.path(), vec![m]);
    let img = Image::open(&oci(tmp.path(), None))?;
    let mut r = img.open_layer(0)?;
    let e = read_err(&mut r);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    match unwrap_io(e) {
        OciError::DigestMismatch {
            what,
            expected,
            actual,
        } => {
            assert_eq!(what, "layer 0 diff_id");
            assert_eq!(expected, lied.diff_id());
            assert_eq!(actual, l.diff_id());
        }
        other => panic!("unexpected {other:?}"),
    }
    // A second read after the failure fails again; finish reports it too.
    assert!(r.read(&mut [0u8; 16]).is_err());
    assert!(matches!(r.finish(), Err(OciError::DigestMismatch { .. })));
    Ok(())
}

#[test]
fn config_and_manifest_digest_and_size_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let l = layer(Compression::None, &[("a", b"hello")]);
    let config = config_json(&[l.diff_id()], "amd64");
    write_blob(dir, &l.stored);
    let manifest = manifest_json(OCI_MANIFEST, &config, &[desc(&l.media_type, &l.stored)]);
    write_blob(dir, &manifest);
    write_layout(dir, vec![desc(OCI_MANIFEST, &manifest)]);
    // Config tampered, same size.
    let tampered = String::from_utf8(config.clone())
        .unwrap()
        .replace("PATH=/bin", "PATH=/xyz")
        .into_bytes();
    assert_eq!(tampered.len(), config.len());
    write_blob_at(dir, &sha256_of(&config), &tampered);
    match Image::open(&oci(dir, None)) {
        Err(OciError::DigestMismatch { what, expected, .. }) => {
            assert_eq!(what, "config");
            assert_eq!(expected, sha256_of(&config));
        }
        other => panic!("unexpected {other:?}"),
    }
    // Config truncated: size mismatch.
    write_blob_at(dir, &sha256_of(&config), &config[..config.len() - 1]);
    assert!(matches!(
        Image::open(&oci(dir, None)),
        Err(OciError::SizeMismatch { what, .. }) if what == "config"
    ));
    write_blob(dir, &config);
    assert!(Image::open(&oci(dir, None)).is_ok());
    // Manifest tampered, same size (pretty-printed: swap two spaces of indentation for tabs).
    let tm = String::from_utf8(manifest.clone())
        .unwrap()
        .replacen("  ", "\t\t", 1)
        .into_bytes();
    assert_eq!(tm.len(), manifest.len());
    assert_ne!(tm, manifest);
    write_blob_at(dir, &sha256_of(&manifest), &tm);
    assert!(matches!(
        Image::open(&oci(dir, None)),
        Err(OciError::DigestMismatch { what, .. }) if what == "manifest"
    ));
    // Manifest descriptor with a wrong size.
    write_blob(dir, &manifest);
    let mut d = desc(OCI_MANIFEST, &manifest);
    d["size"] = json!(manifest.len() + 1);
    write_layout(dir, vec![d]);
    assert!(matches!(
        Image::open(&oci(dir, None)),
        Err(OciError::SizeMismatch { what, expected, actual }) if what == "manifest" && expected == actual + 1
    ));
}

#[test]
fn layer_size_mismatch() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let l = layer(Compression::Gzip, &[("a", b"hello")]);
    let config = config_json(&[l.diff_id()], "amd64");
    write_blob(dir, &config);
    write_blob(dir, &l.stored);
    let mut ld = desc(&l.media_type, &l.stored);
    ld["size"] = json!(l.stored.len() + 7);
    let manifest = manifest_json(OCI_MANIFEST, &config, &[ld]);
    write_blob(dir, &manifest);
    write_layout(dir, vec![desc(OCI_MANIFEST, &manifest)]);
    let img = Image::open(&oci(dir, None))?;
    assert!(matches!(
        img.open_layer(0),
        Err(OciError::SizeMismatch { what, expected, actual })
            if what == "layer 0 blob" && expected == actual + 7
    ));
    // The streaming check catches it too (file changed after open_layer's check).
    let mut desc2 = img.layers()[0].clone();
    desc2.size += 7;
    let f = fs::File::open(dir.join("blobs/sha256").join(&l.digest()[7..])).unwrap();
    let r = LayerReader::new(Box::new(f), &desc2, None)?;
    assert!(matches!(r.finish(), Err(OciError::SizeMismatch { .. })));
    Ok(())
}

/// Writes a single-layer layout whose descriptors match `stored` exactly, so
/// any failure must come from decompression.
fn layout_with_stored(dir: &Path, tar: &[u8], stored: &[u8], media_type: &str) -> Image {
    let l = TestLayer {
        tar: tar.to_vec(),
        stored: stored.to_vec(),
        media_type: media_type.into(),
    };
    let m = write_image(dir, &[l], "amd64");
    write_layout(dir, vec![m]);
    Image::open(&oci(dir, None)).unwrap()
}

fn expect_decompress_error(img: &Image, kind: Option<io::ErrorKind>) {
    let mut r = img.open_layer(0).unwrap();
    let e = read_err(&mut r);
    if let Some(k) = kind {
        assert_eq!(e.kind(), k, "{e}");
    }
    let msg = e.to_string();
    let digest = &img.layers()[0].digest;
    assert!(
        msg.contains("layer 0") && msg.contains(digest.as_str()),
        "{msg}"
    );
    match unwrap_io(e) {
        OciError::Decompress {
            layer, digest: d, ..
        } => {
            assert_eq!(layer, 0);
            assert_eq!(&d, digest);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        img.open_layer(0).unwrap().finish(),
        Err(OciError::Decompress { .. })
    ));
}

fn sample_tar() -> Vec<u8> {
    let data: Vec<u8> = (0..200_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    tar_bytes(&[("data", &data)])
}

#[test]
fn truncated_gzip_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = sample_tar();
    let gz = gzip(&tar);
    for cut in [gz.len() - 4, gz.len() / 2, 5] {
        let d = tmp.path().join(cut.to_string());
        let img = layout_with_stored(
            &d,
            &tar,
            &gz[..cut],
            "application/vnd.oci.image.layer.v1.tar+gzip",
        );
        expect_decompress_error(&img, Some(io::ErrorKind::UnexpectedEof));
    }
}

#[test]
fn truncated_zstd_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = sample_tar();
    let zs = zstd(&tar);
    for cut in [zs.len() - 1, zs.len() / 2, 6] {
        let d = tmp.path().join(cut.to_string());
        let img = layout_with_stored(
            &d,
            &tar,
            &zs[..cut],
            "application/vnd.oci.image.layer.v1.tar+zstd",
        );
        expect_decompress_error(&img, Some(io::ErrorKind::UnexpectedEof));
    }
}

#[test]
fn corrupt_gzip_and_zstd_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = sample_tar();
    let mut gz = gzip(&tar);
    let mid = gz.len() / 2;
    for b in &mut gz[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let img = layout_with_stored(
        &tmp.path().join("gz"),
        &tar,
        &gz,
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    expect_decompress_error(&img, None);
    // Not gzip at all.
    let img = layout_with_stored(
        &tmp.path().join("nogz"),
        &tar,
        &tar,
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    expect_decompress_error(&img, None);
    let mut zs = zstd(&tar);
    let mid = zs.len() / 2;
    for b in &mut zs[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let img = layout_with_stored(
        &tmp.path().join("zs"),
        &tar,
        &zs,
        "application/vnd.oci.image.layer.v1.tar+zstd",
    );
    expect_decompress_error(&img, None);
}

#[test]
fn unsupported_media_type_and_layer_count() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = layer(Compression::None, &[("a", b"a")]);
    l.media_type = "application/vnd.oci.image.layer.v1.tar+bzip2".into();
    let ok = layer(Compression::None, &[("b", b"b")]);
    let m = write_image(tmp.path(), &[ok, l], "amd64");
    write_layout(tmp.path(), vec![m]);
    match Image::open(&oci(tmp.path(), None)) {
        Err(OciError::UnsupportedMediaType { layer, media_type }) => {
            assert_eq!(layer, 1);
            assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+bzip2");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Config with one diff_id too many.
    let l = layer(Compression::None, &[("a", b"a")]);
    let config = config_json(&[l.diff_id(), l.diff_id()], "amd64");
    write_blob(tmp.path(), &config);
    write_blob(tmp.path(), &l.stored);
    let manifest = manifest_json(OCI_MANIFEST, &config, &[desc(&l.media_type, &l.stored)]);
    write_blob(tmp.path(), &manifest);
    write_layout(tmp.path(), vec![desc(OCI_MANIFEST, &manifest)]);
    assert!(matches!(
        Image::open(&oci(tmp.path(), None)),
        Err(OciError::LayerCountMismatch {
            layers: 1,
            diff_ids: 2
        })
    ));
}

#[test]
fn malformed_and_traversal_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let l = layer(Compression::None, &[("a", b"a")]);
    let config = config_json(&[l.diff_id()], "amd64");
    write_blob(dir, &config);
    let bad_digests = [
        "sha256:../../../../etc/passwd".to_owned(),
        format!("sha512:{}", "ab".repeat(64)),
        "sha256:ABCDEF".to_owned(),
        "md5:abc".to_owned(),
        "nonsense".to_owned(),
    ];
    for bad in &bad_digests {
        // In index.json.
        write_layout(
            dir,
            vec![json!({"mediaType": OCI_MANIFEST, "digest": bad, "size": 10})],
        );
        match Image::open(&oci(dir, None)) {
            Err(OciError::BadDigest { digest }) => assert_eq!(&digest, bad),
            other => panic!("index.json with {bad}: unexpected {other:?}"),
        }
        // As a layer digest in the manifest.
        let ld = json!({"mediaType": l.media_type, "digest": bad, "size": 10});
        let manifest = manifest_json(OCI_MANIFEST, &config, &[ld]);
        write_blob(dir, &manifest);
        write_layout(dir, vec![desc(OCI_MANIFEST, &manifest)]);
        match Image::open(&oci(dir, None)) {
            Err(OciError::BadDigest { digest }) => assert_eq!(&digest, bad),
            other => panic!("manifest with {bad}: unexpected {other:?}"),
        }
    }
    // As a diff_id in the config.
    let config = config_json(&["sha256:../x".to_owned()], "amd64");
    write_blob(dir, &config);
    write_blob(dir, &l.stored);
    let manifest = manifest_json(OCI_MANIFEST, &config, &[desc(&l.media_type, &l.stored)]);
    write_blob(dir, &manifest);
    write_layout(dir, vec![desc(OCI_MANIFEST, &manifest)]);
    assert!(
        matches!(Image::open(&oci(dir, None)), Err(OciError::BadDigest { digest }) if digest == "sha256:../x")
    );
}

#[test]
fn layout_file_and_json_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    match Image::open(&oci(&dir.join("nope"), None)) {
        Err(OciError::Io { path, .. }) => assert!(path.ends_with("nope/oci-layout")),
        other => panic!("unexpected {other:?}"),
    }
    write_layout(dir, vec![]);
    assert!(matches!(
        Image::open(&oci(dir, None)),
        Err(OciError::Malformed { .. })
    ));
    fs::write(
        dir.join("index.json"),
        b"{\"schemaVersion\": 2, \"manifests\": [",
    )
    .unwrap();
    assert!(
        matches!(Image::open(&oci(dir, None)), Err(OciError::Json { what, .. }) if what == "index.json")
    );
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    assert!(matches!(
        Image::open(&oci(dir, None)),
        Err(OciError::UnsupportedSchema(_))
    ));
    // Missing manifest blob.
    let m = desc(OCI_MANIFEST, b"{}");
    write_layout(dir, vec![m]);
    assert!(matches!(
        Image::open(&oci(dir, None)),
        Err(OciError::Io { .. })
    ));
    // Artifact (non-image) config.
    let cfg = b"{}";
    write_blob(dir, cfg);
    let mut man: serde_json::Value =
        serde_json::from_slice(&manifest_json(OCI_MANIFEST, cfg, &[])).unwrap();
    man["config"]["mediaType"] = json!("application/vnd.cncf.helm.config.v1+json");
    let man = serde_json::to_vec(&man).unwrap();
    write_blob(dir, &man);
    write_layout(dir, vec![desc(OCI_MANIFEST, &man)]);
    assert!(matches!(
        Image::open(&oci(dir, None)),
        Err(OciError::UnsupportedSchema(_))
    ));
}
