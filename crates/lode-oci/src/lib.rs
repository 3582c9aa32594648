//! Read container images from skopeo-style transports and stream their layers.
//!
//! Supported sources (see [`Source`]):
//!
//! * `oci:DIR[:REF]` — an [OCI image layout](https://github.com/opencontainers/image-spec/blob/main/image-layout.md);
//! * `docker-archive:FILE[:REF]` — a `docker save` / `skopeo copy … docker-archive:` tar;
//! * `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]` — an image in a registry
//!   (see [`RegistryOptions`]), its layers streamed from the network.
//!
//! [`Image::open_with`] resolves the source to one image for the wanted
//! [`Platform`] (default: the host's), reading and
//! verifying (sha256 and size) every index, manifest and config it touches.
//! [`Image::open_layer`] returns a [`LayerReader`] yielding the uncompressed
//! tar bytes of a layer while hashing both the stored and the uncompressed
//! stream; at end of stream the stored digest, stored size and diff_id are
//! checked. Memory use is bounded regardless of layer size.
//!
//! ```no_run
//! # fn main() -> Result<(), lode_oci::OciError> {
//! let image = lode_oci::Image::open(&"oci:./img:latest".parse()?)?;
//! for layer in image.layers() {
//!     let mut reader = image.open_layer(layer.index)?;
//!     std::io::copy(&mut reader, &mut std::io::sink())
//!         .map_err(|e| lode_oci::OciError::Io { path: "layer".into(), source: e })?;
//!     reader.finish()?;
//! }
//! # Ok(())
//! # }
//! ```

mod digest;
mod docker_archive;
mod error;
mod layout;
mod manifest;
mod platform;
pub mod registry;
mod source;
mod stream;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

pub use digest::parse_sha256;
pub use docker_archive::{parse_docker_manifest, DockerManifestEntry};
pub use error::OciError;
pub use platform::Platform;
pub use registry::{
    Credentials, DownloadProgress, HelperFailure, ProgressHook, RegistryError, RegistryOptions,
    RegistryRef,
};
pub use source::{Source, SUPPORTED_TRANSPORTS};
pub use stream::LayerReader;

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (possibly multi-member).
    Gzip,
    /// zstd (possibly multi-frame).
    Zstd,
}

impl Compression {
    /// The compression implied by a layer media type, or `None` if the media
    /// type is not a supported layer type.
    ///
    /// Supported: the OCI `application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]`
    /// and `…layer.nondistributable.v1.tar[+gzip|+zstd]`, and the docker
    /// `application/vnd.docker.image.rootfs.diff.tar[.gzip|.zstd]` and
    /// `application/vnd.docker.image.rootfs.foreign.diff.tar.gzip`.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        Some(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    /// Sniffs the compression from the first bytes of a blob: gzip
    /// (`1f 8b`), zstd (`28 b5 2f fd`, or a skippable frame), else plain tar.
    pub fn sniff(magic: &[u8]) -> Compression {
        match magic {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [b0, 0x2a, 0x4d, 0x18, ..] if b0 & 0xf0 == 0x50 => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The docker media type used for a docker-archive layer with this compression.
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
        }
    }
}

/// One layer of the resolved image.
#[derive(Clone, Debug)]
pub struct LayerDesc {
    /// Position in the image, 0 = bottom layer.
    pub index: usize,
    /// `"sha256:<hex>"` of the blob as stored (compressed).
    pub digest: String,
    /// `"sha256:<hex>"` of the uncompressed tar (from the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// The media type as declared (docker-archive: synthesized from the sniffed compression).
    pub media_type: String,
    /// The compression of the stored blob.
    pub compression: Compression,
    /// Stored (compressed) size in bytes.
    pub size: u64,
}

/// Where the layer blobs of a resolved image live.
#[derive(Debug)]
enum Backend {
    /// `DIR` of an OCI layout; blobs at `DIR/blobs/sha256/<hex>`.
    Oci { dir: PathBuf },
    /// A docker-archive tar; `offsets[i]` is the data offset of layer `i`.
    DockerArchive { file: PathBuf, offsets: Vec<u64> },
    /// A registry; layers are downloaded by the fetcher.
    Registry { fetcher: Arc<registry::Fetcher> },
}

/// How [`Image::open_with`] selects and reaches an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The platform picked from an image index (default: the host's).
    pub platform: Platform,
    /// How to reach a registry (`docker://` sources only).
    pub registry: RegistryOptions,
}

/// What the transport-specific resolvers produce.
struct Resolved {
    layers: Vec<LayerDesc>,
    config_digest: String,
    config_json: Vec<u8>,
    diff_ids: Vec<String>,
    backend: Backend,
}

/// A resolved image: manifest and config read and verified.
#[derive(Debug)]
pub struct Image {
    source: Source,
    layers: Vec<LayerDesc>,
    config_digest: String,
    config_json: Vec<u8>,
    diff_ids: Vec<String>,
    backend: Backend,
}

impl Image {
    /// [`Image::open_with`] with the default options (the host's platform).
    pub fn open(source: &Source) -> Result<Image, OciError> {
        Image::open_with(source, &OpenOptions::default())
    }

    /// Resolves `source` to a single image for `opts.platform` and reads and
    /// verifies its manifest and config. Layers are not read until
    /// [`Image::open_layer`].
    pub fn open_with(source: &Source, opts: &OpenOptions) -> Result<Image, OciError> {
        let resolved = match source {
            Source::OciLayout { dir, reference } => {
                layout::open(dir, reference.as_deref(), &opts.platform)?
            }
            Source::DockerArchive { file, reference } => {
                docker_archive::open(file, reference.as_deref())?
            }
            Source::Registry(r) => registry::open(r, &opts.platform, &opts.registry)?,
        };
        Ok(Image {
            source: source.clone(),
            layers: resolved.layers,
            config_digest: resolved.config_digest,
            config_json: resolved.config_json,
            diff_ids: resolved.diff_ids,
            backend: resolved.backend,
        })
    }

    /// The source this image was opened from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[LayerDesc] {
        &self.layers
    }

    /// `"sha256:<hex>"` of the config blob.
    pub fn config_digest(&self) -> &str {
        &self.config_digest
    }

    /// Raw config bytes (verified against [`Image::config_digest`]).
    pub fn config_json(&self) -> &[u8] {
        &self.config_json
    }

    /// The config's `rootfs.diff_ids`, bottom first (validated as sha256 digests).
    pub fn diff_ids(&self) -> &[String] {
        &self.diff_ids
    }

    /// Open layer `index` as a stream of its UNCOMPRESSED tar bytes.
    ///
    /// Each call opens the underlying file anew, so several layers can be
    /// streamed concurrently (the reader is `Send`).
    pub fn open_layer(&self, index: usize) -> Result<LayerReader, OciError> {
        self.layer_blob(index)?.open()
    }

    /// Where layer `index`'s blob is, detached from the image: opened with
    /// [`LayerBlob::open`], possibly on another thread (opening may block,
    /// e.g. on a FIFO or a slow network file system).
    pub fn layer_blob(&self, index: usize) -> Result<LayerBlob, OciError> {
        let desc = self.layers.get(index).ok_or(OciError::LayerIndex {
            index,
            count: self.layers.len(),
        })?;
        let at = match &self.backend {
            Backend::Oci { dir } => BlobAt::File {
                path: layout::blob_path(dir, &desc.digest)?,
                offset: None,
            },
            Backend::DockerArchive { file, offsets } => {
                let offset = offsets.get(index).copied().ok_or(OciError::LayerIndex {
                    index,
                    count: offsets.len(),
                })?;
                BlobAt::File {
                    path: file.clone(),
                    offset: Some(offset),
                }
            }
            Backend::Registry { fetcher } => BlobAt::Registry(fetcher.clone()),
        };
        Ok(LayerBlob {
            desc: desc.clone(),
            at,
        })
    }
}

/// Where a layer blob's bytes come from.
#[derive(Clone, Debug)]
enum BlobAt {
    /// A file: a blob of its own (`offset: None`) or a member of a docker archive.
    File { path: PathBuf, offset: Option<u64> },
    /// A registry download.
    Registry(Arc<registry::Fetcher>),
}

/// One layer's blob, ready to open (see [`Image::layer_blob`]).
#[derive(Clone, Debug)]
pub struct LayerBlob {
    desc: LayerDesc,
    at: BlobAt,
}

impl LayerBlob {
    /// Opens the blob for streaming (see [`LayerReader`]).
    pub fn open(self) -> Result<LayerReader, OciError> {
        let desc = &self.desc;
        let index = desc.index;
        let (path, offset) = match &self.at {
            BlobAt::File { path, offset } => (path, *offset),
            BlobAt::Registry(fetcher) => {
                let origin = fetcher.url(index);
                return LayerReader::new(Box::new(fetcher.take(index)), desc, Some(origin));
            }
        };
        match offset {
            None => {
                let file = File::open(path).map_err(|e| OciError::io(path, e))?;
                let actual = file.metadata().map_err(|e| OciError::io(path, e))?.len();
                if actual != desc.size {
                    return Err(OciError::SizeMismatch {
                        what: format!("layer {index} blob"),
                        expected: desc.size,
                        actual,
                    });
                }
                LayerReader::new(Box::new(file), desc, None)
            }
            Some(offset) => {
                let mut f = File::open(path).map_err(|e| OciError::io(path, e))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| OciError::io(path, e))?;
                LayerReader::new(Box::new(f.take(desc.size)), desc, None)
            }
        }
    }
}

/// Checks that the manifest's layers and the config's diff_ids line up.
fn check_layer_count(layers: usize, diff_ids: &[String]) -> Result<(), OciError> {
    if layers != diff_ids.len() {
        return Err(OciError::LayerCountMismatch {
            layers,
            diff_ids: diff_ids.len(),
        });
    }
    Ok(())
}

/// The part of an image config this crate needs.
#[derive(serde::Deserialize)]
struct ConfigRootfs {
    rootfs: oci_spec::image::RootFs,
}

/// Parses a config and returns its validated `rootfs.diff_ids`.
fn parse_config_diff_ids(bytes: &[u8], path: &std::path::Path) -> Result<Vec<String>, OciError> {
    let cfg: ConfigRootfs = digest::parse_json(bytes, "image config", path)?;
    let diff_ids = cfg.rootfs.diff_ids().clone();
    for d in &diff_ids {
        parse_sha256(d)?;
    }
    Ok(diff_ids)
}
