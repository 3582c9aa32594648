//! docker-archive tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io;
use std::path::Path;

use serde_json::json;

use super::{archive, read_layer};
use crate::digest::sha256_of;
use crate::testutil::*;
use crate::{Compression, Image, OciError};

struct ArchiveImage {
    config: Vec<u8>,
    config_name: String,
    layers: Vec<(String, Vec<u8>)>, // (member name, stored bytes)
}

fn archive_image(layers: &[(&str, TestLayer)], tag: &str) -> (ArchiveImage, Vec<TestLayer>) {
    let diff_ids: Vec<String> = layers.iter().map(|(_, l)| l.diff_id()).collect();
    let config = config_json(&diff_ids, &format!("amd64-{tag}"));
    let hex = &sha256_of(&config)[7..];
    let img = ArchiveImage {
        config_name: format!("{hex}.json"),
        config,
        layers: layers
            .iter()
            .map(|(n, l)| ((*n).to_owned(), l.stored.clone()))
            .collect(),
    };
    (img, layers.iter().map(|(_, l)| l.clone()).collect())
}

fn write_archive(
    path: &Path,
    images: &[(&ArchiveImage, serde_json::Value)],
    links: &[(&str, &str)],
) {
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifest = Vec::new();
    for (img, tags) in images {
        members.push((img.config_name.clone(), img.config.clone()));
        for (n, b) in &img.layers {
            if !members.iter().any(|(m, _)| m == n) && !links.iter().any(|(l, _)| l == n) {
                members.push((n.clone(), b.clone()));
            }
        }
        manifest.push(json!({
            "Config": img.config_name,
            "RepoTags": tags,
            "Layers": img.layers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        }));
    }
    members.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    members.push(("repositories".into(), b"{}".to_vec()));
    write_tar(path, &members, links);
}

#[test]
fn docker_archive_formats_and_streaming() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let plain = layer(Compression::None, &[("p", b"plain")]);
    let gz = layer(Compression::Gzip, &[("g", b"gzipped")]);
    let zs = layer(Compression::Zstd, &[("z", b"zstd")]);
    let id = "0123456789abcdef".repeat(4); // legacy layer id, not a digest
    let (img, layers) = archive_image(
        &[
            (&format!("{id}/layer.tar"), plain.clone()),
            (&format!("blobs/sha256/{}", &gz.digest()[7..]), gz.clone()),
            ("weird-name.tar.zst", zs.clone()),
            (&format!("{}.tar", &plain.digest()[7..]), plain.clone()),
            ("dup/layer.tar", plain.clone()),
        ],
        "x",
    );
    let path = tmp.path().join("img.tar");
    write_archive(
        &path,
        &[(&img, json!(["example.com/x:1"]))],
        &[("dup/layer.tar", &format!("../{id}/layer.tar"))],
    );
    let image = Image::open(&archive(&path, None))?;
    assert_eq!(image.config_json(), img.config.as_slice());
    assert_eq!(image.config_digest(), sha256_of(&img.config));
    let kinds: Vec<Compression> = image.layers().iter().map(|l| l.compression).collect();
    let (n, g, z) = (Compression::None, Compression::Gzip, Compression::Zstd);
    assert_eq!(kinds, [n, g, z, n, n]);
    for (i, l) in layers.iter().enumerate() {
        let d = &image.layers()[i];
        assert_eq!(d.digest, l.digest(), "layer {i}");
        assert_eq!(d.size, l.stored.len() as u64);
        assert_eq!(d.media_type, d.compression.docker_media_type());
        assert_eq!(read_layer(&image, i)?, l.tar, "layer {i}");
    }
    Ok(())
}

#[test]
fn docker_archive_repotag_selection() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let la = layer(Compression::None, &[("a", b"a")]);
    let lb = layer(Compression::None, &[("b", b"b")]);
    let (a, _) = archive_image(&[("a/layer.tar", la)], "a");
    let (b, _) = archive_image(&[("b/layer.tar", lb)], "b");
    let path = tmp.path().join("multi.tar");
    write_archive(
        &path,
        &[
            (&a, json!(["alpha:latest", "alpha:3"])),
            (&b, json!(["beta:1"])),
        ],
        &[],
    );
    let cfg = |s: Option<&str>| Image::open(&archive(&path, s)).map(|i| i.config_json().to_vec());
    assert_eq!(cfg(Some("alpha"))?, a.config);
    assert_eq!(cfg(Some("alpha:3"))?, a.config);
    assert_eq!(cfg(Some("beta:1"))?, b.config);
    assert_eq!(cfg(Some("@1"))?, b.config);
    match cfg(None) {
        Err(OciError::AmbiguousRef { available }) => {
            assert_eq!(available, ["alpha:latest", "alpha:3", "beta:1"])
        }
        other => panic!("unexpected {other:?}"),
    }
    match cfg(Some("beta")) {
        Err(OciError::RefNotFound {
            reference,
            available,
        }) => {
            assert_eq!(reference, "beta");
            assert_eq!(available.len(), 3);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(cfg(Some("@2")), Err(OciError::RefNotFound { .. })));
    Ok(())
}

#[test]
fn docker_archive_verification_errors() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer(Compression::Gzip, &[("a", b"a")]);
    let path = tmp.path().join("x.tar");

    // Config whose name embeds a different digest.
    let (mut img, _) = archive_image(&[("l.tar.gz", l.clone())], "x");
    img.config_name = format!("{}.json", "ab".repeat(32));
    write_archive(&path, &[(&img, json!(["x:1"]))], &[]);
    assert!(matches!(
        Image::open(&archive(&path, None)),
        Err(OciError::DigestMismatch { what, .. }) if what == "config"
    ));

    // Layer stored as blobs/sha256/<wrong hex>.
    let wrong = "cd".repeat(32);
    let (img, _) = archive_image(&[(&format!("blobs/sha256/{wrong}"), l.clone())], "x");
    write_archive(&path, &[(&img, json!(["x:1"]))], &[]);
    let image = Image::open(&archive(&path, None))?;
    match image.open_layer(0)?.finish() {
        Err(OciError::DigestMismatch {
            what,
            expected,
            actual,
        }) => {
            assert_eq!(what, "layer 0 blob");
            assert_eq!(expected, format!("sha256:{wrong}"));
            assert_eq!(actual, l.digest());
        }
        other => panic!("unexpected {other:?}"),
    }

    // diff_id mismatch (uncompressed layer, legacy name).
    let mut lied = layer(Compression::None, &[("a", b"a")]);
    let real = lied.stored.clone();
    lied.tar = tar_bytes(&[("a", b"b")]);
    let (mut img, _) = archive_image(&[("id/layer.tar", lied.clone())], "x");
    img.layers[0].1 = real;
    write_archive(&path, &[(&img, json!(["x:1"]))], &[]);
    let image = Image::open(&archive(&path, None))?;
    match image.open_layer(0)?.finish() {
        Err(OciError::DigestMismatch { what, .. }) => {
            assert!(what.starts_with("layer 0 "), "{what}")
        }
        other => panic!("unexpected {other:?}"),
    }

    // Missing layer member.
    let (mut img, _) = archive_image(&[("l.tar", l.clone())], "x");
    write_archive(&path, &[(&img, json!(["x:1"]))], &[]);
    img.layers[0].0 = "missing.tar".into();
    let mut manifest_only = Vec::new();
    manifest_only.push((img.config_name.clone(), img.config.clone()));
    let m = json!([{"Config": img.config_name, "RepoTags": ["x:1"], "Layers": ["missing.tar"]}]);
    manifest_only.push(("manifest.json".into(), serde_json::to_vec(&m).unwrap()));
    write_tar(&path, &manifest_only, &[]);
    assert!(matches!(
        Image::open(&archive(&path, None)),
        Err(OciError::MissingMember { member, .. }) if member == "missing.tar"
    ));

    // Not a tar / no manifest.json.
    fs::write(&path, b"definitely not a tar archive").unwrap();
    assert!(Image::open(&archive(&path, None)).is_err());
    write_tar(&path, &[("other".into(), b"x".to_vec())], &[]);
    assert!(
        matches!(Image::open(&archive(&path, None)), Err(OciError::MissingMember { member, .. }) if member == "manifest.json")
    );
    Ok(())
}

#[test]
fn docker_archive_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let l = layer(Compression::None, &[("big", &big)]);
    let (img, _) = archive_image(&[("z/layer.tar", l)], "x");
    let path = tmp.path().join("t.tar");
    // manifest.json and config first, then the layer, so truncation cuts the layer.
    let manifest =
        json!([{"Config": img.config_name, "RepoTags": ["x:1"], "Layers": ["z/layer.tar"]}]);
    let members = vec![
        (
            "manifest.json".to_owned(),
            serde_json::to_vec(&manifest).unwrap(),
        ),
        (img.config_name.clone(), img.config.clone()),
        ("z/layer.tar".to_owned(), img.layers[0].1.clone()),
    ];
    write_tar(&path, &members, &[]);
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() / 2]).unwrap();
    match Image::open(&archive(&path, None)) {
        Err(OciError::ArchiveIo { member, source, .. }) => {
            assert_eq!(member, "z/layer.tar");
            assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
        }
        other => panic!("unexpected {other:?}"),
    }
}
