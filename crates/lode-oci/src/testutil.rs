//! Builders for small OCI layouts and docker-archives used by the tests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::digest::sha256_of;
use crate::Compression;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A layer: its uncompressed tar, the stored blob and the media type.
#[derive(Clone)]
pub struct TestLayer {
    pub tar: Vec<u8>,
    pub stored: Vec<u8>,
    pub media_type: String,
}

impl TestLayer {
    pub fn diff_id(&self) -> String {
        sha256_of(&self.tar)
    }
    pub fn digest(&self) -> String {
        sha256_of(&self.stored)
    }
}

pub fn tar_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn layer(c: Compression, files: &[(&str, &[u8])]) -> TestLayer {
    let tar = tar_bytes(files);
    let (stored, media_type) = match c {
        Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => (gzip(&tar), "application/vnd.oci.image.layer.v1.tar+gzip"),
        Compression::Zstd => (zstd(&tar), "application/vnd.oci.image.layer.v1.tar+zstd"),
    };
    TestLayer {
        tar,
        stored,
        media_type: media_type.to_owned(),
    }
}

pub fn desc(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256_of(bytes), "size": bytes.len()})
}

/// Writes `bytes` as `blobs/sha256/<hex of digest>` (digest may be a lie).
pub fn write_blob_at(dir: &Path, digest: &str, bytes: &[u8]) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(hex), bytes).unwrap();
}

pub fn write_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = sha256_of(bytes);
    write_blob_at(dir, &d, bytes);
    d
}

pub fn config_json(diff_ids: &[String], arch: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Serialized manifest referencing `config` and `layers` (layers as descriptors).
pub fn manifest_json(media_type: &str, config: &[u8], layers: &[Value]) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": desc(OCI_CONFIG, config),
        "layers": layers,
    }))
    .unwrap()
}

/// Writes layer blobs, config and manifest; returns the manifest descriptor.
pub fn write_image(dir: &Path, layers: &[TestLayer], arch: &str) -> Value {
    let diff_ids: Vec<String> = layers.iter().map(TestLayer::diff_id).collect();
    let config = config_json(&diff_ids, arch);
    write_blob(dir, &config);
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|l| {
            write_blob(dir, &l.stored);
            desc(&l.media_type, &l.stored)
        })
        .collect();
    let manifest = manifest_json(OCI_MANIFEST, &config, &layer_descs);
    write_blob(dir, &manifest);
    desc(OCI_MANIFEST, &manifest)
}

pub fn with_ref(mut d: Value, name: &str) -> Value {
    d["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    d
}

pub fn with_platform(mut d: Value, os: &str, arch: &str) -> Value {
    d["platform"] = json!({"os": os, "architecture": arch});
    d
}

pub fn write_layout(dir: &Path, manifests: Vec<Value>) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Writes an uncompressed tar with the given members; `links` are (name, target) symlinks.
pub fn write_tar(path: &Path, members: &[(String, Vec<u8>)], links: &[(&str, &str)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, name, target).unwrap();
    }
    fs::write(path, b.into_inner().unwrap()).unwrap();
}
