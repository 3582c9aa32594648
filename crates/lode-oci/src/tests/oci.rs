//! OCI layout tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read};

use serde_json::json;

use super::{oci, read_layer};
use crate::digest::sha256_of;
use crate::testutil::*;
use crate::{Compression, Image, LayerReader, OciError};

fn three_layers() -> Vec<TestLayer> {
    vec![
        layer(Compression::None, &[("a.txt", b"plain")]),
        layer(Compression::Gzip, &[("b.txt", b"gzip gzip gzip")]),
        layer(Compression::Zstd, &[("c.txt", b"zstd!")]),
    ]
}

#[test]
fn layer_reader_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<LayerReader>();
    assert_send::<Image>();
}

#[test]
fn oci_streams_exact_bytes_for_all_compressions() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let layers = three_layers();
    let m = write_image(tmp.path(), &layers, "amd64");
    write_layout(tmp.path(), vec![m]);
    let img = Image::open(&oci(tmp.path(), None))?;
    assert_eq!(img.layers().len(), 3);
    let diff_ids: Vec<String> = layers.iter().map(TestLayer::diff_id).collect();
    assert_eq!(img.diff_ids(), diff_ids.as_slice());
    assert_eq!(img.config_digest(), sha256_of(img.config_json()));
    for (i, l) in layers.iter().enumerate() {
        let d = &img.layers()[i];
        assert_eq!(d.index, i);
        assert_eq!(d.digest, l.digest());
        assert_eq!(d.diff_id, l.diff_id());
        assert_eq!(d.size, l.stored.len() as u64);
        assert_eq!(d.media_type, l.media_type);
        assert_eq!(read_layer(&img, i)?, l.tar, "layer {i}");
    }
    assert_eq!(
        [
            img.layers()[0].compression,
            img.layers()[1].compression,
            img.layers()[2].compression
        ],
        [Compression::None, Compression::Gzip, Compression::Zstd]
    );
    assert!(matches!(
        img.open_layer(3),
        Err(OciError::LayerIndex { index: 3, count: 3 })
    ));
    Ok(())
}

#[test]
fn large_layer_through_tar_parser_and_multi_member_streams() -> Result<(), OciError> {
    // ~3 MiB of poorly compressible data crosses all buffer boundaries.
    let mut big = Vec::with_capacity(3 << 20);
    let mut x: u32 = 12345;
    while big.len() < 3 << 20 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        big.extend_from_slice(&x.to_le_bytes()[1..3]);
    }
    let tar = tar_bytes(&[("big.bin", &big), ("small", b"s")]);
    // Two gzip members and two zstd frames concatenated.
    let (a, b) = tar.split_at(tar.len() / 3);
    let gz = [gzip(a), gzip(b)].concat();
    let zs = [zstd(a), zstd(b)].concat();
    let tmp = tempfile::tempdir().unwrap();
    let layers = vec![
        TestLayer {
            tar: tar.clone(),
            stored: gz,
            media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
        },
        TestLayer {
            tar: tar.clone(),
            stored: zs,
            media_type: "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd".into(),
        },
    ];
    let m = write_image(tmp.path(), &layers, "amd64");
    write_layout(tmp.path(), vec![m]);
    let img = Image::open(&oci(tmp.path(), None))?;
    for i in 0..2 {
        let mut r = img.open_layer(i)?;
        // An empty read must not be mistaken for end of stream.
        assert_eq!(r.read(&mut []).unwrap(), 0);
        let mut ar = tar::Archive::new(&mut r);
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            names.push(e.path().unwrap().to_string_lossy().into_owned());
            io::copy(&mut e, &mut io::sink()).unwrap();
        }
        assert_eq!(names, ["big.bin", "small"]);
        // The tar parser stops at the end-of-archive blocks; finish drains and verifies.
        r.finish()?;
    }
    Ok(())
}

#[test]
fn ref_selection_and_errors() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let a = write_image(
        tmp.path(),
        &[layer(Compression::None, &[("a", b"a")])],
        "amd64",
    );
    let b = write_image(
        tmp.path(),
        &[layer(Compression::Gzip, &[("b", b"b")])],
        "amd64",
    );
    write_layout(tmp.path(), vec![with_ref(a, "a:1"), with_ref(b, "b")]);
    let img = Image::open(&oci(tmp.path(), Some("b")))?;
    assert_eq!(img.layers()[0].compression, Compression::Gzip);
    let img = Image::open(&oci(tmp.path(), Some("a:1")))?;
    assert_eq!(img.layers()[0].compression, Compression::None);
    let img = Image::open(&oci(tmp.path(), Some("@1")))?;
    assert_eq!(img.layers()[0].compression, Compression::Gzip);
    match Image::open(&oci(tmp.path(), None)) {
        Err(e @ OciError::AmbiguousRef { .. }) => {
            assert!(
                matches!(&e, OciError::AmbiguousRef { available } if available == &["a:1", "b"])
            );
            assert!(e.to_string().contains("a:1, b"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    match Image::open(&oci(tmp.path(), Some("c"))) {
        Err(OciError::RefNotFound {
            reference,
            available,
        }) => {
            assert_eq!(reference, "c");
            assert_eq!(available, ["a:1", "b"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        Image::open(&oci(tmp.path(), Some("@2"))),
        Err(OciError::RefNotFound { .. })
    ));
    Ok(())
}

#[test]
fn platform_descriptors_pick_linux_amd64() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let arm = write_image(
        tmp.path(),
        &[layer(Compression::None, &[("arm", b"1")])],
        "arm64",
    );
    let amd = write_image(
        tmp.path(),
        &[layer(Compression::None, &[("amd", b"2")])],
        "amd64",
    );
    let ppc = write_image(
        tmp.path(),
        &[layer(Compression::None, &[("ppc", b"3")])],
        "ppc64le",
    );
    write_layout(
        tmp.path(),
        vec![
            with_platform(arm.clone(), "linux", "arm64"),
            with_platform(amd, "linux", "amd64"),
            with_platform(ppc.clone(), "linux", "ppc64le"),
        ],
    );
    let img = Image::open(&oci(tmp.path(), None))?;
    assert_eq!(read_layer(&img, 0)?, tar_bytes(&[("amd", b"2")]));
    // No amd64: NoPlatform listing what exists.
    write_layout(
        tmp.path(),
        vec![
            with_platform(arm, "linux", "arm64"),
            with_platform(ppc, "linux", "ppc64le"),
        ],
    );
    match Image::open(&oci(tmp.path(), None)) {
        Err(OciError::NoPlatform { wanted, available }) => {
            assert_eq!(wanted, "linux/amd64");
            assert_eq!(available, ["linux/arm64", "linux/ppc64le"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[test]
fn nested_index_and_docker_media_types() -> Result<(), OciError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let arm = write_image(dir, &[layer(Compression::None, &[("arm", b"1")])], "arm64");
    // The amd64 image uses docker schema2 media types.
    let l = layer(Compression::Gzip, &[("amd", b"2")]);
    let mut l_docker = l.clone();
    l_docker.media_type = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
    write_blob(dir, &l.stored);
    let config = config_json(&[l.diff_id()], "amd64");
    write_blob(dir, &config);
    let docker_manifest = "application/vnd.docker.distribution.manifest.v2+json";
    let mut m: serde_json::Value = serde_json::from_slice(&manifest_json(
        docker_manifest,
        &config,
        &[desc(&l_docker.media_type, &l.stored)],
    ))
    .unwrap();
    m["config"]["mediaType"] = json!("application/vnd.docker.container.image.v1+json");
    let m = serde_json::to_vec(&m).unwrap();
    write_blob(dir, &m);
    let amd = desc(docker_manifest, &m);
    let inner = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [with_platform(arm, "linux", "arm64"), with_platform(amd, "linux", "amd64")],
    }))
    .unwrap();
    write_blob(dir, &inner);
    let list_desc = desc(
        "application/vnd.docker.distribution.manifest.list.v2+json",
        &inner,
    );
    // index.json -> OCI index -> docker manifest list -> docker manifest
    let mid = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [with_platform(list_desc, "linux", "amd64")],
    }))
    .unwrap();
    write_blob(dir, &mid);
    write_layout(dir, vec![with_ref(desc(OCI_INDEX, &mid), "latest")]);
    let img = Image::open(&oci(dir, Some("latest")))?;
    assert_eq!(
        img.layers()[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(read_layer(&img, 0)?, l.tar);
    Ok(())
}
