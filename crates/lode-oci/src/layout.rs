//! `oci:DIR[:REF]` — OCI image layout directories.

use std::fs::File;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, OciLayout};

use crate::digest::{parse_json, parse_sha256, read_capped, verify_bytes, MAX_JSON_SIZE};
use crate::manifest::{self, Kind, MAX_INDEX_DEPTH};
use crate::platform::{self, Platform};
use crate::source::parse_index_ref;
use crate::{parse_config_diff_ids, Backend, OciError, Resolved};

/// Annotation holding the reference name of a top-level descriptor.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `DIR/blobs/sha256/<hex>`; the digest is validated first, so the result
/// always stays inside `DIR/blobs`.
pub(crate) fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, OciError> {
    let hex = parse_sha256(digest)?;
    Ok(dir.join("blobs").join("sha256").join(hex))
}

fn read_file_capped(path: &Path, what: &str) -> Result<Vec<u8>, OciError> {
    let file = File::open(path).map_err(|e| OciError::io(path, e))?;
    read_capped(file, MAX_JSON_SIZE, what).map_err(|e| OciError::io(path, e))?
}

/// Reads a (JSON) blob and verifies its size and digest against `desc`.
fn read_blob(dir: &Path, desc: &Descriptor, what: &str) -> Result<(Vec<u8>, PathBuf), OciError> {
    let digest = desc.digest().as_ref();
    let path = blob_path(dir, digest)?;
    if desc.size() > MAX_JSON_SIZE {
        return Err(OciError::TooLarge {
            what: format!("{what} {digest}"),
            size: desc.size(),
            limit: MAX_JSON_SIZE,
        });
    }
    let bytes = read_file_capped(&path, what)?;
    verify_bytes(what, &bytes, digest, Some(desc.size()))?;
    Ok((bytes, path))
}

fn check_layout_version(dir: &Path) -> Result<(), OciError> {
    let path = dir.join("oci-layout");
    let bytes = read_file_capped(&path, "oci-layout")?;
    let layout: OciLayout = parse_json(&bytes, "oci-layout", &path)?;
    let version = layout.image_layout_version();
    if version != "1.0.0" {
        return Err(OciError::UnsupportedSchema(format!(
            "{}: imageLayoutVersion {version:?}, expected \"1.0.0\"",
            path.display()
        )));
    }
    Ok(())
}

/// Resolves an OCI layout to one image.
pub(crate) fn open(
    dir: &Path,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<Resolved, OciError> {
    check_layout_version(dir)?;
    let index_path = dir.join("index.json");
    let bytes = read_file_capped(&index_path, "index.json")?;
    let index: ImageIndex = parse_json(&bytes, "index.json", &index_path)?;
    let top = select_top(&index, reference, platform)?;
    let manifest = resolve_manifest(dir, top, platform, 0)?;

    let cdesc = manifest.config();
    let (config_json, config_path) = read_blob(dir, cdesc, "config")?;
    let diff_ids = parse_config_diff_ids(&config_json, &config_path)?;
    let layers = manifest::layer_descs(manifest.layers(), &diff_ids)?;
    Ok(Resolved {
        layers,
        config_digest: cdesc.digest().to_string(),
        config_json,
        diff_ids,
        backend: Backend::Oci {
            dir: dir.to_owned(),
        },
    })
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref()?.get(REF_NAME).map(String::as_str)
}

/// Names to offer the user: ref names, and `@N` for unnamed entries.
fn available_refs(manifests: &[Descriptor]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, d) in manifests.iter().enumerate() {
        let name = ref_name(d).map_or_else(|| format!("@{i}"), str::to_owned);
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Chooses the top-level descriptor of `index.json`.
fn select_top<'a>(
    index: &'a ImageIndex,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<&'a Descriptor, OciError> {
    let manifests = index.manifests();
    if manifests.is_empty() {
        return Err(OciError::malformed("index.json", "it lists no manifests"));
    }
    let not_found = |r: &str| OciError::RefNotFound {
        reference: r.to_owned(),
        available: available_refs(manifests),
    };
    match reference {
        Some(r) => {
            if let Some(n) = parse_index_ref(r) {
                return manifests.get(n).ok_or_else(|| not_found(r));
            }
            let candidates: Vec<&Descriptor> = manifests
                .iter()
                .filter(|d| ref_name(d) == Some(r))
                .collect();
            match candidates.as_slice() {
                [] => Err(not_found(r)),
                [one] => Ok(one),
                _ => platform::pick(candidates.into_iter(), platform),
            }
        }
        None => {
            if let [one] = manifests.as_slice() {
                return Ok(one);
            }
            let all_platform_only = manifests
                .iter()
                .all(|d| d.platform().is_some() && ref_name(d).is_none());
            if all_platform_only {
                platform::pick(manifests.iter(), platform)
            } else {
                Err(OciError::AmbiguousRef {
                    available: available_refs(manifests),
                })
            }
        }
    }
}

/// Follows image indexes (choosing linux/amd64) down to an image manifest.
fn resolve_manifest(
    dir: &Path,
    desc: &Descriptor,
    platform: &Platform,
    depth: usize,
) -> Result<ImageManifest, OciError> {
    let media_type = desc.media_type().to_string();
    let digest = desc.digest().to_string();
    match manifest::kind(&media_type, &digest, "")? {
        Kind::Index => {
            if depth >= MAX_INDEX_DEPTH {
                return Err(OciError::UnsupportedSchema(format!(
                    "image index {digest} is nested more than {MAX_INDEX_DEPTH} levels deep"
                )));
            }
            let (bytes, path) = read_blob(dir, desc, "image index")?;
            let index: ImageIndex = parse_json(&bytes, &format!("image index {digest}"), &path)?;
            let child = platform::pick(index.manifests().iter(), platform)?;
            resolve_manifest(dir, child, platform, depth + 1)
        }
        Kind::Manifest => {
            let (bytes, path) = read_blob(dir, desc, "manifest")?;
            let manifest: ImageManifest = parse_json(&bytes, &format!("manifest {digest}"), &path)?;
            manifest::check(&manifest, &digest)?;
            Ok(manifest)
        }
    }
}
