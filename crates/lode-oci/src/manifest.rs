//! What every transport does with an image manifest once it has its bytes:
//! classify the media type, check the schema and the config descriptor, and
//! turn the layer descriptors into [`LayerDesc`]s.

use oci_spec::image::{Descriptor, ImageManifest};

use crate::digest::parse_sha256;
use crate::{Compression, LayerDesc, OciError};

/// OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest list.
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 image manifest.
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// How deep image indexes may nest.
pub(crate) const MAX_INDEX_DEPTH: usize = 4;

/// What a manifest-ish document is, by its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An OCI index or docker manifest list.
    Index,
    /// An OCI or docker schema 2 image manifest.
    Manifest,
}

/// Classifies `media_type` of the document `digest` (named `at` in errors):
/// schema 1 and anything else are rejected with the media type named.
pub(crate) fn kind(media_type: &str, digest: &str, at: &str) -> Result<Kind, OciError> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Ok(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Kind::Manifest),
        other if other.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            Err(OciError::UnsupportedSchema(format!(
                "manifest {digest}{at} is a docker schema1 manifest ({other}); convert it to schema2/OCI first"
            )))
        }
        other => Err(OciError::UnsupportedSchema(format!(
            "descriptor {digest}{at} has media type {other:?}, which is not an image manifest or index"
        ))),
    }
}

/// Checks a parsed manifest's schema version and config media type.
pub(crate) fn check(manifest: &ImageManifest, digest: &str) -> Result<(), OciError> {
    if manifest.schema_version() != 2 {
        return Err(OciError::UnsupportedSchema(format!(
            "manifest {digest} has schemaVersion {}, expected 2",
            manifest.schema_version()
        )));
    }
    let cdesc = manifest.config();
    let cmt = cdesc.media_type().to_string();
    if cmt != OCI_CONFIG && cmt != DOCKER_CONFIG {
        return Err(OciError::UnsupportedSchema(format!(
            "config {} has media type {cmt:?}, not an image config (not a container image?)",
            cdesc.digest()
        )));
    }
    Ok(())
}

/// The manifest's layers with their diff_ids (counts already checked equal).
pub(crate) fn layer_descs(
    layers: &[Descriptor],
    diff_ids: &[String],
) -> Result<Vec<LayerDesc>, OciError> {
    crate::check_layer_count(layers.len(), diff_ids)?;
    let mut out = Vec::with_capacity(diff_ids.len());
    for (index, (l, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let media_type = l.media_type().to_string();
        let compression = Compression::from_media_type(&media_type).ok_or_else(|| {
            OciError::UnsupportedMediaType {
                layer: index,
                media_type: media_type.clone(),
            }
        })?;
        let digest = l.digest().to_string();
        parse_sha256(&digest)?;
        out.push(LayerDesc {
            index,
            digest,
            diff_id: diff_id.clone(),
            media_type,
            compression,
            size: l.size(),
        });
    }
    Ok(out)
}
