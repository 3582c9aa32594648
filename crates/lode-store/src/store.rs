//! The store layout on any object store backend.
//!
//! ```text
//! roots/<root>/root.json                  state and salt id of a root
//! roots/<root>/chunks/<2 hex>/<name>      a chunk's ciphertext, named by its SHA-256
//! roots/<root>/intents/<id>.json          a publish in flight into the root
//! tenants/<tenant>/manifests/<hex>        a manifest, named by the SHA-256 of its bytes
//! tenants/<tenant>/images/<name>          pointer to an image's current manifest
//! tenants/<tenant>/workingsets/<hex>      a manifest's sealed start-up working set
//! gc/lease.json                           the garbage collector's lease
//! alarms/<root>/<id>.json                 a read from a root that is not readable
//! ```
//! The protocol over these objects is in `docs/format.md` (section 4).

use crate::alarm::RootWatch;
use crate::bounded::ObjectKind;
use crate::env::{Environment, SystemEnv};
use crate::error::{Result, StoreError};
use crate::freshness::SeenVersions;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use lode_chunk::ChunkName;
use object_store::path::Path;
use object_store::{ListResult, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A chunk store: an object store with lode's layout.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
    env: Arc<dyn Environment>,
    /// This host's record of the highest version seen per image (rollback
    /// detection); `None` in library use without a home directory.
    seen: Option<Arc<SeenVersions>>,
    /// Cached root states, shared by clones: reads from a root that is not
    /// readable raise an alarm.
    pub(crate) watch: Arc<RootWatch>,
    /// Who reads through this store (`agent`, `pull`, `cat`, ...): named in alarms.
    reader: Arc<str>,
}

/// Checks an image name: 1–128 of `[A-Za-z0-9._:-]`, not starting with `.`.
pub fn check_name(n: &str) -> Result<()> {
    lode_chunk::manifest::check_image_name(n).map_err(|_| StoreError::BadName(n.to_string()))
}

pub(crate) fn hex_of(digest: &str) -> Result<&str> {
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
        Ok(Self::from_object_store(crate::open::open_url(url)?, url))
    }

    /// Wraps an existing object store (e.g. a throttled or failing one in tests).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, url: &str) -> Store {
        Store {
            inner,
            url: url.to_string(),
            env: Arc::new(SystemEnv),
            seen: None,
            watch: Arc::default(),
            reader: Arc::from("lode"),
        }
    }

    /// The same store over another object store (e.g. one that counts
    /// requests); everything else is shared.
    pub fn with_object_store(&self, inner: Arc<dyn ObjectStore>) -> Store {
        Store {
            inner,
            ..self.clone()
        }
    }

    /// Uses `env` for time and ids (the simulation's virtual clock).
    pub fn with_env(mut self, env: Arc<dyn Environment>) -> Store {
        self.env = env;
        self
    }

    /// Remembers the versions of images read or pushed in `seen`, and
    /// refuses older ones (rollback).
    pub fn with_seen(mut self, seen: SeenVersions) -> Store {
        self.seen = Some(Arc::new(seen));
        self
    }

    /// Names the reader in alarms (`agent`, `pull`, `cat`, `gc`).
    pub fn with_reader(mut self, label: &str) -> Store {
        self.reader = Arc::from(label);
        self
    }

    /// The store's clock and id source.
    pub fn env(&self) -> &dyn Environment {
        self.env.as_ref()
    }

    /// This host's record of versions seen, if attached.
    pub fn seen(&self) -> Option<&SeenVersions> {
        self.seen.as_deref()
    }

    /// The reader label.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// Every object under `prefix` (all pages of the listing).
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.list_first(prefix, usize::MAX).await
    }

    /// At most `n` objects under `prefix`: the first `n` the listing yields
    /// (in name order on S3; in the directory's order on a local store). The
    /// listing stops there, so a large prefix costs one page, not all.
    pub async fn list_first(&self, prefix: &str, n: usize) -> Result<Vec<ObjectMeta>> {
        let p = Path::from(prefix);
        self.inner
            .list(Some(&p))
            .take(n)
            .try_collect()
            .await
            .map_err(|source| StoreError::Backend {
                op: "list",
                path: format!("{prefix}/"),
                source,
            })
    }

    /// Objects and sub-prefixes directly under `prefix`.
    pub async fn list_dir(&self, prefix: &str) -> Result<ListResult> {
        let p = Path::from(prefix);
        self.inner
            .list_with_delimiter(Some(&p))
            .await
            .map_err(|source| StoreError::Backend {
                op: "list",
                path: format!("{prefix}/"),
                source,
            })
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
    /// name), refusing an object larger than the chunk format allows. A read
    /// from a root that is not readable (expired, deleted) still returns the
    /// data if it is there, and records an alarm.
    pub async fn get_chunk(&self, root: &str, name: &ChunkName) -> Result<Bytes> {
        self.watch_read(root, crate::alarm::ReadOf::Chunk(name))
            .await;
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
        let path = Self::manifest_path(tenant, &digest)?;
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
        let path = Self::manifest_path(tenant, digest)?;
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

    pub(crate) fn manifest_path(tenant: &str, digest: &str) -> Result<Path> {
        Ok(Path::from(format!(
            "tenants/{tenant}/manifests/{}",
            hex_of(digest)?
        )))
    }

    pub(crate) fn working_set_path(tenant: &str, digest: &str) -> Result<Path> {
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
