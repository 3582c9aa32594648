//! `docker-archive:FILE[:REF]` — `docker save` style tar archives.
//!
//! The tar is indexed once (member name → data offset and size); members are
//! then read by seeking, so layers are never loaded into memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::{
    embedded_sha256, finish_hex, parse_json, read_capped, sha256_of, MAX_JSON_SIZE,
};
use crate::source::parse_index_ref;
use crate::{
    check_layer_count, parse_config_diff_ids, Backend, Compression, LayerDesc, OciError, Resolved,
};

/// Upper bound on the number of tar members indexed (memory guard).
const MAX_MEMBERS: usize = 1_000_000;
/// Upper bound on symlink/hardlink hops when resolving a member.
const MAX_LINK_HOPS: usize = 16;

/// One entry of a docker-archive `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct DockerManifestEntry {
    /// Archive member holding the image config.
    #[serde(rename = "Config")]
    pub config: String,
    /// Tags of the image (`name:tag`); `null`/absent becomes empty.
    #[serde(rename = "RepoTags", default, deserialize_with = "null_as_empty")]
    pub repo_tags: Vec<String>,
    /// Archive members holding the layers, bottom first.
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v: Option<Vec<String>> = serde::Deserialize::deserialize(d)?;
    Ok(v.unwrap_or_default())
}

/// Parses a docker-archive `manifest.json` (pure function, fuzzable).
///
/// Fails with [`OciError::Json`] on invalid JSON and [`OciError::Malformed`]
/// if it lists no images or an entry has an empty config name.
pub fn parse_docker_manifest(bytes: &[u8]) -> Result<Vec<DockerManifestEntry>, OciError> {
    parse_manifest_at(bytes, Path::new("manifest.json"))
}

fn parse_manifest_at(bytes: &[u8], path: &Path) -> Result<Vec<DockerManifestEntry>, OciError> {
    let entries: Vec<DockerManifestEntry> =
        parse_json(bytes, "docker-archive manifest.json", path)?;
    if entries.is_empty() {
        return Err(OciError::malformed(
            "docker-archive manifest.json",
            "it lists no images",
        ));
    }
    if let Some(i) = entries.iter().position(|e| e.config.is_empty()) {
        return Err(OciError::malformed(
            "docker-archive manifest.json",
            format!("entry {i} has an empty Config"),
        ));
    }
    Ok(entries)
}

/// Normalizes a member path: drops `.`, empty components and leading `/`,
/// applies `..`. `None` if it escapes the archive root or is empty.
fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

enum Member {
    File { offset: u64, size: u64 },
    Link { target: String, hard: bool },
}

/// Index of a tar archive's members.
struct ArchiveIndex {
    path: PathBuf,
    len: u64,
    members: HashMap<String, Member>,
}

impl ArchiveIndex {
    fn build(path: &Path) -> Result<ArchiveIndex, OciError> {
        let io_err = |member: &str, source: io::Error| OciError::ArchiveIo {
            archive: path.to_owned(),
            member: member.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| OciError::io(path, e))?;
        let len = file.metadata().map_err(|e| OciError::io(path, e))?.len();
        let mut archive = tar::Archive::new(BufReader::new(file));
        let mut members = HashMap::new();
        let entries = archive
            .entries_with_seek()
            .map_err(|e| io_err("(tar headers)", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("(tar headers)", e))?;
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = normalize(&raw_name) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let member = if kind.is_file() || kind.is_contiguous() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name_bytes() else {
                    continue;
                };
                Member::Link {
                    target: String::from_utf8_lossy(&target).into_owned(),
                    hard: kind.is_hard_link(),
                }
            } else {
                continue;
            };
            members.insert(name, member);
            if members.len() > MAX_MEMBERS {
                return Err(OciError::malformed(
                    format!("archive {}", path.display()),
                    format!("more than {MAX_MEMBERS} members"),
                ));
            }
        }
        Ok(ArchiveIndex {
            path: path.to_owned(),
            len,
            members,
        })
    }

    fn missing(&self, member: &str) -> OciError {
        OciError::MissingMember {
            archive: self.path.clone(),
            member: member.to_owned(),
        }
    }

    /// Data offset and size of a regular-file member, following links.
    fn resolve(&self, name: &str) -> Result<(u64, u64), OciError> {
        let mut cur = normalize(name).ok_or_else(|| self.missing(name))?;
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&cur) {
                Some(Member::File { offset, size }) => {
                    if offset.saturating_add(*size) > self.len {
                        return Err(OciError::ArchiveIo {
                            archive: self.path.clone(),
                            member: name.to_owned(),
                            source: io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "member data ends at byte {} but the archive has only {} bytes (truncated?)",
                                    offset.saturating_add(*size),
                                    self.len
                                ),
                            ),
                        });
                    }
                    return Ok((*offset, *size));
                }
                Some(Member::Link { target, hard }) => {
                    let joined = match (hard, cur.rsplit_once('/')) {
                        (false, Some((parent, _))) if !target.starts_with('/') => {
                            format!("{parent}/{target}")
                        }
                        _ => target.clone(),
                    };
                    cur = normalize(&joined).ok_or_else(|| self.missing(name))?;
                }
                None => return Err(self.missing(name)),
            }
        }
        Err(self.missing(name))
    }

    /// Opens a member for reading: a file handle positioned at its data, limited to its size.
    fn open_member(&self, name: &str) -> Result<(io::Take<File>, u64, u64), OciError> {
        let (offset, size) = self.resolve(name)?;
        let io_err = |source| OciError::ArchiveIo {
            archive: self.path.clone(),
            member: name.to_owned(),
            source,
        };
        let mut f = File::open(&self.path).map_err(|e| OciError::io(&self.path, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        Ok((f.take(size), offset, size))
    }

    /// Reads a small member (JSON) into memory.
    fn read_member(&self, name: &str, what: &str) -> Result<Vec<u8>, OciError> {
        let (r, _, size) = self.open_member(name)?;
        if size > MAX_JSON_SIZE {
            return Err(OciError::TooLarge {
                what: format!("{what} ({name})"),
                size,
                limit: MAX_JSON_SIZE,
            });
        }
        read_capped(r, MAX_JSON_SIZE, what).map_err(|source| OciError::ArchiveIo {
            archive: self.path.clone(),
            member: name.to_owned(),
            source,
        })?
    }
}

/// Drops a `docker.io/` or `docker.io/library/` prefix so that
/// `docker.io/library/busybox:1` matches the RepoTag `busybox:1`.
fn normalize_ref(r: &str) -> &str {
    for prefix in [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ] {
        if let Some(rest) = r.strip_prefix(prefix) {
            return rest;
        }
    }
    r
}

fn has_tag(r: &str) -> bool {
    r.rsplit('/').next().is_some_and(|last| last.contains(':'))
}

fn available_tags(entries: &[DockerManifestEntry]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.repo_tags.is_empty() {
            out.push(format!("@{i}"));
        }
        out.extend(e.repo_tags.iter().cloned());
    }
    out
}

/// Chooses the manifest.json entry for `reference`.
fn select<'a>(
    entries: &'a [DockerManifestEntry],
    reference: Option<&str>,
) -> Result<&'a DockerManifestEntry, OciError> {
    let Some(r) = reference else {
        return match entries {
            [one] => Ok(one),
            _ => Err(OciError::AmbiguousRef {
                available: available_tags(entries),
            }),
        };
    };
    let not_found = || OciError::RefNotFound {
        reference: r.to_owned(),
        available: available_tags(entries),
    };
    if let Some(n) = parse_index_ref(r) {
        return entries.get(n).ok_or_else(not_found);
    }
    let wanted = normalize_ref(r);
    let wanted_latest = (!has_tag(wanted)).then(|| format!("{wanted}:latest"));
    entries
        .iter()
        .find(|e| {
            e.repo_tags.iter().any(|t| {
                let t = normalize_ref(t);
                t == wanted || wanted_latest.as_deref() == Some(t)
            })
        })
        .ok_or_else(not_found)
}

/// Resolves a docker-archive to one image.
pub(crate) fn open(file: &Path, reference: Option<&str>) -> Result<Resolved, OciError> {
    let ar = ArchiveIndex::build(file)?;
    let manifest_bytes = ar.read_member("manifest.json", "docker-archive manifest.json")?;
    let entries = parse_manifest_at(&manifest_bytes, file)?;
    let entry = select(&entries, reference)?;

    let config_json = ar.read_member(&entry.config, "config")?;
    let config_digest = sha256_of(&config_json);
    if let Some(expected) = embedded_sha256(&entry.config) {
        if expected != config_digest {
            return Err(OciError::DigestMismatch {
                what: "config".to_owned(),
                expected,
                actual: config_digest,
            });
        }
    }
    let diff_ids = parse_config_diff_ids(&config_json, file)?;
    check_layer_count(entry.layers.len(), &diff_ids)?;

    let mut layers = Vec::with_capacity(diff_ids.len());
    let mut offsets = Vec::with_capacity(diff_ids.len());
    for (index, (name, diff_id)) in entry.layers.iter().zip(&diff_ids).enumerate() {
        let (mut r, offset, size) = ar.open_member(name)?;
        let io_err = |source| OciError::ArchiveIo {
            archive: file.to_owned(),
            member: name.clone(),
            source,
        };
        let mut magic = Vec::with_capacity(4);
        (&mut r).take(4).read_to_end(&mut magic).map_err(io_err)?;
        let compression = Compression::sniff(&magic);
        let digest = match embedded_sha256(name) {
            Some(d) => d,
            // Uncompressed: the blob is the tar, so its digest is the diff_id
            // (which the reader verifies anyway).
            None if compression == Compression::None => diff_id.clone(),
            // Compressed with no digest in the name (rare): hash it once now.
            None => {
                let (r, _, _) = ar.open_member(name)?;
                hash_reader(r).map_err(io_err)?
            }
        };
        layers.push(LayerDesc {
            index,
            digest,
            diff_id: diff_id.clone(),
            media_type: compression.docker_media_type().to_owned(),
            compression,
            size,
        });
        offsets.push(offset);
    }
    Ok(Resolved {
        layers,
        config_digest,
        config_json,
        diff_ids,
        backend: Backend::DockerArchive {
            file: file.to_owned(),
            offsets,
        },
    })
}

fn hash_reader(r: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut r = BufReader::with_capacity(256 * 1024, r);
    io::copy(&mut r, &mut hasher)?;
    Ok(finish_hex(hasher))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parsing() -> Result<(), OciError> {
        let m = parse_docker_manifest(
            br#"[{"Config":"c.json","RepoTags":null,"Layers":["a/layer.tar"]}]"#,
        )?;
        assert_eq!(m.len(), 1);
        assert!(m[0].repo_tags.is_empty());
        assert!(matches!(
            parse_docker_manifest(b"[]"),
            Err(OciError::Malformed { .. })
        ));
        assert!(matches!(
            parse_docker_manifest(b"{"),
            Err(OciError::Json { .. })
        ));
        assert!(matches!(
            parse_docker_manifest(br#"[{"Config":"","Layers":[]}]"#),
            Err(OciError::Malformed { .. })
        ));
        // Arbitrary bytes never panic.
        for i in 0..=255u8 {
            let _ = parse_docker_manifest(&[i, b'[', i]);
        }
        Ok(())
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("./a/b.tar").as_deref(), Some("a/b.tar"));
        assert_eq!(normalize("/a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("./"), None);
    }

    #[test]
    fn ref_matching() -> Result<(), OciError> {
        let e = |tags: &[&str]| DockerManifestEntry {
            config: "c".into(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            layers: vec![],
        };
        let entries = vec![
            e(&["busybox:latest"]),
            e(&["localhost:5000/x:1", "x:2"]),
            e(&[]),
        ];
        assert!(std::ptr::eq(
            select(&entries, Some("busybox"))?,
            &entries[0]
        ));
        assert!(std::ptr::eq(
            select(&entries, Some("docker.io/library/busybox:latest"))?,
            &entries[0]
        ));
        assert!(std::ptr::eq(select(&entries, Some("x:2"))?, &entries[1]));
        assert!(std::ptr::eq(
            select(&entries, Some("localhost:5000/x:1"))?,
            &entries[1]
        ));
        assert!(std::ptr::eq(select(&entries, Some("@2"))?, &entries[2]));
        match select(&entries, Some("localhost:5000/x")) {
            Err(OciError::RefNotFound { available, .. }) => {
                assert_eq!(
                    available,
                    ["busybox:latest", "localhost:5000/x:1", "x:2", "@2"]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            select(&entries, None),
            Err(OciError::AmbiguousRef { .. })
        ));
        assert!(matches!(
            select(&entries, Some("@3")),
            Err(OciError::RefNotFound { .. })
        ));
        Ok(())
    }
}
