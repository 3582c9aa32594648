//! The live set: every image pointer, every pin, and the root of each live
//! manifest.
//!
//! One pass lists `tenants/`, each tenant's `images/`, reads every pointer
//! and every live manifest, then lists each tenant's pins and reads the
//! header of each pinned manifest no pointer names: requests grow with the
//! live images and pinned versions (plus pages of listing), nothing else.
//! Pointers are read before pins are listed (see [`crate::pins`]).

use crate::error::{Result, StoreError};
use crate::pointer::{ImagePointer, PointerState};
use crate::store::Store;
use futures::{StreamExt, TryStreamExt};
use lode_chunk::Manifest;
use object_store::UpdateVersion;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A live image as GC found it.
#[derive(Clone, Debug)]
pub struct LiveImage {
    /// Tenant.
    pub tenant: String,
    /// Image name.
    pub name: String,
    /// Its pointer.
    pub pointer: ImagePointer,
    /// The pointer's version (for the conditional switch of a migration).
    pub version: UpdateVersion,
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
    /// Root of its chunks.
    pub root: String,
    /// The manifest, kept only when it is not in the root GC migrates to.
    pub manifest: Option<Manifest>,
}

/// An image GC could not read, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ImageProblem {
    /// Tenant.
    pub tenant: String,
    /// Image name.
    pub name: String,
    /// What is wrong.
    pub problem: String,
}

/// A version held by pins and named by no live pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedVersion {
    /// Tenant.
    pub tenant: String,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Root of its chunks.
    pub root: String,
    /// Pins holding it.
    pub pins: usize,
}

/// What the scan found.
#[derive(Debug, Default)]
pub struct LiveSet {
    /// Live images.
    pub images: Vec<LiveImage>,
    /// Live images (and pinned versions) whose manifest is missing or
    /// unreadable.
    pub broken: Vec<ImageProblem>,
    /// Versions kept only by pins (not migrated: they hold their root).
    pub pinned: Vec<PinnedVersion>,
    /// Pins seen.
    pub pins: usize,
    /// `(tenant, manifest hex)` of every live manifest.
    pub manifests: BTreeSet<(String, String)>,
    /// Pointers that are tombstones or placeholders, per state.
    pub dead_pointers: BTreeMap<&'static str, usize>,
    /// Tenants seen.
    pub tenants: Vec<String>,
}

impl LiveSet {
    /// Live images and pinned versions per root.
    pub fn by_root(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        let roots = self.images.iter().map(|i| &i.root);
        for r in roots.chain(self.pinned.iter().map(|p| &p.root)) {
            *m.entry(r.clone()).or_default() += 1;
        }
        m
    }
}

enum Found {
    Live(Box<LiveImage>),
    Broken(ImageProblem),
    Dead(&'static str),
}

impl Store {
    /// Scans every pointer; keeps the manifests of images outside `target`.
    pub async fn scan_live(&self, target: &str, concurrency: usize) -> Result<LiveSet> {
        let mut set = LiveSet {
            tenants: self.list_tenants().await?,
            ..LiveSet::default()
        };
        let mut names = Vec::new();
        for t in &set.tenants {
            for (n, _) in self.list_pointers(t).await? {
                names.push((t.clone(), n));
            }
        }
        let found: Vec<Found> = futures::stream::iter(names)
            .map(|(t, n)| self.scan_one(t, n, target))
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
        for f in found {
            match f {
                Found::Live(i) => {
                    let hex = i.digest.trim_start_matches("sha256:").to_string();
                    set.manifests.insert((i.tenant.clone(), hex));
                    set.images.push(*i);
                }
                Found::Broken(p) => set.broken.push(p),
                Found::Dead(s) => *set.dead_pointers.entry(s).or_default() += 1,
            }
        }
        // Pins after every pointer: a version whose pointer moved on while
        // the pointers were read was pinned before that, so is listed here.
        let mut pinned: BTreeMap<(String, String), usize> = BTreeMap::new();
        for t in set
            .tenants
            .iter()
            .filter(|_| !crate::rule_broken("ignore-pins"))
        {
            for p in self.list_pins(t).await? {
                set.pins += 1;
                *pinned.entry((t.clone(), p.digest)).or_default() += 1;
            }
        }
        pinned.retain(|(t, d), _| {
            !set.manifests
                .contains(&(t.clone(), d.trim_start_matches("sha256:").to_string()))
        });
        let found: Vec<(String, String, usize, Option<String>)> = futures::stream::iter(pinned)
            .map(|((t, d), n)| async move {
                let path = Store::manifest_path(&t, &d)?;
                let root = self.manifest_root(&path).await?;
                Ok::<_, StoreError>((t, d, n, root))
            })
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
        for (tenant, digest, pins, root) in found {
            match root {
                Some(root) => {
                    let hex = digest.trim_start_matches("sha256:").to_string();
                    set.manifests.insert((tenant.clone(), hex));
                    set.pinned.push(PinnedVersion {
                        tenant,
                        digest,
                        root,
                        pins,
                    });
                }
                None => set.broken.push(ImageProblem {
                    problem: format!(
                        "pinned {digest} by {pins} pin(s): manifest missing or unreadable"
                    ),
                    tenant,
                    name: "(pin)".into(),
                }),
            }
        }
        Ok(set)
    }

    async fn scan_one(&self, tenant: String, name: String, target: &str) -> Result<Found> {
        let problem = |p: String| {
            Ok(Found::Broken(ImageProblem {
                tenant: tenant.clone(),
                name: name.clone(),
                problem: p,
            }))
        };
        let (pointer, version) = match self.read_pointer(&tenant, &name).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(Found::Dead("gone")),
            Err(e @ StoreError::BadDocument { .. }) => return problem(e.to_string()),
            Err(e) => return Err(e),
        };
        let digest = match (pointer.state, pointer.live_manifest()) {
            (PointerState::Live, Some(d)) => d.to_string(),
            (PointerState::Removed, _) => return Ok(Found::Dead("removed")),
            _ => return Ok(Found::Dead("vacant")),
        };
        let bytes = match self.get_manifest(&tenant, &digest).await {
            Ok(b) => b,
            Err(e @ (StoreError::Missing { .. } | StoreError::Corrupt { .. })) => {
                return problem(e.to_string())
            }
            Err(e) => return Err(e),
        };
        let manifest = match Manifest::decode(&bytes) {
            Ok(m) => m,
            Err(e) => return problem(e.to_string()),
        };
        Ok(Found::Live(Box::new(LiveImage {
            root: manifest.root.clone(),
            manifest: (manifest.root != target).then_some(manifest),
            tenant,
            name,
            pointer,
            version,
            digest,
        })))
    }
}
