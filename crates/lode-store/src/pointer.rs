//! Image pointers: `tenants/<tenant>/images/<name>`.
//!
//! Version 2 (JSON):
//! ```text
//! {"version":2,"state":"live","manifest":"sha256:<hex>","image_version":7,
//!  "fence":0,"seal":"<hex>"}
//! ```
//! * `state`: `live` (the image is `manifest`), `removed` (a tombstone left by
//!   `lode rm`; it keeps the version counter), or `vacant` (a placeholder a
//!   root's retirement writes for a name whose first push was in flight: no
//!   image, and not sealed);
//! * `image_version`: the version of the image, equal to the version bound
//!   into its manifest; each push increments it, migration keeps it;
//! * `fence`: bumped when a retiring root fences a push in flight, so that
//!   push's conditional write of the pointer fails (not sealed: it carries
//!   no claim);
//! * `seal`: [`lode_chunk::pointer`]'s tag over tenant, name, state, manifest
//!   and version, made with the tenant's key.
//!
//! Version 1 (`{"version":1,"manifest":"sha256:<hex>"}`, unsealed, unbound)
//! is still read: it is a live image at version 0.

use crate::bounded::ObjectKind;
use crate::cond::Expect;
use crate::error::{Result, StoreError};
use crate::store::{check_name, hex_of, Store};
use futures::{StreamExt, TryStreamExt};
use lode_chunk::{open_pointer, seal_pointer, KeyProvider, PointerClaim};
use object_store::path::Path;
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};

/// What a pointer says about its image.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PointerState {
    /// The image exists; `manifest` is its current manifest.
    Live,
    /// The image was removed; the tombstone keeps its version counter.
    Removed,
    /// No image: a placeholder from fencing a first push.
    Vacant,
}

impl PointerState {
    fn as_str(self) -> &'static str {
        match self {
            PointerState::Live => "live",
            PointerState::Removed => "removed",
            PointerState::Vacant => "vacant",
        }
    }
}

fn live() -> PointerState {
    PointerState::Live
}

/// An image pointer document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImagePointer {
    /// Document format version (1 or 2).
    pub version: u32,
    /// Live, removed or vacant (absent in format 1: live).
    #[serde(default = "live")]
    pub state: PointerState,
    /// `sha256:<hex>` of the current manifest (live pointers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The image's version number (0 in format 1).
    #[serde(default)]
    pub image_version: u64,
    /// Fence counter: changes the document (and its ETag) without changing its claim.
    #[serde(default)]
    pub fence: u64,
    /// Hex of the seal over the claim (format 2, live and removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// Pointer format version written.
pub const POINTER_VERSION: u32 = 2;

impl ImagePointer {
    fn claim<'a>(&'a self, tenant: &'a str, name: &'a str) -> PointerClaim<'a> {
        PointerClaim {
            tenant,
            name,
            state: self.state.as_str(),
            manifest: self.manifest.as_deref().unwrap_or(""),
            version: self.image_version,
        }
    }

    fn sealed(mut self, tenant: &str, name: &str, keys: &dyn KeyProvider) -> Result<ImagePointer> {
        self.seal = Some(hex::encode(seal_pointer(&self.claim(tenant, name), keys)?));
        Ok(self)
    }

    /// A sealed live pointer to `digest` at `version`.
    pub fn live(
        tenant: &str,
        name: &str,
        digest: &str,
        version: u64,
        keys: &dyn KeyProvider,
    ) -> Result<ImagePointer> {
        hex_of(digest)?;
        ImagePointer {
            version: POINTER_VERSION,
            state: PointerState::Live,
            manifest: Some(digest.to_string()),
            image_version: version,
            fence: 0,
            seal: None,
        }
        .sealed(tenant, name, keys)
    }

    /// A sealed tombstone at `version`.
    pub fn removed(
        tenant: &str,
        name: &str,
        version: u64,
        keys: &dyn KeyProvider,
    ) -> Result<ImagePointer> {
        ImagePointer {
            version: POINTER_VERSION,
            state: PointerState::Removed,
            manifest: None,
            image_version: version,
            fence: 0,
            seal: None,
        }
        .sealed(tenant, name, keys)
    }

    /// A vacant placeholder (no image).
    pub fn vacant() -> ImagePointer {
        ImagePointer {
            version: POINTER_VERSION,
            state: PointerState::Vacant,
            manifest: None,
            image_version: 0,
            fence: 1,
            seal: None,
        }
    }

    /// The live manifest digest, if any.
    pub fn live_manifest(&self) -> Option<&str> {
        match self.state {
            PointerState::Live => self.manifest.as_deref(),
            _ => None,
        }
    }

    /// Parses and checks the shape of a pointer document (untrusted bytes).
    pub fn parse(bytes: &[u8], path: &str) -> Result<ImagePointer> {
        let bad = |reason: String| StoreError::BadDocument {
            what: "image pointer",
            path: path.to_string(),
            reason,
        };
        let p: ImagePointer = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        match (p.version, p.state, &p.manifest) {
            (1, PointerState::Live, Some(_)) | (2, PointerState::Live, Some(_)) => {}
            (2, PointerState::Removed | PointerState::Vacant, None) => {}
            (1 | 2, state, m) => {
                return Err(bad(format!(
                    "state {state:?} with{} a manifest",
                    if m.is_some() { "" } else { "out" }
                )))
            }
            (v, ..) => return Err(bad(format!("unsupported pointer version {v}"))),
        }
        if let Some(m) = &p.manifest {
            hex_of(m)?;
        }
        if let Some(s) = &p.seal {
            if s.len() > 4096 || hex::decode(s).is_err() {
                return Err(bad("seal is not hex".into()));
            }
        }
        Ok(p)
    }

    /// Checks the seal with the tenant's key. Format-1 pointers carry none
    /// (legacy, accepted as version 0); vacant ones claim nothing.
    pub fn verify(&self, tenant: &str, name: &str, keys: &dyn KeyProvider) -> Result<()> {
        if self.version == 1 || self.state == PointerState::Vacant {
            return Ok(());
        }
        let forged = || lode_chunk::ChunkError::PointerUnauthentic {
            tenant: tenant.to_string(),
            name: name.to_string(),
        };
        let seal = self.seal.as_deref().ok_or_else(forged)?;
        let seal = hex::decode(seal).map_err(|_| forged())?;
        open_pointer(&self.claim(tenant, name), &seal, keys)?;
        Ok(())
    }
}

/// A pointer whose seal verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// The image's version (0 for a legacy format-1 pointer).
    pub version: u64,
    /// True for a legacy (format 1, unsealed) pointer.
    pub legacy: bool,
}

/// Attempts at a conditional update before giving up as contended.
pub(crate) const CAS_ATTEMPTS: u32 = 16;

impl Store {
    pub(crate) fn image_path(tenant: &str, name: &str) -> Result<Path> {
        lode_chunk::keys::check_tenant(tenant)?;
        check_name(name)?;
        Ok(Path::from(format!("tenants/{tenant}/images/{name}")))
    }

    /// Reads `tenant/name`'s pointer document and its version (unverified).
    pub async fn read_pointer(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<(ImagePointer, UpdateVersion)>> {
        let path = Self::image_path(tenant, name)?;
        match self.get_versioned(&path, ObjectKind::Pointer).await? {
            None => Ok(None),
            Some((b, v)) => Ok(Some((ImagePointer::parse(&b, path.as_ref())?, v))),
        }
    }

    /// Writes `tenant/name`'s pointer if it is still as `expect` says.
    pub async fn write_pointer(
        &self,
        tenant: &str,
        name: &str,
        p: &ImagePointer,
        expect: &Expect,
    ) -> Result<bool> {
        let path = Self::image_path(tenant, name)?;
        let doc = serde_json::to_vec(p).map_err(|e| StoreError::Task(e.to_string()))?;
        self.put_if(&path, doc.into(), expect).await
    }

    /// The manifest digest `tenant/name` points at, without checking the
    /// pointer's seal ([`Store::resolve_image`] checks it).
    pub async fn get_image(&self, tenant: &str, name: &str) -> Result<String> {
        match self.read_pointer(tenant, name).await? {
            Some((p, _)) => self.live_digest(tenant, name, &p),
            None => Err(self.not_found(tenant, name)),
        }
    }

    fn not_found(&self, tenant: &str, name: &str) -> StoreError {
        StoreError::ImageNotFound {
            tenant: tenant.into(),
            name: name.into(),
            store: self.url().to_string(),
        }
    }

    fn live_digest(&self, tenant: &str, name: &str, p: &ImagePointer) -> Result<String> {
        match (p.state, &p.manifest) {
            (PointerState::Live, Some(m)) => Ok(m.clone()),
            (PointerState::Removed, _) => Err(StoreError::ImageRemoved {
                tenant: tenant.into(),
                name: name.into(),
                version: p.image_version,
                store: self.url().to_string(),
            }),
            _ => Err(self.not_found(tenant, name)),
        }
    }

    /// Points `tenant/name` at a manifest with a legacy format-1 pointer
    /// (unsealed, unconditional). Pushes write sealed format-2 pointers;
    /// this is for compatibility tests and tools.
    pub async fn set_image(&self, tenant: &str, name: &str, digest: &str) -> Result<()> {
        let path = Self::image_path(tenant, name)?;
        hex_of(digest)?;
        let doc = serde_json::json!({"version": 1, "manifest": digest});
        self.put(&path, doc.to_string().into()).await
    }

    /// Reads `tenant/name`'s pointer, checks its seal with the tenant's key
    /// and that its version is not older than this host has seen.
    pub async fn resolve_image(
        &self,
        keys: &dyn KeyProvider,
        tenant: &str,
        name: &str,
    ) -> Result<ResolvedImage> {
        let Some((p, _)) = self.read_pointer(tenant, name).await? else {
            return Err(self.not_found(tenant, name));
        };
        p.verify(tenant, name, keys)?;
        let digest = self.live_digest(tenant, name, &p)?;
        self.check_fresh(tenant, name, p.image_version).await?;
        Ok(ResolvedImage {
            digest,
            version: p.image_version,
            legacy: p.version == 1,
        })
    }

    /// Refuses `version` of `tenant/name` if this host has seen a newer one.
    pub async fn check_fresh(&self, tenant: &str, name: &str, version: u64) -> Result<()> {
        if let Some(seen) = self.seen() {
            let highest = seen.highest(tenant, name).await?;
            if version < highest {
                return Err(StoreError::Rollback {
                    tenant: tenant.into(),
                    name: name.into(),
                    offered: version,
                    seen: highest,
                });
            }
        }
        Ok(())
    }

    /// Records that this host has seen `version` of `tenant/name`.
    pub async fn record_seen(&self, tenant: &str, name: &str, version: u64) -> Result<()> {
        if let Some(seen) = self.seen() {
            seen.record(tenant, name, version).await?;
        }
        Ok(())
    }

    /// Tenants with anything in the store.
    pub async fn list_tenants(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .list_dir("tenants")
            .await?
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Names of every pointer object of `tenant` (live, removed or vacant),
    /// with their metadata, all pages.
    pub async fn list_pointers(
        &self,
        tenant: &str,
    ) -> Result<Vec<(String, object_store::ObjectMeta)>> {
        lode_chunk::keys::check_tenant(tenant)?;
        let mut out: Vec<_> = self
            .list_all(&format!("tenants/{tenant}/images"))
            .await?
            .into_iter()
            .filter_map(|m| Some((m.location.filename()?.to_string(), m)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Every live `(tenant, image name)` in the store.
    pub async fn list_images(&self) -> Result<Vec<(String, String)>> {
        let mut names = Vec::new();
        for t in self.list_tenants().await? {
            for (n, _) in self.list_pointers(&t).await? {
                names.push((t.clone(), n));
            }
        }
        let live: Vec<Option<(String, String)>> = futures::stream::iter(names)
            .map(|(t, n)| async move {
                let p = self.read_pointer(&t, &n).await?;
                Ok::<_, StoreError>(
                    p.filter(|(p, _)| p.live_manifest().is_some())
                        .map(|_| (t, n)),
                )
            })
            .buffered(16)
            .try_collect()
            .await?;
        Ok(live.into_iter().flatten().collect())
    }

    /// Fences `tenant/name`: changes its pointer document without changing
    /// what it claims (or writes a vacant placeholder where there is none),
    /// so that a push that read the pointer before cannot write it.
    pub async fn fence_pointer(&self, tenant: &str, name: &str) -> Result<()> {
        for _ in 0..CAS_ATTEMPTS {
            let (next, expect) = match self.read_pointer(tenant, name).await? {
                None => (ImagePointer::vacant(), Expect::Absent),
                Some((mut p, v)) => {
                    p.fence += 1;
                    (p, Expect::Version(v))
                }
            };
            if self.write_pointer(tenant, name, &next, &expect).await? {
                return Ok(());
            }
        }
        Err(StoreError::Contended {
            what: "image pointer",
            path: Self::image_path(tenant, name)?.to_string(),
            attempts: CAS_ATTEMPTS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_chunk::Keyring;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
    const E: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000002";

    #[tokio::test]
    async fn sealed_pointers_resolve_and_refuse_swaps() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let s = Store::open("memory://").unwrap();
        let a = ImagePointer::live("t", "a", D, 1, &k).unwrap();
        assert!(s
            .write_pointer("t", "a", &a, &Expect::Absent)
            .await
            .unwrap());
        let r = s.resolve_image(&k, "t", "a").await.unwrap();
        assert_eq!((r.digest.as_str(), r.version, r.legacy), (D, 1, false));
        // The same document under another name does not verify.
        s.write_pointer("t", "b", &a, &Expect::Absent)
            .await
            .unwrap();
        assert!(matches!(
            s.resolve_image(&k, "t", "b").await,
            Err(StoreError::Chunk(
                lode_chunk::ChunkError::PointerUnauthentic { .. }
            ))
        ));
        // An edited digest does not verify either.
        let mut edited = a.clone();
        edited.manifest = Some(E.into());
        s.write_pointer("t", "c", &edited, &Expect::Absent)
            .await
            .unwrap();
        assert!(s.resolve_image(&k, "t", "c").await.is_err());
        // Fencing changes the document, not the claim.
        s.fence_pointer("t", "a").await.unwrap();
        assert_eq!(s.resolve_image(&k, "t", "a").await.unwrap().digest, D);
        s.fence_pointer("t", "new").await.unwrap();
        assert!(matches!(
            s.resolve_image(&k, "t", "new").await,
            Err(StoreError::ImageNotFound { .. })
        ));
        let rm = ImagePointer::removed("t", "a", 2, &k).unwrap();
        let (_, v) = s.read_pointer("t", "a").await.unwrap().unwrap();
        assert!(s
            .write_pointer("t", "a", &rm, &Expect::Version(v))
            .await
            .unwrap());
        assert!(matches!(
            s.resolve_image(&k, "t", "a").await,
            Err(StoreError::ImageRemoved { version: 2, .. })
        ));
        assert_eq!(
            s.list_images().await.unwrap(),
            vec![("t".to_string(), "b".to_string()), ("t".into(), "c".into())]
        );
        // Legacy pointers resolve at version 0.
        s.set_image("t", "old", E).await.unwrap();
        let r = s.resolve_image(&k, "t", "old").await.unwrap();
        assert_eq!((r.version, r.legacy), (0, true));
    }

    #[tokio::test]
    async fn rollback_is_refused_once_a_newer_version_was_seen() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path().join("k"));
        let s = Store::open("memory://")
            .unwrap()
            .with_seen(crate::SeenVersions::new(d.path().join("seen"), "memory://"));
        let v2 = ImagePointer::live("t", "a", E, 2, &k).unwrap();
        s.write_pointer("t", "a", &v2, &Expect::Absent)
            .await
            .unwrap();
        s.resolve_image(&k, "t", "a").await.unwrap();
        s.record_seen("t", "a", 2).await.unwrap();
        let v1 = ImagePointer::live("t", "a", D, 1, &k).unwrap();
        let (_, v) = s.read_pointer("t", "a").await.unwrap().unwrap();
        s.write_pointer("t", "a", &v1, &Expect::Version(v))
            .await
            .unwrap();
        assert!(matches!(
            s.resolve_image(&k, "t", "a").await,
            Err(StoreError::Rollback {
                offered: 1,
                seen: 2,
                ..
            })
        ));
    }

    #[test]
    fn parse_checks_the_shape() {
        for bad in [
            &br#"{"version":2,"state":"live"}"#[..],
            br#"{"version":2,"state":"removed","manifest":"sha256:00"}"#,
            br#"{"version":3,"manifest":"x"}"#,
            br#"{"version":1,"manifest":"md5:00"}"#,
            b"not json",
        ] {
            assert!(
                ImagePointer::parse(bad, "p").is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let v1 = format!(r#"{{"version":1,"manifest":"{D}"}}"#);
        let p = ImagePointer::parse(v1.as_bytes(), "p").unwrap();
        assert_eq!(p.live_manifest(), Some(D));
    }
}
