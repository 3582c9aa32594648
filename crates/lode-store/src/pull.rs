//! `pull`: rebuild an image from its manifest, verifying every chunk.

use crate::alarm::ReadOf;
use crate::error::{Result, StoreError};
use crate::pointer::ResolvedImage;
use crate::store::Store;
use futures::{StreamExt, TryStreamExt};
use lode_chunk::{open_chunk, KeyProvider, KeyTable, Manifest};
use lode_common::LockedTemp;
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
///
/// The order bounds what an untrusted store can make this cost: the
/// manifest's header is read first, its tenant checked and its data key
/// opened with the tenant's key; only then is the rest read (exactly the size
/// the header implies) and its chunk table allocated. A manifest sealed under
/// another key fails after a few hundred bytes, whatever count it claims.
pub async fn open_image(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    name: &str,
) -> Result<OpenedImage> {
    let resolved = store.resolve_image(keys, tenant, name).await?;
    let digest = resolved.digest.clone();
    let (manifest, table) = open_manifest(store, keys, tenant, name, &digest).await?;
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

/// Opens `tenant/name` pinned at the manifest `digest` (`sha256:<hex>`),
/// whatever its pointer says now: a function keeps running the image it was
/// created with after the name moves on. The manifest must be the tenant's,
/// open with the tenant's key, and be bound to `name` (a format-1 manifest,
/// which binds no name, is refused: only its pointer could vouch for it).
pub async fn open_image_at(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    name: &str,
    digest: &str,
) -> Result<OpenedImage> {
    let (manifest, table) = open_manifest(store, keys, tenant, name, digest).await?;
    let reason = match &manifest.binding {
        Some(b) if b.name == name => None,
        Some(b) => Some(format!("manifest {digest} is image '{tenant}/{}'", b.name)),
        // Nothing but a pointer vouches for an unbound manifest, and a pin
        // bypasses the pointer: the agent's pinned attach refuses it too.
        None => Some(format!(
            "manifest {digest} binds no image name (manifest format 1): push the image again to pin it"
        )),
    };
    if let Some(reason) = reason {
        return Err(StoreError::Binding {
            tenant: tenant.into(),
            name: name.into(),
            reason,
        });
    }
    store
        .watch_read(&manifest.root, ReadOf::Image { tenant, name })
        .await;
    Ok(OpenedImage {
        digest: digest.to_string(),
        manifest,
        keys: table,
    })
}

/// Reads the manifest `digest` of `tenant`, checks it is the tenant's and
/// opens its key table with the tenant's key.
async fn open_manifest(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    name: &str,
    digest: &str,
) -> Result<(Manifest, KeyTable)> {
    let (bytes, data_key) = store
        .read_manifest(tenant, digest, |h| {
            // The tenant first: opening another tenant's manifest would use its key.
            if h.tenant != tenant {
                return Err(StoreError::Binding {
                    tenant: tenant.into(),
                    name: name.into(),
                    reason: format!("the pointer leads to a manifest of tenant '{}'", h.tenant),
                });
            }
            Ok(h.unwrap_key(keys)?)
        })
        .await?;
    let manifest = Manifest::decode(&bytes)?;
    drop(bytes);
    let table = manifest.open_with_key(&data_key)?;
    Ok((manifest, table))
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
/// left behind on error or when the future is dropped, and a killed run's
/// temp file is removed by the next pull to the same `out`).
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
    // Locked while this run lives; removed on error or when the caller drops
    // this future (an interrupted pull); a killed run's is swept by the next.
    let tmp = LockedTemp::beside(out).map_err(io)?;
    tmp.file().set_len(img.manifest.image_size).map_err(io)?;
    let file = Arc::new(tmp.file().try_clone().map_err(io)?);
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
                    let pt = open_chunk(i as u64, &name, &secret, ct.to_vec())?;
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
    tmp.persist(out).map_err(io)?;
    Ok(PullReport {
        chunks: m.names.len() as u64,
        fetched: bytes.len() as u64,
        bytes: bytes.iter().sum(),
        seconds: start.elapsed().as_secs_f64(),
        manifest: img.digest.clone(),
    })
}
