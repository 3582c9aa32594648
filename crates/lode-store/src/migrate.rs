//! Migration: moving a live image into the active root.
//!
//! Each chunk of the image is read from its old root, checked and
//! decrypted with the image's key table, re-encrypted under the active
//! root's salt and stored there unless it already is. A chunk shared by
//! many images (of any tenants) is re-encrypted once per pass: the
//! [`Migrator`] remembers each `(old root, old name)` it has moved. Then a
//! new manifest (same tenant, name and version: bindings are kept) and the
//! re-sealed working set are written, and the pointer is switched with a
//! conditional write through the publish protocol ([`crate::publish`]), so
//! a push or `rm` that came in between wins and nothing is published into
//! a root that stopped being active.

use crate::error::{Result, StoreError};
use crate::publish::{Outcome, Publication};
use crate::roots::RootInfo;
use crate::scan::LiveImage;
use crate::store::Store;
use futures::{StreamExt, TryStreamExt};
use lode_chunk::{
    open_named_chunk, seal_chunk, ChunkName, ChunkSecret, KeyProvider, Manifest, Salt,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What migration has done so far in a pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStats {
    /// Images whose pointer now names a manifest in the active root.
    pub images: u64,
    /// Distinct chunks read, re-encrypted and stored.
    pub chunks_reencrypted: u64,
    /// Chunk references served by a chunk already moved in this pass.
    pub chunks_shared: u64,
    /// Bytes of the chunks re-encrypted.
    pub bytes_reencrypted: u64,
}

/// Moves images into one target root, remembering moved chunks.
pub struct Migrator<'a> {
    store: &'a Store,
    keys: Arc<dyn KeyProvider>,
    target: RootInfo,
    salt: Arc<Salt>,
    moved: BTreeMap<(String, ChunkName), (ChunkName, ChunkSecret)>,
    concurrency: usize,
    /// Counts so far.
    pub stats: MigrationStats,
}

impl<'a> Migrator<'a> {
    /// A migrator into `target`.
    pub fn new(
        store: &'a Store,
        keys: Arc<dyn KeyProvider>,
        target: RootInfo,
        concurrency: usize,
    ) -> Result<Self> {
        let salt = Arc::new(keys.salt(&target.salt_id)?);
        Ok(Migrator {
            store,
            keys,
            target,
            salt,
            moved: BTreeMap::new(),
            concurrency: concurrency.max(1),
            stats: MigrationStats::default(),
        })
    }

    /// The root images move into.
    pub fn target(&self) -> &RootInfo {
        &self.target
    }

    /// Moves one image. `Ok(Outcome::Published)` when its pointer switched;
    /// `Superseded`/`Retarget` when it changed or the target closed (next
    /// pass tries again).
    pub async fn migrate(&mut self, img: &LiveImage) -> Result<Outcome> {
        let keys = self.keys.clone();
        let m = img.manifest.as_ref().ok_or_else(|| {
            StoreError::Task(format!("{}/{}: manifest not kept", img.tenant, img.name))
        })?;
        // Never launder a forged or swapped pointer into a well-bound one.
        img.pointer.verify(&img.tenant, &img.name, keys.as_ref())?;
        let table = m.open(keys.as_ref())?;
        let version = bound_version(img, m)?;
        let intent = self
            .store
            .write_intent(&self.target.id, &img.tenant, &img.name, "gc")
            .await?;
        let r = self.move_image(img, m, &table.0, version).await;
        let cleaned = self.store.delete(&intent).await;
        let r = r?;
        cleaned?;
        if matches!(r, Outcome::Published { .. }) {
            self.stats.images += 1;
        }
        Ok(r)
    }

    async fn move_image(
        &mut self,
        img: &LiveImage,
        m: &Manifest,
        table: &[Option<ChunkSecret>],
        version: u64,
    ) -> Result<Outcome> {
        if !self.store.root_takes_pushes(&self.target.id).await? {
            return Ok(Outcome::Retarget);
        }
        // Distinct chunks of this image not moved yet in this pass.
        let mut todo = BTreeSet::new();
        let mut jobs = Vec::new();
        for (i, n) in m.names.iter().enumerate() {
            if let (Some(n), Some(s)) = (n, table[i]) {
                if !self.moved.contains_key(&(m.root.clone(), *n)) && todo.insert(*n) {
                    jobs.push((i, *n, s));
                }
            }
        }
        let moved: Vec<(ChunkName, ChunkName, ChunkSecret, u64)> = futures::stream::iter(jobs)
            .map(|(i, name, secret)| self.move_chunk(&m.root, i, name, secret))
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        for (old, new, secret, bytes) in moved {
            self.stats.chunks_reencrypted += 1;
            self.stats.bytes_reencrypted += bytes;
            self.moved.insert((m.root.clone(), old), (new, secret));
        }
        let mut names = Vec::with_capacity(m.names.len());
        let mut secrets = Vec::with_capacity(m.names.len());
        for n in &m.names {
            match n {
                Some(n) => {
                    let (new, s) = self.moved[&(m.root.clone(), *n)];
                    names.push(Some(new));
                    secrets.push(Some(s));
                }
                None => {
                    names.push(None);
                    secrets.push(None);
                }
            }
        }
        self.stats.chunks_shared += (names.iter().flatten().count() - todo.len()) as u64;
        let ws = self.working_set(img, m.names.len() as u64).await;
        let p = Publication {
            tenant: &img.tenant,
            name: &img.name,
            root: &self.target.id,
            image_size: m.image_size,
            chunk_size: m.chunk_size,
            names: &names,
            secrets: &secrets,
        };
        self.store
            .publish_same_version(&p, version, &img.version, self.keys.as_ref(), ws.as_deref())
            .await
    }

    /// Reads, checks and re-encrypts one chunk into the target root.
    async fn move_chunk(
        &self,
        old_root: &str,
        index: usize,
        name: ChunkName,
        secret: ChunkSecret,
    ) -> Result<(ChunkName, ChunkName, ChunkSecret, u64)> {
        let ct = self
            .store
            .get_chunk(old_root, &name)
            .await
            .map_err(|e| match e {
                StoreError::Missing { path, .. } => StoreError::ChunkMissing {
                    index: index as u64,
                    offset: 0,
                    path,
                },
                e => e,
            })?;
        let salt = self.salt.clone();
        // The plaintext hash (authenticated by the manifest) alone decides
        // whether the bytes are right, as on the agent's read path: a
        // corrupt or substituted ciphertext fails it. No separate name pass.
        let sealed = tokio::task::spawn_blocking(move || {
            let pt = open_named_chunk(index as u64, &secret, ct.to_vec())?;
            Ok::<_, lode_chunk::ChunkError>(seal_chunk(&salt, &pt))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        let n = sealed.ciphertext.len() as u64;
        if !self.store.has_chunk(&self.target.id, &sealed.name).await? {
            self.store
                .put_chunk(&self.target.id, &sealed.name, sealed.ciphertext.into())
                .await?;
        }
        Ok((name, sealed.name, sealed.secret, n))
    }

    /// The image's start-up working set, re-read for re-sealing (a missing
    /// or unreadable one is simply not carried over).
    async fn working_set(&self, img: &LiveImage, chunks: u64) -> Option<Vec<u32>> {
        let b = self
            .store
            .get_working_set(&img.tenant, &img.digest, chunks)
            .await
            .ok()??;
        lode_chunk::workingset::open(&img.tenant, &img.digest, &b, self.keys.as_ref()).ok()
    }
}

/// The version the image is bound to: its manifest's (format 2), else its
/// pointer's. Refuses a manifest bound to another image.
fn bound_version(img: &LiveImage, m: &Manifest) -> Result<u64> {
    let refuse = |reason: String| StoreError::Binding {
        tenant: img.tenant.clone(),
        name: img.name.clone(),
        reason,
    };
    if m.tenant != img.tenant {
        return Err(refuse(format!("manifest of tenant '{}'", m.tenant)));
    }
    match &m.binding {
        Some(b) if b.name != img.name => Err(refuse(format!(
            "the pointer leads to the manifest of '{}'",
            b.name
        ))),
        Some(b) if img.pointer.version >= 2 && b.version != img.pointer.image_version => {
            Err(refuse(format!(
                "pointer version {} but manifest version {}",
                img.pointer.image_version, b.version
            )))
        }
        Some(b) => Ok(b.version),
        None => Ok(img.pointer.image_version),
    }
}
