//! Image writers: OCI image layouts and `docker save` archives built from
//! [`LayerSpec`]s, with knobs ([`Tamper`]) to produce corrupted variants.

use crate::spec::LayerSpec;
use crate::tarw::write_layer_tar;
use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// OCI media type of an uncompressed layer.
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a gzip layer.
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of a zstd layer.
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI image manifest media type.
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (flate2, fast level, header mtime 0).
    Gzip,
    /// zstd (level 3, with content checksum).
    Zstd,
}

impl Compression {
    /// All three.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// The OCI layer media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MT_LAYER_TAR,
            Compression::Gzip => MT_LAYER_GZIP,
            Compression::Zstd => MT_LAYER_ZSTD,
        }
    }
}

/// Ways to corrupt an image for bad-input tests. Every field names a layer
/// index (0 = bottom layer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Tamper {
    /// A valid image.
    #[default]
    None,
    /// The blob stored under the manifest's digest has different bytes that
    /// still decompress to the same tar (gzip header mtime changed; zstd:
    /// skippable frame appended; plain: zero blocks appended) => the blob
    /// digest does not match.
    WrongBlobDigest(usize),
    /// The config's `rootfs.diff_ids` entry is wrong.
    WrongDiffId(usize),
    /// The compressed blob is cut in half; the manifest digest and size are
    /// those of the truncated blob (so only decompression fails).
    TruncatedBlob(usize),
    /// Bytes in the middle of the compressed stream are flipped; the
    /// manifest digest and size match the corrupted blob.
    CorruptBlob(usize),
    /// The manifest declares this media type for the layer.
    MediaType(usize, String),
    /// The layer blob file is absent.
    MissingBlob(usize),
}

/// One written layer blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// Media type as written in the manifest.
    pub media_type: String,
    /// `sha256:<hex>` digest as written in the manifest.
    pub digest: String,
    /// Size as written in the manifest.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar (true value, even when the
    /// config was tampered with).
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    /// Member path inside a docker archive (`<id>/layer.tar` or
    /// `blobs/sha256/<hex>`); None for OCI layouts.
    pub archive_path: Option<String>,
}

/// What an image writer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Layers, bottom first.
    pub layers: Vec<LayerBlob>,
    /// `sha256:<hex>` of the config.
    pub config_digest: String,
    /// `sha256:<hex>` of the manifest (OCI layouts only).
    pub manifest_digest: Option<String>,
}

/// Options for [`write_oci_layout_with`].
#[derive(Clone, Debug)]
pub struct OciOptions {
    /// Per-layer compression: one value for all layers, or one per layer.
    pub compression: Vec<Compression>,
    /// `org.opencontainers.image.ref.name` annotation of the manifest in
    /// `index.json` (none if `None`).
    pub ref_name: Option<String>,
    /// Corruption to apply.
    pub tamper: Tamper,
}

impl Default for OciOptions {
    fn default() -> Self {
        OciOptions {
            compression: vec![Compression::Gzip],
            ref_name: Some("latest".into()),
            tamper: Tamper::None,
        }
    }
}

/// Layout of a docker archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DockerLayout {
    /// Classic `docker save`: `<id>/layer.tar`, `<id>/VERSION`, `<id>/json`,
    /// `<config-hex>.json`, `manifest.json`, `repositories`.
    #[default]
    Legacy,
    /// Docker >= 25 style: `blobs/sha256/<hex>` for config and layers,
    /// `manifest.json` referencing them, plus `oci-layout` and `index.json`.
    Blobs,
}

/// Options for [`write_docker_archive_with`].
#[derive(Clone, Debug)]
pub struct DockerOptions {
    /// `RepoTags` of the manifest.json entry (e.g. `"example.com/app:1"`).
    pub repo_tags: Vec<String>,
    /// Per-layer compression (docker archives normally hold plain tars).
    pub compression: Vec<Compression>,
    /// File layout.
    pub layout: DockerLayout,
    /// Corruption to apply ([`Tamper::MediaType`] is meaningless here and
    /// rejected).
    pub tamper: Tamper,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            repo_tags: vec!["lode-test/image:latest".into()],
            compression: vec![Compression::None],
            layout: DockerLayout::Legacy,
            tamper: Tamper::None,
        }
    }
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a file (streamed).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// A writer that hashes and counts what passes through.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write one layer blob to `path` (streamed). Returns
/// (digest, size, diff_id, tar_size).
pub fn write_layer_blob(
    spec: &LayerSpec,
    comp: Compression,
    path: &Path,
) -> Result<(String, u64, String, u64)> {
    write_blob_streamed(comp, path, |w| write_layer_tar(spec, w).map(|_| ()))
}

/// Write one layer blob to `path` whose tar stream `tar` writes, compressed
/// with `comp` as it is written (hand-made and hostile layers of any size).
/// Returns (digest, size, diff_id, tar_size).
pub fn write_blob_streamed(
    comp: Compression,
    path: &Path,
    tar: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(String, u64, String, u64)> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let blob_w = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
    let (blob_w, diff_id, tar_size) = match comp {
        Compression::None => {
            let mut tw = HashWriter::new(blob_w);
            tar(&mut tw)?;
            tw.finish()
        }
        Compression::Gzip => {
            let enc = flate2::write::GzEncoder::new(blob_w, flate2::Compression::fast());
            let mut tw = HashWriter::new(enc);
            tar(&mut tw)?;
            let (enc, d, n) = tw.finish();
            (enc.finish()?, d, n)
        }
        Compression::Zstd => {
            let mut enc = zstd::Encoder::new(blob_w, 3)?;
            // Like the zstd CLI and containerd/buildkit: frame checksums on.
            enc.include_checksum(true)?;
            let mut tw = HashWriter::new(enc);
            tar(&mut tw)?;
            let (enc, d, n) = tw.finish();
            (enc.finish()?, d, n)
        }
    };
    let (mut bw, digest, size) = blob_w.finish();
    bw.flush()?;
    bw.into_inner().map_err(|e| e.into_error())?.sync_all().ok();
    Ok((digest, size, diff_id, tar_size))
}

/// A layer tar stream written by hand (see [`write_oci_layout_streamed`]).
pub type TarWriter<'a> = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + 'a>;

/// Write an OCI image layout into `dir` whose layers are the tar streams the
/// `tars` write, each compressed with `comp` while it is written.
pub fn write_oci_layout_streamed(
    dir: &Path,
    comp: Compression,
    tars: Vec<TarWriter<'_>>,
) -> Result<ImageInfo> {
    let blob_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir)?;
    let mut blobs = Vec::new();
    for (i, t) in tars.into_iter().enumerate() {
        let tmp = blob_dir.join(format!(".layer-{i}.tmp"));
        let (digest, size, diff_id, tar_size) = write_blob_streamed(comp, &tmp, t)?;
        fs::rename(&tmp, blob_dir.join(hex_of(&digest)))?;
        blobs.push(LayerBlob {
            media_type: comp.media_type().to_string(),
            digest,
            size,
            diff_id,
            tar_size,
            archive_path: None,
        });
    }
    write_oci_layout_of_blobs(dir, blobs)
}

/// Write the config, manifest and index of an OCI layout in `dir` whose
/// layer blobs are already in `dir/blobs/sha256` (a blob may be listed any
/// number of times).
pub fn write_oci_layout_of_blobs(dir: &Path, blobs: Vec<LayerBlob>) -> Result<ImageInfo> {
    finish_oci_layout(dir, blobs, &OciOptions::default())
}

fn comp_for(list: &[Compression], i: usize, n: usize) -> Result<Compression> {
    match list.len() {
        0 => Ok(Compression::None),
        1 => Ok(list[0]),
        l if l == n => Ok(list[i]),
        l => bail!("compression list has {l} entries for {n} layers"),
    }
}

/// Modify a blob file in place so it still decompresses to the same tar but
/// has a different digest.
fn alter_blob_keeping_content(path: &Path, comp: Compression) -> Result<()> {
    let mut f = fs::OpenOptions::new().read(true).write(true).open(path)?;
    match comp {
        Compression::Gzip => {
            // gzip header MTIME (bytes 4..8, little endian).
            f.seek(SeekFrom::Start(4))?;
            f.write_all(&[0x01, 0x02, 0x03, 0x04])?;
        }
        Compression::Zstd => {
            f.seek(SeekFrom::End(0))?;
            // Skippable frame: magic 0x184D2A50, length 4, 4 payload bytes.
            f.write_all(&[0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef])?;
        }
        Compression::None => {
            f.seek(SeekFrom::End(0))?;
            f.write_all(&[0u8; 1024])?;
        }
    }
    Ok(())
}

/// Truncate a blob to half its size.
fn truncate_half(path: &Path) -> Result<()> {
    let len = fs::metadata(path)?.len();
    let f = fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len / 2)?;
    Ok(())
}

/// Flip 64 bytes in the middle of a blob.
fn corrupt_middle(path: &Path) -> Result<()> {
    let len = fs::metadata(path)?.len();
    ensure!(
        len > 256,
        "blob too small to corrupt meaningfully ({len} bytes)"
    );
    let mut f = fs::OpenOptions::new().read(true).write(true).open(path)?;
    let at = len / 2;
    let mut buf = [0u8; 64];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut buf)?;
    for b in &mut buf {
        *b ^= 0x5a;
    }
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&buf)?;
    Ok(())
}

/// Write the layers' blobs into `blob_dir` (named by digest hex), applying
/// blob-level tampering. Returns the layer descriptors for the manifest.
fn write_blobs(
    blob_dir: &Path,
    layers: &[LayerSpec],
    comps: &[Compression],
    tamper: &Tamper,
) -> Result<Vec<LayerBlob>> {
    fs::create_dir_all(blob_dir)?;
    let mut out = Vec::new();
    for (i, spec) in layers.iter().enumerate() {
        let comp = comp_for(comps, i, layers.len())?;
        let tmp = blob_dir.join(format!(".tmp-layer-{i}"));
        let (mut digest, mut size, diff_id, tar_size) = write_layer_blob(spec, comp, &tmp)?;
        let mut media_type = comp.media_type().to_string();
        match tamper {
            Tamper::WrongBlobDigest(l) if *l == i => alter_blob_keeping_content(&tmp, comp)?,
            Tamper::TruncatedBlob(l) if *l == i => {
                truncate_half(&tmp)?;
                digest = sha256_file(&tmp)?;
                size = fs::metadata(&tmp)?.len();
            }
            Tamper::CorruptBlob(l) if *l == i => {
                corrupt_middle(&tmp)?;
                digest = sha256_file(&tmp)?;
                size = fs::metadata(&tmp)?.len();
            }
            Tamper::MediaType(l, mt) if *l == i => media_type = mt.clone(),
            _ => {}
        }
        if matches!(tamper, Tamper::MissingBlob(l) if *l == i) {
            fs::remove_file(&tmp)?;
        } else {
            fs::rename(&tmp, blob_dir.join(hex_of(&digest)))?;
        }
        out.push(LayerBlob {
            media_type,
            digest,
            size,
            diff_id,
            tar_size,
            archive_path: None,
        });
    }
    Ok(out)
}

fn config_json(layers: &[LayerBlob], tamper: &Tamper) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| match tamper {
            Tamper::WrongDiffId(t) if *t == i => {
                sha256_digest(format!("not the diff id of layer {i}").as_bytes())
            }
            _ => l.diff_id.clone(),
        })
        .collect();
    let history: Vec<serde_json::Value> = (0..layers.len())
        .map(|i| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("lode-testkit layer {i}")}))
        .collect();
    let cfg = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    serde_json::to_vec(&cfg).expect("json")
}

fn write_blob_bytes(blob_dir: &Path, bytes: &[u8]) -> Result<String> {
    let d = sha256_digest(bytes);
    fs::write(blob_dir.join(hex_of(&d)), bytes)?;
    Ok(d)
}

/// Write an OCI image layout into `dir` (created if missing) with one
/// compression for all layers (or one per layer) and an optional ref name.
pub fn write_oci_layout(
    dir: &Path,
    layers: &[LayerSpec],
    compression: &[Compression],
    ref_name: Option<&str>,
) -> Result<ImageInfo> {
    write_oci_layout_with(
        dir,
        layers,
        &OciOptions {
            compression: compression.to_vec(),
            ref_name: ref_name.map(str::to_string),
            tamper: Tamper::None,
        },
    )
}

/// Write an OCI image layout with full options.
pub fn write_oci_layout_with(
    dir: &Path,
    layers: &[LayerSpec],
    opts: &OciOptions,
) -> Result<ImageInfo> {
    let blob_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir)?;
    let blobs = write_blobs(&blob_dir, layers, &opts.compression, &opts.tamper)?;
    finish_oci_layout(dir, blobs, opts)
}

/// Write an OCI image layout whose layers are these tar files as they are
/// (uncompressed), e.g. written by another tar implementation.
pub fn write_oci_layout_from_tars(dir: &Path, tars: &[Vec<u8>]) -> Result<ImageInfo> {
    let blob_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir)?;
    let mut blobs = Vec::new();
    for t in tars {
        let digest = write_blob_bytes(&blob_dir, t)?;
        blobs.push(LayerBlob {
            media_type: Compression::None.media_type().to_string(),
            digest: digest.clone(),
            size: t.len() as u64,
            diff_id: digest,
            tar_size: t.len() as u64,
            archive_path: None,
        });
    }
    finish_oci_layout(dir, blobs, &OciOptions::default())
}

/// Config, manifest, index and `oci-layout` for layer blobs already written.
fn finish_oci_layout(dir: &Path, blobs: Vec<LayerBlob>, opts: &OciOptions) -> Result<ImageInfo> {
    let blob_dir = dir.join("blobs").join("sha256");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let cfg = config_json(&blobs, &opts.tamper);
    let config_digest = write_blob_bytes(&blob_dir, &cfg)?;
    let layer_descs: Vec<serde_json::Value> = blobs
        .iter()
        .map(|b| json!({"mediaType": b.media_type, "digest": b.digest, "size": b.size}))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": cfg.len()},
        "layers": layer_descs,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = write_blob_bytes(&blob_dir, &manifest)?;
    let mut mdesc = json!({
        "mediaType": MT_MANIFEST,
        "digest": manifest_digest,
        "size": manifest.len(),
        "platform": {"architecture": "amd64", "os": "linux"},
    });
    if let Some(r) = &opts.ref_name {
        mdesc["annotations"] = json!({"org.opencontainers.image.ref.name": r});
    }
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [mdesc]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(ImageInfo {
        layers: blobs,
        config_digest,
        manifest_digest: Some(manifest_digest),
    })
}

/// Write a `docker save` style archive (legacy layout, plain tar layers).
pub fn write_docker_archive(
    file: &Path,
    layers: &[LayerSpec],
    repo_tags: &[&str],
) -> Result<ImageInfo> {
    write_docker_archive_with(
        file,
        layers,
        &DockerOptions {
            repo_tags: repo_tags.iter().map(|s| s.to_string()).collect(),
            ..DockerOptions::default()
        },
    )
}

/// Write a docker archive with full options.
pub fn write_docker_archive_with(
    file: &Path,
    layers: &[LayerSpec],
    opts: &DockerOptions,
) -> Result<ImageInfo> {
    ensure!(
        !matches!(opts.tamper, Tamper::MediaType(..)),
        "docker archives have no layer media types"
    );
    let staging = tempfile::Builder::new()
        .prefix("lode-testkit-docker-")
        .tempdir_in(
            file.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
    let blob_dir = staging.path().join("blobs");
    let mut blobs = write_blobs(&blob_dir, layers, &opts.compression, &opts.tamper)?;
    let cfg = config_json(&blobs, &opts.tamper);
    let config_digest = sha256_digest(&cfg);

    let out = File::create(file).with_context(|| format!("create {}", file.display()))?;
    let mut ar = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
    let put = |ar: &mut tar::Builder<BufWriter<File>>,
               name: &str,
               typ: tar::EntryType,
               size: u64,
               data: &mut dyn Read|
     -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_entry_type(typ);
        h.set_mode(if typ == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_cksum();
        ar.append(&h, data)?;
        Ok(())
    };
    let open_blob = |b: &LayerBlob| -> Result<(u64, Box<dyn Read>)> {
        let p = blob_dir.join(hex_of(&b.digest));
        match File::open(&p) {
            Ok(f) => Ok((f.metadata()?.len(), Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((0, Box::new(io::empty()))),
            Err(e) => Err(e.into()),
        }
    };
    let mut layer_paths = Vec::new();
    match opts.layout {
        DockerLayout::Legacy => {
            let mut parent: Option<String> = None;
            for (i, b) in blobs.iter().enumerate() {
                // Legacy v1 ids: chain of diff ids, like docker's.
                let id = hex::encode(Sha256::digest(format!(
                    "{}|{}",
                    parent.clone().unwrap_or_default(),
                    b.diff_id
                )));
                put(
                    &mut ar,
                    &format!("{id}/"),
                    tar::EntryType::Directory,
                    0,
                    &mut io::empty(),
                )?;
                put(
                    &mut ar,
                    &format!("{id}/VERSION"),
                    tar::EntryType::Regular,
                    3,
                    &mut &b"1.0"[..],
                )?;
                let mut j = json!({"id": id, "created": "2024-01-01T00:00:00Z", "os": "linux"});
                if let Some(p) = &parent {
                    j["parent"] = json!(p);
                }
                let j = serde_json::to_vec(&j)?;
                put(
                    &mut ar,
                    &format!("{id}/json"),
                    tar::EntryType::Regular,
                    j.len() as u64,
                    &mut &j[..],
                )?;
                if !matches!(opts.tamper, Tamper::MissingBlob(l) if l == i) {
                    let (size, mut r) = open_blob(b)?;
                    put(
                        &mut ar,
                        &format!("{id}/layer.tar"),
                        tar::EntryType::Regular,
                        size,
                        &mut r,
                    )?;
                }
                layer_paths.push(format!("{id}/layer.tar"));
                parent = Some(id);
            }
            let cfg_name = format!("{}.json", hex_of(&config_digest));
            put(
                &mut ar,
                &cfg_name,
                tar::EntryType::Regular,
                cfg.len() as u64,
                &mut &cfg[..],
            )?;
            let manifest =
                json!([{"Config": cfg_name, "RepoTags": opts.repo_tags, "Layers": layer_paths}]);
            let manifest = serde_json::to_vec(&manifest)?;
            put(
                &mut ar,
                "manifest.json",
                tar::EntryType::Regular,
                manifest.len() as u64,
                &mut &manifest[..],
            )?;
            if let Some(top) = &parent {
                let mut repos = serde_json::Map::new();
                for t in &opts.repo_tags {
                    if let Some((repo, tag)) = t.rsplit_once(':') {
                        let e = repos.entry(repo.to_string()).or_insert_with(|| json!({}));
                        e[tag] = json!(top);
                    }
                }
                let repos = serde_json::to_vec(&repos)?;
                put(
                    &mut ar,
                    "repositories",
                    tar::EntryType::Regular,
                    repos.len() as u64,
                    &mut &repos[..],
                )?;
            }
        }
        DockerLayout::Blobs => {
            put(
                &mut ar,
                "blobs/",
                tar::EntryType::Directory,
                0,
                &mut io::empty(),
            )?;
            put(
                &mut ar,
                "blobs/sha256/",
                tar::EntryType::Directory,
                0,
                &mut io::empty(),
            )?;
            for (i, b) in blobs.iter().enumerate() {
                let name = format!("blobs/sha256/{}", hex_of(&b.digest));
                if !matches!(opts.tamper, Tamper::MissingBlob(l) if l == i) {
                    let (size, mut r) = open_blob(b)?;
                    put(&mut ar, &name, tar::EntryType::Regular, size, &mut r)?;
                }
                layer_paths.push(name);
            }
            let cfg_name = format!("blobs/sha256/{}", hex_of(&config_digest));
            put(
                &mut ar,
                &cfg_name,
                tar::EntryType::Regular,
                cfg.len() as u64,
                &mut &cfg[..],
            )?;
            let layer_descs: Vec<serde_json::Value> = blobs
                .iter()
                .map(|b| {
                    let mt = match b.media_type.as_str() {
                        MT_LAYER_TAR => "application/vnd.oci.image.layer.v1.tar",
                        other => other,
                    };
                    json!({"mediaType": mt, "digest": b.digest, "size": b.size})
                })
                .collect();
            let oci_manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": cfg.len()},
                "layers": layer_descs,
            }))?;
            let md = sha256_digest(&oci_manifest);
            put(
                &mut ar,
                &format!("blobs/sha256/{}", hex_of(&md)),
                tar::EntryType::Regular,
                oci_manifest.len() as u64,
                &mut &oci_manifest[..],
            )?;
            let index = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MT_INDEX,
                "manifests": [{
                    "mediaType": MT_MANIFEST, "digest": md, "size": oci_manifest.len(),
                    "annotations": opts.repo_tags.first().map(|t| json!({"io.containerd.image.name": t, "org.opencontainers.image.ref.name": t.rsplit_once(':').map(|x| x.1).unwrap_or("latest")})).unwrap_or(json!({})),
                }],
            }))?;
            put(
                &mut ar,
                "index.json",
                tar::EntryType::Regular,
                index.len() as u64,
                &mut &index[..],
            )?;
            let manifest =
                json!([{"Config": cfg_name, "RepoTags": opts.repo_tags, "Layers": layer_paths}]);
            let manifest = serde_json::to_vec(&manifest)?;
            put(
                &mut ar,
                "manifest.json",
                tar::EntryType::Regular,
                manifest.len() as u64,
                &mut &manifest[..],
            )?;
            let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
            put(
                &mut ar,
                "oci-layout",
                tar::EntryType::Regular,
                layout.len() as u64,
                &mut &layout[..],
            )?;
        }
    }
    let mut w = ar.into_inner()?;
    w.flush()?;
    for (b, p) in blobs.iter_mut().zip(layer_paths) {
        b.archive_path = Some(p);
    }
    Ok(ImageInfo {
        layers: blobs,
        config_digest,
        manifest_digest: None,
    })
}

/// Paths of the blob files of an OCI layout (for tests that tamper by hand).
pub fn oci_blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs").join("sha256").join(hex_of(digest))
}
