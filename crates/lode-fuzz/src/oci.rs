//! lode-oci: image sources, OCI layouts (index, manifests, configs) and
//! docker-archives (tar index, manifest.json, config), all from the user's
//! or a registry's files, plus the layers they lead to.

use crate::support::{reset_dir, scratch};
use lode_oci::{parse_docker_manifest, Image, Source};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

/// `TRANSPORT:PATH[:REF]`: what parses prints back to itself.
pub fn source(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(src) = s.parse::<Source>() else {
        return;
    };
    if let Some(p) = src.path() {
        assert!(!p.as_os_str().is_empty());
    }
    assert_ne!(src.reference(), Some(""));
    let printed = src.to_string();
    assert_eq!(
        printed.parse::<Source>().expect("a printed source parses"),
        src
    );
}

/// A registry's `WWW-Authenticate` challenge and an auth file (see
/// [`lode_oci::registry::fuzz_auth`]).
pub fn registry_auth(data: &[u8]) {
    lode_oci::registry::fuzz_auth(data);
}

/// A `Retry-After` value and a token endpoint answer / credential helper
/// output (see [`lode_oci::registry::fuzz_answers`]).
pub fn registry_answers(data: &[u8]) {
    lode_oci::registry::fuzz_answers(data);
}

/// A docker-archive's `manifest.json`: what parses lists at least one image,
/// each with a config member.
pub fn docker_manifest(data: &[u8]) {
    if let Ok(entries) = parse_docker_manifest(data) {
        assert!(!entries.is_empty());
        assert!(entries.iter().all(|e| !e.config.is_empty()));
    }
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The fixed documents of the OCI layout target, valid as a whole.
#[derive(Debug, Clone)]
pub struct LayoutDocs {
    /// `oci-layout`.
    pub oci_layout: Vec<u8>,
    /// The only layer: an empty tar.
    pub layer: Vec<u8>,
    /// The image config.
    pub config: Vec<u8>,
    /// The image manifest.
    pub manifest: Vec<u8>,
    /// `index.json`, pointing at the manifest.
    pub index: Vec<u8>,
    /// An image index (as a blob) pointing at the manifest.
    pub nested_index: Vec<u8>,
}

fn manifest_for(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": config.len()},
        "layers": [{"mediaType": LAYER_TAR, "digest": digest(layer), "size": layer.len()}],
    }))
    .expect("json")
}

fn index_for(media_type: &str, doc: &[u8], ref_name: bool) -> Vec<u8> {
    let mut d = json!({
        "mediaType": media_type,
        "digest": digest(doc),
        "size": doc.len(),
        "platform": {"architecture": "amd64", "os": "linux"},
    });
    if ref_name {
        d["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    }
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d]}))
        .expect("json")
}

/// The valid layout the target starts from.
pub fn layout_docs() -> &'static LayoutDocs {
    static DOCS: OnceLock<LayoutDocs> = OnceLock::new();
    DOCS.get_or_init(|| {
        let layer = vec![0u8; 1024];
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
        }))
        .expect("json");
        let manifest = manifest_for(&config, &layer);
        LayoutDocs {
            oci_layout: br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            index: index_for(OCI_MANIFEST, &manifest, true),
            nested_index: index_for(OCI_MANIFEST, &manifest, false),
            layer,
            config,
            manifest,
        }
    })
}

/// Which document of the layout the input replaces (first byte % 5).
pub const LAYOUT_SLOTS: [&str; 5] = ["oci-layout", "index", "manifest", "config", "nested-index"];

fn reference(sel: u8) -> Option<String> {
    match sel % 4 {
        0 => None,
        1 => Some("latest".into()),
        2 => Some("@0".into()),
        _ => Some("@1".into()),
    }
}

/// Opens the image and reads every layer (bounded), checking the resolved
/// image's invariants.
fn read_image(src: &Source) {
    let Ok(img) = Image::open(src) else {
        return;
    };
    assert_eq!(img.layers().len(), img.diff_ids().len());
    assert_eq!(img.config_digest(), digest(img.config_json()));
    for l in img.layers() {
        let Ok(mut r) = img.open_layer(l.index) else {
            continue;
        };
        let mut sink = Vec::new();
        let limit = 64 << 20;
        let complete = match (&mut r).take(limit).read_to_end(&mut sink) {
            Ok(n) => (n as u64) < limit,
            Err(_) => false,
        };
        if complete {
            let _ = r.finish();
        }
    }
}

/// An OCI layout in which the input replaces one document (the first byte
/// chooses which, and the reference to open); the documents above it are
/// regenerated to point at it, so the input is reached whatever its digest.
pub fn layout(data: &[u8]) {
    let Some((&sel, doc)) = data.split_first() else {
        return;
    };
    let d = layout_docs();
    let dir = scratch("oci-layout");
    reset_dir(&dir);
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |b: &[u8]| {
        let h = digest(b);
        std::fs::write(blobs.join(&h[7..]), b).expect("write blob");
    };
    put(&d.layer);
    put(&d.config);
    put(&d.manifest);
    put(&d.nested_index);
    let mut oci_layout = d.oci_layout.clone();
    let index = match sel % 5 {
        0 => {
            oci_layout = doc.to_vec();
            d.index.clone()
        }
        1 => doc.to_vec(),
        2 => {
            put(doc);
            index_for(OCI_MANIFEST, doc, true)
        }
        3 => {
            put(doc);
            let m = manifest_for(doc, &d.layer);
            put(&m);
            index_for(OCI_MANIFEST, &m, true)
        }
        _ => {
            put(doc);
            index_for(OCI_INDEX, doc, true)
        }
    };
    std::fs::write(dir.join("oci-layout"), &oci_layout).expect("write oci-layout");
    std::fs::write(dir.join("index.json"), &index).expect("write index.json");
    read_image(&Source::OciLayout {
        dir: dir.clone(),
        reference: reference(sel / 5),
    });
}

/// A docker-archive: the input after its first byte is the whole tar (the
/// first byte chooses the reference to open).
pub fn docker_archive(data: &[u8]) {
    let Some((&sel, tar)) = data.split_first() else {
        return;
    };
    let dir = scratch("docker-archive");
    let file = dir.join("image.tar");
    std::fs::write(&file, tar).expect("write archive");
    let reference = match sel % 4 {
        3 => Some("img:latest".into()),
        s => reference(s),
    };
    read_image(&Source::DockerArchive {
        file: file.clone(),
        reference,
    });
    let _ = std::fs::remove_file(Path::new(&file));
}
