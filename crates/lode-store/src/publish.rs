//! Publishing a manifest into a root, safely against that root's retirement.
//!
//! A writer (a push, or GC migrating an image) that wants to point
//! `tenant/name` at a new manifest in root R:
//!
//! 1. reads the pointer and its version (before anything else);
//! 2. writes an intent `roots/R/intents/<id>.json` naming `tenant/name`;
//! 3. reads R's document: if R is not active, or is closing, it deletes the
//!    intent and goes to the newest active root instead (a push re-encrypts
//!    its chunks there; migration tries again next pass);
//! 4. uploads chunks, writes the manifest (bound to name and version);
//! 5. writes the pointer with a conditional write on the version of step 1;
//!    if it lost, it deletes its unpublished manifest, re-reads the pointer
//!    and goes back to step 3;
//! 6. deletes the intent.
//!
//! Retiring R ([`Store::retire_root`]) marks it *closing*, then fences every
//! intent it lists in R (rewrites the named pointer, or writes a vacant
//! placeholder, so its version changes), then marks it *retired*. A writer
//! whose check (3) came after the closing mark goes elsewhere; one whose
//! check came before has its intent listed, so its pointer was read before
//! the fence and its conditional write (5) fails unless it landed before the
//! fence — that is, while R was still active. So no pointer is ever
//! published into a root that is no longer active.

use crate::bounded::ObjectKind;
use crate::cond::Expect;
use crate::error::{Result, StoreError};
use crate::pointer::{ImagePointer, CAS_ATTEMPTS};
use crate::store::Store;
use lode_chunk::{ChunkName, ChunkSecret, ImageBinding, KeyProvider, Manifest, SealSpec};
use object_store::path::Path;
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};

/// `roots/<root>/intents/<id>.json`: a publish in flight into the root.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Intent {
    /// Document version (1).
    pub version: u32,
    /// Tenant of the image being published.
    pub tenant: String,
    /// Image name.
    pub name: String,
    /// When the intent was written, Unix milliseconds.
    pub started_ms: u64,
    /// Who writes (`push`, `gc`).
    pub writer: String,
}

/// What a publish attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pointer now names this manifest at this version.
    Published {
        /// `sha256:<hex>` of the manifest.
        digest: String,
        /// The image's version.
        version: u64,
    },
    /// The root stopped taking pushes: publish elsewhere.
    Retarget,
    /// (Migration only) the pointer changed since it was read: a newer push,
    /// a removal or a fence; nothing was published.
    Superseded,
}

/// The image being published, apart from where its pointer stands.
#[derive(Clone, Debug)]
pub struct Publication<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Image name.
    pub name: &'a str,
    /// Root holding its chunks.
    pub root: &'a str,
    /// Image size in bytes.
    pub image_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Chunk names (`None`: hole).
    pub names: &'a [Option<ChunkName>],
    /// Chunk secrets (`None`: hole).
    pub secrets: &'a [Option<ChunkSecret>],
}

/// A pointer as read in step 1 (`None`: no pointer).
pub type PointerRead = Option<(ImagePointer, UpdateVersion)>;

impl Store {
    /// Step 2: records a publish of `tenant/name` in flight into `root`.
    pub async fn write_intent(
        &self,
        root: &str,
        tenant: &str,
        name: &str,
        writer: &str,
    ) -> Result<Path> {
        let path = Path::from(format!(
            "roots/{root}/intents/{}.json",
            self.env().unique_id()
        ));
        let doc = Intent {
            version: 1,
            tenant: tenant.into(),
            name: name.into(),
            started_ms: self.env().now_ms(),
            writer: writer.into(),
        };
        let bytes = serde_json::to_vec(&doc).map_err(|e| StoreError::Task(e.to_string()))?;
        self.put_if(&path, bytes.into(), &Expect::Absent).await?;
        Ok(path)
    }

    /// Fences every publish in flight into `root` and deletes its intents.
    /// Returns how many were fenced.
    pub async fn fence_intents(&self, root: &str) -> Result<usize> {
        let mut n = 0;
        for m in self.list_all(&format!("roots/{root}/intents")).await? {
            if let Some(b) = self.get_opt(&m.location, ObjectKind::Document).await? {
                match serde_json::from_slice::<Intent>(&b) {
                    Ok(i) => {
                        self.fence_pointer(&i.tenant, &i.name).await?;
                        n += 1;
                    }
                    Err(e) => {
                        tracing::warn!(path = %m.location, error = %e, "unreadable intent: deleted")
                    }
                }
            }
            self.delete(&m.location).await?;
        }
        Ok(n)
    }

    /// Step 3: true if `root` still takes pushes.
    pub(crate) async fn root_takes_pushes(&self, root: &str) -> Result<bool> {
        Ok(self
            .root_versioned(root)
            .await?
            .is_some_and(|(r, _)| r.takes_pushes()))
    }

    async fn seal_and_put(
        &self,
        p: &Publication<'_>,
        version: u64,
        keys: &dyn KeyProvider,
    ) -> Result<String> {
        let binding = ImageBinding {
            name: p.name.to_string(),
            version,
        };
        let spec = SealSpec {
            format: lode_chunk::manifest::VERSION,
            tenant: p.tenant,
            binding: Some(&binding),
            image_size: p.image_size,
            chunk_size: p.chunk_size,
            root: p.root,
        };
        let m = Manifest::seal(&spec, p.names.to_vec(), p.secrets, keys)?;
        self.put_manifest(p.tenant, m.encode().into()).await
    }

    /// Steps 3 to 5 for a push: publishes `p` as the next version of its
    /// image. `read` is the pointer as read before the intent was written.
    pub async fn publish_next(
        &self,
        p: &Publication<'_>,
        mut read: PointerRead,
        keys: &dyn KeyProvider,
    ) -> Result<Outcome> {
        for _ in 0..CAS_ATTEMPTS {
            if !self.root_takes_pushes(p.root).await? {
                return Ok(Outcome::Retarget);
            }
            let current = read.as_ref().map_or(0, |(ptr, _)| ptr.image_version);
            let seen = match self.seen() {
                Some(s) => s.highest(p.tenant, p.name).await?,
                None => 0,
            };
            let version = current.max(seen) + 1;
            let digest = self.seal_and_put(p, version, keys).await?;
            let ptr = ImagePointer::live(p.tenant, p.name, &digest, version, keys)?;
            let expect = Expect::from_read(read.as_ref().map(|(_, v)| v));
            if self.write_pointer(p.tenant, p.name, &ptr, &expect).await? {
                return Ok(Outcome::Published { digest, version });
            }
            // Lost to another writer: this manifest was never referenced.
            self.delete(&Store::manifest_path(p.tenant, &digest)?)
                .await?;
            read = self.read_pointer(p.tenant, p.name).await?;
        }
        Err(StoreError::Contended {
            what: "image pointer",
            path: Store::image_path(p.tenant, p.name)?.to_string(),
            attempts: CAS_ATTEMPTS,
        })
    }

    /// Steps 4 and 5 for migration: replaces exactly the pointer read as
    /// `expected` with `p` at `version`, the version the image is bound to
    /// (GC keeps bindings). The caller has done step 3 (checked, after
    /// writing its intent, that the root takes pushes) before re-encrypting
    /// the image's chunks into it.
    /// The image's start-up working set `ws`, if any, is sealed for the new
    /// manifest and written before the pointer switches.
    pub async fn publish_same_version(
        &self,
        p: &Publication<'_>,
        version: u64,
        expected: &UpdateVersion,
        keys: &dyn KeyProvider,
        ws: Option<&[u32]>,
    ) -> Result<Outcome> {
        let digest = self.seal_and_put(p, version, keys).await?;
        if let Some(order) = ws {
            let sealed = lode_chunk::workingset::seal(p.tenant, &digest, order, keys)?;
            self.put_working_set(p.tenant, &digest, sealed.into())
                .await?;
        }
        let ptr = ImagePointer::live(p.tenant, p.name, &digest, version, keys)?;
        if self
            .write_pointer(p.tenant, p.name, &ptr, &Expect::Version(expected.clone()))
            .await?
        {
            return Ok(Outcome::Published { digest, version });
        }
        self.delete(&Store::working_set_path(p.tenant, &digest)?)
            .await?;
        self.delete(&Store::manifest_path(p.tenant, &digest)?)
            .await?;
        Ok(Outcome::Superseded)
    }
}
