//! Deletion: the only part of GC that destroys anything.
//!
//! * an *expired* root whose grace has passed, with no live image in it and
//!   no open alarm anywhere: every object under `roots/<id>/` (chunks and
//!   fenced intents) in batches, then its acknowledged alarms, then — last —
//!   its root document (a root is deleted only when all its chunks are);
//! * objects under a root prefix that has no document (a straggler upload
//!   into a deleted root);
//! * manifests no pointer names whose root no longer takes pushes (no push
//!   can publish them any more), and working sets of manifests that are gone.
//!
//! Every batch first makes sure the lease has at least half its time left.
//! Without a lease (`lode gc --dry-run`) the same walk only counts.

use crate::error::{Result, StoreError};
use crate::lease::Lease;
use crate::scan::LiveSet;
use crate::store::Store;
use futures::{StreamExt, TryStreamExt};
use lode_chunk::Manifest;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta};
use serde::Serialize;
use std::collections::BTreeSet;

/// Objects per delete batch (S3's `DeleteObjects` limit).
pub const DELETE_BATCH: usize = 1000;

/// A root GC deleted.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeletedRoot {
    /// Root id.
    pub root: String,
    /// Objects deleted under it (chunks, intents), its document not counted.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// True if it had no document (an orphaned prefix).
    pub orphan: bool,
}

/// Metadata GC deleted.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SweptMetadata {
    /// Manifests no pointer names, in roots that take no pushes.
    pub manifests: u64,
    /// Working sets of manifests that are gone.
    pub working_sets: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Store {
    /// Deletes `paths` in batches (S3: one request per 1,000). Missing
    /// objects are fine: deletes are retried and may race another
    /// collector's. Returns how many were requested.
    pub async fn delete_batch(&self, paths: Vec<Path>) -> Result<u64> {
        let n = paths.len() as u64;
        let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        self.object_store()
            .delete_stream(stream)
            .map(|r| match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(source) => Err(StoreError::Backend {
                    op: "delete",
                    path: "(batch)".into(),
                    source,
                }),
            })
            .try_collect::<Vec<()>>()
            .await?;
        Ok(n)
    }

    async fn delete_listed(
        &self,
        objs: Vec<ObjectMeta>,
        lease: &mut Option<Lease>,
    ) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for batch in objs.chunks(DELETE_BATCH) {
            bytes += batch.iter().map(|m| m.size).sum::<u64>();
            match lease {
                Some(l) => {
                    l.keep().await?;
                    n += self
                        .delete_batch(batch.iter().map(|m| m.location.clone()).collect())
                        .await?;
                }
                None => n += batch.len() as u64,
            }
        }
        Ok((n, bytes))
    }

    /// Deletes everything under `roots/<id>/`, its document last.
    /// Without a lease (a dry run) only counts.
    pub async fn delete_root(
        &self,
        id: &str,
        lease: &mut Option<Lease>,
        orphan: bool,
    ) -> Result<DeletedRoot> {
        let doc = crate::roots::root_path(id);
        let mut out = DeletedRoot {
            root: id.to_string(),
            orphan,
            ..DeletedRoot::default()
        };
        // A straggler may upload while we delete: list again until empty.
        for _ in 0..4 {
            let objs: Vec<ObjectMeta> = self
                .list_all(&format!("roots/{id}"))
                .await?
                .into_iter()
                .filter(|m| m.location != doc)
                .collect();
            if objs.is_empty() {
                break;
            }
            let (n, b) = self.delete_listed(objs, lease).await?;
            out.objects += n;
            out.bytes += b;
            if lease.is_none() {
                return Ok(out);
            }
        }
        let acked = self.list_all(&format!("alarms-acked/{id}")).await?;
        self.delete_listed(acked, lease).await?;
        if let (false, Some(l)) = (orphan, lease.as_mut()) {
            l.keep().await?;
            let left = self.list_all(&format!("roots/{id}/chunks")).await?;
            if !left.is_empty() {
                return Err(StoreError::Roots(format!(
                    "root {id}: {} chunks appeared while it was deleted; its document is kept",
                    left.len()
                )));
            }
            self.delete(&doc).await?;
        }
        Ok(out)
    }

    /// The root a stored manifest names, from its first bytes (`None`: not a
    /// manifest lode can read).
    pub(crate) async fn manifest_root(&self, path: &Path) -> Result<Option<String>> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(
                0..lode_chunk::manifest::HEADER_PEEK as u64,
            )),
            ..Default::default()
        };
        let head = match self.object_store().get_opts(path, opts).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match head {
            Ok(b) => Ok(Manifest::peek_root(&b).ok()),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::Backend {
                op: "get",
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Deletes manifests the scan `live` found unreferenced whose root is
    /// `closed` (can no longer be published into; unreadable manifests once
    /// older than `grace_ms`), and working sets whose manifest is gone and
    /// that are older than `grace_ms`.
    pub async fn sweep_metadata(
        &self,
        live: &LiveSet,
        closed: impl Fn(&str) -> bool,
        now_ms: u64,
        grace_ms: u64,
        lease: &mut Option<Lease>,
    ) -> Result<SweptMetadata> {
        let mut out = SweptMetadata::default();
        let old = |m: &ObjectMeta| {
            now_ms.saturating_sub(m.last_modified.timestamp_millis().max(0) as u64) >= grace_ms
        };
        for t in &live.tenants {
            let mut doomed = Vec::new();
            let mut kept = BTreeSet::new();
            for m in self.list_all(&format!("tenants/{t}/manifests")).await? {
                let Some(hex) = m.location.filename().map(str::to_string) else {
                    continue;
                };
                if live.manifests.contains(&(t.clone(), hex.clone())) {
                    kept.insert(hex);
                    continue;
                }
                let delete = match self.manifest_root(&m.location).await? {
                    Some(root) => closed(&root),
                    None => old(&m),
                };
                if delete {
                    doomed.push(m);
                } else {
                    kept.insert(hex);
                }
            }
            out.manifests += doomed.len() as u64;
            out.bytes += self.delete_listed(doomed, lease).await?.1;
            let ws: Vec<ObjectMeta> = self
                .list_all(&format!("tenants/{t}/workingsets"))
                .await?
                .into_iter()
                .filter(|m| {
                    m.location
                        .filename()
                        .is_some_and(|h| !kept.contains(h) && old(m))
                })
                .collect();
            out.working_sets += ws.len() as u64;
            out.bytes += self.delete_listed(ws, lease).await?.1;
        }
        Ok(out)
    }
}
