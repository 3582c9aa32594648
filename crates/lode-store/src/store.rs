//! The store layout on any object store backend.
//!
//! ```text
//! roots/<root>/root.json                  state and salt id of a root
//! roots/<root>/chunks/<2 hex>/<name>      a chunk's ciphertext, named by its SHA-256
//! tenants/<tenant>/manifests/<hex>        a manifest, named by the SHA-256 of its bytes
//! tenants/<tenant>/images/<name>          pointer to an image's current manifest
//! ```

use crate::bounded::ObjectKind;
use crate::error::{Result, StoreError};
use bytes::Bytes;
use lode_chunk::ChunkName;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A chunk store: an object store with lode's layout.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
}

/// An image pointer: `tenants/<tenant>/images/<name>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImagePointer {
    /// Pointer format version (1).
    pub version: u32,
    /// `sha256:<hex>` of the current manifest.
    pub manifest: String,
}

/// Checks an image name: 1–128 of `[A-Za-z0-9._:-]`, not starting with `.`.
pub fn check_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(n.to_string()))
    }
}

fn hex_of(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| StoreError::BadDocument {
            what: "manifest digest",
            path: digest.to_string(),
            reason: "not sha256:<64 hex>".into(),
        })
}

impl Store {
    /// Opens the store at `url` (see [`crate::open_url`]).
    pub fn open(url: &str) -> Result<Store> {
        Ok(Store {
            inner: crate::open::open_url(url)?,
            url: url.to_string(),
        })
    }

    /// Wraps an existing object store (e.g. a throttled or failing one in tests).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, url: &str) -> Store {
        Store {
            inner,
            url: url.to_string(),
        }
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Path of a chunk.
    pub fn chunk_path(root: &str, name: &ChunkName) -> Path {
        let h = name.to_hex();
        Path::from(format!("roots/{root}/chunks/{}/{h}", &h[..2]))
    }

    fn backend<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(object_store::Error) -> StoreError + 'a {
        move |source| StoreError::Backend {
            op,
            path: path.to_string(),
            source,
        }
    }

    /// Writes a whole object (atomically: readers see all of it or nothing).
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<()> {
        self.inner
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(Self::backend("put", path))?;
        Ok(())
    }

    /// True if the object exists.
    pub async fn exists(&self, path: &Path) -> Result<bool> {
        match self.inner.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Self::backend("head", path)(e)),
        }
    }

    /// True if the chunk is stored in `root`.
    pub async fn has_chunk(&self, root: &str, name: &ChunkName) -> Result<bool> {
        self.exists(&Self::chunk_path(root, name)).await
    }

    /// Stores a chunk's ciphertext.
    pub async fn put_chunk(&self, root: &str, name: &ChunkName, ciphertext: Bytes) -> Result<()> {
        self.put(&Self::chunk_path(root, name), ciphertext).await
    }

    /// Reads a chunk's ciphertext (unverified: callers check it against its
    /// name), refusing an object larger than the chunk format allows.
    pub async fn get_chunk(&self, root: &str, name: &ChunkName) -> Result<Bytes> {
        let path = Self::chunk_path(root, name);
        self.get_opt(&path, ObjectKind::Chunk)
            .await?
            .ok_or(StoreError::Missing {
                what: "chunk",
                path: path.to_string(),
            })
    }

    /// Stores a manifest under its digest and returns the digest.
    pub async fn put_manifest(&self, tenant: &str, bytes: Bytes) -> Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let path = Path::from(format!("tenants/{tenant}/manifests/{}", hex_of(&digest)?));
        self.put(&path, bytes).await?;
        Ok(digest)
    }

    /// Reads a manifest and checks it against its digest. The read is
    /// bounded by the manifest's own header (see
    /// [`Store::read_manifest`]).
    pub async fn get_manifest(&self, tenant: &str, digest: &str) -> Result<Bytes> {
        Ok(self.read_manifest(tenant, digest, |_| Ok(())).await?.0)
    }

    /// Reads a manifest: its header first, then `check` on the header (where
    /// [`crate::open_image`] opens the data key with the tenant's key, so a
    /// manifest sealed under another key fails before its chunk entries are
    /// read or allocated for), then the rest, bounded by what the header
    /// implies, and checks the whole against its digest.
    pub async fn read_manifest<T>(
        &self,
        tenant: &str,
        digest: &str,
        check: impl FnOnce(&lode_chunk::ManifestHeader) -> Result<T>,
    ) -> Result<(Bytes, T)> {
        let path = Path::from(format!("tenants/{tenant}/manifests/{}", hex_of(digest)?));
        let (bytes, checked) = self
            .read_manifest_object(&path, digest, check)
            .await?
            .ok_or(StoreError::Missing {
                what: "manifest",
                path: path.to_string(),
            })?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(StoreError::Corrupt {
                what: "manifest",
                path: path.to_string(),
                expected: digest.into(),
                actual,
            });
        }
        Ok((bytes, checked))
    }

    fn image_path(tenant: &str, name: &str) -> Result<Path> {
        lode_chunk::keys::check_tenant(tenant)?;
        check_name(name)?;
        Ok(Path::from(format!("tenants/{tenant}/images/{name}")))
    }

    /// Points `tenant/name` at a manifest.
    pub async fn set_image(&self, tenant: &str, name: &str, digest: &str) -> Result<()> {
        let path = Self::image_path(tenant, name)?;
        let doc = serde_json::to_vec(&ImagePointer {
            version: 1,
            manifest: digest.to_string(),
        })
        .map_err(|e| StoreError::Task(e.to_string()))?;
        self.put(&path, doc.into()).await
    }

    /// The manifest digest `tenant/name` points at.
    pub async fn get_image(&self, tenant: &str, name: &str) -> Result<String> {
        let path = Self::image_path(tenant, name)?;
        let bytes = self
            .get_opt(&path, ObjectKind::Pointer)
            .await?
            .ok_or_else(|| StoreError::ImageNotFound {
                tenant: tenant.into(),
                name: name.into(),
                store: self.url.clone(),
            })?;
        let p: ImagePointer =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::BadDocument {
                what: "image pointer",
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        hex_of(&p.manifest)?;
        Ok(p.manifest)
    }

    /// Every `(tenant, image name)` in the store.
    pub async fn list_images(&self) -> Result<Vec<(String, String)>> {
        let list = |p: Path| async move {
            self.inner
                .list_with_delimiter(Some(&p))
                .await
                .map_err(|source| StoreError::Backend {
                    op: "list",
                    path: p.to_string(),
                    source,
                })
        };
        let mut out = Vec::new();
        for t in list(Path::from("tenants")).await?.common_prefixes {
            let Some(tenant) = t.filename().map(str::to_string) else {
                continue;
            };
            for o in list(Path::from(format!("tenants/{tenant}/images")))
                .await?
                .objects
            {
                if let Some(name) = o.location.filename() {
                    out.push((tenant.clone(), name.to_string()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn working_set_path(tenant: &str, digest: &str) -> Result<Path> {
        lode_chunk::keys::check_tenant(tenant)?;
        Ok(Path::from(format!(
            "tenants/{tenant}/workingsets/{}",
            hex_of(digest)?
        )))
    }

    /// Stores the sealed start-up working set of a manifest.
    pub async fn put_working_set(&self, tenant: &str, digest: &str, sealed: Bytes) -> Result<()> {
        self.put(&Self::working_set_path(tenant, digest)?, sealed)
            .await
    }

    /// The sealed start-up working set of a manifest of `chunks` chunks, if
    /// one was recorded (bounded by one index per chunk).
    pub async fn get_working_set(
        &self,
        tenant: &str,
        digest: &str,
        chunks: u64,
    ) -> Result<Option<Bytes>> {
        self.get_opt(
            &Self::working_set_path(tenant, digest)?,
            ObjectKind::WorkingSet { chunks },
        )
        .await
    }
}
