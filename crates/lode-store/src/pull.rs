//! `pull`: rebuild an image from its manifest, verifying every chunk.

use crate::alarm::ReadOf;
use crate::error::{Result, StoreError};
use crate::pointer::ResolvedImage;
use crate::store::Store;
use futures::{StreamExt, TryStreamExt};
use lode_chunk::{open_chunk, KeyProvider, KeyTable, Manifest};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// An image's manifest, opened.
#[derive(Clone, Debug)]
pub struct OpenedImage {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// The manifest.
    pub manifest: Manifest,
    /// Its key table.
    pub keys: KeyTable,
}

/// Opens `tenant/name`: reads its pointer and checks the pointer's seal,
/// reads the manifest and checks its digest, opens the key table with the
/// tenant's key (authenticating the manifest), and checks that the manifest
/// is bound to this tenant, name and version and is not older than a
/// version this host has seen (then records it). A manifest in a root that
/// is not readable is still opened, and raises an alarm.
pub async fn open_image(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    name: &str,
) -> Result<OpenedImage> {
    let resolved = store.resolve_image(keys, tenant, name).await?;
    let digest = resolved.digest.clone();
    let bytes = store.get_manifest(tenant, &digest).await?;
    let manifest = Manifest::decode(&bytes)?;
    // The tenant first: opening another tenant's manifest would use its key.
    if manifest.tenant != tenant {
        return Err(StoreError::Binding {
            tenant: tenant.into(),
            name: name.into(),
            reason: format!(
                "the pointer leads to a manifest of tenant '{}'",
                manifest.tenant
            ),
        });
    }
    let table = manifest.open(keys)?;
    // The name and version once the header is authenticated.
    let version = check_binding(tenant, name, &resolved, &manifest)?;
    store.check_fresh(tenant, name, version).await?;
    store
        .watch_read(&manifest.root, ReadOf::Image { tenant, name })
        .await;
    store.record_seen(tenant, name, version).await?;
    Ok(OpenedImage {
        digest,
        manifest,
        keys: table,
    })
}

/// Checks that `manifest` is the image `tenant/name` the pointer promised;
/// returns the image's version.
fn check_binding(
    tenant: &str,
    name: &str,
    pointer: &ResolvedImage,
    manifest: &Manifest,
) -> Result<u64> {
    let refuse = |reason: String| StoreError::Binding {
        tenant: tenant.into(),
        name: name.into(),
        reason,
    };
    match &manifest.binding {
        Some(b) if b.name != name => Err(refuse(format!(
            "the pointer leads to the manifest of image '{tenant}/{}' (version {})",
            b.name, b.version
        ))),
        // A sealed pointer names the version; a legacy one only the digest.
        Some(b) if !pointer.legacy && b.version != pointer.version => Err(refuse(format!(
            "the pointer says version {} but its manifest is version {}",
            pointer.version, b.version
        ))),
        Some(b) => Ok(b.version),
        // A format-1 manifest binds nothing: only a sealed pointer or a
        // legacy one (version 0) vouches for it.
        None => Ok(pointer.version),
    }
}

/// What a pull did.
#[derive(Clone, Debug, PartialEq)]
pub struct PullReport {
    /// Chunks in the image.
    pub chunks: u64,
    /// Chunks fetched and verified.
    pub fetched: u64,
    /// Ciphertext bytes fetched.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Manifest digest.
    pub manifest: String,
}

/// Rebuilds `tenant/name` into `out` (temp file + rename; nothing partial is
/// left behind on error).
pub async fn pull_to_file(
    store: &Store,
    keys: Arc<dyn KeyProvider>,
    tenant: &str,
    name: &str,
    out: &Path,
    concurrency: usize,
) -> Result<PullReport> {
    let start = Instant::now();
    let img = open_image(store, keys.as_ref(), tenant, name).await?;
    let io = |source| StoreError::Io {
        path: out.display().to_string(),
        source,
    };
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".lode-pull.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.as_file().set_len(img.manifest.image_size).map_err(io)?;
    let file = Arc::new(tmp.as_file().try_clone().map_err(io)?);
    let m = &img.manifest;
    let jobs = m
        .names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.map(|n| (i, n)));
    let bytes: Vec<u64> = futures::stream::iter(jobs)
        .map(|(i, name)| {
            let secret = img.keys.0[i];
            let file = file.clone();
            let root = m.root.clone();
            let chunk_size = u64::from(m.chunk_size);
            async move {
                let ct = store.get_chunk(&root, &name).await.map_err(|e| match e {
                    StoreError::Missing { path, .. } => StoreError::ChunkMissing {
                        index: i as u64,
                        offset: i as u64 * chunk_size,
                        path,
                    },
                    e => e,
                })?;
                let n = ct.len() as u64;
                let secret = secret.ok_or(StoreError::Task(format!("chunk {i} has no key")))?;
                tokio::task::spawn_blocking(move || {
                    let pt =
                        open_chunk(i as u64, &name, &secret.key, &secret.plain_sha, ct.to_vec())?;
                    file.write_all_at(&pt, i as u64 * chunk_size)
                        .map_err(|source| StoreError::Io {
                            path: "output".into(),
                            source,
                        })?;
                    Ok::<_, StoreError>(n)
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(out).map_err(|e| io(e.error))?;
    Ok(PullReport {
        chunks: m.names.len() as u64,
        fetched: bytes.len() as u64,
        bytes: bytes.iter().sum(),
        seconds: start.elapsed().as_secs_f64(),
        manifest: img.digest.clone(),
    })
}
