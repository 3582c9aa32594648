//! Key providers: tenant keys that wrap per-image data keys, and root salts.
//!
//! The [`KeyProvider`] trait is the seam to a real KMS: lode never needs a
//! tenant's key itself, only "wrap this data key for tenant T" and "unwrap
//! it". The default [`Keyring`] keeps keys as files in a directory.

use crate::error::ChunkError;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A per-image data key that seals a manifest's key table.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(pub [u8; 32]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn random() -> Result<Self, ChunkError> {
        Ok(DataKey(random32()?))
    }
}

/// A root's salt, mixed into every chunk key derived in that root.
#[derive(Clone, PartialEq, Eq)]
pub struct Salt(pub [u8; 32]);

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salt(..)")
    }
}

/// Fills 32 bytes from the operating system's random source.
pub fn random32() -> Result<[u8; 32], ChunkError> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| ChunkError::Random(e.to_string()))?;
    Ok(b)
}

/// Checks a tenant name: 1–64 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_tenant(t: &str) -> Result<(), ChunkError> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && !t.starts_with('.')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ChunkError::BadTenant(t.to_string()))
    }
}

/// Wraps data keys under tenant keys and keeps root salts (a KMS, in effect).
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// Wraps `key` for `tenant`, creating the tenant's key on first use.
    fn wrap(&self, tenant: &str, key: &DataKey) -> Result<Vec<u8>, ChunkError>;
    /// Unwraps a data key wrapped for `tenant`.
    fn unwrap(&self, tenant: &str, wrapped: &[u8]) -> Result<DataKey, ChunkError>;
    /// Creates a new salt and returns its id.
    fn new_salt(&self) -> Result<String, ChunkError>;
    /// The salt with this id.
    fn salt(&self, salt_id: &str) -> Result<Salt, ChunkError>;
    /// 32 fresh random bytes for data keys and nonces (default: the
    /// operating system's random source). A provider may draw them from its
    /// KMS; the store protocol's simulation draws them from a seeded
    /// generator so that its runs replay exactly.
    fn random(&self) -> Result<[u8; 32], ChunkError> {
        random32()
    }
}

const WRAP_MAGIC: &[u8; 4] = b"LWK1";

/// Seals `key` under `kek`; the fingerprint of `kek` and the tenant are bound in.
pub fn wrap_with(kek: &[u8; 32], tenant: &str, key: &DataKey) -> Result<Vec<u8>, ChunkError> {
    let nonce: [u8; 12] = random32()?[..12].try_into().expect("12 of 32 bytes");
    let aad = [b"lode-wrap\0".as_slice(), tenant.as_bytes()].concat();
    let ct = Aes256Gcm::new(kek.into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &key.0,
                aad: &aad,
            },
        )
        .map_err(|_| ChunkError::Random("AES-GCM encryption failed".into()))?;
    let mut out = WRAP_MAGIC.to_vec();
    out.extend_from_slice(&Sha256::digest(kek)[..8]);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a key sealed by [`wrap_with`].
pub fn unwrap_with(kek: &[u8; 32], tenant: &str, wrapped: &[u8]) -> Result<DataKey, ChunkError> {
    let wrong = || ChunkError::WrongKey {
        tenant: tenant.to_string(),
    };
    if wrapped.len() != 4 + 8 + 12 + 48 || &wrapped[..4] != WRAP_MAGIC {
        return Err(wrong());
    }
    if wrapped[4..12] != Sha256::digest(kek)[..8] {
        return Err(wrong());
    }
    let nonce: [u8; 12] = wrapped[12..24].try_into().map_err(|_| wrong())?;
    let aad = [b"lode-wrap\0".as_slice(), tenant.as_bytes()].concat();
    let pt = Aes256Gcm::new(kek.into())
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &wrapped[24..],
                aad: &aad,
            },
        )
        .map_err(|_| wrong())?;
    let key: [u8; 32] = pt.as_slice().try_into().map_err(|_| wrong())?;
    Ok(DataKey(key))
}

/// The default provider: key files in a directory (`$LODE_HOME/keys`).
///
/// `<tenant>.key` holds a tenant's 32-byte key (mode 0600, created on the
/// tenant's first push); `salts/<id>.salt` holds root salts.
#[derive(Clone, Debug)]
pub struct Keyring {
    dir: PathBuf,
}

impl Keyring {
    /// A keyring in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Keyring { dir: dir.into() }
    }

    /// The keyring directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ChunkError + '_ {
        move |source| ChunkError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Reads a 32-byte secret file, `Ok(None)` if missing.
    fn read32(path: &Path) -> Result<Option<[u8; 32]>, ChunkError> {
        match std::fs::read(path) {
            Ok(b) => {
                let k: [u8; 32] = b.as_slice().try_into().map_err(|_| ChunkError::Io {
                    path: path.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "key file is not 32 bytes",
                    ),
                })?;
                Ok(Some(k))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(path)(e)),
        }
    }

    /// Creates `path` with `secret` unless it exists (then its content wins, so
    /// concurrent creators agree). Returns the secret in the file.
    fn create32(path: &Path, secret: [u8; 32]) -> Result<[u8; 32], ChunkError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(Self::io(dir))?;
        let tmp = dir.join(format!(".tmp-{}", hex::encode(&random32()?[..8])));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(Self::io(&tmp))?;
            f.write_all(&secret).map_err(Self::io(&tmp))?;
            f.sync_all().map_err(Self::io(&tmp))?;
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(secret),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::read32(path)?.ok_or_else(|| Self::io(path)(e))
            }
            Err(e) => Err(Self::io(path)(e)),
        }
    }

    fn tenant_path(&self, tenant: &str) -> Result<PathBuf, ChunkError> {
        check_tenant(tenant)?;
        Ok(self.dir.join(format!("{tenant}.key")))
    }
}

impl KeyProvider for Keyring {
    fn wrap(&self, tenant: &str, key: &DataKey) -> Result<Vec<u8>, ChunkError> {
        let path = self.tenant_path(tenant)?;
        let kek = match Self::read32(&path)? {
            Some(k) => k,
            None => Self::create32(&path, random32()?)?,
        };
        wrap_with(&kek, tenant, key)
    }

    fn unwrap(&self, tenant: &str, wrapped: &[u8]) -> Result<DataKey, ChunkError> {
        let path = self.tenant_path(tenant)?;
        let kek = Self::read32(&path)?.ok_or_else(|| ChunkError::MissingKey {
            tenant: tenant.to_string(),
            provider: self.dir.display().to_string(),
        })?;
        unwrap_with(&kek, tenant, wrapped)
    }

    fn new_salt(&self) -> Result<String, ChunkError> {
        let id = hex::encode(&random32()?[..8]);
        Self::create32(
            &self.dir.join("salts").join(format!("{id}.salt")),
            random32()?,
        )?;
        Ok(id)
    }

    fn salt(&self, salt_id: &str) -> Result<Salt, ChunkError> {
        let missing = || ChunkError::MissingSalt {
            salt_id: salt_id.to_string(),
            provider: self.dir.display().to_string(),
        };
        if salt_id.is_empty() || !salt_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(missing());
        }
        let path = self.dir.join("salts").join(format!("{salt_id}.salt"));
        Self::read32(&path)?.map(Salt).ok_or_else(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keyring_wraps_per_tenant() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path().join("keys"));
        let dk = DataKey::random().unwrap();
        let w = k.wrap("alice", &dk).unwrap();
        assert_eq!(k.unwrap("alice", &w).unwrap(), dk);
        let mode = std::fs::metadata(d.path().join("keys/alice.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        k.wrap("bob", &dk).unwrap();
        assert!(matches!(
            k.unwrap("bob", &w),
            Err(ChunkError::WrongKey { .. })
        ));
        assert!(matches!(
            k.unwrap("carol", &w),
            Err(ChunkError::MissingKey { .. })
        ));
        assert!(matches!(k.wrap("../x", &dk), Err(ChunkError::BadTenant(_))));
    }

    #[test]
    fn salts_persist() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new(d.path());
        let id = k.new_salt().unwrap();
        assert_eq!(
            k.salt(&id).unwrap(),
            Keyring::new(d.path()).salt(&id).unwrap()
        );
        assert!(matches!(
            k.salt("../../etc"),
            Err(ChunkError::MissingSalt { .. })
        ));
    }
}
