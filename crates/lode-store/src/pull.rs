//! `pull`: rebuild an image from its manifest, verifying every chunk.

use crate::error::{Result, StoreError};
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

/// Reads `tenant/name`'s manifest, checks its digest, tenant and root, and
/// opens its key table with the tenant's key.
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
    let digest = store.get_image(tenant, name).await?;
    let (bytes, data_key) = store
        .read_manifest(tenant, &digest, |h| {
            if h.tenant != tenant {
                return Err(StoreError::BadDocument {
                    what: "manifest",
                    path: digest.clone(),
                    reason: format!("belongs to tenant '{}', not '{tenant}'", h.tenant),
                });
            }
            Ok(h.unwrap_key(keys)?)
        })
        .await?;
    let manifest = Manifest::decode(&bytes)?;
    drop(bytes);
    let table = manifest.open_with_key(&data_key)?;
    let root = store.root(&manifest.root).await?;
    if !root.state.readable() {
        tracing::error!(root = %root.id, state = ?root.state, "read from a root that is not readable");
        return Err(StoreError::Roots(format!(
            "image {tenant}/{name} lives in root {} which is {:?}: not readable",
            root.id, root.state
        )));
    }
    Ok(OpenedImage {
        digest,
        manifest,
        keys: table,
    })
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
    tmp.persist(out).map_err(io)?;
    Ok(PullReport {
        chunks: m.names.len() as u64,
        fetched: bytes.len() as u64,
        bytes: bytes.iter().sum(),
        seconds: start.elapsed().as_secs_f64(),
        manifest: img.digest.clone(),
    })
}
