//! Removing and listing a tenant's images.
//!
//! `lode rm` replaces the pointer with a sealed tombstone at the next
//! version (a conditional write, so a concurrent push either lands first
//! and is removed, or lands after and wins) and deletes the image's working
//! set. The manifest and chunks stay until GC: chunks are freed when their
//! root, after the next rotation and migration, expires and is deleted.

use crate::cond::Expect;
use crate::error::{Result, StoreError};
use crate::pointer::{ImagePointer, PointerState, CAS_ATTEMPTS};
use crate::roots::RootState;
use crate::store::Store;
use futures::{StreamExt, TryStreamExt};
use lode_chunk::KeyProvider;
use serde::Serialize;

/// What `lode rm` removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Version of the tombstone (the removed image's version + 1).
    pub version: u64,
    /// Manifest the image had.
    pub manifest: String,
}

/// One image of a tenant, as `lode images` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageEntry {
    /// Image name.
    pub name: String,
    /// Its version number (0: legacy unversioned pointer).
    pub version: u64,
    /// Image size in bytes.
    pub size: u64,
    /// Bytes the store holds for its distinct chunks (stored, so compressed,
    /// lengths; holes and repeats count once).
    pub stored_bytes: u64,
    /// Chunks (holes included).
    pub chunks: u64,
    /// Root of its chunks.
    pub root: String,
    /// That root's state.
    pub root_state: Option<RootState>,
    /// `sha256:<hex>` of its manifest.
    pub manifest: String,
    /// Why it cannot be read, if it cannot (then the other fields may be empty).
    pub error: Option<String>,
}

/// Removes `tenant/name`: a sealed tombstone replaces its pointer; its
/// working set is deleted. Chunks go later, through GC.
pub async fn remove_image(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    name: &str,
) -> Result<Removed> {
    for _ in 0..CAS_ATTEMPTS {
        let Some((p, v)) = store.read_pointer(tenant, name).await? else {
            return Err(StoreError::ImageNotFound {
                tenant: tenant.into(),
                name: name.into(),
                store: store.url().into(),
            });
        };
        p.verify(tenant, name, keys)?;
        let manifest = match (p.state, p.live_manifest()) {
            (PointerState::Live, Some(m)) => m.to_string(),
            (PointerState::Removed, _) => {
                return Err(StoreError::ImageRemoved {
                    tenant: tenant.into(),
                    name: name.into(),
                    version: p.image_version,
                    store: store.url().into(),
                })
            }
            _ => {
                return Err(StoreError::ImageNotFound {
                    tenant: tenant.into(),
                    name: name.into(),
                    store: store.url().into(),
                })
            }
        };
        let seen = match store.seen() {
            Some(s) => s.highest(tenant, name).await?,
            None => 0,
        };
        let version = p.image_version.max(seen) + 1;
        let tomb = ImagePointer::removed(tenant, name, version, keys)?;
        if store
            .write_pointer(tenant, name, &tomb, &Expect::Version(v))
            .await?
        {
            store
                .delete(&Store::working_set_path(tenant, &manifest)?)
                .await?;
            store.record_seen(tenant, name, version).await?;
            return Ok(Removed { version, manifest });
        }
    }
    Err(StoreError::Contended {
        what: "image pointer",
        path: Store::image_path(tenant, name)?.to_string(),
        attempts: CAS_ATTEMPTS,
    })
}

/// Every live image of `tenant`, opened (so authenticated) one by one; an
/// image that does not open is listed with its error.
pub async fn list_tenant_images(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
) -> Result<Vec<ImageEntry>> {
    let names = store.list_pointers(tenant).await?;
    let entries: Vec<Option<ImageEntry>> = futures::stream::iter(names)
        .map(|(name, _)| entry(store, keys, tenant, name))
        .buffered(8)
        .try_collect()
        .await?;
    Ok(entries.into_iter().flatten().collect())
}

async fn entry(
    store: &Store,
    keys: &dyn KeyProvider,
    tenant: &str,
    name: String,
) -> Result<Option<ImageEntry>> {
    let mut e = ImageEntry {
        name,
        version: 0,
        size: 0,
        stored_bytes: 0,
        chunks: 0,
        root: String::new(),
        root_state: None,
        manifest: String::new(),
        error: None,
    };
    match crate::pull::open_image(store, keys, tenant, &e.name).await {
        Ok(img) => {
            let m = &img.manifest;
            e.version = m.binding.as_ref().map_or(0, |b| b.version);
            e.size = m.image_size;
            e.chunks = m.names.len() as u64;
            e.stored_bytes = lode_chunk::ChunkSizes::of(&m.names, &img.keys).stored_bytes;
            e.root_state = store.root_versioned(&m.root).await?.map(|(r, _)| r.state);
            e.root = m.root.clone();
            e.manifest = img.digest;
        }
        Err(StoreError::ImageRemoved { .. } | StoreError::ImageNotFound { .. }) => return Ok(None),
        Err(e2 @ StoreError::Backend { .. }) => return Err(e2),
        Err(err) => e.error = Some(err.to_string()),
    }
    Ok(Some(e))
}
