//! Sealed manifests of attached images, cached on the host, so a restarted
//! agent re-attaches its volumes without the store (during an outage too).
//! A sealed manifest opens only with its tenant's key; the cache holds
//! nothing the store does not. Files are `manifests/TENANT/HEX` (the
//! SHA-256 of the bytes), checked against their name on every read.

use lode_chunk::Manifest;
use std::io::Write;
use std::path::PathBuf;

/// The cache directory.
#[derive(Debug, Clone)]
pub struct ManifestCache {
    dir: PathBuf,
}

/// `sha256:<64 hex>` → the hex, when well formed (a safe file name).
fn hex_of(digest: &str) -> Option<&str> {
    let h = digest.strip_prefix("sha256:")?;
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then_some(h)
}

impl ManifestCache {
    /// The cache in `dir`.
    pub fn new(dir: PathBuf) -> ManifestCache {
        ManifestCache { dir }
    }

    fn path(&self, tenant: &str, digest: &str) -> Option<PathBuf> {
        lode_chunk::keys::check_tenant(tenant).ok()?;
        Some(self.dir.join(tenant).join(hex_of(digest)?))
    }

    /// The sealed manifest `digest` of `tenant`, if cached and intact (a
    /// corrupt file is removed).
    pub fn get(&self, tenant: &str, digest: &str) -> Option<Vec<u8>> {
        let p = self.path(tenant, digest)?;
        let b = std::fs::read(&p).ok()?;
        if Manifest::digest_of(&b) == digest {
            return Some(b);
        }
        tracing::warn!(path = %p.display(), "cached manifest does not match its digest: removed");
        let _ = std::fs::remove_file(&p);
        None
    }

    /// Caches `bytes` as `digest` of `tenant` (temp file, fsync, rename).
    pub fn put(&self, tenant: &str, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        let p = self.path(tenant, digest).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad tenant or digest {tenant} {digest}"),
            )
        })?;
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = p.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)
    }

    /// Forgets `digest` of `tenant` (no volume uses it any more).
    pub fn remove(&self, tenant: &str, digest: &str) {
        if let Some(p) = self.path(tenant, digest) {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_manifests_are_checked_against_their_name() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = ManifestCache::new(d.path().to_path_buf());
        let bytes = b"sealed manifest bytes".to_vec();
        let digest = Manifest::digest_of(&bytes);
        c.put("t", &digest, &bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.get("t", &digest), Some(bytes));
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(d.path().join("t").join(hex), b"tampered").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.get("t", &digest), None);
        assert!(c.put("../x", &digest, b"x").is_err());
        assert!(c.put("t", "sha256:../../etc", b"x").is_err());
    }
}
